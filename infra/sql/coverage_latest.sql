-- View coverage_latest: the latest coverage row of each account and region (from the newest run that covered it).
CREATE OR REPLACE VIEW coverage_latest AS
SELECT *
FROM (
    SELECT c.*,
           row_number() OVER (PARTITION BY account_id, region ORDER BY collected_at DESC, run_id DESC) AS recency
    FROM coverage c
) ranked
WHERE recency = 1
