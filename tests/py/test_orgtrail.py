"""Org-trail completeness: every log object read once and every relevant event in it kept,
whatever its eventTime (late delivery, events newer than the run), backfills that move no
checkpoint, every denial, Insights, a trail that is not where it should be, S3 errors."""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from conftest import client, cloudtrail_fixtures, control
from seed import create_org, seed_findings
from test_collect import guardlake, query

ORG = "o-latedelivery1"
REGION = "eu-west-1"


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def record(event_id: str, account: str, when: datetime, name: str = "DescribeInstances", region: str = REGION, **extra) -> dict:
    out = copy.deepcopy(cloudtrail_fixtures()["iam_user"])
    for member in ("errorCode", "errorMessage"):
        out.pop(member, None)
    out.update(eventID=event_id, recipientAccountId=account, awsRegion=region, eventName=name, eventTime=iso(when), **extra)
    return out


def object_key(account: str, delivered: datetime, salt: str, kind: str = "CloudTrail", region: str = REGION, org: str = ORG) -> str:
    """A key as CloudTrail names it: delivery day folder, delivery minute in the name."""
    return (f"AWSLogs/{org}/{account}/{kind}/{region}/{delivered:%Y/%m/%d}/"
            f"{account}_{kind}_{region}_{delivered:%Y%m%dT%H%MZ}_{salt}.json.gz")  # fmt: skip


def deliver(trail: Path, key: str, records: list[dict]) -> None:
    path = trail / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(json.dumps({"Records": records}).encode()))


