"""GuardDuty ListFindings, GetFindings, CreateSampleFindings, Archive/UnarchiveFindings,
ListMembers, GetMemberDetectors and GetCoverageStatistics for moto; detectors created here
report the features a new detector has.

moto 5.2.5 keeps GuardDuty detectors per account and region but answers 404 for the finding
operations. This module adds their routes to moto's GuardDuty URL map and their response
methods to `GuardDutyResponse`; findings live in `FINDINGS[(account_id, region)]`, next to
moto's detectors, and are cleared by `POST /moto-api/reset` (see `control.py`).

Limits follow the service model: ListFindings maxResults 1-50 (default 50), GetFindings at
most 50 ids; anything outside answers 400 BadRequestException.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

from moto.core.exceptions import JsonRESTError
from moto.guardduty import urls as gd_urls
from moto.guardduty.models import guardduty_backends
from moto.guardduty.responses import GuardDutyResponse
from moto.organizations.models import organizations_backends

from . import shapes

# (account_id, region) -> finding id -> finding JSON exactly as seeded or generated.
FINDINGS: dict[tuple[str, str], dict[str, dict]] = {}
# (account_id, region) -> finding id -> the bytes GetFindings answers for it instead of its JSON
# (hostile-input tests: invalid UTF-8, raw control characters, huge findings).
RAW_TEXT: dict[tuple[str, str], dict[str, bytes]] = {}
# (admin account, region, member) -> relationship status other than Enabled (None: not a member).
RELATIONSHIPS: dict[tuple[str, str, str], str | None] = {}
# (account, region) -> resource type (EC2, ECS, EKS) -> coverage status (HEALTHY, UNHEALTHY) -> count.
COVERAGE: dict[tuple[str, str], dict[str, dict[str, int]]] = {}
# (account or "*", region): CreateSampleFindings answers but creates nothing there.
SUPPRESSED: set[tuple[str, str]] = set()
LOCK = threading.RLock()
# Whether a region is enabled for an account (set by control.py, which keeps opt-in status).
REGION_ENABLED: Callable[[str, str], bool] = lambda account_id, region: True

# What GetDetector reports for a new detector: the foundational sources and the protection plans
# GuardDuty turns on by default, Runtime Monitoring off.
DEFAULT_FEATURES: dict[str, str] = {
    "CLOUD_TRAIL": "ENABLED",
    "DNS_LOGS": "ENABLED",
    "FLOW_LOGS": "ENABLED",
    "S3_DATA_EVENTS": "ENABLED",
    "EKS_AUDIT_LOGS": "ENABLED",
    "EBS_MALWARE_PROTECTION": "ENABLED",
    "RDS_LOGIN_EVENTS": "ENABLED",
    "LAMBDA_NETWORK_LOGS": "ENABLED",
    "EKS_RUNTIME_MONITORING": "DISABLED",
    "RUNTIME_MONITORING": "DISABLED",
}
ADDITIONAL: dict[str, list[str]] = {
    "EKS_RUNTIME_MONITORING": ["EKS_ADDON_MANAGEMENT"],
    "RUNTIME_MONITORING": ["EKS_ADDON_MANAGEMENT", "ECS_FARGATE_AGENT_MANAGEMENT", "EC2_AGENT_MANAGEMENT"],
}


class BadRequestException(JsonRESTError):
    code = 400

    def __init__(self, message: str) -> None:
        super().__init__("BadRequestException", message)

    def get_headers(self, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
        return [("X-Amzn-ErrorType", "BadRequestException")]


def reset() -> None:
    with LOCK:
        FINDINGS.clear()
        RAW_TEXT.clear()
        RELATIONSHIPS.clear()
        COVERAGE.clear()
        SUPPRESSED.clear()


def features(statuses: dict[str, str]) -> list[dict]:
    """GetDetector's `features`: each with its status and additional configuration."""
    now = int(datetime.now(timezone.utc).timestamp())  # rest-json timestamps: epoch seconds
    out = []
    for name, status in statuses.items():
        feature: dict[str, Any] = {"name": name, "status": status, "updatedAt": now}
        if name in ADDITIONAL:
            feature["additionalConfiguration"] = [{"name": a, "status": status, "updatedAt": now} for a in ADDITIONAL[name]]
        out.append(feature)
    return out


