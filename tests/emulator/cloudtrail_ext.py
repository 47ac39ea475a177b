"""CloudTrail LookupEvents for moto (moto 5.2.5 answers 500).

Events live in `EVENTS[(account_id, region)]` as full CloudTrail records. LookupEvents follows
the service model and the documented limits: at most one LookupAttribute of the eight keys,
MaxResults 1-50 (default 50), newest first, NextToken paging, StartTime <= EndTime. The
2 requests/s per account and region limit is enforced by `control.py`, which sees every call.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime
from typing import Any

from moto.cloudtrail.responses import CloudTrailResponse
from moto.core.exceptions import JsonRESTError

EVENTS: dict[tuple[str, str], dict[str, dict]] = {}
LOCK = threading.RLock()

LOOKUP_KEYS = (
    "EventId",
    "EventName",
    "ReadOnly",
    "Username",
    "ResourceType",
    "ResourceName",
    "EventSource",
    "AccessKeyId",
)


class CloudTrailError(JsonRESTError):
    code = 400


def reset() -> None:
    with LOCK:
        EVENTS.clear()


def seed(account_id: str, region: str, events: list[dict]) -> None:
    with LOCK:
        store = EVENTS.setdefault((account_id, region), {})
        for event in events:
            store[event["eventID"]] = event


def _epoch(record: dict) -> float:
    return datetime.fromisoformat(record["eventTime"].replace("Z", "+00:00")).timestamp()


def username(record: dict) -> str | None:
    """The `Username` LookupEvents reports: the IAM user, the role session, root, or the service."""
    identity = record.get("userIdentity") or {}
    if identity.get("userName"):
        return identity["userName"]
    kind = identity.get("type")
    if kind == "Root":
        return "root"
    if kind == "AssumedRole" and identity.get("arn"):
        return identity["arn"].rsplit("/", 1)[-1]
    if kind == "AWSService":
        return identity.get("invokedBy")
    if kind == "FederatedUser" and identity.get("arn"):
        return identity["arn"].rsplit("/", 1)[-1]
    return None


def _resources(record: dict) -> list[dict]:
    return [
        {"ResourceType": r.get("type"), "ResourceName": r.get("ARN")}
        for r in record.get("resources") or []
    ]


def _attribute(record: dict, key: str) -> list[str]:
    identity = record.get("userIdentity") or {}
    if key == "EventId":
        return [record.get("eventID", "")]
    if key == "EventName":
        return [record.get("eventName", "")]
    if key == "ReadOnly":
        return [str(record.get("readOnly", False)).lower()]
    if key == "Username":
        name = username(record)
        return [name] if name else []
    if key == "ResourceType":
        return [r["ResourceType"] for r in _resources(record) if r["ResourceType"]]
    if key == "ResourceName":
        return [r["ResourceName"] for r in _resources(record) if r["ResourceName"]]
    if key == "EventSource":
        return [record.get("eventSource", "")]
    if key == "AccessKeyId":
        return [identity.get("accessKeyId", "")]
    return []


def _summary(record: dict) -> dict[str, Any]:
    identity = record.get("userIdentity") or {}
    event: dict[str, Any] = {
        "EventId": record["eventID"],
        "EventName": record.get("eventName"),
        "ReadOnly": str(record.get("readOnly", False)).lower(),
        "EventTime": _epoch(record),
        "EventSource": record.get("eventSource"),
        "Resources": _resources(record),
        "CloudTrailEvent": json.dumps(record),
    }
    if identity.get("accessKeyId"):
        event["AccessKeyId"] = identity["accessKeyId"]
    name = username(record)
    if name:
        event["Username"] = name
    return event


def lookup_events(self: CloudTrailResponse) -> str:
    attributes = self._get_param("LookupAttributes") or []
    if len(attributes) > 1:
        raise CloudTrailError(
            "InvalidLookupAttributesException",
            "You cannot use more than one lookup attribute.",
        )
    for attribute in attributes:
        if attribute.get("AttributeKey") not in LOOKUP_KEYS:
            raise CloudTrailError(
                "InvalidLookupAttributesException",
                f"Invalid attribute key {attribute.get('AttributeKey')!r}; use one of {', '.join(LOOKUP_KEYS)}.",
            )
    max_results = self._get_param("MaxResults")
    if max_results is None:
        max_results = 50
    if not 1 <= int(max_results) <= 50:
        raise CloudTrailError("InvalidMaxResultsException", "MaxResults must be between 1 and 50.")
    start = self._get_param("StartTime")
    end = self._get_param("EndTime")
    start = float(start) if start is not None else None
    end = float(end) if end is not None else None
    if start is not None and end is not None and start > end:
        raise CloudTrailError("InvalidTimeRangeException", "StartTime must be before EndTime.")
    with LOCK:
        records = list(EVENTS.get((self.current_account, self.region), {}).values())
    selected = []
    for record in records:
        t = _epoch(record)
        if start is not None and t < start:
            continue
        if end is not None and t > end:
            continue
        if attributes:
            key, value = attributes[0]["AttributeKey"], attributes[0].get("AttributeValue")
            if value not in _attribute(record, key):
                continue
        selected.append(record)
    selected.sort(key=lambda r: (_epoch(r), r["eventID"]), reverse=True)
    token = self._get_param("NextToken")
    offset = 0
    if token:
        try:
            offset = int(token)
        except ValueError:
            raise CloudTrailError("InvalidNextTokenException", "Invalid NextToken.") from None
    page = selected[offset : offset + int(max_results)]
    body: dict[str, Any] = {"Events": [_summary(r) for r in page]}
    if offset + int(max_results) < len(selected):
        body["NextToken"] = str(offset + int(max_results))
    return json.dumps(body)


def install() -> None:
    CloudTrailResponse.lookup_events = lookup_events