def state_digest(lake: Path) -> dict[str, str]:
    return {str(p.relative_to(lake)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((lake / "_state").rglob("*")) if p.is_file()}


def events(lake: Path) -> dict[str, int]:
    if not (lake / "cloudtrail_events").exists():
        return {}
    return dict(query(lake, "cloudtrail_events", "select event_id, count(*) from cloudtrail_events group by 1"))


def org_with_detectors(names: list[str], regions: list[str]) -> list[str]:
    accounts = create_org(names)
    for account in accounts:
        for region in regions:
            seed_findings(account, region, [])
    return accounts


def run_args(lake: Path, accounts: list[str], trail: Path, *extra: str, org: str = ORG, regions: str = REGION) -> tuple[str, ...]:
    return ("run", "--output", str(lake), "--regions", regions, "--accounts", ",".join(accounts), "--lookback-days", "3",
            "--cloudtrail", "org-trail", "--trail-dir", str(trail), "--trail-org-id", org, "--watchlist", "StopLogging", *extra)  # fmt: skip


def test_late_objects_and_events_newer_than_the_run_land_exactly_once(tmp_path):
    [account] = org_with_detectors(["late"], [REGION])
    trail, lake = tmp_path / "trail", tmp_path / "lake"
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    deliver(trail, object_key(account, now - timedelta(hours=1), "a"), [
        record("on-time", account, now - timedelta(hours=1, minutes=5), "StopLogging"),
        record("noise-1", account, now - timedelta(hours=1, minutes=4)),
    ])  # fmt: skip
    assert guardlake(*run_args(lake, [account], trail)).returncode == 0
    assert events(lake) == {"on-time": 1}
    cursor = json.loads((lake / "_state" / "orgtrail" / f"{account}.json").read_text())["cursors"]
    assert list(cursor) == [f"CloudTrail/{REGION}"], cursor

    # Delivered after the run, holding events from 2 hours and 3 days before it, and one timed
    # after this moment (as an object listed during a run can hold); another object becomes
    # visible out of order, named a few minutes before the last key read.
    deliver(trail, object_key(account, now, "b"), [
        record("late-2h", account, now - timedelta(hours=2), "StopLogging"),
        record("late-3d", account, now - timedelta(days=3), "DeleteBucket", errorCode="AccessDenied"),
        record("after-run", account, now + timedelta(minutes=10), "StopLogging"),
        record("noise-2", account, now - timedelta(hours=2)),
    ])  # fmt: skip
    deliver(trail, object_key(account, now - timedelta(hours=1, minutes=3), "c"), [
        record("out-of-order", account, now - timedelta(hours=1, minutes=9), "StopLogging"),
    ])  # fmt: skip
    done = guardlake(*run_args(lake, [account], trail))
    assert done.returncode == 0, done.stdout
    expected = {"on-time": 1, "late-2h": 1, "late-3d": 1, "after-run": 1, "out-of-order": 1}
    assert events(lake) == expected
    counts = query(lake, "runs", "select findings_read, findings_written, findings_quarantined from runs where source = 'cloudtrail' order by run_id")
    assert counts == [(2, 1, 0), (5, 4, 0)], counts

    # Re-runs read nothing again and add nothing.
    guardlake(*run_args(lake, [account], trail))
    assert events(lake) == expected
    assert query(lake, "runs", "select findings_read from runs where source = 'cloudtrail' order by run_id")[-1] == (0,)


def test_an_event_in_two_accounts_trails_is_written_once_and_counted_once(tmp_path):
    """A record copied under a second account's prefix (a hostile or mis-copied trail) is a
    duplicate: the lake holds it once, and the runs rows count it written once, so the written
    counts add up to the lake's rows."""
    first, second = org_with_detectors(["twin-a", "twin-b"], [REGION])
    trail, lake = tmp_path / "trail", tmp_path / "lake"
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    shared = record("shared", first, now - timedelta(hours=1), "StopLogging")
    deliver(trail, object_key(first, now - timedelta(hours=1), "a"), [shared, record("own-a", first, now - timedelta(hours=1), "StopLogging")])
    deliver(trail, object_key(second, now - timedelta(hours=1), "b"), [shared, record("own-b", second, now - timedelta(hours=1), "StopLogging")])
    done = guardlake(*run_args(lake, [first, second], trail, "--threads", "2"))
    assert done.returncode == 0, done.stdout
    assert events(lake) == {"shared": 1, "own-a": 1, "own-b": 1}
    counts = query(lake, "runs", "select sum(findings_read), sum(findings_written) from runs where source = 'cloudtrail'")
    assert counts == [(4, 3)], counts


def test_backfill_reads_only_its_window_and_leaves_state_alone(tmp_path):
    [account] = org_with_detectors(["backfill"], [REGION])
    trail, lake = tmp_path / "trail", tmp_path / "lake"
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    deliver(trail, object_key(account, now - timedelta(hours=2), "a"), [record("recent", account, now - timedelta(hours=2), "StopLogging")])
    assert guardlake(*run_args(lake, [account], trail)).returncode == 0
    assert events(lake) == {"recent": 1}

    old = now - timedelta(days=10)
    deliver(trail, object_key(account, old, "old"), [
        record("inside-1", account, old - timedelta(hours=3), "StopLogging"),
        record("inside-2", account, old - timedelta(hours=1), "CreateUser", errorCode="AccessDeniedException"),
        record("before", account, old - timedelta(days=2), "StopLogging"),
        record("noise", account, old - timedelta(hours=1)),
    ])  # fmt: skip
    since, until = old - timedelta(days=1), old + timedelta(hours=12)
    before = state_digest(lake)
    backfill = run_args(lake, [account], trail, "--since", iso(since), "--until", iso(until))
    done = guardlake(*backfill)
    assert done.returncode == 0, done.stdout
    assert events(lake) == {"recent": 1, "inside-1": 1, "inside-2": 1}
    assert state_digest(lake) == before, "a backfill leaves _state/ byte-identical"
    guardlake(*backfill)
    assert events(lake) == {"recent": 1, "inside-1": 1, "inside-2": 1}, "a second backfill adds nothing"
    assert state_digest(lake) == before
    # The incremental run after it still reads only what was delivered since its cursor.
    guardlake(*run_args(lake, [account], trail))
    assert events(lake) == {"recent": 1, "inside-1": 1, "inside-2": 1}


def test_lookup_backfill_and_late_lookup_events_inside_the_overlap(tmp_path):
    [account] = org_with_detectors(["lookup"], [REGION])
    lake = tmp_path / "lake"
    now = datetime.now(timezone.utc).replace(microsecond=0)

    def seed(*records: dict) -> None:
        control("POST", "/moto-api/ext/cloudtrail/events", {"account_id": account, "region": REGION, "events": list(records)})

    args = ("run", "--output", str(lake), "--regions", REGION, "--accounts", account, "--lookback-days", "3",
            "--cloudtrail", "lookup", "--watchlist", "StopLogging")  # fmt: skip
    seed(record("first", account, now - timedelta(hours=1), "StopLogging"))
    assert guardlake(*args).returncode == 0
    assert events(lake) == {"first": 1}
    # Shows up in LookupEvents only now, timed a minute before the previous run: inside the
    # overlap, so the next run catches it.
    seed(record("shows-up-late", account, now - timedelta(minutes=1), "StopLogging"))
    assert guardlake(*args).returncode == 0
    assert events(lake) == {"first": 1, "shows-up-late": 1}

    old = now - timedelta(days=10)
    seed(record("old-inside", account, old, "StopLogging"), record("old-outside", account, old - timedelta(days=2), "StopLogging"))
    before = state_digest(lake)
    backfill = (*args, "--since", iso(old - timedelta(days=1)), "--until", iso(old + timedelta(days=1)))
    assert guardlake(*backfill).returncode == 0
    assert events(lake) == {"first": 1, "shows-up-late": 1, "old-inside": 1}
    guardlake(*backfill)
    assert events(lake) == {"first": 1, "shows-up-late": 1, "old-inside": 1}
    assert state_digest(lake) == before


def test_every_denial_failed_sign_ins_and_insights_are_kept(tmp_path):
    [account] = org_with_detectors(["denials"], [REGION])
    trail, lake = tmp_path / "trail", tmp_path / "lake"
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    codes = ["AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "Client.UnauthorizedOperation",
             "VpceAccessDenied", "UnauthorizedAccess", "KMS.AccessDeniedException"]  # fmt: skip
    denied = [record(f"denied-{i}", account, now - timedelta(minutes=30 + i), "GetObject", errorCode=code) for i, code in enumerate(codes)]
    denied[4]["eventType"] = "AwsVpceEvent"
    failed_login = record("login-failed", account, now - timedelta(minutes=20), "ConsoleLogin", responseElements={"ConsoleLogin": "Failure"})
    other = [
        record("login-ok", account, now - timedelta(minutes=19), "ConsoleLogin", responseElements={"ConsoleLogin": "Success"}),
        record("throttled", account, now - timedelta(minutes=18), "GetObject", errorCode="ThrottlingException"),
    ]
    deliver(trail, object_key(account, now - timedelta(minutes=10), "a"), denied + [failed_login] + other)
    insight = {"eventVersion": "1.07", "eventTime": iso(now - timedelta(minutes=40)), "awsRegion": REGION, "eventID": "insight-1",
               "eventType": "AwsCloudTrailInsight", "recipientAccountId": account, "sharedEventID": "s-1", "eventSource": "ec2.amazonaws.com",
               "eventName": "RunInstances", "eventCategory": "Insight",
               "insightDetails": {"state": "Start", "eventSource": "ec2.amazonaws.com", "eventName": "RunInstances", "insightType": "ApiCallRateInsight"}}  # fmt: skip
    deliver(trail, object_key(account, now - timedelta(minutes=5), "i", kind="CloudTrail-Insight"), [insight])
    done = guardlake(*run_args(lake, [account], trail))
    assert done.returncode == 0, done.stdout
    assert set(events(lake)) == {f"denied-{i}" for i in range(len(codes))} | {"login-failed", "insight-1"}
    assert query(lake, "cloudtrail_events", "select event_category from cloudtrail_events where event_id = 'insight-1'") == [("Insight",)]
    guardlake(*run_args(lake, [account], trail))
    assert set(events(lake).values()) == {1}


def test_a_trail_not_where_expected_is_reported_not_ok(tmp_path):
    accounts = org_with_detectors(["nowhere-a", "nowhere-b"], [REGION, "us-east-1"])
    trail, lake = tmp_path / "trail", tmp_path / "lake"
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    for account in accounts:
        deliver(trail, object_key(account, now - timedelta(hours=1), "a", org="o-theactualorg"), [record("e-" + account, account, now - timedelta(hours=1), "StopLogging")])
    done = guardlake(*run_args(lake, accounts, trail, regions=f"{REGION},us-east-1"))
    assert done.returncode == 3, done.stdout
    rows = query(lake, "runs", "select account_id, region, status, error_class, error_message from runs where source = 'cloudtrail'")
    assert len(rows) == 4 and {r[2] for r in rows} == {"trail_not_found"}, rows
    for account, region, _, error_class, message in rows:
        assert error_class == "TrailNotFound"
        assert f"AWSLogs/{ORG}/{account}/CloudTrail/{region}/" in message, message
        assert "o-theactualorg" in message, message
    assert "trail_not_found" in done.stdout

    # The right org id: the same layout reads fine.
    done = guardlake(*run_args(lake, accounts, trail, org="o-theactualorg", regions=REGION))
    assert done.returncode == 0, done.stdout


def test_trail_bucket_errors_are_classified_and_a_wrong_prefix_is_not_found(tmp_path):
    [account] = org_with_detectors(["s3trail"], [REGION])
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    s3 = client("s3")
    s3.create_bucket(Bucket="org-trail")
    body = gzip.compress(json.dumps({"Records": [record("s3-event", account, now - timedelta(hours=1), "StopLogging")]}).encode())
    s3.put_object(Bucket="org-trail", Key="trail/" + object_key(account, now - timedelta(hours=1), "a"), Body=body)
    lake = tmp_path / "lake"
    base = ("run", "--output", str(lake), "--regions", REGION, "--accounts", account, "--lookback-days", "3", "--cloudtrail", "org-trail",
            "--trail-bucket", "org-trail", "--trail-org-id", ORG, "--max-attempts", "2")  # fmt: skip

    def status() -> list[tuple]:
        return query(lake, "runs", "select status, error_class from runs where source = 'cloudtrail' order by run_id desc limit 1")

    done = guardlake(*base, "--trail-prefix", "wrong")
    assert done.returncode == 3
    assert status() == [("trail_not_found", "TrailNotFound")]
    message = query(lake, "runs", "select error_message from runs where source = 'cloudtrail' order by run_id desc limit 1")[0][0]
    assert f"s3://org-trail/wrong/AWSLogs/{ORG}/{account}/CloudTrail/{REGION}/" in message, message

    for error, expected in (("AccessDenied", ("access_denied", "AccessDenied")), ("SlowDown", ("throttled", "SlowDown"))):
        control("POST", "/moto-api/ext/faults", {"operation": "ListObjectsV2", "error": error})
        done = guardlake(*base, "--trail-prefix", "trail")
        control("DELETE", "/moto-api/ext/faults")
        assert done.returncode == 3, done.stdout
        assert status() == [expected]
    control("POST", "/moto-api/ext/faults", {"operation": "GetObject", "error": "AccessDenied"})
    done = guardlake(*base, "--trail-prefix", "trail")
    control("DELETE", "/moto-api/ext/faults")
    assert status() == [("access_denied", "AccessDenied")]
    assert events(lake) == {}

    # The fault removed, the object is read: nothing was marked read while it failed.
    assert guardlake(*base, "--trail-prefix", "trail").returncode == 0
    assert events(lake) == {"s3-event": 1}


def test_no_organization_id_fails_the_trail_targets_and_publishes_the_findings(tmp_path):
    [account] = create_org(["orgless"])
    from seed import findings_for

    seed_findings(account, REGION, findings_for(account, REGION, 3, datetime.now(timezone.utc) - timedelta(days=1)))
    trail, lake = tmp_path / "trail", tmp_path / "lake"
    trail.mkdir()
    args = ("run", "--output", str(lake), "--regions", REGION, "--accounts", account, "--lookback-days", "3",
            "--cloudtrail", "org-trail", "--trail-dir", str(trail))  # fmt: skip
    control("POST", "/moto-api/ext/faults", {"operation": "DescribeOrganization", "error": "AccessDeniedException"})
    done = guardlake(*args)
    control("DELETE", "/moto-api/ext/faults")
    assert done.returncode == 3, done.stderr[-2000:]
    rows = query(lake, "runs", "select source, status, error_class, error_message from runs order by source")
    assert rows[0][:3] == ("cloudtrail", "access_denied", "AccessDeniedException") and "DescribeOrganization" in rows[0][3], rows
    assert rows[1][:2] == ("guardduty", "ok")
    assert query(lake, "findings", "select count(*) from findings") == [(3,)]
