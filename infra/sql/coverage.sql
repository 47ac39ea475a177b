-- Named query: coverage. Every covered account and region as of its latest run: covered or not (its gaps), the detector, the features off, the member relationship and the newest finding seen.
SELECT account_id, region, cardinality(gaps) = 0 AS covered, gaps, status, detector_status, finding_publishing_frequency,
       features_disabled, member_relationship, runtime_unhealthy, newest_finding_updated_at, ou_path, collected_at AS as_of
FROM coverage_latest
ORDER BY covered, account_id, region
