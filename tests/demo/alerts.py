"""`make demo`, alerts: `setup` creates the demo's EventBridge bus with a rule that delivers every
guardlake event to an SQS queue (where a PagerDuty, Jira or Slack rule would be); `change`
makes a new Critical finding in the first workload account;
`show` prints what reached the queue."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from seed import client, seed_findings, shapes  # noqa: E402

BUS, QUEUE, REGION = "guardlake-demo", "guardlake-demo-alerts", "us-east-1"


def setup() -> None:
    events, sqs = client("events", REGION), client("sqs", REGION)
    events.create_event_bus(Name=BUS)
    url = sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="everything", EventBusName=BUS, EventPattern=json.dumps({"source": ["guardlake"]}))
    events.put_targets(Rule="everything", EventBusName=BUS, Targets=[{"Id": "queue", "Arn": arn}])


def change() -> None:
    accounts = [a["Id"] for a in client("organizations").list_accounts()["Accounts"] if a["Name"] == "workload-0"]
    account = accounts[0]
    now = datetime.now(timezone.utc).replace(microsecond=0)
    new = shapes.build_finding("Backdoor:EC2/C&CActivity.B", account, REGION, "0" * 32, created_at=now - timedelta(minutes=2),
                               updated_at=now - timedelta(minutes=1), severity=9.2, fid="demo" + "0" * 28)  # fmt: skip
    seed_findings(account, REGION, [new])
    print(f"New Critical finding {new['id']} ({new['type']}) in {account} {REGION}")


def show() -> None:
    sqs = client("sqs", REGION)
    url = sqs.get_queue_url(QueueName=QUEUE)["QueueUrl"]
    seen = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not got:
            break
        seen += [json.loads(m["Body"]) for m in got]
        for m in got:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    for event in seen:
        d = event["detail"]
        if event["detail-type"] == "guardlake Finding Alert":
            print(f"  {event['detail-type']}: {d['severity_label']} {d['type']} in {d['account_id']} ({d['account_name']}) {d['region']}, "
                  f"rule {d['rule']}, {d['alert']}, dedup_key {d['dedup_key']}")  # fmt: skip
        elif event["detail-type"] == "guardlake Coverage Gap":
            print(f"  {event['detail-type']}: {d['account_id']} {d['region']}: {d['new_gaps_text']}")
        else:
            print(f"  {event['detail-type']}: {d['summary'].replace(chr(10), '; ')}")
    print(f"{len(seen)} event(s) on bus {BUS}")


if __name__ == "__main__":
    {"setup": setup, "change": change, "show": show}[sys.argv[1]]()
