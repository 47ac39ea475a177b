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
    tables = {r["Properties"]["TableInput"]["Name"]: r["Properties"]["TableInput"] for r in resources.values()
              if r["Type"] == "AWS::Glue::Table" and r["Properties"]["TableInput"]["TableType"] == "EXTERNAL_TABLE"}
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


def test_views_exist_at_deploy_in_athenas_format():
    """Each `-- View` file is a Glue VIRTUAL_VIEW whose Presto definition is the file's SELECT over
    the stack's database, with the table's columns (partition key last) and types in Trino's names."""
    resources = template("hub.yaml")["Resources"]
    views = {r["Properties"]["TableInput"]["Name"]: r["Properties"]["TableInput"] for r in resources.values()
             if r["Type"] == "AWS::Glue::Table" and r["Properties"]["TableInput"]["TableType"] == "VIRTUAL_VIEW"}
    files = {p.stem: p.read_text() for p in (ROOT / "infra" / "sql").glob("*.sql") if p.read_text().startswith("-- View ")}
    assert set(views) == set(files) == {"findings_latest", "coverage_latest"}
    base = {"findings_latest": ("findings", "version_rank"), "coverage_latest": ("coverage", "recency")}
    trino = {"string": "varchar", "bigint": "bigint", "int": "integer", "double": "double", "boolean": "boolean",
             "timestamp": "timestamp(3)", "array<string>": "array(varchar)"}
    for name, view in views.items():
        head, encoded, tail = view["ViewOriginalText"]["Join"][1]
        assert (head, tail) == ("/* Presto View: ", " */") and view["Parameters"]["presto_view"] == "true"
        definition = json.loads(encoded["Base64"]["Fn::Sub"].replace("${GlueDatabase}", "guardlake"))
        assert definition["schema"] == "guardlake" and definition["catalog"] == "awsdatacatalog"
        assert definition["originalSql"] == files[name].split(" AS\n", 1)[1].strip()
        table, extra = base[name]
        read = json.loads((ROOT / "schemas" / f"{table}.json").read_text())
        expected = [(c["name"], c["type"]) for c in read["columns"] + read["partition_keys"]] + [(extra, "bigint")]
        assert [(c["name"], c["type"]) for c in definition["columns"]] == [(n, trino[t]) for n, t in expected]
        assert [(c["Name"], c["Type"]) for c in view["StorageDescriptor"]["Columns"]] == expected


