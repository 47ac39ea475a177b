"""Fidelity of the local AWS backend: shapes, limits, paging, throttling, denial, regions."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

from conftest import assume, client, cloudtrail_fixtures, control, guardduty_fixtures
from emulator import shapes
from model_check import finding_problems, problems, shape

ACTION_TYPES = {"AWS_API_CALL", "NETWORK_CONNECTION", "PORT_PROBE", "DNS_REQUEST", "KUBERNETES_API_CALL", "RDS_LOGIN_ATTEMPT"}
RESOURCE_TYPES = {"Instance", "AccessKey", "S3Bucket", "EKSCluster", "ECSCluster", "Container", "RDSDBInstance", "Lambda"}


def error_code(exc: ClientError) -> str:
    return exc.response["Error"]["Code"]


def seed_findings(account_id: str, region: str, findings: list[dict]) -> str:
    return control("POST", "/moto-api/ext/guardduty/findings", {"account_id": account_id, "region": region, "findings": findings})["detector_id"]


def many_findings(account_id: str, region: str, total: int, base: datetime) -> list[dict]:
    types = list(shapes.TYPE_SHAPES)
    return [
        shapes.build_finding(types[n % len(types)], account_id, region, "d" * 32, n,
                             created_at=base + timedelta(minutes=n), updated_at=base + timedelta(minutes=n))
        for n in range(total)
    ]  # fmt: skip


def test_fixtures_cover_every_action_and_resource_type_and_match_the_model():
    fixtures = guardduty_fixtures()
    actions = {f["service"].get("action", {}).get("actionType") for f in fixtures.values()}
    resources = {f["resource"]["resourceType"] for f in fixtures.values()}
    assert ACTION_TYPES <= actions
    assert None in actions, "runtime and malware findings carry no action"
    assert RESOURCE_TYPES <= resources
    for name, finding in fixtures.items():
        assert finding_problems(finding) == [], name


def test_cloudtrail_fixtures_cover_every_identity_type():
    kinds = {e["userIdentity"]["type"] for e in cloudtrail_fixtures().values()}
    assert kinds == {"IAMUser", "AssumedRole", "Root", "AWSService", "FederatedUser"}


def test_sample_findings_page_by_updated_at_and_match_the_model():
    gd = client("guardduty")
    detector = gd.create_detector(Enable=True)["DetectorId"]
    types = (list(shapes.TYPE_SHAPES) * 4)[:120]  # 120 samples, every type: three pages of 50
    before_ms = int(time.time() * 1000) - 1000
    for start in range(0, len(types), 30):
        gd.create_sample_findings(DetectorId=detector, FindingTypes=types[start : start + 30])
    ids: list[str] = []
    pages = 0
    for page in gd.get_paginator("list_findings").paginate(
        DetectorId=detector,
        FindingCriteria={"Criterion": {"updatedAt": {"GreaterThanOrEqual": before_ms}}},
        PaginationConfig={"PageSize": 50},
    ):
        assert len(page["FindingIds"]) <= 50
        ids += page["FindingIds"]
        pages += 1
    assert len(ids) == len(set(ids)) == 120
    assert pages == 3
    raw_findings = []
    for start in range(0, len(ids), 50):
        # The raw wire JSON, to validate member names exactly as the API sends them.
        response = gd.get_findings(DetectorId=detector, FindingIds=ids[start : start + 50])
        assert len(response["Findings"]) == len(ids[start : start + 50])
        raw_findings += control_get_raw(detector, ids[start : start + 50])
    for finding in raw_findings:
        assert finding_problems(finding) == [], finding["type"]
        assert json.loads(finding["service"]["additionalInfo"]["value"]) == {"sample": True}
    by_type = {f["type"]: f for f in raw_findings}
    probe = by_type["Recon:EC2/PortProbeUnprotectedPort"]
    assert (probe["service"]["action"]["actionType"], probe["resource"]["resourceType"]) == ("PORT_PROBE", "Instance")
    rds = by_type["CredentialAccess:RDS/AnomalousBehavior.SuccessfulLogin"]
    assert (rds["service"]["action"]["actionType"], rds["resource"]["resourceType"]) == ("RDS_LOGIN_ATTEMPT", "RDSDBInstance")
    sequence = by_type["AttackSequence:S3/CompromisedData"]
    assert sequence["resource"]["resourceType"] == "AttackSequence" and "action" not in sequence["service"]
    assert len(sequence["service"]["detection"]["sequence"]["signals"]) == 3


def signed_post(service: str, region: str, path: str, body: dict) -> tuple[int, dict]:
    """A raw SigV4-signed rest-json POST, so a test sees the wire JSON and can send what
    boto3's own validation would refuse."""
    import urllib.error
    import urllib.request

    import botocore.session
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    from conftest import ENDPOINT

    session = botocore.session.Session()
    session.set_credentials("testing", "testing")
    request = AWSRequest(method="POST", url=f"{ENDPOINT}{path}", data=json.dumps(body), headers={"Content-Type": "application/json"})
    SigV4Auth(session.get_credentials(), service, region).add_auth(request)
    prepared = urllib.request.Request(request.url, data=request.body, headers=dict(request.headers), method="POST")
    try:
        with urllib.request.urlopen(prepared) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def control_get_raw(detector: str, ids: list[str]) -> list[dict]:
    status, body = signed_post("guardduty", "us-east-1", f"/detector/{detector}/findings/get", {"findingIds": ids})
    assert status == 200
    return body["findings"]