def ensure_detector(account_id: str, region: str) -> str:
    """The detector id of the account in the region, created (enabled, with the default
    features) when it has none."""
    backend = guardduty_backends[account_id][region]
    detectors = backend.list_detectors()
    if detectors:
        return detectors[0]
    return backend.create_detector(True, "FIFTEEN_MINUTES", {}, {}, features(DEFAULT_FEATURES))


def configure_detector(account_id: str, region: str, status: str | None, changed: dict[str, str]) -> str:
    """Sets the detector's status and some features' status (creating it when needed)."""
    detector_id = ensure_detector(account_id, region)
    detector = guardduty_backends[account_id][region].get_detector(detector_id)
    statuses = {f["name"]: f["status"] for f in detector.features} or dict(DEFAULT_FEATURES)
    statuses.update(changed)
    detector.update(None if status is None else status == "ENABLED", None, None, features(statuses))
    return detector_id


def seed(account_id: str, region: str, findings: list[dict], raw_text: dict[str, bytes] | None = None) -> str:
    detector_id = ensure_detector(account_id, region)
    with LOCK:
        store = FINDINGS.setdefault((account_id, region), {})
        for finding in findings:
            store[str(finding.get("id", uuid.uuid4().hex))] = finding
        RAW_TEXT.setdefault((account_id, region), {}).update(raw_text or {})
    return detector_id


def _organization_members(account_id: str) -> list[str]:
    """Accounts of the organization `account_id` belongs to (itself when in none)."""
    for _, per_partition in list(organizations_backends.items()):
        backend = per_partition.get("aws") if hasattr(per_partition, "get") else None
        if backend is None or backend.org is None:
            continue
        ids = [account.id for account in backend.accounts]
        if account_id in ids:
            return ids
    return [account_id]


def _is_delegated_admin(account_id: str, region: str) -> bool:
    for _, per_region in list(guardduty_backends.items()):
        backend = per_region.get(region) if hasattr(per_region, "get") else None
        if backend is not None and account_id in backend.admin_account_ids:
            return True
    return False


def visible_findings(account_id: str, region: str) -> list[dict]:
    """What the account's detector sees: its own findings, plus every organization member's
    findings in the region when it is the delegated administrator there."""
    accounts = [account_id]
    if _is_delegated_admin(account_id, region):
        accounts += [a for a in _organization_members(account_id) if a != account_id]
    with LOCK:
        result = []
        for acct in accounts:
            result.extend(FINDINGS.get((acct, region), {}).values())
        return result


def _epoch_ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def _field(finding: dict, name: str) -> Any:
    if name in ("updatedAt", "createdAt"):
        value = finding.get(name)
        return _epoch_ms(value) if isinstance(value, str) else None
    value: Any = finding
    for part in name.split("."):
        if isinstance(value, list):
            value = value[0] if value else None
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _matches(finding: dict, criteria: dict[str, dict]) -> bool:
    for name, condition in criteria.items():
        value = _field(finding, name)
        for op, operand in condition.items():
            if op in ("eq", "equals"):
                if value is None or not _equal_any(value, operand):
                    return False
            elif op in ("neq", "notEquals"):
                if value is not None and _equal_any(value, operand):
                    return False
            elif op in ("gt", "greaterThan", "gte", "greaterThanOrEqual", "lt", "lessThan", "lte", "lessThanOrEqual"):
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    return False
                limit = float(operand)
                ok = {
                    "gt": value > limit,
                    "greaterThan": value > limit,
                    "gte": value >= limit,
                    "greaterThanOrEqual": value >= limit,
                    "lt": value < limit,
                    "lessThan": value < limit,
                    "lte": value <= limit,
                    "lessThanOrEqual": value <= limit,
                }[op]
                if not ok:
                    return False
            else:
                raise BadRequestException(f"The request is rejected because the condition {op} is not supported.")
    return True


def _equal_any(value: Any, operands: list) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return any(float(o) == float(value) for o in operands)
        except ValueError:
            return False
    return _as_text(value) in [str(o) for o in operands]


def _sort(findings: list[dict], sort: dict | None) -> list[dict]:
    if not sort or not sort.get("attributeName"):
        return sorted(findings, key=lambda f: (f.get("updatedAt", ""), f.get("id", "")))
    name = sort["attributeName"]
    reverse = sort.get("orderBy", "ASC") == "DESC"

    def key(f: dict):
        v = _field(f, name)
        return (v is None, v if not isinstance(v, bool) else int(v), f.get("id", ""))

    try:
        return sorted(findings, key=key, reverse=reverse)
    except TypeError:
        return sorted(findings, key=lambda f: _as_text(_field(f, name)), reverse=reverse)


