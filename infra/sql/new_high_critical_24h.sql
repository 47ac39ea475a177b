-- Named query: High and Critical findings created in the last 24 hours, latest version. A
-- finding created since then has every version updated since then, so only the partitions of
-- the last two days are read (dt is a string, compared as one) and the latest version is ranked
-- inside them.
WITH recent AS (
    SELECT f.*,
           row_number() OVER (PARTITION BY account_id, region, id ORDER BY updated_at DESC) AS version_rank
    FROM findings f
    WHERE dt >= date_format(current_timestamp - INTERVAL '24' HOUR, '%Y-%m-%d')
)
SELECT account_id, region, id, type, severity, severity_label, title, resource_type, created_at, updated_at, "count"
FROM recent
WHERE version_rank = 1
  AND severity >= 7.0
  AND created_at >= current_timestamp - INTERVAL '24' HOUR
  AND NOT coalesce(sample, false)
ORDER BY severity DESC, created_at DESC