def test_list_findings_criteria_sorting_and_limits():
    base = datetime(2026, 11, 1, tzinfo=timezone.utc)
    findings = many_findings("123456789012", "us-east-1", 60, base)
    findings[0]["service"]["archived"] = True
    detector = seed_findings("123456789012", "us-east-1", findings)
    gd = client("guardduty")

    def ids(criterion: dict, **kw) -> list[str]:
        result = []
        for page in gd.get_paginator("list_findings").paginate(DetectorId=detector, FindingCriteria={"Criterion": criterion}, **kw):
            result += page["FindingIds"]
        return result

    def expect(pred) -> set[str]:
        return {f["id"] for f in findings if pred(f)}

    ms = lambda dt: int(dt.timestamp() * 1000)  # noqa: E731
    lo, hi = base + timedelta(minutes=10), base + timedelta(minutes=20)
    assert set(ids({"updatedAt": {"GreaterThanOrEqual": ms(lo), "LessThan": ms(hi)}})) == expect(
        lambda f: lo <= datetime.fromisoformat(f["updatedAt"].replace("Z", "+00:00")) < hi)
    assert len(ids({"updatedAt": {"GreaterThanOrEqual": ms(lo), "LessThan": ms(hi)}})) == 10
    assert set(ids({"createdAt": {"GreaterThan": ms(base + timedelta(minutes=49))}})) == expect(
        lambda f: datetime.fromisoformat(f["createdAt"].replace("Z", "+00:00")) > base + timedelta(minutes=49))
    assert set(ids({"severity": {"GreaterThanOrEqual": 7}})) == expect(lambda f: f["severity"] >= 7)
    assert set(ids({"severity": {"Gte": 7}})) == expect(lambda f: f["severity"] >= 7)
    assert set(ids({"severity": {"LessThanOrEqual": 5}})) == expect(lambda f: f["severity"] <= 5)
    assert set(ids({"type": {"Equals": ["Recon:EC2/PortProbeUnprotectedPort"]}})) == expect(lambda f: f["type"] == "Recon:EC2/PortProbeUnprotectedPort")
    assert set(ids({"type": {"NotEquals": ["Recon:EC2/PortProbeUnprotectedPort"]}})) == expect(lambda f: f["type"] != "Recon:EC2/PortProbeUnprotectedPort")
    assert set(ids({"service.archived": {"Equals": ["true"]}})) == {findings[0]["id"]}
    assert len(ids({"service.archived": {"Equals": ["false"]}})) == 59
    assert len(ids({})) == 60, "service.archived unset returns archived and unarchived"
    assert set(ids({"resource.resourceType": {"Equals": ["RDSDBInstance"]}})) == expect(lambda f: f["resource"]["resourceType"] == "RDSDBInstance")
    assert set(ids({"service.action.actionType": {"Equals": ["DNS_REQUEST"]}})) == expect(
        lambda f: f["service"].get("action", {}).get("actionType") == "DNS_REQUEST")
    assert set(ids({"id": {"Equals": [findings[5]["id"]]}})) == {findings[5]["id"]}
    assert set(ids({"accountId": {"Equals": ["123456789012"]}, "region": {"Equals": ["us-east-1"]}})) == expect(lambda f: True)
    newest_first = ids({}, SortCriteria={"AttributeName": "updatedAt", "OrderBy": "DESC"})
    assert newest_first == [f["id"] for f in reversed(findings)]

    for bad in (0, 51):
        status, body = signed_post("guardduty", "us-east-1", f"/detector/{detector}/findings", {"maxResults": bad})
        assert (status, body["__type"]) == (400, "BadRequestException")
    with pytest.raises(ClientError) as exc:
        gd.get_findings(DetectorId=detector, FindingIds=[f["id"] for f in findings[:51]])
    assert error_code(exc.value) == "BadRequestException"
    got = gd.get_findings(DetectorId=detector, FindingIds=[findings[1]["id"], "0" * 32])["Findings"]
    assert [f["Id"] for f in got] == [findings[1]["id"]], "unknown ids are omitted"


