"""CloudTrail lookup mode: the events behind a compromised access key, the watch-list, the
2 requests/s limit per account and region, exactly once."""

from __future__ import annotations

import copy
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
