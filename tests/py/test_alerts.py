"""Alerts: a seeded history (a new Critical, a Medium raised to High, a count spike inside
GuardDuty's 6-hour window, a reopened finding, a sample, an archived one) sent to a custom
EventBridge bus whose rule delivers to an SQS queue. Each expected alert arrives once; a
second run sends none; a kill between publish and delivery loses none; a throttled bus is
retried and a refusing one is reported without changing the run's exit code."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from conftest import control
from seed import client, create_org, seed_findings
from seed import shapes
from test_collect import guardlake, query

REGION = "us-east-1"
OTHER = "eu-west-1"
BUS = "security-alerts"
RULES = """
[[alerts]]
name = "page"
on = ["new", "severity_raised", "count_spike"]
min_severity = "HIGH"
spike_per_hour = 50

[[alerts]]
name = "ticket"
on = ["new", "reopened"]
min_severity = "MEDIUM"
types = ["*"]

[[alerts]]
name = "resolve"
on = ["archived"]
min_severity = 7
"""


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def finding(account: str, name: str, *, created: datetime, updated: datetime, **kw) -> dict:
    kinds = {"crit": "Backdoor:EC2/C&CActivity.B", "big": "CryptoCurrency:EC2/BitcoinTool.B"}
    f = shapes.build_finding(kinds.get(name, "Recon:EC2/PortProbeUnprotectedPort"), account, REGION, "0" * 32,
                      created_at=created, updated_at=updated, fid=f"{name}{'0' * (32 - len(name))}", **kw)  # fmt: skip
    f["title"] = f"{name} finding"
    return f


def bus_to_queue() -> str:
    """A custom bus whose rule sends every guardlake event, whole, to a queue; its URL."""
    events, sqs = client("events", REGION), client("sqs", REGION)
    events.create_event_bus(Name=BUS)
    queue = sqs.create_queue(QueueName="alerts")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="all", EventBusName=BUS, EventPattern=json.dumps({"source": ["guardlake"]}))
    events.put_targets(Rule="all", EventBusName=BUS, Targets=[{"Id": "q", "Arn": arn}])
    return queue


def drain(queue: str) -> list[dict]:
    sqs, out = client("sqs", REGION), []
    while True:
        got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
        if not got:
            return out
        for m in got:
            out.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])


def alerts_of(events: list[dict]) -> list[tuple[str, str, str, str]]:
    return sorted(
        (e["detail"]["finding_id"][:6].rstrip("0"), e["detail"]["rule"], e["detail"]["alert"], e["detail"]["dedup_key"])
        for e in events
        if e["detail-type"] == "guardlake Finding Alert"
    )


@pytest.fixture()
def history(tmp_path):
    """An account with a first run behind it (it builds the history and alerts nothing as new),
    then the changes: what the next run should alert."""
    [account] = create_org(["prod"])
    now = datetime.now(timezone.utc).replace(microsecond=0)
    before = now - timedelta(minutes=40)
    old = now - timedelta(days=2)
    seed_findings(account, REGION, [
        finding(account, "med", created=old, updated=before, severity=5.0),
        finding(account, "spike", created=old, updated=before, severity=8.0, count=2),
        finding(account, "reopen", created=old, updated=before, severity=6.0, archived=True),
        finding(account, "close", created=old, updated=before, severity=8.0),
    ])  # fmt: skip
    config = tmp_path / "guardlake.toml"
    config.write_text(RULES)
    lake = tmp_path / "lake"
    queue = bus_to_queue()
    options = ("--config", str(config), "--output", str(lake), "--regions", f"{REGION},{OTHER}",
               "--exclude-accounts", "123456789012", "--alerts-bus", BUS, "--lock-lease-secs", "1")  # fmt: skip
    first = guardlake("run", *options, check_codes=(3,))  # 3: no detector in eu-west-1
    seen = drain(queue)
    assert alerts_of(seen) == [], "a first run builds the history; nothing is new to it"
    gaps = [e["detail"] for e in seen if e["detail-type"] == "guardlake Coverage Gap"]
    assert [(g["account_id"], g["region"], g["new_gaps"]) for g in gaps] == [(account, OTHER, ["no_detector"])], first.stdout
    digest = [e["detail"] for e in seen if e["detail-type"] == "guardlake Run Digest"]
    assert len(digest) == 1 and digest[0]["published"] == 4

    recent, now = now - timedelta(minutes=2), datetime.now(timezone.utc)
    updated = now - timedelta(seconds=30)
    big = finding(account, "big", created=recent, updated=updated, severity=7.0)
    big["description"] = "x" * (300 * 1024)
    seed_findings(account, REGION, [
        finding(account, "crit", created=recent, updated=updated, severity=9.5),
        finding(account, "med", created=old, updated=updated, severity=7.5),
        finding(account, "spike", created=old, updated=updated, severity=8.0, count=200),
        finding(account, "reopen", created=old, updated=updated, severity=6.0, archived=False),
        finding(account, "close", created=old, updated=updated, severity=8.0, archived=True),
        finding(account, "sample", created=recent, updated=updated, severity=8.0, sample=True),
        finding(account, "arch", created=recent, updated=updated, severity=8.0, archived=True),
        big,
    ])  # fmt: skip
    ms = int(updated.timestamp() * 1000)
    expected = [
        ("big", "page", "new", "big" + "0" * 29),
        ("close", "resolve", "archived", f"close{'0' * 27}:{ms}"),
        ("crit", "page", "new", "crit" + "0" * 28),
        ("med", "page", "severity_raised", f"med{'0' * 29}:{ms}"),
        ("reopen", "ticket", "reopened", f"reopen{'0' * 26}:{ms}"),
        ("spike", "page", "count_spike", f"spike{'0' * 27}:{ms}"),
    ]
    return account, lake, queue, options, expected


def test_each_expected_alert_once_and_a_rerun_sends_none(history):
    account, lake, queue, options, expected = history
    done = guardlake("run", *options, check_codes=(3,))
    events = drain(queue)
    assert alerts_of(events) == expected, done.stdout
    assert "alerts:   7 sent, 0 pending, 0 failed" in done.stdout, done.stdout
    by_id = {e["detail"]["finding_id"][:6].rstrip("0"): e["detail"] for e in events if e["detail-type"] == "guardlake Finding Alert"}
    spike = by_id["spike"]
    assert spike["count"] == 200 and spike["count_growth"] == 198 and spike["count_per_hour"] > 50
    assert by_id["med"]["severity_label"] == "HIGH" and by_id["med"]["previous_severity"] == 5.0
    crit = by_id["crit"]
    assert (crit["account_id"], crit["account_name"], crit["region"], crit["severity_label"]) == (account, "prod", REGION, "CRITICAL")
    assert crit["type"] == "Backdoor:EC2/C&CActivity.B" and crit["title"] == "crit finding"
    assert crit["console_url"].startswith(f"https://console.aws.amazon.com/guardduty/home?region={REGION}#/findings")
    assert crit["ou_path"].startswith("r-") and crit["resource"]["resource_type"]
    # The 300 KB finding: cut under the limit, with the pointer to its lake partition.
    assert by_id["big"]["truncated"] is True and "description" not in by_id["big"]
    assert by_id["big"]["lake"]["location"].endswith("/findings/dt=" + by_id["big"]["updated_at"][:10] + "/")
    sizes = control("GET", "/moto-api/ext/stats")["put_events_sizes"]
    assert sizes and max(sizes) < 256 * 1024
    # The pointer leads to the version.
    [(title,)] = query(lake, "findings", f"select title from findings where id = '{by_id['big']['finding_id']}' and length(description) > 300000")
    assert title == "big finding"
    digest = [e["detail"] for e in events if e["detail-type"] == "guardlake Run Digest"]
    assert len(digest) == 1 and digest[0]["new_high_critical"] == 2, digest
    assert [e for e in events if e["detail-type"] == "guardlake Coverage Gap"] == [], "the gap was reported already"
    # Nothing new: no alert, no digest.
    guardlake("run", *options, check_codes=(3,))
    assert drain(queue) == []
    # The dry run shows the last alerting run's alerts under other rules, sending nothing.
    dry = guardlake("alerts", *options[2:], "--dry-run", "--alerts", '[{"name":"all","on":["new"],"include_samples":true}]', check_codes=(0,))
    shown = [json.loads(line) for line in dry.stdout.splitlines()]
    assert sorted(e["detail"]["finding_id"][:6].rstrip("0") for e in shown if e["detail-type"] == "guardlake Finding Alert") == ["big", "crit", "sample"]
    assert drain(queue) == []


@pytest.mark.parametrize("point", ["before_alerts", "mid_alerts"])
def test_a_kill_between_publish_and_delivery_loses_no_alert(history, point):
    account, lake, queue, options, expected = history
    killed = guardlake("run", *options, "--crash-at", point, check_codes=None)
    assert killed.returncode == -9, killed.stderr[-2000:]
    time.sleep(1.1)  # the dead run's 1-second lease expires
    sent = drain(queue)
    assert query(lake, "findings", "select count(*) from findings")[0][0] == 4 + 8, "published before the kill"
    guardlake("run", *options, check_codes=(3,))
    sent += drain(queue)
    keys = alerts_of(sent)
    assert sorted(set(keys)) == expected, "every alert, same dedup keys"
    if point == "before_alerts":
        assert keys == expected, "nothing was sent twice"
    assert len(keys) <= len(expected) + 10, "at most one call repeated"


def test_throttling_is_retried_and_a_refusing_bus_is_reported(history):
    account, lake, queue, options, expected = history
    control("POST", "/moto-api/ext/faults", {"operation": "PutEvents", "entry_error": "ThrottlingException", "count": 2})
    guardlake("run", *options, check_codes=(3,))
    assert alerts_of(drain(queue)) == expected
    calls = [r for r in control("GET", "/moto-api/ext/stats")["requests"] if r["operation"] == "PutEvents"]
    assert sum(r["count"] for r in calls) >= 3

    # A bus that refuses: reported in the summary and in runs; the exit code is the run's.
    now = datetime.now(timezone.utc)
    seed_findings(account, REGION, [finding(account, "late", created=now - timedelta(minutes=1), updated=now - timedelta(seconds=20), severity=9.0)])
    control("DELETE", "/moto-api/ext/faults")
    control("POST", "/moto-api/ext/faults", {"operation": "PutEvents", "error": "AccessDeniedException"})
    refused = guardlake("run", *options, check_codes=(3,))
    assert "alerts:   0 sent, 2 pending, 0 failed (AccessDenied" in refused.stdout, refused.stdout
    rows = query(lake, "runs", "select status, error_class, findings_read, findings_written from runs where source = 'alerts' order by started_at")
    assert rows[-1] == ("error", "AlertsUndelivered", 2, 0), rows
    assert drain(queue) == []
    control("DELETE", "/moto-api/ext/faults")
    guardlake("alerts", *options, check_codes=(0,))
    late = [e["detail"] for e in drain(queue)]
    assert sorted(d["finding_id"][:4] for d in late if "finding_id" in d) == ["late"], late


def test_bad_rules_are_refused_with_the_key():
    bad = guardlake("run", "--alerts", '[{"name":"x","on":["new"],"min_severity":"SEVERE"}]', check_codes=(2,))
    assert "alerts" in bad.stderr and "SEVERE" in bad.stderr
    bad = guardlake("run", "--alerts-bus", "arn:aws:sqs:us-east-1:123456789012:q", check_codes=(2,))
    assert "alerts_bus" in bad.stderr


def test_a_distributed_run_sends_what_a_single_run_sends(history):
    """plan → shards → commit: the candidates travel in the shards' done markers; the commit
    stages the outbox and sends it."""
    account, lake, queue, options, expected = history
    planned = json.loads(guardlake("plan", *options, check_codes=(0,)).stdout)
    for n in range(planned["shards"]):
        guardlake("shard", "--run-id", planned["run_id"], "--shard", str(n), *options, check_codes=(0, 3))
    assert drain(queue) == [], "a shard publishes nothing and alerts nothing"
    committed = guardlake("commit", "--run-id", planned["run_id"], *options, check_codes=(3,))
    events = drain(queue)
    assert alerts_of(events) == expected, committed.stdout
    assert [e["detail"]["account_name"] for e in events if e["detail-type"] == "guardlake Finding Alert"] == ["prod"] * len(expected)


def test_an_alert_carries_the_cloudtrail_events_behind_its_finding(tmp_path):
    from conftest import cloudtrail_fixtures
    from test_cloudtrail import KEY, event, seed_events
    from test_cloudtrail import iso as ct_iso

    [victim] = create_org(["victim"])
    for region in (REGION, OTHER):
        seed_findings(victim, region, [])
    queue = bus_to_queue()
    options = ("--output", str(tmp_path / "lake"), "--regions", f"{REGION},{OTHER}", "--accounts", victim, "--cloudtrail", "lookup",
               "--watchlist", "StopLogging", "--alerts-bus", BUS, "--alerts", '[{"name":"all","on":["new"]}]')  # fmt: skip
    guardlake("run", *options, check_codes=(0,))
    now = datetime.now(timezone.utc).replace(microsecond=0)
    first, last = now - timedelta(hours=3), now - timedelta(hours=1)
    f = finding(victim, "key", created=now, updated=now, severity=8.0)
    f["region"] = OTHER
    f["resource"] = {"resourceType": "AccessKey", "accessKeyDetails": {"accessKeyId": KEY, "principalId": "AIDACOMPROMISED", "userName": "deploy", "userType": "IAMUser"}}
    f["service"]["action"] = {"actionType": "AWS_API_CALL", "awsApiCallAction": {"api": "ListUsers", "serviceName": "iam.amazonaws.com", "callerType": "Remote IP"}}
    f["service"]["eventFirstSeen"], f["service"]["eventLastSeen"] = ct_iso(first, True), ct_iso(last, True)
    seed_findings(victim, OTHER, [f])
    template = cloudtrail_fixtures()["iam_user"]
    t = lambda minutes: first + timedelta(minutes=minutes)  # noqa: E731
    seed_events(victim, OTHER, [event(template, "e-eu-1", victim, OTHER, "DescribeInstances", "ec2.amazonaws.com", t(5), KEY),
                                event(template, "e-eu-2", victim, OTHER, "ListBuckets", "s3.amazonaws.com", t(30), KEY)])  # fmt: skip
    seed_events(victim, REGION, [event(template, "e-us-api", victim, REGION, "ListUsers", "iam.amazonaws.com", t(40), KEY),
                                 event(template, "e-us-key", victim, REGION, "CreateAccessKey", "iam.amazonaws.com", t(50), KEY)])  # fmt: skip
    guardlake("run", *options, check_codes=(0,))
    [alert] = [e["detail"] for e in drain(queue) if e["detail-type"] == "guardlake Finding Alert"]
    linked = [(e["event_id"], e["event_name"], e["reason"]) for e in alert["linked_events"]]
    assert linked == [("e-us-api", "ListUsers", "api"), ("e-us-key", "CreateAccessKey", "access_key"),
                      ("e-eu-2", "ListBuckets", "access_key"), ("e-eu-1", "DescribeInstances", "access_key")], linked  # fmt: skip
    assert alert["resource"]["access_key_id"] == KEY and alert["linked_events"][0]["event_time"] == ct_iso(t(40))


def test_rules_without_a_bus_stage_alerts_for_the_dry_run_and_send_nothing(tmp_path):
    [account] = create_org(["quiet"])
    now = datetime.now(timezone.utc).replace(microsecond=0)
    seed_findings(account, REGION, [finding(account, "old", created=now - timedelta(days=1), updated=now - timedelta(hours=1), severity=5.0)])
    lake = tmp_path / "lake"
    options = ("--output", str(lake), "--regions", REGION, "--accounts", account, "--alerts", '[{"name":"any","on":["new"]}]')
    guardlake("run", *options, check_codes=(0,))
    seed_findings(account, REGION, [finding(account, "fresh", created=now, updated=now, severity=5.0)])
    guardlake("run", *options, check_codes=(0,))
    calls = [r for r in control("GET", "/moto-api/ext/stats")["requests"] if r["operation"] == "PutEvents"]
    assert calls == [], "no bus, no PutEvents"
    [outbox] = [json.loads(p.read_text()) for p in sorted((lake / "_state" / "alerts" / "outbox").glob("*.json"))[-1:]]
    assert {e["status"]["state"] for e in outbox["entries"]} == {"not_sent"}
    dry = guardlake("alerts", *options, "--dry-run", check_codes=(0,))
    shown = [json.loads(line)["detail"] for line in dry.stdout.splitlines()]
    assert [d["finding_id"][:5] for d in shown if "finding_id" in d] == ["fresh"], shown
