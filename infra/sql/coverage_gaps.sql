-- Named query: coverage_gaps. Every gap in the latest coverage of each account and region, one row per gap (none: everything covered is proven covered).
SELECT account_id, region, gap, status, error_class, member_relationship, features_disabled, ou_path, collected_at AS as_of
FROM coverage_latest
CROSS JOIN UNNEST(gaps) AS t(gap)
ORDER BY gap, account_id, region
