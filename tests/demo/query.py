"""Prints a few analyst queries over a guardlake lake (DuckDB, Hive partitions)."""

import sys

import duckdb

lake = sys.argv[1] if len(sys.argv) > 1 else "./lake"
con = duckdb.connect()
con.execute(f"create view findings as select * from read_parquet('{lake}/findings/*/*.parquet', hive_partitioning=true)")
con.execute(f"create view runs as select * from read_parquet('{lake}/runs/*/*.parquet', hive_partitioning=true)")
con.execute(f"create view coverage as select * from read_parquet('{lake}/coverage/*/*.parquet', hive_partitioning=true)")

print("Findings by severity label and type (top 12):")
print(con.sql("""
    select severity_label, type, count(*) as findings, count(distinct account_id) as accounts
    from findings group by severity_label, type
    order by case severity_label when 'Critical' then 0 when 'High' then 1 when 'Medium' then 2 else 3 end, findings desc, type
    limit 12
"""))
print("Findings by action type and resource type:")
print(con.sql("""
    select coalesce(action_type, '(none: runtime/malware)') as action_type, resource_type, count(*) as findings
    from findings group by 1, 2 order by findings desc, action_type
"""))
print("Coverage gaps (each account and region as its newest run left it: what is not proven covered, and why):")
print(con.sql("""
    with latest as (
        select * from coverage
        qualify row_number() over (partition by account_id, region order by collected_at desc, run_id desc) = 1
    )
    select account_id, region, unnest(gaps) as gap, status, error_class
    from latest where len(gaps) > 0 order by gap, account_id, region
"""))
