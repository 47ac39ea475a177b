"""infra/: CloudFormation that cfn-lint accepts, Glue tables equal to schemas/, one named query per
infra/sql file, and a member role that can only read."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from test_collect import guardlake

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags (!Ref, !Sub...) kept as {tag: value}."""


def _tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {suffix: value}


CfnLoader.add_multi_constructor("!", _tag)


def template(name: str) -> dict:
    return yaml.load((ROOT / "infra" / name).read_text(), Loader=CfnLoader)


def test_cfn_lint_reports_no_errors():
    done = subprocess.run([str(VENV_BIN / "cfn-lint"), "infra/hub.yaml", "infra/member-role.yaml"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode & 2 == 0, done.stdout + done.stderr
    assert not re.search(r"^E\d+", done.stdout, flags=re.M), done.stdout


def test_hub_template_is_generated_from_schemas_and_sql():
    done = subprocess.run([sys.executable, str(ROOT / "tests/schemas/generate_infra.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_glue_tables_equal_the_schemas_and_the_ddl():
    resources = template("hub.yaml")["Resources"]
    tables = {r["Properties"]["TableInput"]["Name"]: r["Properties"]["TableInput"] for r in resources.values() if r["Type"] == "AWS::Glue::Table"}
    definitions = {p.stem: json.loads(p.read_text()) for p in (ROOT / "schemas").glob("*.json")}
    assert set(tables) == set(definitions)
    for name, table in tables.items():
        columns = [(c["Name"], c["Type"]) for c in table["StorageDescriptor"]["Columns"]]
        assert columns == [(c["name"], c["type"]) for c in definitions[name]["columns"]], name
        assert [(k["Name"], k["Type"]) for k in table["PartitionKeys"]] == [("dt", "string")]
        assert table["Parameters"]["projection.dt.type"] == "date" and table["Parameters"]["projection.enabled"] == "true"
        ddl = guardlake("schema", "--table", name, "--format", "ddl").stdout
        assert re.findall(r"^  `(\w+)` ([a-z<>]+) COMMENT", ddl, flags=re.M) == columns, name


def test_every_sql_file_is_a_named_query():
    resources = template("hub.yaml")["Resources"]
    queries = {r["Properties"]["Name"]: r["Properties"]["QueryString"] for r in resources.values() if r["Type"] == "AWS::Athena::NamedQuery"}
    files = {p.stem: p.read_text() for p in (ROOT / "infra" / "sql").glob("*.sql")}
    assert set(queries) == set(files)
    for name, sql in files.items():
        assert queries[name].strip() == sql.strip(), name


def test_member_role_only_reads_and_trusts_only_the_hub_role_with_the_external_id():
    role = template("member-role.yaml")["Resources"]["MemberRole"]["Properties"]
    trust = role["AssumeRolePolicyDocument"]["Statement"]
    assert len(trust) == 1 and trust[0]["Condition"] == {"StringEquals": {"sts:ExternalId": {"Ref": "ExternalId"}}}
    assert "HubRoleName" in json.dumps(trust[0]["Principal"])
    actions = [a for s in role["Policies"][0]["PolicyDocument"]["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])]
    assert actions and all(re.match(r"^(guardduty:(List|Get)|cloudtrail:LookupEvents$|account:ListRegions$)", a) for a in actions), actions