def _detector(self: GuardDutyResponse) -> str:
    detector_id = self.path.split("/")[2]
    # Raises the service's own error when the detector is not the caller's.
    self.guardduty_backend.get_detector(detector_id)
    return detector_id


def list_findings(self: GuardDutyResponse) -> str:
    _detector(self)
    max_results = self._get_param("maxResults")
    if max_results is None:
        max_results = 50
    if not isinstance(max_results, int) or not 1 <= max_results <= 50:
        raise BadRequestException("The request is rejected because the maxResults must be between 1 and 50.")
    criteria = (self._get_param("findingCriteria") or {}).get("criterion") or {}
    selected = [f for f in visible_findings(self.current_account, self.region) if _matches(f, criteria)]
    selected = _sort(selected, self._get_param("sortCriteria"))
    token = self._get_param("nextToken")
    start = 0
    if token:
        try:
            start = int(token)
        except ValueError:
            raise BadRequestException("The request is rejected because the nextToken is not valid.") from None
    page = selected[start : start + max_results]
    body: dict[str, Any] = {"findingIds": [f["id"] for f in page]}
    if start + max_results < len(selected):
        body["nextToken"] = str(start + max_results)
    return json.dumps(body)


def get_findings(self: GuardDutyResponse) -> str:
    _detector(self)
    ids = self._get_param("findingIds") or []
    if len(ids) > 50:
        raise BadRequestException("The request is rejected because findingIds has more than 50 items.")
    by_id = {f["id"]: f for f in visible_findings(self.current_account, self.region)}
    found = [by_id[i] for i in ids if i in by_id]
    found = _sort(found, self._get_param("sortCriteria")) if self._get_param("sortCriteria") else found
    with LOCK:
        raw = {(f["accountId"], f["id"]): RAW_TEXT.get((f["accountId"], self.region), {}).get(f["id"]) for f in found}
    if not any(raw.values()):
        return json.dumps({"findings": found})
    parts = [raw[(f["accountId"], f["id"])] or json.dumps(f).encode() for f in found]
    body = b'{"findings":[' + b",".join(parts) + b'],"unprocessedFindings":[]}'
    return 200, {"Content-Type": "application/json"}, body  # type: ignore[return-value]


def create_sample_findings(self: GuardDutyResponse) -> str:
    detector_id = _detector(self)
    with LOCK:
        if {(self.current_account, self.region), ("*", self.region)} & SUPPRESSED:
            return "{}"
    types = self._get_param("findingTypes") or list(shapes.TYPE_SHAPES)
    samples = []
    now = datetime.now(timezone.utc)
    for n, finding_type in enumerate(types):
        sample = shapes.build_finding(
            finding_type,
            self.current_account,
            self.region,
            detector_id,
            n,
            sample=True,
            created_at=now,
            fid=uuid.uuid4().hex,
        )
        samples.append(sample)
    seed(self.current_account, self.region, samples)
    return "{}"


def _set_archived(self: GuardDutyResponse, archived: bool) -> str:
    _detector(self)
    ids = set(self._get_param("findingIds") or [])
    if not 1 <= len(ids) <= 50:
        raise BadRequestException("The request is rejected because findingIds must have 1 to 50 items.")
    with LOCK:
        for finding in visible_findings(self.current_account, self.region):
            if finding["id"] in ids:
                finding.setdefault("service", {})["archived"] = archived
    return "{}"


def archive_findings(self: GuardDutyResponse) -> str:
    return _set_archived(self, True)


def unarchive_findings(self: GuardDutyResponse) -> str:
    return _set_archived(self, False)


def _members(admin: str, region: str) -> list[dict]:
    """The administrator's members in the region: every other organization account while it is
    the delegated administrator there. Enabled when monitored; Created when it has no detector
    there, Disabled when its detector is disabled, RegionDisabled when the region is not opted in
    for it; or as set by the control endpoint."""
    if not _is_delegated_admin(admin, region):
        return []
    out = []
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    for account in _organization_members(admin):
        if account == admin:
            continue
        detectors = guardduty_backends[account][region].list_detectors()
        if not REGION_ENABLED(account, region):
            natural = "RegionDisabled"
        elif not detectors:
            natural = "Created"
        elif not guardduty_backends[account][region].get_detector(detectors[0]).enabled:
            natural = "Disabled"
        else:
            natural = "Enabled"
        with LOCK:
            status = RELATIONSHIPS.get((admin, region, account), natural)
        if status is None:
            continue
        member = {"accountId": account, "masterId": admin, "administratorId": admin, "email": f"{account}@example.com",
                  "relationshipStatus": status, "invitedAt": now, "updatedAt": now}  # fmt: skip
        if detectors:
            member["detectorId"] = detectors[0]
        out.append(member)
    return out


