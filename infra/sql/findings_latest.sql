-- View findings_latest: the latest version of each finding (account_id, region, id).
CREATE OR REPLACE VIEW findings_latest AS
SELECT *
FROM (
    SELECT f.*,
           row_number() OVER (PARTITION BY account_id, region, id ORDER BY updated_at DESC) AS version_rank
    FROM findings f
) ranked
WHERE version_rank = 1
