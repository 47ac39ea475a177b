"""Finding schemas people can rely on: the generated JSON Schema, the examples, drift detection,
and `guardlake schema`."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jsonschema

from conftest import EXAMPLES, client, guardduty_fixtures
from seed import create_org, findings_for, seed_findings
from test_collect import guardlake, query
from test_emulator import signed_post

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schemas" / "guardduty" / "finding.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def errors(finding: dict) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in VALIDATOR.iter_errors(finding)]


def test_checked_in_schema_and_readme_are_fresh():
    done = subprocess.run([sys.executable, str(ROOT / "tests/schemas/generate_finding_schema.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_schema_is_valid_and_strict_on_known_shapes():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$defs"]["Finding"]["required"] == ["accountId", "arn", "createdAt", "id", "region", "resource", "schemaVersion", "severity", "type", "updatedAt"]
    rds = SCHEMA["$defs"]["RdsLoginAttemptAction"]["properties"]
    assert "LoginAttributes" in rds, "wire names, as the API sends them"
    assert "sourceIPs" in SCHEMA["$defs"]["KubernetesApiCallAction"]["properties"]
    assert SCHEMA["$defs"]["Finding"]["properties"]["severity"]["description"]
    bad = copy.deepcopy(guardduty_fixtures()["network_instance"])
    bad["service"]["count"] = "12"
    bad["service"]["unknownMember"] = 1
    del bad["arn"]
    problems = errors(bad)
    assert any("'12' is not of type 'integer'" in p for p in problems), problems
    assert any("unknownMember" in p for p in problems), problems
    assert any("'arn' is a required property" in p for p in problems), problems


def test_every_example_validates_and_covers_every_action_and_resource_type():
    examples = {p.stem: json.loads(p.read_text()) for p in EXAMPLES.glob("*.json")}
    for name, finding in examples.items():
        assert errors(finding) == [], name
    actions = {f["service"].get("action", {}).get("actionType") for f in examples.values()}
    assert actions >= {"AWS_API_CALL", "NETWORK_CONNECTION", "PORT_PROBE", "DNS_REQUEST", "KUBERNETES_API_CALL", "RDS_LOGIN_ATTEMPT", None}
    readme = (ROOT / "schemas" / "README.md").read_text()
    for name in examples:
        assert f"`{name}`" in readme


def test_every_finding_the_backend_returns_validates():
    gd = client("guardduty")
    detector = gd.create_detector(Enable=True)["DetectorId"]
    known = json.loads((ROOT / "schemas" / "guardduty" / "known_types.json").read_text())["finding_types"]
    for start in range(0, len(known), 40):
        gd.create_sample_findings(DetectorId=detector, FindingTypes=known[start : start + 40])
    seed_findings("123456789012", "us-east-1", findings_for("123456789012", "us-east-1", 40, datetime.now(timezone.utc) - timedelta(days=1)))
    ids = [i for page in gd.get_paginator("list_findings").paginate(DetectorId=detector) for i in page["FindingIds"]]
    assert len(ids) == len(known) + 40
    for start in range(0, len(ids), 50):
        status, body = signed_post("guardduty", "us-east-1", f"/detector/{detector}/findings/get", {"findingIds": ids[start : start + 50]})
        assert status == 200
        for finding in body["findings"]:
            assert errors(finding) == [], finding["type"]


def test_drift_is_recorded_once_per_path_and_kind_and_nothing_is_lost(tmp_path):
    [account] = create_org(["drifty"])
    base = datetime.now(timezone.utc) - timedelta(hours=6)
    normal = findings_for(account, "eu-west-1", 4, base)
    odd = copy.deepcopy(normal[0])
    odd["id"] = "d" * 32
    odd["service"]["action"] = {"actionType": "MODEL_INVOCATION", "modelInvocationAction": {"modelId": "m-1"}}
    odd["service"]["newTopLevelService"] = {"x": 1}
    odd["service"]["count"] = "7"
    seed_findings(account, "eu-west-1", normal + [odd])
    lake = tmp_path / "lake"
    args = ("run", "--output", str(lake), "--regions", "eu-west-1", "--accounts", account)
    done = guardlake(*args)
    assert "schema drift: " in done.stdout
    raw = query(lake, "findings", f"select raw from findings where id = '{'d' * 32}'")
    assert json.loads(raw[0][0]) == odd, "the drifting finding is written whole"
    drift = query(lake, "schema_drift", "select finding_type, path, kind, count, example from schema_drift order by path, kind")
    expected = {
        ("service.action.actionType", "new_action_type"),
        ("service.action.modelInvocationAction", "unknown_path"),
        ("service.count", "wrong_type"),
        ("service.newTopLevelService", "unknown_path"),
    }
    assert {(p, k) for _, p, k, _, _ in drift} == expected
    assert all(t == odd["type"] and n == 1 for t, _, _, n, _ in drift)
    assert next(e for _, p, _, _, e in drift if p == "service.count") == "7"

    # The same drift in a new version of the finding is not reported again.
    newer = copy.deepcopy(odd)
    newer["updatedAt"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    seed_findings(account, "eu-west-1", [newer])
    done = guardlake(*args)
    assert query(lake, "findings", f"select count(*) from findings where id = '{'d' * 32}'") == [(2,)]
    assert query(lake, "schema_drift", "select count(*), count(distinct (path, kind)) from schema_drift") == [(4, 4)]
    assert "schema drift" not in done.stdout


def test_schema_command_prints_ddl_docs_and_json_from_the_one_definition():
    definition = json.loads((ROOT / "schemas" / "findings.json").read_text())
    ddl = guardlake("schema", "--table", "findings", "--format", "ddl", "--location", "s3://acme-lake/gl").stdout
    columns = re.findall(r"^  `(\w+)` ([a-z<>]+) COMMENT", ddl, flags=re.M)
    assert columns == [(c["name"], c["type"]) for c in definition["columns"]]
    assert "PARTITIONED BY (`dt` string" in ddl and "'projection.dt.type'='date'" in ddl
    assert "LOCATION 's3://acme-lake/gl/findings/'" in ddl
    markdown = guardlake("schema", "--table", "findings", "--format", "markdown").stdout
    assert all(f"| `{c['name']}`" in markdown for c in definition["columns"])
    row_schema = json.loads(guardlake("schema", "--table", "runs", "--format", "json").stdout)
    jsonschema.Draft202012Validator.check_schema(row_schema)
    assert set(row_schema["properties"]) == {c["name"] for c in json.loads((ROOT / "schemas" / "runs.json").read_text())["columns"]} | {"dt"}
    every = guardlake("schema").stdout
    assert every.count("CREATE EXTERNAL TABLE") == len(list((ROOT / "schemas").glob("*.json")))
    bad = guardlake("schema", "--table", "nope", check_codes=(2,))
    assert "findings, runs, coverage, schema_drift, cloudtrail_events, finding_events" in bad.stderr
