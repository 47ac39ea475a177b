-- Named query: High and Critical findings created in the last 24 hours, latest version.
SELECT account_id, region, id, type, severity, severity_label, title, resource_type, created_at, updated_at, "count"
FROM findings_latest
WHERE severity >= 7.0
  AND created_at >= current_timestamp - INTERVAL '24' HOUR
  AND NOT sample
ORDER BY severity DESC, created_at DESC
