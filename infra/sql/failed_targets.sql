-- Named query: failed_targets. Account x region x source targets whose last run was not ok
-- (access denied, region disabled, GuardDuty not enabled / no detector, throttled, error).
WITH last_status AS (
    SELECT account_id, region, source, status, error_class, error_message, started_at,
           row_number() OVER (PARTITION BY account_id, region, source ORDER BY started_at DESC, run_id DESC) AS recency
    FROM runs
)
SELECT account_id, region, source, status, error_class, error_message, started_at AS last_run_at
FROM last_status
WHERE recency = 1
  AND status <> 'ok'
ORDER BY status, account_id, region, source
