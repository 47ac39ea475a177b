"""The deployed alert routing, rendered: every rule of infra/hub.yaml's alert routing is created
on the backend's EventBridge with its own event pattern and input transformer, its target
swapped for an SQS queue; guardlake's real events of a seeded history go through them, and each
captured body must be valid against the destination's documented request schema (PagerDuty
Events v2 enqueue with the connection's routing key, Jira create issue, Jira add comment, Slack
incoming webhook with Block Kit), and reach exactly the destinations the routing promises."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from conftest import control
from seed import client
from test_alerts import BUS, REGION, drain, history  # noqa: F401  (the fixture)
from test_collect import guardlake
from test_infra import template

SCHEMAS = Path(__file__).resolve().parents[1] / "fixtures" / "destinations"
ROUTING_KEY = "R" * 32
# Which documented request each destination's rules must render.
DESTINATION_SCHEMA = {
    "PagerDutyDestination": "pagerduty_enqueue_v2.json",
    "JiraCreateDestination": "jira_create_issue.json",
    "JiraEscalationDestination": "jira_add_comment.json",
    "SlackDestination": "slack_incoming_webhook.json",
}
PARAMETERS = {"JiraProjectKey": "SEC", "JiraIssueType": "Task"}


def sub(value) -> str:
    if isinstance(value, dict) and "Sub" in value:
        text = value["Sub"]
        for name, replacement in PARAMETERS.items():
            text = text.replace("${" + name + "}", replacement)
        assert "${" not in text, text
        return text
    return value


def routing_rules() -> dict[str, dict]:
    """Alert rules of the hub template: name → (pattern, transformer, destination)."""
    resources = template("hub.yaml")["Resources"]
    rules = {}
    for resource in resources.values():
        if resource["Type"] != "AWS::Events::Rule" or resource["Properties"].get("EventBusName") != {"Ref": "AlertsBus"}:
            continue
        props = resource["Properties"]
        [target] = props["Targets"]
        assert target["RetryPolicy"]["MaximumRetryAttempts"] > 0 and target["DeadLetterConfig"]["Arn"] == {"GetAtt": "AlertsDeadLetterQueue.Arn"}
        destination = target["Arn"]["GetAtt"].split(".")[0]
        rules[props["Name"]] = {"pattern": props["EventPattern"], "transformer": target["InputTransformer"], "destination": destination}
    return rules


def test_every_destination_gets_valid_requests_and_only_what_it_is_for(history):  # noqa: F811
    account, lake, queue, options, expected = history
    rules = routing_rules()
    assert set(r["destination"] for r in rules.values()) == set(DESTINATION_SCHEMA)
    events, sqs = client("events", REGION), client("sqs", REGION)
    queues = {}
    for name, rule in rules.items():
        url = sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events.put_rule(Name=name, EventBusName=BUS, EventPattern=json.dumps(rule["pattern"]))
        transformer = {"InputPathsMap": rule["transformer"]["InputPathsMap"], "InputTemplate": sub(rule["transformer"]["InputTemplate"])}
        assert len(transformer["InputPathsMap"]) <= 100 and len(transformer["InputTemplate"]) <= 8192
        events.put_targets(Rule=name, EventBusName=BUS, Targets=[{"Id": "q", "Arn": arn, "InputTransformer": transformer}])
        queues[name] = url

    # A gap that is new to this run (S3 Protection turned off), for the channel.
    control("POST", "/moto-api/ext/guardduty/detector", {"account_id": account, "region": REGION, "features": {"S3_DATA_EVENTS": "DISABLED"}})
    guardlake("run", *options, check_codes=(3,))
    drain(queue)
    connection = template("hub.yaml")["Resources"]["PagerDutyConnection"]["Properties"]["AuthParameters"]
    [body_parameter] = connection["InvocationHttpParameters"]["BodyParameters"]
    assert body_parameter["Key"] == "routing_key" and body_parameter["IsValueSecret"] is True
    got: dict[str, list[dict]] = {}
    for name, url in queues.items():
        bodies = drain(url)
        schema = json.loads((SCHEMAS / DESTINATION_SCHEMA[rules[name]["destination"]]).read_text())
        for body in bodies:
            if rules[name]["destination"] == "PagerDutyDestination":
                body = {**body, "routing_key": ROUTING_KEY}  # what the connection adds
            jsonschema.validate(body, schema)
        got[name] = bodies

    def finding(body: dict) -> str:
        text = json.dumps(body)
        for name in ("crit", "big", "med", "spike", "reopen", "close", "sample", "arch"):
            if f'{name}{"0" * (32 - len(name))}' in text:
                return name
        return "?"

    routed = {name: sorted(finding(b) for b in bodies) for name, bodies in got.items()}
    assert routed == {
        "guardlake-pagerduty-critical": ["crit"],
        "guardlake-pagerduty-high": ["big", "med", "spike"],
        "guardlake-pagerduty-resolve": ["close"],
        "guardlake-jira-create": ["big", "crit"],
        "guardlake-jira-escalate": ["med", "reopen", "spike"],
        "guardlake-slack-alert": ["big", "close", "crit", "med", "spike"],
        "guardlake-slack-digest": ["?"],
        "guardlake-slack-gap": ["?"],
    }, routed
    [critical] = got["guardlake-pagerduty-critical"]
    assert critical["dedup_key"] == "crit" + "0" * 28 and critical["payload"]["severity"] == "critical"
    [resolve] = got["guardlake-pagerduty-resolve"]
    assert resolve == {"event_action": "resolve", "dedup_key": "close" + "0" * 27}
    jira = {finding(b): b for b in got["guardlake-jira-create"]}
    assert f"guardduty-{'crit' + '0' * 28}" in jira["crit"]["fields"]["labels"]
    assert jira["crit"]["fields"]["project"] == {"key": "SEC"}
    [digest] = got["guardlake-slack-digest"]
    assert "*8* new finding versions" in digest["blocks"][1]["text"]["text"]
    [gap] = got["guardlake-slack-gap"]
    assert "feature_off:S3_DATA_EVENTS" in gap["text"] and account in gap["text"]
