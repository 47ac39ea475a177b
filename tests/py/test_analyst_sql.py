"""The analyst SQL in infra/sql (Athena/Trino dialect), transpiled to DuckDB with sqlglot and run
against a lake that guardlake wrote from seeded data: a burst, a denied account, a compromised key."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import sqlglot

from conftest import control
from seed import create_org, findings_for, seed_findings
from test_cloudtrail import KEY, event, iso, seed_events
from conftest import cloudtrail_fixtures
from test_collect import guardlake

SQL = Path(__file__).resolve().parents[2] / "infra" / "sql"
TABLES = ["findings", "runs", "cloudtrail_events", "finding_events", "coverage"]
VIEWS = ["findings_latest", "coverage_latest"]


def to_duckdb(trino_sql: str) -> str:
    """Athena (Trino) SQL as DuckDB runs it. sqlglot maps Trino's `date_diff` to DuckDB's
    `date_diff`, which counts unit boundaries crossed (DuckDB: 0.9 s to 1.1 s is 1 second); Trino
    counts whole units elapsed (0), as DuckDB's `date_sub` does: use that one."""
    duck = sqlglot.transpile(trino_sql, read="trino", write="duckdb")[0]
    return duck.replace("DATE_DIFF(", "DATE_SUB(")


def connect(lake: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for table in TABLES:
        # dt stays a string, as the Glue tables declare it (so dt filters compare strings).
        con.execute(f"create view {table} as select * from read_parquet('{lake}/{table}/*/*.parquet', hive_partitioning=true, hive_types_autocast=false)")
    for view in VIEWS:
        con.execute(to_duckdb((SQL / f"{view}.sql").read_text()))
    return con


def run_query(con: duckdb.DuckDBPyConnection, name: str) -> list[dict]:
    cursor = con.execute(to_duckdb((SQL / f"{name}.sql").read_text()))
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row)) for row in cursor.fetchall()]


def test_views_and_named_queries_answer_on_a_real_lake(tmp_path):
    [quiet, busy, denied] = create_org(["quiet", "busy", "denied"])
    control("POST", "/moto-api/ext/deny-assume", {"account_id": denied})
    now = datetime.now(timezone.utc).replace(microsecond=0)
    quiet_findings = findings_for(quiet, "eu-west-1", 6, now - timedelta(hours=20))
    seed_findings(quiet, "eu-west-1", quiet_findings)
    probe = findings_for(busy, "eu-west-1", 1, now - timedelta(hours=5))[0]
    probe["type"], probe["severity"] = "Recon:EC2/PortProbeUnprotectedPort", 5.0
    probe["service"]["count"] = 10
    probe["updatedAt"] = iso(now - timedelta(minutes=30), True)
    probe["resource"] = {"resourceType": "AccessKey", "accessKeyDetails": {"accessKeyId": KEY, "principalId": "AIDA1", "userName": "deploy", "userType": "IAMUser"}}
    probe["service"]["eventFirstSeen"], probe["service"]["eventLastSeen"] = iso(now - timedelta(hours=5), True), iso(now - timedelta(minutes=30), True)
    seed_findings(busy, "eu-west-1", [probe])
    seed_events(busy, "eu-west-1", [event(cloudtrail_fixtures()["iam_user"], "e-burst", busy, "eu-west-1", "DescribeInstances", "ec2.amazonaws.com", now - timedelta(hours=4), KEY)])

    lake = tmp_path / "lake"
    args = ("run", "--output", str(lake), "--regions", "eu-west-1", "--accounts", f"{quiet},{busy},{denied}",
            "--cloudtrail", "lookup", "--watchlist", "StopLogging")  # fmt: skip
    guardlake(*args)
    # The burst: 500 more probes 30 minutes later (GuardDuty updates the finding now).
    burst = copy.deepcopy(probe)
    burst["service"]["count"] = 510
    burst["updatedAt"] = iso(now, True)
    seed_findings(busy, "eu-west-1", [burst])
    guardlake(*args)

    con = connect(lake)
    latest = con.execute("select id, count from findings_latest").fetchall()
    assert len(latest) == len(quiet_findings) + 1 and (probe["id"], 510) in latest

    spikes = run_query(con, "finding_count_spikes")
    assert spikes[0]["id"] == probe["id"]
    assert (spikes[0]["previous_count"], spikes[0]["count"]) == (10, 510)
    assert spikes[0]["count_growth_per_hour"] == 1000.0, "500 more in 30 minutes"
    assert len(spikes) == 1

    failed = run_query(con, "failed_targets")
    assert {(r["account_id"], r["source"], r["status"]) for r in failed} == {(denied, "guardduty", "access_denied"), (denied, "cloudtrail", "access_denied")}
    coverage = run_query(con, "coverage")
    assert [(r["account_id"], r["covered"]) for r in coverage] == [(denied, False), *sorted((a, True) for a in (quiet, busy))]
    gaps = run_query(con, "coverage_gaps")
    assert [(r["account_id"], r["region"], r["gap"]) for r in gaps] == [(denied, "eu-west-1", "role_denied")], "the latest run's row only"

    high = run_query(con, "new_high_critical_24h")
    expected_high = {f["id"] for f in quiet_findings if f["severity"] >= 7.0}
    assert {r["id"] for r in high} == expected_high and expected_high

    top = run_query(con, "top_finding_types")
    assert sum(r["findings"] for r in top) == len(latest)
    assert all(r["account_id"] in (quiet, busy) for r in top)

    linked = run_query(con, "finding_cloudtrail_events")
    # One link per finding version that pulled it; the event itself is stored once.
    assert sorted((r["finding_id"], r["event_name"], r["reason"], r["finding_updated_at"].isoformat()[:19]) for r in linked) == [
        (probe["id"], "DescribeInstances", "access_key", probe["updatedAt"][:19]),
        (probe["id"], "DescribeInstances", "access_key", burst["updatedAt"][:19]),
    ]
    assert con.execute("select count(*) from cloudtrail_events").fetchall() == [(1,)]


def test_the_function_mapping_keeps_trino_semantics_and_rates_are_doubles():
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    elapsed = con.execute(to_duckdb("select date_diff('second', timestamp '2026-01-01 00:00:00.900', timestamp '2026-01-01 00:00:01.100')")).fetchall()
    assert elapsed == [(0,)], "whole seconds elapsed, as Trino counts them"
    # Two versions 420.2 s apart (421 second boundaries crossed), count 1 -> 2: Trino's rate is
    # 3600 / 420 per hour, unrounded.
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    con.execute("create table findings (account_id varchar, region varchar, id varchar, type varchar, severity double, updated_at timestamp, count bigint, dt varchar)")
    con.execute(f"insert into findings values ('1', 'r', 'f', 't', 5, timestamp '{day} 00:00:00.900', 1, '{day}'),"
                f" ('1', 'r', 'f', 't', 5, timestamp '{day} 00:07:01.100', 2, '{day}'),"
                f" ('1', 'r', 'old', 't', 5, timestamp '2020-01-01 00:00:00', 1, '2020-01-01'),"
                f" ('1', 'r', 'old', 't', 5, timestamp '2020-01-01 01:00:00', 9, '2020-01-01')")  # fmt: skip
    [spike] = run_query(con, "finding_count_spikes")
    assert spike["id"] == "f", "versions outside the recent partitions are not read"
    assert spike["count_growth_per_hour"] == 3600 / 420
    assert "3600e0" in (SQL / "finding_count_spikes.sql").read_text(), "a double literal: 3600.0 is a DECIMAL in Trino"
