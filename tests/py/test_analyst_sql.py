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
TABLES = ["findings", "runs", "cloudtrail_events", "finding_events"]


def connect(lake: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for table in TABLES:
        con.execute(f"create view {table} as select * from read_parquet('{lake}/{table}/*/*.parquet', hive_partitioning=true)")
    view = sqlglot.transpile((SQL / "findings_latest.sql").read_text(), read="trino", write="duckdb")[0]
    con.execute(view)
    return con


def run_query(con: duckdb.DuckDBPyConnection, name: str) -> list[dict]:
    duck = sqlglot.transpile((SQL / f"{name}.sql").read_text(), read="trino", write="duckdb")[0]
    cursor = con.execute(duck)
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

    coverage = run_query(con, "coverage")
    assert {(r["account_id"], r["source"], r["status"]) for r in coverage} == {(denied, "guardduty", "access_denied"), (denied, "cloudtrail", "access_denied")}

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