def test_member_role_only_reads_and_trusts_only_the_hub_role_with_the_external_id():
    role = template("member-role.yaml")["Resources"]["MemberRole"]["Properties"]
    trust = role["AssumeRolePolicyDocument"]["Statement"]
    assert len(trust) == 1 and trust[0]["Condition"] == {"StringEquals": {"sts:ExternalId": {"Ref": "ExternalId"}}}
    assert "HubRoleName" in json.dumps(trust[0]["Principal"])
    actions = [a for s in role["Policies"][0]["PolicyDocument"]["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])]
    assert actions and all(re.match(r"^(guardduty:(List|Get)|cloudtrail:LookupEvents$|account:ListRegions$)", a) for a in actions), actions


def test_the_canary_is_opt_in_and_writes_only_sample_findings():
    member = template("member-role.yaml")
    assert member["Parameters"]["EnableCanary"]["Default"] == "false"
    [canary] = [p for p in member["Resources"]["MemberRole"]["Properties"]["Policies"] if isinstance(p, dict) and "If" in p]
    condition, policy, otherwise = canary["If"]
    assert condition == "Canary" and otherwise == {"Ref": "AWS::NoValue"}
    assert [s["Action"] for s in policy["PolicyDocument"]["Statement"]] == ["guardduty:CreateSampleFindings"]
    hub = template("hub.yaml")
    assert hub["Parameters"]["CanarySchedule"]["Default"] == "", "no canary unless scheduled"
    schedule = hub["Resources"]["CanaryJobSchedule"]
    assert schedule["Condition"] == "Canary" and json.loads(schedule["Properties"]["Target"]["Input"]) == {"step": "canary"}


# A value for each reference a policy makes, so the policies are checked as IAM will see them.
SAMPLE = {"AWS::Partition": "aws", "AWS::Region": "us-east-1", "AWS::AccountId": "111122223333",
          "HubAccountId": "111122223333", "KmsKeyArn": "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
          "OrgTrailBucket": "org-trail-bucket", "ExternalId": "example-external-id", "OrganizationId": "o-a1b2c3d4e5",
          "OrgTrailPrefix": "trail", "OrgTrailKmsKeyArn": "arn:aws:kms:us-east-1:444455556666:key/1234abcd-12ab-34cd-56ef-1234567890ff",
          "ReaderPrincipalArns": ["arn:aws:iam::111122223333:role/analyst", "arn:aws:iam::111122223333:role/athena-bi"]}
ARNS = {"AWS::S3::Bucket": "arn:aws:s3:::{name}", "AWS::Logs::LogGroup": "arn:aws:logs:us-east-1:111122223333:log-group:/guardlake/{name}:*",
        "AWS::Lambda::Function": "arn:aws:lambda:us-east-1:111122223333:function:{name}", "AWS::IAM::Role": "arn:aws:iam::111122223333:role/{name}",
        "AWS::ECS::Cluster": "arn:aws:ecs:us-east-1:111122223333:cluster/{name}",
        "AWS::ECS::TaskDefinition": "arn:aws:ecs:us-east-1:111122223333:task-definition/{name}:1",
        "AWS::SecretsManager::Secret": "arn:aws:secretsmanager:us-east-1:111122223333:secret:guardlake/{name}-AbCdEf",
        "AWS::StepFunctions::StateMachine": "arn:aws:states:us-east-1:111122223333:stateMachine:{name}",
        "AWS::Events::EventBus": "arn:aws:events:us-east-1:111122223333:event-bus/{name}",
        "AWS::SQS::Queue": "arn:aws:sqs:us-east-1:111122223333:{name}"}
# Resources whose Ref is their ARN.
REF_IS_ARN = ("AWS::ECS::TaskDefinition", "AWS::SecretsManager::Secret", "AWS::StepFunctions::StateMachine")


def resolve(node, doc: dict):
    """The template node with its intrinsic functions replaced by sample values (Fn::If takes its
    first branch, so conditional policies are checked too)."""
    resources, parameters = doc["Resources"], doc.get("Parameters", {})

    def ref(name: str) -> str:
        if name in SAMPLE:
            return SAMPLE[name]
        if name in parameters:
            return str(parameters[name].get("Default") or f"example-{name.lower()}")
        kind = resources[name]["Type"]
        return ARNS[kind].format(name=name.lower()) if kind in REF_IS_ARN else name.lower()

    def arn(name: str) -> str:
        return ARNS[resources[name]["Type"]].format(name=name.lower())

    if isinstance(node, list):
        return [r for r in (resolve(n, doc) for n in node) if r is not None]
    if not isinstance(node, dict):
        return node
    if set(node) == {"Ref"}:
        return None if node["Ref"] == "AWS::NoValue" else ref(node["Ref"])
    if set(node) == {"GetAtt"}:
        target = node["GetAtt"] if isinstance(node["GetAtt"], str) else ".".join(node["GetAtt"])
        return arn(target.split(".")[0])
    if set(node) == {"If"}:
        return resolve(node["If"][1], doc)
    if set(node) == {"Join"}:
        separator, items = node["Join"]
        resolved = resolve(items, doc)
        flat = [x for item in resolved for x in (item if isinstance(item, list) else [item])]
        return separator.join(flat)
    if set(node) == {"Split"}:
        separator, text = node["Split"]
        return resolve(text, doc).split(separator)
    if set(node) == {"Sub"}:
        return re.sub(r"\$\{([^}]+)\}", lambda m: arn(m[1][:-4]) if m[1].endswith(".Arn") else ref(m[1]), node["Sub"])
    return {k: r for k, r in ((k, resolve(v, doc)) for k, v in node.items()) if r is not None}


def policies():
    for name in ("hub.yaml", "member-role.yaml"):
        doc = template(name)
        found = []

        def walk(node, where):
            if isinstance(node, dict):
                for key, value in node.items():
                    if key == "PolicyDocument":
                        found.append((f"{name}:{where}.{key}", resolve(value, doc)))
                    elif key == "AssumeRolePolicyDocument":
                        # A trust policy is the role's resource policy: parliament, which wants a
                        # Resource in each statement, is given the role itself.
                        trust = resolve(value, doc)
                        for statement in trust["Statement"]:
                            statement["Resource"] = "arn:aws:iam::111122223333:role/" + where.split(".")[1].lower()
                        found.append((f"{name}:{where}.{key}", trust))
                    else:
                        walk(value, f"{where}.{key}")
            elif isinstance(node, list):
                for i, value in enumerate(node):
                    walk(value, f"{where}[{i}]")

        walk(doc["Resources"], "Resources")
        yield from found


def test_parliament_reports_nothing_on_the_iam_policies():
    from parliament import analyze_policy_string

    checked = list(policies())
    assert len(checked) == 23, [where for where, _ in checked]
    for where, policy in checked:
        text = json.dumps(policy)
        assert "${" not in text and "{'" not in text, (where, text)
        # parliament 1.6.4's IAM database lists only express executions as the resource of
        # states:DescribeExecution (AWS's own reference lists standard ones too, which Distributed
        # Map children are): that one mismatch is the database's, not the policy's.
        stale = ("RESOURCE_MISMATCH", [{"action": "states:DescribeExecution", "required_format": "arn:*:states:*:*:express:*:*:*"}])
        findings = [f for f in analyze_policy_string(text).findings if (f.issue, f.detail) != stale]
        assert findings == [], (where, [(f.issue, f.detail, f.location) for f in findings])
        # The community auditors too, but for two findings by design: the job's role exists to
        # assume the member roles (sts:AssumeRole "exposes credentials", as trust policies do), and
        # the ECS schedule must pass the task's two roles (iam:PassRole, to ecs-tasks only).
        # The state machine's log delivery takes logs:PutResourcePolicy (Step Functions' documented
        # policy for vended logs: CloudWatch Logs writes the log group's resource policy with it).
        by_design = {("CREDENTIALS_EXPOSURE", ("sts:assumerole",)), ("PERMISSIONS_MANAGEMENT_ACTIONS", ("iam:passrole",)),
                     ("PERMISSIONS_MANAGEMENT_ACTIONS", ("logs:putresourcepolicy",))}  # fmt: skip
        community = [f for f in analyze_policy_string(text, include_community_auditors=True).findings
                     if (f.issue, tuple(f.location.get("actions") or ())) not in by_design and (f.issue, f.detail) != stale]
        assert community == [], (where, [(f.issue, f.detail, f.location) for f in community])


def test_parliament_is_not_silent():
    """The check above can fail: a policy with a misspelt action is reported."""
    from parliament import analyze_policy_string

    bad = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "guardduty:ListFindingz", "Resource": "*"}]}
    assert [f.issue for f in analyze_policy_string(json.dumps(bad)).findings] == ["UNKNOWN_ACTION"]


CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"


def test_checkov_passes_and_every_skip_is_explained_next_to_its_resource():
    done = subprocess.run([str(CHECKOV), "--framework", "cloudformation", "--skip-download", "--compact", "-o", "json",
                           "-f", "infra/hub.yaml", "-f", "infra/member-role.yaml"], cwd=ROOT, capture_output=True, text=True)
    report = json.loads(done.stdout)
    report = report if isinstance(report, dict) else report[0]
    failed = report["results"].get("failed_checks", [])
    assert not failed, [(c["check_id"], c["resource"], c["check_name"]) for c in failed]
    assert report["summary"]["passed"] > 40 and report["summary"]["parsing_errors"] == 0, report["summary"]
    skipped = report["results"].get("skipped_checks", [])
    assert skipped and all(len(c["check_result"].get("suppress_comment", "")) > 20 for c in skipped), skipped
    for name in ("hub.yaml", "member-role.yaml"):
        for logical, resource in template(name)["Resources"].items():
            for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
                assert re.match(r"^CKV_AWS_\d+$", skip["id"]) and len(skip.get("comment", "")) > 20, (logical, skip)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


# The deployment's security conditions, each read from the generated template.


def hub() -> dict:
    return template("hub.yaml")


def statements(policy_holder: dict) -> list[dict]:
    return policy_holder["PolicyDocument"]["Statement"]


