"""Proof of coverage: an organization seeded with one of each gap, collected in member and in
delegated-admin mode; `coverage_gaps` (the named query, run by DuckDB) lists exactly those gaps
and nothing for the healthy accounts and regions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import duckdb

from conftest import control
from seed import client, create_org, findings_for, seed_findings
from test_analyst_sql import SQL, run_query, to_duckdb
from test_collect import guardlake, query

REGIONS = ("us-east-1", "eu-west-1")
MANAGEMENT = "123456789012"
GAPPY = "eu-west-1"


def seed_gaps() -> dict[str, str]:
    """Accounts named after their trouble, each troubled in eu-west-1 only (denied: everywhere)."""
    names = ["security", "healthy", "nodetector", "disabled", "s3off", "optout", "denied", "runtime", "notenabled"]
    accounts = dict(zip(names, create_org(names)))
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=1)
    for n, (name, account) in enumerate(accounts.items()):
        for m, region in enumerate(REGIONS):
            if name == "nodetector" and region == GAPPY:
                continue
            seed_findings(account, region, findings_for(account, region, 2, base, offset=(n * 2 + m) * 2))
    detector = lambda name, **body: control("POST", "/moto-api/ext/guardduty/detector", {"account_id": accounts[name], "region": GAPPY, **body})  # noqa: E731
    detector("disabled", status="DISABLED")
    detector("s3off", features={"S3_DATA_EVENTS": "DISABLED"})
    detector("runtime", features={"RUNTIME_MONITORING": "ENABLED"})
    control("POST", "/moto-api/ext/guardduty/coverage", {"account_id": accounts["runtime"], "region": GAPPY, "resources": {"EC2": {"HEALTHY": 3, "UNHEALTHY": 1}}})
    # Healthy agents elsewhere are no gap.
    detector("healthy", features={"RUNTIME_MONITORING": "ENABLED"})
    control("POST", "/moto-api/ext/guardduty/coverage", {"account_id": accounts["healthy"], "region": GAPPY, "resources": {"ECS": {"HEALTHY": 2}}})
    control("POST", "/moto-api/ext/regions", {"account_id": accounts["optout"], "region": GAPPY, "status": "DISABLED"})
    control("POST", "/moto-api/ext/deny-assume", {"account_id": accounts["denied"]})
    for region in REGIONS:
        client("guardduty", region).enable_organization_admin_account(AdminAccountId=accounts["security"])
    control("POST", "/moto-api/ext/guardduty/member", {"admin_account": accounts["security"], "region": GAPPY, "account_id": accounts["notenabled"], "relationship": "Disabled"})
    return accounts


def gaps_found(lake) -> set[tuple[str, str, str]]:
    con = duckdb.connect()
    con.execute(f"create view coverage as select * from read_parquet('{lake}/coverage/*/*.parquet', hive_partitioning=true, hive_types_autocast=false)")
    con.execute(to_duckdb((SQL / "coverage_latest.sql").read_text()))
    return {(r["account_id"], r["region"], r["gap"]) for r in run_query(con, "coverage_gaps")}


def test_member_mode_names_each_gap_and_nothing_for_healthy_targets(tmp_path):
    accounts = seed_gaps()
    lake = tmp_path / "lake"
    guardlake("run", "--output", str(lake), "--regions", ",".join(REGIONS), "--exclude-accounts", MANAGEMENT)
    expected = {
        (accounts["nodetector"], GAPPY, "no_detector"),
        (accounts["disabled"], GAPPY, "detector_disabled"),
        (accounts["s3off"], GAPPY, "feature_off:S3_DATA_EVENTS"),
        (accounts["optout"], GAPPY, "region_not_opted_in"),
        (accounts["denied"], REGIONS[0], "role_denied"),
        (accounts["denied"], GAPPY, "role_denied"),
        (accounts["runtime"], GAPPY, "runtime_unhealthy"),
    }
    assert gaps_found(lake) == expected
    rows = query(lake, "coverage", "select count(*), count(distinct (account_id, region)) from coverage")
    assert rows == [(len(accounts) * len(REGIONS),) * 2], "a row per account and region covered"
    healthy = query(lake, "coverage", f"""select detector_status, finding_publishing_frequency, list_sort(features_enabled), runtime_healthy,
        account_status, ou_path like 'r-%', region_opt_status, newest_finding_updated_at is not null
        from coverage where account_id = '{accounts["healthy"]}' and region = '{GAPPY}'""")  # fmt: skip
    [(status, frequency, enabled, agents, account_status, in_root, opt, newest)] = healthy
    assert (status, frequency, agents, account_status, in_root, opt, newest) == ("ENABLED", "FIFTEEN_MINUTES", 2, "ACTIVE", True, "ENABLED", True)
    assert {"CLOUD_TRAIL", "S3_DATA_EVENTS", "RUNTIME_MONITORING", "RUNTIME_MONITORING/EC2_AGENT_MANAGEMENT"} <= set(enabled)

    # Which features are required is configuration: S3 off is then no gap, Runtime Monitoring off is.
    again = tmp_path / "again"
    guardlake("run", "--output", str(again), "--regions", GAPPY, "--accounts", f"{accounts['s3off']},{accounts['healthy']}",
              "--required-features", "CLOUD_TRAIL,RUNTIME_MONITORING")  # fmt: skip
    assert gaps_found(again) == {(accounts["s3off"], GAPPY, "feature_off:RUNTIME_MONITORING")}
    bad = guardlake("run", "--output", str(again), "--required-features", "S3_PROTECTION", check_codes=(2,))
    assert "S3_PROTECTION" in bad.stderr and "S3_DATA_EVENTS" in bad.stderr, "the model's names are offered"


def test_delegated_admin_mode_names_each_gap_it_can_see(tmp_path):
    accounts = seed_gaps()
    lake = tmp_path / "lake"
    guardlake("run", "--output", str(lake), "--regions", ",".join(REGIONS), "--exclude-accounts", MANAGEMENT,
              "--mode", "delegated-admin", "--admin-account", accounts["security"])  # fmt: skip
    # Through the administrator: a member without a detector is Created, one whose detector is
    # disabled is Disabled, one whose region is not opted in is RegionDisabled; no role is assumed.
    expected = {
        (accounts["nodetector"], GAPPY, "member_not_enabled"),
        (accounts["disabled"], GAPPY, "member_not_enabled"),
        (accounts["s3off"], GAPPY, "feature_off:S3_DATA_EVENTS"),
        (accounts["optout"], GAPPY, "region_not_opted_in"),
        (accounts["runtime"], GAPPY, "runtime_unhealthy"),
        (accounts["notenabled"], GAPPY, "member_not_enabled"),
    }
    assert gaps_found(lake) == expected
    relationships = dict(query(lake, "coverage", f"select account_id, member_relationship from coverage where region = '{GAPPY}'"))
    assert relationships[accounts["security"]] is None, "the administrator is no member of itself"
    assert relationships[accounts["notenabled"]] == "Disabled" and relationships[accounts["healthy"]] == "Enabled"


def test_canaries_arrive_with_a_latency_and_a_suppressed_one_is_missing(tmp_path):
    accounts = create_org(["alpha", "beta"])
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=3)
    for n, account in enumerate(accounts):
        for m, region in enumerate(REGIONS):
            seed_findings(account, region, findings_for(account, region, 1, base, offset=n * 2 + m))
    lake = tmp_path / "lake"
    options = ("--output", str(lake), "--regions", ",".join(REGIONS), "--accounts", ",".join(accounts))
    guardlake("run", *options)
    control("POST", "/moto-api/ext/guardduty/suppress-samples", {"account_id": accounts[1], "region": GAPPY})
    requested = guardlake("canary", *options, check_codes=(0,))
    assert "Requested 4 canary sample(s) of Recon:EC2/PortProbeUnprotectedPort" in requested.stdout, requested.stdout
    guardlake("run", *options, "--canary-wait-secs", "0")
    rows = query(lake, "coverage", """select account_id, region, canary_id is not null, canary_latency_ms, gaps from coverage
        where canary_id is not null order by collected_at desc, account_id, region limit 4""")  # fmt: skip
    by_cell = {(a, r): (latency, gaps) for a, r, _, latency, gaps in rows}
    assert len(by_cell) == 4, rows
    for (account, region), (latency, gaps) in by_cell.items():
        if (account, region) == (accounts[1], GAPPY):
            assert latency is None and gaps == ["canary_missing"], (account, region, gaps)
        else:
            assert latency is not None and latency >= 0 and gaps == [], (account, region, latency, gaps)
    samples = query(lake, "findings", "select count(*) from findings where sample and type = 'Recon:EC2/PortProbeUnprotectedPort'")
    assert samples == [(3,)], "the samples are collected like any finding"
    # An arrival is recorded once: the next run finds nothing pending but the suppressed one.
    guardlake("run", *options, "--canary-wait-secs", "0")
    latest = query(lake, "coverage", f"select gaps from coverage where account_id = '{accounts[0]}' order by collected_at desc limit 1")
    assert latest == [([],)]