def test_archive_and_unarchive():
    finding = guardduty_fixtures()["network_instance"]
    finding["accountId"] = "123456789012"
    detector = seed_findings("123456789012", "eu-west-1", [finding])
    gd = client("guardduty", "eu-west-1")
    gd.archive_findings(DetectorId=detector, FindingIds=[finding["id"]])
    assert gd.list_findings(DetectorId=detector, FindingCriteria={"Criterion": {"service.archived": {"Equals": ["true"]}}})["FindingIds"] == [finding["id"]]
    gd.unarchive_findings(DetectorId=detector, FindingIds=[finding["id"]])
    assert gd.get_findings(DetectorId=detector, FindingIds=[finding["id"]])["Findings"][0]["Service"]["Archived"] is False


def test_findings_are_per_account_and_region_and_the_delegated_admin_sees_members():
    org = client("organizations")
    org.create_organization(FeatureSet="ALL")
    members = []
    for name in ("security", "prod", "dev"):
        status = org.create_account(AccountName=name, Email=f"{name}@example.com")["CreateAccountStatus"]
        members.append(status["AccountId"])
    admin, prod, dev = members
    base = datetime(2026, 11, 2, tzinfo=timezone.utc)
    for account in (prod, dev):
        seed_findings(account, "eu-west-1", many_findings(account, "eu-west-1", 3, base))
        seed_findings(account, "us-east-1", many_findings(account, "us-east-1", 2, base))
    client("guardduty", "eu-west-1").enable_organization_admin_account(AdminAccountId=admin)

    prod_gd = client("guardduty", "eu-west-1", assume(prod))
    detector = prod_gd.list_detectors()["DetectorIds"][0]
    own = prod_gd.get_findings(DetectorId=detector, FindingIds=prod_gd.list_findings(DetectorId=detector)["FindingIds"])["Findings"]
    assert {f["AccountId"] for f in own} == {prod} and len(own) == 3

    admin_gd = client("guardduty", "eu-west-1", assume(admin))
    admin_detector = admin_gd.create_detector(Enable=True)["DetectorId"]
    ids = admin_gd.list_findings(DetectorId=admin_detector)["FindingIds"]
    found = admin_gd.get_findings(DetectorId=admin_detector, FindingIds=ids)["Findings"]
    assert sorted(f["AccountId"] for f in found) == sorted([prod] * 3 + [dev] * 3)
    assert {f["Region"] for f in found} == {"eu-west-1"}
    # Not the administrator in us-east-1: only its own (none).
    admin_us = client("guardduty", "us-east-1", assume(admin))
    us_detector = admin_us.create_detector(Enable=True)["DetectorId"]
    assert admin_us.list_findings(DetectorId=us_detector)["FindingIds"] == []


