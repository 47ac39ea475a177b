"""Exactly once under partial failure and hostile state: a target failing partway, a lock after a
failed recovery, an output that is not a lake, corrupt or tampered checkpoints."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from conftest import control
from seed import create_org, findings_for, seed_findings
from test_collect import guardlake, query

REGION = "eu-west-1"


def args(lake: Path, accounts: list[str], *extra: str) -> tuple[str, ...]:
    return ("run", "--output", str(lake), "--regions", REGION, "--accounts", ",".join(accounts), "--lookback-days", "7", *extra)


def versions(lake: Path) -> tuple[int, int]:
    return query(lake, "findings", "select count(*), count(distinct (account_id, region, id, updated_at)) from findings")[0]


def test_a_target_failing_partway_never_publishes_a_version_twice(tmp_path):
    [account] = create_org(["partial"])
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=2)
    seed_findings(account, REGION, findings_for(account, REGION, 120, base))
    lake = tmp_path / "lake"

    # GetFindings serves 50 ids a call: the third page fails, after 100 versions were collected.
    control("POST", "/moto-api/ext/faults", {"operation": "GetFindings", "error": "500", "skip": 2})
    done = guardlake(*args(lake, [account], "--max-attempts", "1"))
    control("DELETE", "/moto-api/ext/faults")
    assert done.returncode == 3, done.stdout
    assert query(lake, "runs", "select status, findings_read, findings_written from runs where source = 'guardduty'") == [("error", 100, 100)]
    assert versions(lake) == (100, 100)

    assert guardlake(*args(lake, [account])).returncode == 0
    assert versions(lake) == (120, 120), "the next run adds only what the failed one did not publish"

    # GetFindings failing half the time, without retries, over several runs, then a clean one.
    newer = findings_for(account, REGION, 180, base + timedelta(hours=1), offset=1000)
    for finding in newer:
        finding["updatedAt"] = (datetime.now(timezone.utc) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    seed_findings(account, REGION, newer)
    control("POST", "/moto-api/ext/faults", {"operation": "GetFindings", "error": "500", "rate": 0.5})
    codes = [guardlake(*args(lake, [account], "--max-attempts", "1")).returncode for _ in range(3)]
    control("DELETE", "/moto-api/ext/faults")
    assert set(codes) <= {0, 3}, codes
    assert guardlake(*args(lake, [account])).returncode == 0
    assert versions(lake) == (300, 300)


def test_a_run_whose_recovery_fails_releases_the_lock(tmp_path):
    [account] = create_org(["recovery"])
    seed_findings(account, REGION, findings_for(account, REGION, 3, datetime.now(timezone.utc) - timedelta(days=1)))
    lake = tmp_path / "lake"
    journal = lake / "_state" / "journals" / "0190aaaa-0000-7000-8000-000000000000.json"
    journal.parent.mkdir(parents=True)
    journal.write_text("{ not json")
    for _ in range(2):
        done = guardlake(*args(lake, [account]), check_codes=None)
        assert done.returncode == 4, (done.returncode, done.stderr[-2000:])
        assert "journal" in done.stderr
    assert not (lake / "_state" / "lock.json").exists()
    journal.unlink()
    assert guardlake(*args(lake, [account])).returncode == 0
    assert versions(lake) == (3, 3)


def test_an_output_that_is_not_a_lake_is_refused_and_left_alone(tmp_path):
    [account] = create_org(["foreign"])
    seed_findings(account, REGION, [])
    theirs = tmp_path / "theirs"
    (theirs / "_staging" / "upload").mkdir(parents=True)
    (theirs / "_staging" / "upload" / "part-1").write_text("someone else's")
    (theirs / "notes.txt").write_text("mine")
    done = guardlake(*args(theirs, [account]), check_codes=None)
    assert done.returncode == 2, done.stderr
    assert "not a guardlake lake" in done.stderr and "notes.txt" in done.stderr
    assert (theirs / "_staging" / "upload" / "part-1").read_text() == "someone else's"
    only_staging = tmp_path / "only-staging"
    (only_staging / "_staging" / "x").mkdir(parents=True)
    (only_staging / "_staging" / "x" / "f").write_text("x")
    assert guardlake(*args(only_staging, [account]), check_codes=None).returncode == 2
    assert (only_staging / "_staging" / "x" / "f").exists()
    # New and empty directories, and existing lakes, are fine.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert guardlake(*args(empty, [account])).returncode == 0
    assert guardlake(*args(empty, [account])).returncode == 0


def test_corrupt_and_tampered_checkpoints_fail_only_their_target(tmp_path):
    [broken, future, fine] = create_org(["broken", "future", "fine"])
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=1)
    for i, account in enumerate((broken, future, fine)):
        seed_findings(account, REGION, findings_for(account, REGION, 4, base, offset=10 * i))
    lake = tmp_path / "lake"
    everyone = [broken, future, fine]
    run = (*args(lake, everyone), "--cloudtrail", "lookup", "--watchlist", "StopLogging")
    assert guardlake(*run).returncode == 0
    (lake / "_state" / "guardduty" / broken / f"{REGION}.json").write_text("{ truncated")
    (lake / "_state" / "cloudtrail" / f"{fine}.json").write_text("[]")
    mark = lake / "_state" / "guardduty" / future / f"{REGION}.json"
    state = json.loads(mark.read_text())
    state["watermark_ms"] = 4102444800000  # 2100-01-01: would pull nothing, ever
    mark.write_text(json.dumps(state))
    late = findings_for(future, REGION, 2, base, offset=500)
    for finding in late:
        finding["updatedAt"] = (datetime.now(timezone.utc) - timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    seed_findings(future, REGION, late)

    done = guardlake(*run)
    assert done.returncode == 3, done.stdout
    rows = {(a, s): (status, cls) for a, s, status, cls in query(lake, "runs", "select account_id, source, status, error_class from runs where run_id = (select max(run_id) from runs)")}
    assert rows[(broken, "guardduty")] == ("error", "CorruptState")
    assert rows[(fine, "cloudtrail")] == ("error", "CorruptState")
    assert rows[(future, "guardduty")] == ("ok", None) and rows[(fine, "guardduty")] == ("ok", None)
    assert query(lake, "findings", f"select count(*) from findings where account_id = '{future}'") == [(6,)], "the future watermark was clamped"
    assert "future" in done.stderr
    # The corrupt files are left for the operator, not silently replaced.
    assert (lake / "_state" / "guardduty" / broken / f"{REGION}.json").read_text() == "{ truncated"
    assert (lake / "_state" / "cloudtrail" / f"{fine}.json").read_text() == "[]"