def job_policies() -> dict[str, tuple[str | None, dict]]:
    """The job role's inline policies by name, with the condition each depends on."""
    out = {}
    for item in hub()["Resources"]["JobRole"]["Properties"]["Policies"]:
        condition, policy = (item["If"][0], item["If"][1]) if "If" in item else (None, item)
        out[policy["PolicyName"]] = (condition, policy)
    return out


def test_member_roles_are_assumed_only_inside_the_organization():
    _, job = job_policies()["guardlake-job"]
    [assume] = [s for s in statements(job) if s["Action"] == "sts:AssumeRole"]
    assert assume["Condition"] == {"StringEquals": {"aws:ResourceOrgID": {"Ref": "OrganizationId"}}}
    assert hub()["Parameters"]["OrganizationId"]["AllowedPattern"].startswith("^o-")


def test_service_trust_policies_name_the_source_account():
    resources = hub()["Resources"]
    for name in ("JobRole", "ScheduleRole", "TaskExecutionRole", "TaskScheduleRole", "StateMachineRole", "StateMachineScheduleRole"):
        for statement in resources[name]["Properties"]["AssumeRolePolicyDocument"]["Statement"]:
            assert "Service" in statement["Principal"], name
            condition = statement["Condition"]
            assert condition["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}, (name, statement)
            if statement["Principal"]["Service"] != "lambda.amazonaws.com":
                assert "AWS::AccountId" in condition["ArnLike"]["aws:SourceArn"]["Sub"], (name, statement)


def test_the_external_id_lives_in_a_secret_only_the_job_reads():
    resources = hub()["Resources"]
    environment = json.dumps(resources["JobFunction"]["Properties"]["Environment"]) + json.dumps(
        resources["TaskDefinition"]["Properties"]["ContainerDefinitions"])
    assert '"ExternalId"' not in environment and "GUARDLAKE_EXTERNAL_ID\"" not in environment
    assert resources["JobFunction"]["Properties"]["Environment"]["Variables"]["GUARDLAKE_EXTERNAL_ID_SECRET"] == {"Ref": "ExternalIdSecret"}
    assert resources["ExternalIdSecret"]["Properties"]["SecretString"] == {"Ref": "ExternalId"}
    _, job = job_policies()["guardlake-job"]
    [read] = [s for s in statements(job) if "secretsmanager" in json.dumps(s["Action"])]
    assert (read["Action"], read["Resource"]) == ("secretsmanager:GetSecretValue", {"Ref": "ExternalIdSecret"})


def test_only_the_job_writes_and_only_named_readers_read_the_lake():
    policy = hub()["Resources"]["LakeBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    by_sid = {s["Sid"]: s for s in policy if "Sid" in s}
    writes = by_sid["OnlyTheJobWritesTheLake"]
    assert writes["Effect"] == "Deny" and "s3:PutObject" in writes["Action"]
    assert writes["Condition"] == {"ArnNotEquals": {"aws:PrincipalArn": {"GetAtt": "JobRole.Arn"}}}
    reads = by_sid["OnlyTheJobAndReadersReadTheLake"]
    assert reads["Effect"] == "Deny" and "s3:GetObject" in reads["Action"] and reads["Principal"] == "*"
    allowed = json.dumps(reads["Condition"]["ArnNotEquals"]["aws:PrincipalArn"])
    assert "JobRole.Arn" in allowed and "ReaderPrincipalArns" in allowed
    [kms] = [s["If"] for s in policy if "If" in s]
    assert kms[0] == "UseKms" and kms[1]["Effect"] == "Deny"
    assert kms[1]["Condition"] == {"ArnNotEqualsIfExists": {"s3:x-amz-server-side-encryption-aws-kms-key-id": {"Ref": "KmsKeyArn"}}}
    # As IAM sees it, with sample values: a principal that is neither the job nor a reader is denied.
    resolved = resolve(reads, hub())
    assert sorted(resolved["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]) == sorted(
        ["arn:aws:iam::111122223333:role/jobrole", *SAMPLE["ReaderPrincipalArns"]])


def test_reads_are_scoped_to_what_each_mode_needs():
    policies = job_policies()
    _, job = policies["guardlake-job"]
    assert not [s for s in statements(job) if "guardduty:" in json.dumps(s) or "cloudtrail:" in json.dumps(s)], "member mode reads through the member roles"
    condition, admin = policies["guardlake-delegated-admin"]
    assert condition == "DelegatedAdmin" and "guardduty:GetFindings" in json.dumps(admin)
    condition, trail = policies["guardlake-org-trail"]
    assert condition == "ReadsOrgTrail"
    for statement in statements(trail):
        scoped = json.dumps(statement.get("Condition", statement["Resource"]))
        assert "AWSLogs/${OrganizationId}/*" in scoped, statement
    condition, trail_kms = policies["guardlake-org-trail-kms"]
    [decrypt] = statements(trail_kms)
    assert condition == "TrailUsesKms" and decrypt["Action"] == "kms:Decrypt" and decrypt["Resource"] == {"Ref": "OrgTrailKmsKeyArn"}
    assert "kms:ViaService" in decrypt["Condition"]["StringEquals"]


def test_quarantine_expires_and_staging_outlives_a_pending_journal():
    rules = {r["Id"]: r for r in hub()["Resources"]["LakeBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]}
    assert rules["quarantine"]["ExpirationInDays"] == {"Ref": "QuarantineRetentionDays"}
    assert rules["quarantine"]["Prefix"] == {"Sub": "${LakePrefix}/_quarantine/"}
    assert rules["staging"]["ExpirationInDays"] == {"Ref": "StagingExpiryDays"}
    parameters = hub()["Parameters"]
    assert parameters["StagingExpiryDays"]["Default"] >= 7 and parameters["StagingExpiryDays"]["MinValue"] >= 2


def test_the_ecs_task_has_no_public_ip_and_an_egress_only_security_group():
    resources = hub()["Resources"]
    network = resources["TaskSchedule"]["Properties"]["Target"]["EcsParameters"]["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["AssignPublicIp"] == "DISABLED" and network["SecurityGroups"] == [{"Ref": "TaskSecurityGroup"}]
    group = resources["TaskSecurityGroup"]["Properties"]
    assert "SecurityGroupIngress" not in group
    assert [(e["IpProtocol"], e["FromPort"], e["ToPort"]) for e in group["SecurityGroupEgress"]] == [("tcp", 443, 443)]


def state_machine_definition() -> dict:
    """The state machine's definition as deployed: the template's !Sub text with its
    placeholders filled."""
    text, variables = hub()["Resources"]["RunStateMachine"]["Properties"]["DefinitionString"]["Sub"]
    values = {"AWS::Partition": "aws", "JobFunction.Arn": "arn:aws:lambda:us-east-1:111111111111:function:guardlake",
              "MaxConcurrency": "40", **{k: str(v) for k, v in variables.items()}}  # fmt: skip
    filled = re.sub(r"\$\{([^}]+)\}", lambda m: values[m.group(1)], text)
    return json.loads(filled)


def test_the_distributed_engine_is_a_valid_state_machine_plan_map_commit(tmp_path):
    definition = state_machine_definition()
    path = tmp_path / "definition.json"
    path.write_text(json.dumps(definition))
    done = subprocess.run([str(VENV_BIN / "statelint"), str(path)], capture_output=True, text=True)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr
    states = definition["States"]
    assert definition["StartAt"] == "Plan" and states["Plan"]["Next"] == "Shards" and states["Shards"]["Next"] == "PlanTrail"
    assert states["PlanTrail"]["Next"] == "AnyTrailBatches" and states["AnyTrailBatches"]["Default"] == "Commit"
    assert states["AnyTrailBatches"]["Choices"] == [{"Variable": "$.shards", "NumericGreaterThan": 0, "Next": "TrailBatches"}]
    assert states["TrailBatches"]["Next"] == "Commit"
    lambda_errors = {"Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.SdkClientException", "Lambda.TooManyRequestsException"}
    for name, task in (("Shards", "Shard"), ("TrailBatches", "Batch")):
        shards = states[name]
        assert shards["ItemReader"]["Resource"].endswith(":states:::s3:listObjectsV2")
        assert shards["ItemReader"]["Parameters"] == {"Bucket.$": "$.bucket", "Prefix.$": "$.prefix"}, "the prefix its plan step returned"
        assert shards["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
        assert shards["ToleratedFailurePercentage"] == 100 and shards["Catch"][0]["Next"] == shards["Next"], "the run goes on to Commit"
        assert shards["MaxConcurrency"] == 40, "the MaxConcurrency parameter"
        assert shards["ResultPath"] is None, "the run id passes through"
        item = shards["ItemSelector"]
        assert item == {"step": "shard", "run_id.$": "$.run_id", "key.$": "$$.Map.Item.Value.Key"}, "the function's shard payload"
        [retry] = shards["ItemProcessor"]["States"][task]["Retry"]
        assert set(retry["ErrorEquals"]) == lambda_errors and retry["BackoffRate"] > 1, task
    for task in (states["Plan"], states["PlanTrail"], states["Commit"]):
        [retry] = task["Retry"]
        assert set(retry["ErrorEquals"]) == lambda_errors and retry["BackoffRate"] > 1, task
    assert states["PlanTrail"]["Catch"][0]["Next"] == "Commit", "a failed CloudTrail plan still commits the findings"
    assert states["PlanTrail"]["Parameters"]["Payload"] == {"step": "plan-trail", "run_id.$": "$.run_id"}
    assert states["Commit"]["Parameters"]["Payload"] == {"step": "commit", "run_id.$": "$.run_id"}


def test_statelint_is_not_silent(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"StartAt": "Nowhere", "States": {"A": {"Type": "Pass", "End": True}}}))
    done = subprocess.run([str(VENV_BIN / "statelint"), str(path)], capture_output=True, text=True)
    assert done.returncode != 0 or done.stdout.strip(), "a state machine starting at a missing state is reported"


def test_the_engine_parameter_chooses_what_the_schedule_starts():
    resources = hub()["Resources"]
    assert resources["JobSchedule"]["Condition"] == "SingleEngine"
    assert resources["RunSchedule"]["Condition"] == "Distributed"
    assert resources["RunSchedule"]["Properties"]["Target"]["Arn"] == {"Ref": "RunStateMachine"}
    statements = resources["StateMachineRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    listing = next(s for s in statements if s["Action"] == "s3:ListBucket")
    assert listing["Condition"]["StringLike"]["s3:prefix"] == {"Sub": "${LakePrefix}/_state/plans/*"}, "only the shard files"

