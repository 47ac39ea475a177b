-- Named query: the spike query. For each finding, how fast its count grew between consecutive
-- versions, per hour: a burst of denied traffic or port probes shows up here inside GuardDuty's
-- 6-hour update window, long before the finding's severity or title changes. Versions of the
-- last 7 days (the dt filter prunes partitions; dt is a string, compared as one).
WITH versions AS (
    SELECT account_id, region, id, type, severity, updated_at, "count",
           lag("count") OVER (PARTITION BY account_id, region, id ORDER BY updated_at) AS previous_count,
           lag(updated_at) OVER (PARTITION BY account_id, region, id ORDER BY updated_at) AS previous_updated_at
    FROM findings
    WHERE dt >= date_format(current_timestamp - INTERVAL '7' DAY, '%Y-%m-%d')
)
SELECT account_id, region, id, type, severity, previous_updated_at, updated_at, previous_count, "count",
       "count" - previous_count AS count_growth,
       -- 3600e0 is a double: 3600.0 would be a DECIMAL in Trino, rounding the rate to 0.1.
       ("count" - previous_count) * 3600e0 / greatest(date_diff('second', previous_updated_at, updated_at), 60) AS count_growth_per_hour
FROM versions
WHERE previous_count IS NOT NULL
  AND "count" > previous_count
ORDER BY count_growth_per_hour DESC, account_id, region, id
