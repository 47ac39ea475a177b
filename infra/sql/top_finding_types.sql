-- Named query: finding types by account and region, most frequent first (latest versions).
SELECT account_id, region, type, count(*) AS findings, max(severity) AS max_severity, sum("count") AS occurrences
FROM findings_latest
WHERE NOT coalesce(archived, false)
GROUP BY account_id, region, type
ORDER BY findings DESC, occurrences DESC, account_id, region, type