def test_lookup_events_attributes_order_paging_and_shapes():
    events = list(cloudtrail_fixtures().values())
    account = "111122223333"
    control("POST", "/moto-api/ext/cloudtrail/events", {"account_id": account, "region": "eu-west-1", "events": events})
    ct = client("cloudtrail", "eu-west-1", {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"})
    # The default credentials are account 123456789012; seed there too for the calls below.
    control("POST", "/moto-api/ext/cloudtrail/events", {"account_id": "123456789012", "region": "eu-west-1", "events": events})
    everything = ct.lookup_events(StartTime=datetime(2026, 11, 20, tzinfo=timezone.utc), EndTime=datetime(2026, 11, 21, tzinfo=timezone.utc))["Events"]
    assert [e["EventId"] for e in everything] == [e["eventID"] for e in sorted(events, key=lambda e: e["eventTime"], reverse=True)]
    event_shape = shape("cloudtrail", "Event")
    for event in everything:
        record = json.loads(event["CloudTrailEvent"])
        assert record in events
    time.sleep(1.1)
    page = ct.lookup_events(MaxResults=2)
    assert len(page["Events"]) == 2 and "NextToken" in page
    rest = ct.lookup_events(MaxResults=50, NextToken=page["NextToken"])
    assert len(rest["Events"]) == 3 and "NextToken" not in rest
    time.sleep(1.1)
    by_key = ct.lookup_events(LookupAttributes=[{"AttributeKey": "AccessKeyId", "AttributeValue": "ASIA0000000000000002"}])["Events"]
    assert [e["EventName"] for e in by_key] == ["StopLogging"]
    assert problems({k: v for k, v in by_key[0].items() if k != "EventTime"} | {"EventTime": 1.0}, event_shape) == []
    root = ct.lookup_events(LookupAttributes=[{"AttributeKey": "Username", "AttributeValue": "root"}])["Events"]
    assert [e["EventName"] for e in root] == ["ConsoleLogin"]
    time.sleep(1.1)
    with pytest.raises(ClientError) as exc:
        ct.lookup_events(LookupAttributes=[{"AttributeKey": "EventName", "AttributeValue": "A"}, {"AttributeKey": "Username", "AttributeValue": "B"}])
    assert error_code(exc.value) == "InvalidLookupAttributesException"
    with pytest.raises(ClientError) as exc:
        ct.lookup_events(MaxResults=51)
    assert error_code(exc.value) == "InvalidMaxResultsException"


def test_third_lookup_within_one_second_is_throttled_and_counted():
    ct = client("cloudtrail", "eu-west-1")
    outcomes = []
    for _ in range(3):
        try:
            ct.lookup_events(LookupAttributes=[{"AttributeKey": "EventName", "AttributeValue": "StopLogging"}])
            outcomes.append("ok")
        except ClientError as exc:
            outcomes.append(error_code(exc))
    assert outcomes == ["ok", "ok", "ThrottlingException"]
    # Another region of the same account has its own budget.
    client("cloudtrail", "us-east-1").lookup_events()
    time.sleep(1.05)
    client("cloudtrail", "eu-west-1").lookup_events()
    stats = control("GET", "/moto-api/ext/stats")
    row = next(r for r in stats["requests"] if r["operation"] == "LookupEvents" and r["region"] == "eu-west-1")
    assert row["count"] == 4 and row["throttled"] == 1 and row["max_per_second"] == 3


def test_list_regions_and_a_disabled_region_answers_like_aws():
    account = client("account")
    regions = {r["RegionName"]: r["RegionOptStatus"] for r in account.get_paginator("list_regions").paginate().build_full_result()["Regions"]}
    assert regions["us-east-1"] == "ENABLED_BY_DEFAULT" and regions["af-south-1"] == "DISABLED"
    control("POST", "/moto-api/ext/regions", {"account_id": "123456789012", "region": "af-south-1", "status": "ENABLED"})
    control("POST", "/moto-api/ext/regions", {"account_id": "123456789012", "region": "eu-west-3", "status": "DISABLED"})
    enabled = {r["RegionName"] for r in account.list_regions(MaxResults=50, RegionOptStatusContains=["ENABLED", "ENABLED_BY_DEFAULT"])["Regions"]}
    assert "af-south-1" in enabled and "eu-west-3" not in enabled
    with pytest.raises(ClientError) as exc:
        client("guardduty", "eu-west-3").list_detectors()
    assert error_code(exc.value) == "UnrecognizedClientException"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as exc:
        client("cloudtrail", "me-south-1").lookup_events()
    assert error_code(exc.value) == "UnrecognizedClientException"
    client("guardduty", "af-south-1").list_detectors()


def test_denied_role_fails_with_access_denied():
    control("POST", "/moto-api/ext/deny-assume", {"account_id": "222233334444"})
    with pytest.raises(ClientError) as exc:
        assume("222233334444")
    assert error_code(exc.value) == "AccessDenied"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert assume("333344445555")["aws_access_key_id"]


def test_faults_inject_throttling_errors_latency_and_resets():
    gd = client("guardduty")
    control("POST", "/moto-api/ext/faults", {"operation": "ListDetectors", "error": "ThrottlingException", "count": 2})
    for _ in range(2):
        with pytest.raises(ClientError) as exc:
            gd.list_detectors()
        assert error_code(exc.value) == "ThrottlingException"
    assert gd.list_detectors()["DetectorIds"] == []
    control("POST", "/moto-api/ext/faults", {"operation": "ListDetectors", "error": "500", "region": "us-east-1", "count": 1})
    with pytest.raises(ClientError) as exc:
        gd.list_detectors()
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    control("POST", "/moto-api/ext/faults", {"operation": "ListDetectors", "latency_ms": 300, "count": 1})
    started = time.monotonic()
    gd.list_detectors()
    assert time.monotonic() - started >= 0.3
    control("POST", "/moto-api/ext/faults", {"operation": "ListDetectors", "error": "reset"})
    with pytest.raises((ConnectionClosedError, EndpointConnectionError, ClientError)):
        gd.list_detectors()
    control("DELETE", "/moto-api/ext/faults")
    assert gd.list_detectors()["DetectorIds"] == []


def test_backends_on_two_ports_start_serve_and_stop_independently():
    import subprocess
    import urllib.request
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]

    def make(target: str, port: int) -> subprocess.CompletedProcess:
        return subprocess.run(["make", "--no-print-directory", target, f"EMULATOR_PORT={port}"], cwd=root, capture_output=True, text=True, timeout=120)

    def answers(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/ext/stats", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    first, second = 4611, 4612
    try:
        for port in (first, second):
            started = make("emulator", port)
            assert started.returncode == 0 and f"ready on 127.0.0.1:{port}" in started.stdout, started.stdout + started.stderr
            assert (root / f".emulator-{port}.pid").exists()
        assert answers(first) and answers(second)
        stopped = make("emulator-stop", first)
        assert stopped.returncode == 0, stopped.stderr
        assert not answers(first) and answers(second), "stopping one leaves the other serving"
        again = make("emulator", first)
        assert "already running" not in again.stdout and answers(first), again.stdout
    finally:
        for port in (first, second):
            make("emulator-stop", port)
    assert not answers(first) and not answers(second)


def raw_answers(gd_client, operation: str) -> list[dict]:
    """The JSON bodies of the backend's successful answers to `operation`, as sent (before
    botocore parses them)."""
    bodies: list[dict] = []

    def keep(http_response, **_):
        if http_response.status_code == 200:
            bodies.append(json.loads(http_response.text))

    gd_client.meta.events.register(f"after-call.guardduty.{operation}", keep)
    return bodies


def test_detector_features_members_and_runtime_coverage_match_the_model():
    org = client("organizations")
    org.create_organization(FeatureSet="ALL")
    admin, member, outsider = (org.create_account(AccountName=n, Email=f"{n}@example.com")["CreateAccountStatus"]["AccountId"]
                               for n in ("security", "prod", "dev"))  # fmt: skip
    for account in (admin, member, outsider):
        seed_findings(account, "eu-west-1", [])
    client("guardduty", "eu-west-1").enable_organization_admin_account(AdminAccountId=admin)
    control("POST", "/moto-api/ext/guardduty/detector", {"account_id": member, "region": "eu-west-1", "features": {"S3_DATA_EVENTS": "DISABLED", "RUNTIME_MONITORING": "ENABLED"}})
    control("POST", "/moto-api/ext/guardduty/member", {"admin_account": admin, "region": "eu-west-1", "account_id": outsider, "relationship": "Disabled"})
    control("POST", "/moto-api/ext/guardduty/coverage", {"account_id": member, "region": "eu-west-1", "resources": {"EC2": {"HEALTHY": 2, "UNHEALTHY": 1}, "EKS": {"HEALTHY": 4}}})

    gd = client("guardduty", "eu-west-1", assume(admin))
    detector = gd.list_detectors()["DetectorIds"][0]
    answers = {op: raw_answers(gd, op) for op in ("GetDetector", "ListMembers", "GetMemberDetectors", "GetCoverageStatistics")}
    new = gd.get_detector(DetectorId=detector)
    assert {f["Name"]: f["Status"] for f in new["Features"]}["S3_DATA_EVENTS"] == "ENABLED", "a new detector has the default features"
    assert set(shape("guardduty", "DetectorFeatureResult").enum) >= {f["Name"] for f in new["Features"]}
    members = {m["AccountId"]: m["RelationshipStatus"] for m in gd.list_members(DetectorId=detector, OnlyAssociated="false")["Members"]}
    assert members[member] == "Enabled" and members[outsider] == "Disabled", members
    assert members["123456789012"] == "Created", "the management account has no detector there"
    assert [m["AccountId"] for m in gd.list_members(DetectorId=detector)["Members"]] == [member], "only associated (Enabled) by default"
    got = gd.get_member_detectors(DetectorId=detector, AccountIds=[member, "999999999999"])
    [config] = got["MemberDataSourceConfigurations"]
    features = {f["Name"]: f["Status"] for f in config["Features"]}
    assert config["AccountId"] == member and features["S3_DATA_EVENTS"] == "DISABLED" and features["RUNTIME_MONITORING"] == "ENABLED"
    runtime = next(f for f in config["Features"] if f["Name"] == "RUNTIME_MONITORING")
    assert {a["Name"] for a in runtime["AdditionalConfiguration"]} >= {"EC2_AGENT_MANAGEMENT"}
    assert [u["AccountId"] for u in got["UnprocessedAccounts"]] == ["999999999999"]
    with pytest.raises(ClientError) as too_many:
        gd.get_member_detectors(DetectorId=detector, AccountIds=[f"{n:012d}" for n in range(51)])
    assert error_code(too_many.value) == "BadRequestException"
    stats = gd.get_coverage_statistics(DetectorId=detector, StatisticsType=["COUNT_BY_COVERAGE_STATUS", "COUNT_BY_RESOURCE_TYPE"],
                                       FilterCriteria={"FilterCriterion": [{"CriterionKey": "ACCOUNT_ID", "FilterCondition": {"Equals": [member]}}]})  # fmt: skip
    assert stats["CoverageStatistics"] == {"CountByCoverageStatus": {"HEALTHY": 6, "UNHEALTHY": 1}, "CountByResourceType": {"EC2": 3, "EKS": 4}}
    disabled = control("POST", "/moto-api/ext/guardduty/detector", {"account_id": outsider, "region": "eu-west-1", "status": "DISABLED"})
    outsider_gd = client("guardduty", "eu-west-1", assume(outsider))
    assert outsider_gd.get_detector(DetectorId=disabled["detector_id"])["Status"] == "DISABLED"
    for operation, output in (("GetDetector", "GetDetectorResponse"), ("ListMembers", "ListMembersResponse"),
                              ("GetMemberDetectors", "GetMemberDetectorsResponse"), ("GetCoverageStatistics", "GetCoverageStatisticsResponse")):  # fmt: skip
        assert answers[operation], operation
        for body in answers[operation]:
            assert not problems(body, shape("guardduty", output)), operation