def list_members(self: GuardDutyResponse) -> str:
    _detector(self)
    max_results = int(self._get_param("maxResults") or 50)
    if not 1 <= max_results <= 50:
        raise BadRequestException("The request is rejected because the maxResults must be between 1 and 50.")
    members = _members(self.current_account, self.region)
    if str(self._get_param("onlyAssociated") or "true").lower() == "true":
        members = [m for m in members if m["relationshipStatus"] == "Enabled"]
    start = int(self._get_param("nextToken") or 0)
    body: dict[str, Any] = {"members": members[start : start + max_results]}
    if start + max_results < len(members):
        body["nextToken"] = str(start + max_results)
    return json.dumps(body)


def get_member_detectors(self: GuardDutyResponse) -> str:
    _detector(self)
    ids = self._get_param("accountIds") or []
    if not 1 <= len(ids) <= 50:
        raise BadRequestException("The request is rejected because accountIds must have 1 to 50 items.")
    members = {m["accountId"]: m for m in _members(self.current_account, self.region)}
    found, unprocessed = [], []
    for account in ids:
        detector_id = members.get(account, {}).get("detectorId")
        if detector_id is None:
            unprocessed.append({"accountId": account, "result": "The request is rejected because the given account ID is not an associated member of the account."})
            continue
        detector = guardduty_backends[account][self.region].get_detector(detector_id)
        found.append({"accountId": account, "features": detector.features, "dataSources": detector.to_json()["dataSources"]})
    return json.dumps({"members": found, "unprocessedAccounts": unprocessed})


def get_coverage_statistics(self: GuardDutyResponse) -> str:
    _detector(self)
    kinds = self._get_param("statisticsType") or []
    if not kinds:
        raise BadRequestException("The request is rejected because statisticsType is required.")
    accounts = [self.current_account] + [m["accountId"] for m in _members(self.current_account, self.region)]
    for criterion in (self._get_param("filterCriteria") or {}).get("filterCriterion") or []:
        if criterion.get("criterionKey") == "ACCOUNT_ID":
            accounts = [a for a in accounts if a in (criterion.get("filterCondition") or {}).get("equals", [])]
    by_type: dict[str, int] = {}
    by_status: dict[str, int] = {}
    with LOCK:
        for account in accounts:
            for resource_type, statuses in COVERAGE.get((account, self.region), {}).items():
                for status, count in statuses.items():
                    by_type[resource_type] = by_type.get(resource_type, 0) + count
                    by_status[status] = by_status.get(status, 0) + count
    statistics: dict[str, Any] = {}
    if "COUNT_BY_RESOURCE_TYPE" in kinds:
        statistics["countByResourceType"] = by_type
    if "COUNT_BY_COVERAGE_STATUS" in kinds:
        statistics["countByCoverageStatus"] = by_status
    return json.dumps({"coverageStatistics": statistics})


def install() -> None:
    """Adds the routes and response methods to moto's GuardDuty service."""
    suffixes = ("findings", "findings/get", "findings/create", "findings/archive", "findings/unarchive",
                "member", "member/detector/get", "coverage/statistics")  # fmt: skip
    for suffix in suffixes:
        gd_urls.url_paths["{0}/detector/(?P<detector_id>[^/]+)/" + suffix + "$"] = GuardDutyResponse.dispatch
    GuardDutyResponse.list_findings = list_findings
    GuardDutyResponse.get_findings = get_findings
    GuardDutyResponse.create_sample_findings = create_sample_findings
    GuardDutyResponse.archive_findings = archive_findings
    GuardDutyResponse.unarchive_findings = unarchive_findings
    GuardDutyResponse.list_members = list_members
    GuardDutyResponse.get_member_detectors = get_member_detectors
    GuardDutyResponse.get_coverage_statistics = get_coverage_statistics
