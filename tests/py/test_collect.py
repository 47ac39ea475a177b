"""`guardlake run` end to end against the backend, read back with DuckDB's hive reader."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from conftest import ENDPOINT, guardduty_fixtures
from seed import MANAGEMENT, create_org, findings_for, seed_findings, seed_org

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("GUARDLAKE_BIN", ROOT / "target" / "debug" / "guardlake"))
REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-2")


def guardlake(*args: str, check_codes=(0, 3)) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDLAKE_") and not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=ENDPOINT, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")  # fmt: skip
    done = subprocess.run([str(BINARY), *args], capture_output=True, text=True, env=env, timeout=300)
    if check_codes is not None:
        assert done.returncode in check_codes, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    return done


def query(lake: Path, table: str, sql: str) -> list[tuple]:
    con = duckdb.connect()
    con.execute(f"create view {table} as select * from read_parquet('{lake}/{table}/*/*.parquet', hive_partitioning=true)")
    return con.execute(sql).fetchall()


def ms(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def test_every_version_once_with_typed_columns_and_classified_failures(tmp_path):
    org = seed_org(members=3, regions=REGIONS, per_target=8)
    fixtures = guardduty_fixtures()
    fixture_account = org.members[1]
    shaped = []
    for fixture in fixtures.values():
        finding = copy.deepcopy(fixture)
        finding["accountId"], finding["region"] = fixture_account, "eu-west-1"
        finding["updatedAt"] = (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        shaped.append(finding)
    seed_findings(fixture_account, "eu-west-1", shaped)
    lake = tmp_path / "lake"
    done = guardlake("run", "--output", str(lake), "--regions", ",".join(REGIONS), "--lookback-days", "10")
    assert done.returncode == 3, "published, some targets failed"

    # Everything but the disabled region's findings (the denied account's are not in org.findings).
    expected = {(f["accountId"], f["region"], f["id"], ms(f["updatedAt"]))
                for target, fs in org.findings.items() if target != org.disabled for f in fs}  # fmt: skip
    expected |= {(f["accountId"], f["region"], f["id"], ms(f["updatedAt"])) for f in shaped}
    rows = query(lake, "findings", "select account_id, region, id, updated_at, count(*) over (partition by account_id, region, id, updated_at) from findings")
    assert {(a, r, i, u) for a, r, i, u, _ in rows} == expected
    assert all(n == 1 for *_, n in rows), "every version exactly once"
    assert query(lake, "findings", "select count(*) from findings where dt <> cast(updated_at as date)") == [(0,)]

    columns = [
        "type", "severity", "title", "archived", "count", "resource_type", "action_type", "instance_id", "access_key_id",
        "user_name", "s3_bucket_names", "eks_cluster_name", "api", "service_name", "remote_ip", "remote_country", "local_port",
        "remote_port", "protocol", "connection_direction", "blocked", "feature_name", "detector_id", "severity_label", "raw",
    ]  # fmt: skip
    for finding in shaped:
        got = query(lake, "findings", f"select {', '.join(columns)} from findings where id = '{finding['id']}'")
        assert len(got) == 1
        row = dict(zip(columns, got[0]))
        service, resource = finding["service"], finding["resource"]
        action = service.get("action", {})
        remote = next((v["remoteIpDetails"] for v in action.values() if isinstance(v, dict) and "remoteIpDetails" in v), None)
        if remote is None and "portProbeAction" in action:
            remote = action["portProbeAction"]["portProbeDetails"][0]["remoteIpDetails"]
        assert row["type"] == finding["type"] and row["severity"] == finding["severity"] and row["title"] == finding["title"]
        assert row["archived"] == service["archived"] and row["count"] == service["count"]
        assert row["resource_type"] == resource["resourceType"]
        assert row["action_type"] == action.get("actionType")
        assert row["instance_id"] == resource.get("instanceDetails", {}).get("instanceId")
        assert row["access_key_id"] == resource.get("accessKeyDetails", {}).get("accessKeyId")
        assert row["eks_cluster_name"] == resource.get("eksClusterDetails", {}).get("name")
        assert row["s3_bucket_names"] == ([b["name"] for b in resource["s3BucketDetails"]] if "s3BucketDetails" in resource else None)
        assert row["api"] == action.get("awsApiCallAction", {}).get("api")
        assert row["service_name"] == action.get("awsApiCallAction", {}).get("serviceName")
        assert row["remote_ip"] == (remote or {}).get("ipAddressV4")
        assert row["remote_country"] == (remote or {}).get("country", {}).get("countryName")
        net = action.get("networkConnectionAction", {})
        probe = (action.get("portProbeAction", {}).get("portProbeDetails") or [{}])[0]
        assert row["local_port"] == (net.get("localPortDetails") or probe.get("localPortDetails") or {}).get("port")
        assert row["remote_port"] == net.get("remotePortDetails", {}).get("port")
        assert row["protocol"] == (net.get("protocol") or action.get("dnsRequestAction", {}).get("protocol"))
        assert row["connection_direction"] == net.get("connectionDirection")
        assert row["feature_name"] == service.get("featureName") and row["detector_id"] == service["detectorId"]
        assert json.loads(row["raw"]) == finding, "raw is the finding as received"
    labels = dict(query(lake, "findings", "select severity, any_value(severity_label) from findings group by 1"))
    assert labels.get(2.0) == "Low" and labels.get(5.0) == "Medium" and labels.get(8.0) == "High" and labels.get(9.2) == "Critical"

    runs = {(a, r): (s, c) for a, r, s, c in query(lake, "runs", "select account_id, region, status, error_class from runs")}
    assert runs[(org.denied, "us-east-1")] == ("access_denied", "AccessDenied")
    assert runs[org.disabled][0] == "region_disabled"
    assert runs[(org.admin, "us-east-1")][0] == "ok", "the admin has a detector and no findings of its own"
    assert runs[(MANAGEMENT, "us-east-1")][0] == "not_enabled", "no detector in the management account"
    assert org.suspended not in {a for a, _ in runs}
    assert f"{org.suspended}  account state is SUSPENDED" in done.stdout
    for (account, region), found in org.findings.items():
        if (account, region) == org.disabled:
            continue
        status, = query(lake, "runs", f"select status from runs where account_id = '{account}' and region = '{region}'")[0]
        assert status == "ok"


def normalized_rows(lake: Path) -> list[tuple]:
    return query(lake, "findings", "select * exclude (run_id, collected_at) from findings order by account_id, region, id, updated_at")


def test_member_and_delegated_admin_modes_give_identical_rows(tmp_path):
    org = seed_org(members=3, regions=REGIONS[:2], per_target=10, with_trouble=False)
    member, admin = tmp_path / "member", tmp_path / "admin"
    guardlake("run", "--output", str(member), "--regions", ",".join(REGIONS[:2]), "--exclude-accounts", MANAGEMENT)
    guardlake("run", "--output", str(admin), "--regions", ",".join(REGIONS[:2]), "--mode", "delegated-admin",
              "--admin-account", org.admin, "--exclude-accounts", MANAGEMENT)  # fmt: skip
    member_rows, admin_rows = normalized_rows(member), normalized_rows(admin)
    assert len(member_rows) == 3 * 2 * 10
    assert member_rows == admin_rows
    modes = query(admin, "runs", "select distinct mode from runs")
    assert modes == [("delegated-admin",)]
    written = query(admin, "runs", "select account_id, sum(findings_written) from runs group by 1 order by 1")
    assert {a: n for a, n in written} == {a: 20 for a in org.members[1:]} | {org.admin: 0}


def test_second_run_writes_nothing_and_an_update_adds_one_version(tmp_path):
    [account] = create_org(["solo"])
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=2)
    found = findings_for(account, "eu-west-1", 20, base)
    seed_findings(account, "eu-west-1", found)
    lake = tmp_path / "lake"
    args = ("run", "--output", str(lake), "--regions", "eu-west-1", "--accounts", account)
    guardlake(*args)
    assert query(lake, "findings", "select count(*) from findings") == [(20,)]
    second = guardlake(*args)
    assert query(lake, "findings", "select count(*) from findings") == [(20,)]
    assert "0 new versions written" in second.stdout

    updated = copy.deepcopy(found[3])
    updated["service"]["count"] += 40
    updated["updatedAt"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    seed_findings(account, "eu-west-1", [updated])
    guardlake(*args)
    versions = query(lake, "findings", f"select count, updated_at from findings where id = '{updated['id']}' order by updated_at")
    assert [v[0] for v in versions] == [found[3]["service"]["count"], updated["service"]["count"]]
    assert query(lake, "findings", "select count(*) from findings") == [(21,)]
    runs = query(lake, "runs", "select count(distinct run_id), sum(findings_written) from runs")
    assert runs == [(3, 21)]


def test_malformed_and_unknown_findings_are_kept_and_counted(tmp_path):
    [account] = create_org(["odd"])
    base = datetime.now(timezone.utc) - timedelta(days=1)
    good = findings_for(account, "us-east-1", 3, base)
    novel = copy.deepcopy(good[0])
    novel["id"] = "f" * 32
    novel["type"] = "Impact:Bedrock/NeverSeenBefore"
    novel["resource"]["resourceType"] = "BedrockModel"
    novel["service"]["action"] = {"actionType": "MODEL_INVOCATION", "modelInvocationAction": {"model": "x"}}
    novel["brandNewMember"] = {"nested": True}
    broken = copy.deepcopy(good[1])
    broken["id"] = "e" * 32
    broken["severity"] = "very high"
    seed_findings(account, "us-east-1", good + [novel, broken])
    lake = tmp_path / "lake"
    guardlake("run", "--output", str(lake), "--regions", "us-east-1", "--accounts", account)
    assert query(lake, "findings", "select count(*) from findings") == [(4,)]
    raw, action = query(lake, "findings", f"select raw, action_type from findings where id = '{'f' * 32}'")[0]
    assert action == "MODEL_INVOCATION" and json.loads(raw)["brandNewMember"] == {"nested": True}
    assert query(lake, "runs", "select findings_read, findings_written, findings_quarantined, status from runs") == [(5, 4, 1, "ok")]
    [quarantine_file] = list((lake / "_quarantine").rglob("*.jsonl"))
    entry = json.loads(quarantine_file.read_text())
    assert entry["finding_id"] == "e" * 32 and "severity" in entry["reason"]
    assert entry["raw"] == json.dumps(broken), "the text exactly as GetFindings sent it, member order kept"


def test_the_services_own_samples_make_no_drift_and_attack_sequences_get_typed_columns(tmp_path):
    from emulator import shapes

    [account] = create_org(["samples"])
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=3)
    samples = [shapes.build_finding(t, account, "us-east-1", "0" * 32, n, created_at=base, sample=True)
               for n, t in enumerate(shapes.TYPE_SHAPES)]  # fmt: skip
    # As exports and EventBridge events carry samples: the flag as a member, free keys beside it,
    # and members the API would omit sent as null.
    exported = copy.deepcopy(samples[0])
    exported["id"] = "a" * 32
    exported["service"]["additionalInfo"] = {"sample": True, "threatListName": "ProofPoint", "unusual": {"hoursOfDay": [1, 2]}}
    exported["service"]["resourceRole"] = None
    exported["resource"]["someFutureMember"] = None
    seed_findings(account, "us-east-1", samples + [exported])
    lake = tmp_path / "lake"
    done = guardlake("run", "--output", str(lake), "--regions", "us-east-1", "--accounts", account)
    assert done.returncode == 0, done.stderr[-2000:]
    total = len(samples) + 1
    assert query(lake, "findings", "select count(*), count(*) filter (where sample) from findings") == [(total, total)]
    assert not (lake / "schema_drift").exists(), query(lake, "schema_drift", "select finding_type, path, kind from schema_drift")
    sequences = query(lake, "findings", "select type, resource_type, sequence_signal_count, sequence_first_seen < sequence_last_seen, raw from findings where type like 'AttackSequence:%' order by type")
    assert len(sequences) == 5, sequences
    for finding_type, resource_type, signals, ordered, raw in sequences:
        expected = json.loads(raw)["service"]["detection"]["sequence"]["signals"]
        assert (resource_type, signals, ordered) == ("AttackSequence", len(expected), True), finding_type
    assert query(lake, "findings", "select count(*) from findings where sequence_signal_count is not null") == [(5,)]


@pytest.mark.parametrize(
    ("config", "flags", "names"),
    [
        ("lookback_dayz = 3\n", [], ["lookback_dayz"]),
        ("", ["--regions", "us-east-1,mars-north-1"], ["regions", "mars-north-1"]),
        ("lookback_days = 120\n", [], ["lookback_days", "120"]),
        ("", ["--lookback-days", "91"], ["lookback_days", "--lookback-days"]),
        ('accounts = ["12"]\n', [], ["accounts"]),
    ],
)
def test_bad_config_fails_fast_naming_the_problem(tmp_path, config, flags, names):
    path = tmp_path / "guardlake.toml"
    path.write_text(config)
    done = guardlake("run", "--config", str(path), "--output", str(tmp_path / "lake"), *flags, check_codes=None)
    assert done.returncode == 2
    for name in names:
        assert name in done.stderr
    assert not (tmp_path / "lake").exists()


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    org = seed_org(members=2, regions=REGIONS[:1], per_target=2)
    done = guardlake("run", "--output", str(tmp_path / "lake"), "--regions", "us-east-1", "--dry-run")
    assert "Plan (member mode" in done.stdout
    assert f"skip {org.suspended}: account state is SUSPENDED" in done.stdout
    assert f"fail {org.denied} *" in done.stdout or org.denied in done.stdout
    assert not (tmp_path / "lake").exists()


def test_s3_output_publishes_the_same_lake_and_keeps_state_in_s3(tmp_path):
    from conftest import client

    [account] = create_org(["s3lake"])
    base = datetime.now(timezone.utc) - timedelta(days=1)
    seed_findings(account, "eu-west-1", findings_for(account, "eu-west-1", 30, base))
    s3 = client("s3")
    s3.create_bucket(Bucket="security-lake")
    args = ("run", "--output", "s3://security-lake/guardlake", "--regions", "eu-west-1", "--accounts", account)
    guardlake(*args)
    guardlake(*args)

    def download() -> Path:
        lake = tmp_path / "from-s3"
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="security-lake", Prefix="guardlake/"):
            for obj in page.get("Contents", []):
                target = lake / obj["Key"].removeprefix("guardlake/")
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file("security-lake", obj["Key"], str(target))
        return lake

    lake = download()
    assert (lake / "_state" / "guardduty" / account / "eu-west-1.json").exists()
    assert not [p for p in lake.rglob("*") if p.name.startswith(".")], "no temporary objects"
    assert query(lake, "findings", "select count(*), count(distinct id) from findings") == [(30, 30)]
    assert query(lake, "runs", "select count(*), sum(findings_written) from runs") == [(2, 30)]


def test_ou_filters_follow_nested_ous(tmp_path):
    from conftest import client

    org = client("organizations")
    org.create_organization(FeatureSet="ALL")
    root = org.list_roots()["Roots"][0]["Id"]
    prod = org.create_organizational_unit(ParentId=root, Name="prod")["OrganizationalUnit"]["Id"]
    prod_eu = org.create_organizational_unit(ParentId=prod, Name="prod-eu")["OrganizationalUnit"]["Id"]
    sandbox = org.create_organizational_unit(ParentId=prod, Name="sandbox")["OrganizationalUnit"]["Id"]
    placed = {}
    for name, parent in (("direct", prod), ("nested", prod_eu), ("sandboxed", sandbox), ("outside", root)):
        account = org.create_account(AccountName=name, Email=f"{name}@example.com")["CreateAccountStatus"]["AccountId"]
        if parent != root:
            org.move_account(AccountId=account, SourceParentId=root, DestinationParentId=parent)
        placed[name] = account
    done = guardlake("run", "--output", str(tmp_path / "lake"), "--regions", "us-east-1", "--include-ous", prod,
                     "--exclude-ous", sandbox, "--dry-run")  # fmt: skip
    planned = {line.split()[0] for line in done.stdout.splitlines()[1:] if line.startswith("  ") and not line.startswith("  skip")}
    assert planned == {placed["direct"], placed["nested"]}
    assert f"skip {placed['sandboxed']}: under exclude_ous" in done.stdout
    assert f"skip {placed['outside']}: not under include_ous" in done.stdout


def test_throttled_target_is_classified_and_the_others_complete(tmp_path):
    [quiet, loud] = create_org(["quiet", "loud"])
    base = datetime.now(timezone.utc) - timedelta(hours=5)
    for account in (quiet, loud):
        seed_findings(account, "us-east-1", findings_for(account, "us-east-1", 5, base))
    from conftest import control

    control("POST", "/moto-api/ext/faults", {"operation": "ListFindings", "account_id": loud, "error": "ThrottlingException"})
    lake = tmp_path / "lake"
    done = guardlake("run", "--output", str(lake), "--regions", "us-east-1", "--accounts", f"{quiet},{loud}", "--max-attempts", "2")
    control("DELETE", "/moto-api/ext/faults")
    assert done.returncode == 3
    runs = dict(query(lake, "runs", "select account_id, status from runs"))
    assert runs == {quiet: "ok", loud: "throttled"}
    assert query(lake, "findings", "select distinct account_id from findings") == [(quiet,)]
    stats = control("GET", "/moto-api/ext/stats")
    attempts = sum(r["count"] for r in stats["requests"] if r["operation"] == "ListFindings" and r["account_id"] == loud)
    assert attempts == 2, "the SDK retried up to --max-attempts"


def test_each_member_role_is_assumed_once_per_run(tmp_path):
    from conftest import control

    accounts = create_org(["once-a", "once-b", "once-c"])
    regions = ["us-east-1", "eu-west-1", "ap-southeast-2"]
    base = datetime.now(timezone.utc) - timedelta(hours=5)
    for account in accounts:
        for region in regions:
            seed_findings(account, region, findings_for(account, region, 2, base))
    before = sum(r["count"] for r in control("GET", "/moto-api/ext/stats")["requests"] if r["operation"] == "AssumeRole")
    done = guardlake("run", "--output", str(tmp_path / "lake"), "--regions", ",".join(regions), "--accounts", ",".join(accounts),
                     "--cloudtrail", "lookup", "--watchlist", "StopLogging")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    after = sum(r["count"] for r in control("GET", "/moto-api/ext/stats")["requests"] if r["operation"] == "AssumeRole")
    assert after - before == len(accounts), "one AssumeRole per account, shared by its regions, GuardDuty and CloudTrail"


def test_compact_on_a_local_lake_makes_no_aws_call(tmp_path):
    [account] = create_org(["compact"])
    seed_findings(account, "us-east-1", findings_for(account, "us-east-1", 3, datetime.now(timezone.utc) - timedelta(days=5)))
    lake = tmp_path / "lake"
    guardlake("run", "--output", str(lake), "--regions", "us-east-1", "--accounts", account)
    guardlake("run", "--output", str(lake), "--regions", "us-east-1", "--accounts", account)
    # Nothing answers at this endpoint: any AWS call (STS included) would fail the command.
    env = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}
    done = subprocess.run([str(BINARY), "compact", "--output", str(lake)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert query(lake, "findings", "select count(*) from findings") == [(3,)]
