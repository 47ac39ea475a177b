"""CloudTrail lookup mode: the events behind a compromised access key, the watch-list, the
2 requests/s limit per account and region, exactly once."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone

from conftest import cloudtrail_fixtures, control
from seed import create_org, findings_for, seed_findings
from test_collect import guardlake, query

KEY = "AKIACOMPROMISED00001"


def iso(moment: datetime, ms: bool = False) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{moment.microsecond // 1000:03d}Z" if ms else "Z")


def event(template: dict, event_id: str, account: str, region: str, name: str, source: str, when: datetime, key: str | None) -> dict:
    record = copy.deepcopy(template)
    record.update(eventID=event_id, recipientAccountId=account, awsRegion=region, eventName=name, eventSource=source, eventTime=iso(when))
    record["userIdentity"] = {"type": "IAMUser", "principalId": "AIDACOMPROMISED", "arn": f"arn:aws:iam::{account}:user/deploy",
                              "accountId": account, "userName": "deploy", **({"accessKeyId": key} if key else {})}  # fmt: skip
    return record


def seed_events(account: str, region: str, events: list[dict]) -> None:
    control("POST", "/moto-api/ext/cloudtrail/events", {"account_id": account, "region": region, "events": events})


def test_events_behind_a_compromised_key_and_the_watchlist_land_once(tmp_path):
    [victim, other] = create_org(["victim", "other"])
    now = datetime.now(timezone.utc).replace(microsecond=0)
    first, last = now - timedelta(hours=3), now - timedelta(hours=1)
    finding = findings_for(victim, "eu-west-1", 1, first)[0]
    finding["type"] = "UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration.OutsideAWS"
    finding["resource"] = {"resourceType": "AccessKey", "accessKeyDetails": {"accessKeyId": KEY, "principalId": "AIDACOMPROMISED", "userName": "deploy", "userType": "IAMUser"}}
    finding["service"]["action"] = {"actionType": "AWS_API_CALL", "awsApiCallAction": {"api": "ListUsers", "serviceName": "iam.amazonaws.com", "callerType": "Remote IP"}}
    finding["service"]["eventFirstSeen"], finding["service"]["eventLastSeen"] = iso(first, True), iso(last, True)
    finding["updatedAt"] = iso(last, True)
    seed_findings(victim, "eu-west-1", [finding])
    for account, region in ((victim, "us-east-1"), (other, "eu-west-1"), (other, "us-east-1")):
        seed_findings(account, region, [])  # a detector without findings

    template = cloudtrail_fixtures()["iam_user"]
    t = lambda minutes: first + timedelta(minutes=minutes)  # noqa: E731
    relevant = {
        "e-eu-1": event(template, "e-eu-1", victim, "eu-west-1", "DescribeInstances", "ec2.amazonaws.com", t(5), KEY),
        "e-eu-2": event(template, "e-eu-2", victim, "eu-west-1", "ListBuckets", "s3.amazonaws.com", t(30), KEY),
        "e-us-api": event(template, "e-us-api", victim, "us-east-1", "ListUsers", "iam.amazonaws.com", t(40), KEY),
        "e-us-key": event(template, "e-us-key", victim, "us-east-1", "CreateAccessKey", "iam.amazonaws.com", t(50), KEY),
        "e-watch": event(template, "e-watch", other, "eu-west-1", "StopLogging", "cloudtrail.amazonaws.com", t(20), None),
    }
    irrelevant = {
        "x-old": event(template, "x-old", victim, "eu-west-1", "DescribeInstances", "ec2.amazonaws.com", now - timedelta(days=2), KEY),
        "x-other-key": event(template, "x-other-key", victim, "eu-west-1", "DescribeInstances", "ec2.amazonaws.com", t(10), "AKIAOTHER00000000001"),
        "x-us-regional": event(template, "x-us-regional", victim, "us-east-1", "RunInstances", "ec2.amazonaws.com", t(15), KEY),
    }
    everything = {**relevant, **irrelevant}
    for (account, region) in {(e["recipientAccountId"], e["awsRegion"]) for e in everything.values()}:
        seed_events(account, region, [e for e in everything.values() if (e["recipientAccountId"], e["awsRegion"]) == (account, region)])

    lake = tmp_path / "lake"
    args = ("run", "--output", str(lake), "--regions", "eu-west-1,us-east-1", "--accounts", f"{victim},{other}",
            "--cloudtrail", "lookup", "--watchlist", "StopLogging,ConsoleLogin")  # fmt: skip
    done = guardlake(*args)
    assert done.returncode == 0, done.stdout

    rows = query(lake, "cloudtrail_events", "select event_id, count(*) from cloudtrail_events group by 1")
    assert dict(rows) == {event_id: 1 for event_id in relevant}
    links = set(query(lake, "finding_events", "select finding_id, event_id, event_region, reason from finding_events"))
    assert links == {
        (finding["id"], "e-eu-1", "eu-west-1", "access_key"),
        (finding["id"], "e-eu-2", "eu-west-1", "access_key"),
        (finding["id"], "e-us-api", "us-east-1", "api"),
        (finding["id"], "e-us-key", "us-east-1", "access_key"),
    }
    typed = query(lake, "cloudtrail_events", "select account_id, region, access_key_id, user_name, identity_type, event_source from cloudtrail_events where event_id = 'e-us-api'")
    assert typed == [(victim, "us-east-1", KEY, "deploy", "IAMUser", "iam.amazonaws.com")]
    statuses = query(lake, "runs", "select source, count(*), count(*) filter (where status = 'ok') from runs group by 1 order by 1")
    assert statuses == [("cloudtrail", 4, 4), ("guardduty", 4, 4)]

    stats = [r for r in control("GET", "/moto-api/ext/stats")["requests"] if r["operation"] == "LookupEvents"]
    assert stats and all(r["max_per_second"] <= 2 and r["throttled"] == 0 for r in stats), stats
    busiest = sorted(stats, key=lambda r: r["count"], reverse=True)[:2]
    overlap = min(r["last_at"] for r in busiest) - max(r["first_at"] for r in busiest)
    assert overlap > 0, f"two account-regions were served at the same time: {busiest}"

    # Nothing new: nothing more lands, even though lookups see the same events again.
    guardlake(*args)
    assert query(lake, "cloudtrail_events", "select count(*) from cloudtrail_events") == [(len(relevant),)]


def test_org_trail_objects_relevant_events_once_and_bad_objects_quarantined(tmp_path):
    import gzip
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from corpus.orgtrail import ORG_ID, records, write_objects

    from conftest import client

    [victim, bystander] = create_org(["victim", "bystander"])
    regions = ["eu-west-1", "us-east-1"]
    now = datetime.now(timezone.utc).replace(microsecond=0)
    first, last = now - timedelta(hours=30), now - timedelta(hours=26)
    for account in (victim, bystander):
        for region in regions:
            seed_findings(account, region, [])
    finding = findings_for(victim, "eu-west-1", 1, first)[0]
    finding["resource"] = {"resourceType": "AccessKey", "accessKeyDetails": {"accessKeyId": KEY, "principalId": "AIDA1", "userName": "user-1", "userType": "IAMUser"}}
    finding["service"]["eventFirstSeen"], finding["service"]["eventLastSeen"] = iso(first, True), iso(last, True)
    finding["updatedAt"] = iso(last, True)
    seed_findings(victim, "eu-west-1", [finding])

    corpus = list(records(1500, 11, [victim, bystander], regions, now - timedelta(days=2), now - timedelta(minutes=5),
                          compromised=(victim, "eu-west-1", KEY, first, last, 25)))  # fmt: skip
    s3 = client("s3")
    s3.create_bucket(Bucket="org-trail")
    objects = []
    write_objects(iter(corpus), lambda key, body: objects.append((key, body)), seed=11, per_object=100)
    for key, body in objects:
        s3.put_object(Bucket="org-trail", Key=f"trail/{key}", Body=body)
    day = now.strftime("%Y/%m/%d")
    corrupt_key = f"trail/AWSLogs/{ORG_ID}/{victim}/CloudTrail/eu-west-1/{day}/corrupt.json.gz"
    s3.put_object(Bucket="org-trail", Key=corrupt_key, Body=b"\x1f\x8b\x08\x00 this is not deflate data")
    late = [dict(corpus[0], eventID="late-1", eventName="StopLogging", recipientAccountId=victim, awsRegion="eu-west-1", eventTime=iso(now - timedelta(minutes=3)))]
    truncated = gzip.compress(json.dumps({"Records": late + [{"eventID": "cut"}]}).encode())
    whole = gzip.decompress(truncated)
    truncated = gzip.compress(whole[: whole.index(b'{"eventID": "cut"') + 5])
    truncated_key = f"trail/AWSLogs/{ORG_ID}/{victim}/CloudTrail/eu-west-1/{day}/truncated.json.gz"
    s3.put_object(Bucket="org-trail", Key=truncated_key, Body=truncated)
    no_time = gzip.compress(json.dumps({"Records": [{"eventID": "no-time", "eventName": "StopLogging"}, "not an object"]}).encode())
    s3.put_object(Bucket="org-trail", Key=f"trail/AWSLogs/{ORG_ID}/{bystander}/CloudTrail/us-east-1/{day}/odd.json.gz", Body=no_time)

    watch = ["StopLogging", "CreateAccessKey", "ConsoleLogin"]
    pad = timedelta(seconds=900)

    def relevant(r: dict) -> bool:
        when = datetime.strptime(r["eventTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        key = r.get("userIdentity", {}).get("accessKeyId")
        global_source = r["eventSource"] in ("iam.amazonaws.com", "sts.amazonaws.com", "signin.amazonaws.com")
        correlated = (key == KEY and r["recipientAccountId"] == victim and first - pad <= when <= last + pad
                      and (r["awsRegion"] == "eu-west-1" or (global_source and r["awsRegion"] == "us-east-1")))  # fmt: skip
        return r["eventName"] in watch or r.get("errorCode") in ("AccessDenied", "Client.UnauthorizedOperation") or correlated

    expected = {r["eventID"] for r in corpus if relevant(r)} | {"late-1"}
    lake = tmp_path / "lake"
    args = ("run", "--output", str(lake), "--regions", ",".join(regions), "--accounts", f"{victim},{bystander}", "--lookback-days", "3",
            "--cloudtrail", "org-trail", "--trail-bucket", "org-trail", "--trail-prefix", "trail", "--trail-org-id", ORG_ID,
            "--watchlist", ",".join(watch))  # fmt: skip
    guardlake(*args)
    rows = dict(query(lake, "cloudtrail_events", "select event_id, count(*) from cloudtrail_events group by 1"))
    assert set(rows) == expected, (len(set(rows) - expected), len(expected - set(rows)))
    assert set(rows.values()) == {1}, "duplicate deliveries land once"
    linked = {e for (e,) in query(lake, "finding_events", f"select event_id from finding_events where finding_id = '{finding['id']}'")}
    assert linked and linked == {r["eventID"] for r in corpus if r.get("userIdentity", {}).get("accessKeyId") == KEY}
    quarantined = dict(query(lake, "runs", "select account_id || ' ' || region, findings_quarantined from runs where source = 'cloudtrail'"))
    assert quarantined == {f"{victim} eu-west-1": 2, f"{victim} us-east-1": 0, f"{bystander} eu-west-1": 0, f"{bystander} us-east-1": 2}
    reasons = [json.loads(line)["reason"] for path in (lake / "_quarantine" / "cloudtrail").rglob("*.jsonl") for line in path.read_text().splitlines()]
    assert any("corrupt.json.gz" in r and "corrupt gzip" in r for r in reasons), reasons
    assert any("truncated.json.gz" in r and "truncated" in r for r in reasons), reasons
    assert any("eventTime" in r for r in reasons) and any("not a JSON object" in r for r in reasons), reasons

    # Objects already read are not read again; nothing new lands.
    guardlake(*args)
    assert query(lake, "cloudtrail_events", "select count(*) from cloudtrail_events") == [(len(expected),)]
