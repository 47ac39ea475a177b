-- Named query: the CloudTrail events linked to each finding version, and why they were pulled.
SELECT fe.finding_account_id, fe.finding_region, fe.finding_id, fe.finding_updated_at, fe.reason,
       e.event_time, e.event_source, e.event_name, e.identity_type, e.identity_arn, e.access_key_id,
       e.source_ip, e.user_agent, e.error_code, e.region AS event_region
FROM finding_events fe
JOIN cloudtrail_events e ON e.event_id = fe.event_id
ORDER BY fe.finding_account_id, fe.finding_region, fe.finding_id, e.event_time
