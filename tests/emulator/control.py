"""WSGI layer in front of moto: seeding and control endpoints, and what AWS does per request.

Every signed request passes through `ControlMiddleware` first. It resolves the operation, the
calling account (from the SigV4 access key, as moto does) and the region (the credential scope),
then, in this order:
1. counts the request in the stats;
2. answers as AWS does for an opt-in region the account has not enabled (403);
3. refuses AssumeRole into an account marked with `deny-assume` (403 AccessDenied);
4. applies injected faults (latency, ThrottlingException, 500, connection reset);
5. throttles LookupEvents above 2 requests/s per account and region (400 ThrottlingException);
6. answers account:ListRegions itself (moto has no such route);
and hands everything else to moto. The unsigned endpoints under `/moto-api/ext/` are
documented in `README.md` beside this file.
"""

from __future__ import annotations

import base64
import io
import json
import random
import re
import socket
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import defaultdict, deque
from typing import Any, Callable
from urllib.parse import parse_qs

from . import cloudtrail_ext, guardduty_ext

# Commercial regions. Those in OPT_IN are disabled until enabled, as on AWS.
DEFAULT_REGIONS = [
    "us-east-1", "us-east-2", "us-west-1", "us-west-2", "ca-central-1", "sa-east-1",
    "eu-west-1", "eu-west-2", "eu-west-3", "eu-central-1", "eu-north-1",
    "ap-northeast-1", "ap-northeast-2", "ap-northeast-3", "ap-southeast-1",
    "ap-southeast-2", "ap-south-1",
]  # fmt: skip
OPT_IN = [
    "af-south-1", "ap-east-1", "ap-south-2", "ap-southeast-3", "ap-southeast-4",
    "eu-south-1", "eu-south-2", "eu-central-2", "me-south-1", "me-central-1", "il-central-1",
]  # fmt: skip
ALL_REGIONS = DEFAULT_REGIONS + OPT_IN

LOOKUP_EVENTS_PER_SECOND = 2

GUARDDUTY_ROUTES = [
    ("POST", r"^/detector$", "CreateDetector"),
    ("GET", r"^/detector$", "ListDetectors"),
    ("GET", r"^/detector/[^/]+$", "GetDetector"),
    ("POST", r"^/detector/[^/]+$", "UpdateDetector"),
    ("DELETE", r"^/detector/[^/]+$", "DeleteDetector"),
    ("POST", r"^/detector/[^/]+/findings$", "ListFindings"),
    ("POST", r"^/detector/[^/]+/findings/get$", "GetFindings"),
    ("POST", r"^/detector/[^/]+/findings/create$", "CreateSampleFindings"),
    ("POST", r"^/detector/[^/]+/findings/archive$", "ArchiveFindings"),
    ("POST", r"^/detector/[^/]+/findings/unarchive$", "UnarchiveFindings"),
    ("POST", r"^/admin/enable$", "EnableOrganizationAdminAccount"),
    ("GET", r"^/admin$", "ListOrganizationAdminAccounts"),
]


class State:
    """Everything the control layer remembers; cleared by POST /moto-api/reset."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.region_status: dict[tuple[str, str], str] = {}
        self.denied_assume: set[str] = set()
        self.faults: list[dict[str, Any]] = []
        # Entry sizes of each PutEvents call, as EventBridge counts them.
        self.put_events_sizes: list[int] = []
        self.counts: dict[tuple[str, str, str], int] = defaultdict(int)
        self.throttled: dict[tuple[str, str, str], int] = defaultdict(int)
        self.windows: dict[tuple[str, str, str], deque] = defaultdict(deque)
        self.max_rate: dict[tuple[str, str, str], int] = defaultdict(int)
        self.first_at: dict[tuple[str, str, str], float] = {}
        self.last_at: dict[tuple[str, str, str], float] = {}
        self.lookup_windows: dict[tuple[str, str], deque] = defaultdict(deque)
        # Lambda function name → URL that answers its invocations (moto runs none without Docker).
        self.stand_ins: dict[str, str] = {}

    def region_enabled(self, account_id: str, region: str) -> bool:
        status = self.region_status.get((account_id, region))
        if status is not None:
            return status == "ENABLED"
        return region not in OPT_IN

    def opt_status(self, account_id: str, region: str) -> str:
        status = self.region_status.get((account_id, region))
        if status is not None:
            return status
        return "DISABLED" if region in OPT_IN else "ENABLED_BY_DEFAULT"


STATE = State()


def reset() -> None:
    global STATE
    STATE = State()
    guardduty_ext.reset()
    cloudtrail_ext.reset()


def _json(start_response: Callable, status: int, body: Any, headers: list | None = None) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        f"{status} {'OK' if status < 400 else 'Error'}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(data)))] + (headers or []),
    )
    return [data]


def _aws_error(start_response: Callable, service: str, protocol: str, status: int, code: str, message: str) -> list[bytes]:
    """An error in the wire format of the service's protocol, so SDKs classify it by code."""
    request_id = str(uuid.uuid4())
    if protocol == "query":
        body = (
            f'<ErrorResponse xmlns="https://{service}.amazonaws.com/doc/2011-06-15/">'
            f"<Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        ).encode()
        headers = [("Content-Type", "text/xml")]
    elif protocol == "rest-xml":
        body = (
            f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>"
            f"<Message>{message}</Message><RequestId>{request_id}</RequestId></Error>"
        ).encode()
        headers = [("Content-Type", "application/xml")]
    else:
        body = json.dumps({"__type": code, "message": message}).encode()
        headers = [
            ("Content-Type", "application/x-amz-json-1.1" if protocol == "json" else "application/json"),
            ("x-amzn-ErrorType", code),
        ]
    headers += [("x-amzn-RequestId", request_id), ("Content-Length", str(len(body)))]
    start_response(f"{status} Error", headers)
    return [body]


class Call:
    """What the control layer knows about one signed request."""

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        auth = environ.get("HTTP_AUTHORIZATION", "")
        match = re.search(r"Credential=([^/,\s]+)/\d+/([^/]+)/([^/]+)/aws4_request", auth)
        self.access_key, self.region, self.service = match.groups() if match else (None, None, None)
        self.method = environ.get("REQUEST_METHOD", "GET")
        self.path = environ.get("PATH_INFO", "/")
        self.body = b""
        if self.service and self.service != "s3":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            self.body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(self.body)
        self.target = environ.get("HTTP_X_AMZ_TARGET")
        self.form = parse_qs(self.body.decode(errors="replace")) if self.body and not self.target and self.service in ("sts", "iam") else {}
        self.operation = self._operation()
        self.protocol = self._protocol()
        self.account_id = self._account()

    def _protocol(self) -> str:
        if self.service in ("sts", "iam"):
            return "query"
        if self.service == "s3":
            return "rest-xml"
        if self.target:
            return "json"
        return "rest-json"

    def _operation(self) -> str:
        if self.target:
            return self.target.split(".")[-1]
        if self.form.get("Action"):
            return self.form["Action"][0]
        if self.service == "guardduty":
            for method, pattern, name in GUARDDUTY_ROUTES:
                if method == self.method and re.match(pattern, self.path):
                    return name
        if self.service == "account":
            return self.path.strip("/")[:1].upper() + self.path.strip("/")[1:]
        if self.service == "s3":
            query = self.environ.get("QUERY_STRING", "")
            has_key = self.path.strip("/").count("/") >= 1
            if self.method == "PUT" and has_key:
                if "uploadId" in query:
                    return "UploadPart"
                return "CopyObject" if self.environ.get("HTTP_X_AMZ_COPY_SOURCE") else "PutObject"
            if self.method == "POST" and "uploads" in query:
                return "CreateMultipartUpload"
            if self.method == "POST" and "uploadId" in query:
                return "CompleteMultipartUpload"
            if self.method == "GET":
                return "GetObject" if has_key else "ListObjectsV2"
            if self.method == "HEAD":
                return "HeadObject" if has_key else "HeadBucket"
            if self.method == "DELETE":
                if "uploadId" in query:
                    return "AbortMultipartUpload"
                return "DeleteObject" if has_key else "DeleteBucket"
            if self.method == "POST" and "delete" in query:
                return "DeleteObjects"
            if self.method == "PUT":
                return "CreateBucket"
        return f"{self.method} {self.path}"

    def _account(self) -> str:
        from moto.iam.models import get_account_id_from

        return get_account_id_from(self.access_key) if self.access_key else "unsigned"


def _record(call: Call) -> None:
    key = (call.operation, call.account_id, call.region or "")
    now = time.monotonic()
    with STATE.lock:
        STATE.counts[key] += 1
        window = STATE.windows[key]
        window.append(now)
        while window and window[0] <= now - 1.0:
            window.popleft()
        STATE.max_rate[key] = max(STATE.max_rate[key], len(window))
        wall = time.time()
        STATE.first_at.setdefault(key, wall)
        STATE.last_at[key] = wall


def _fault_for(call: Call) -> dict | None:
    with STATE.lock:
        for fault in STATE.faults:
            if fault["operation"] != call.operation:
                continue
            if fault.get("account_id") and fault["account_id"] != call.account_id:
                continue
            if fault.get("region") and fault["region"] != call.region:
                continue
            if fault.get("skip"):
                fault["skip"] -= 1
                continue
            if random.random() >= float(fault.get("rate", 1.0)):
                continue
            if fault.get("count") is not None:
                fault["count"] -= 1
                if fault["count"] <= 0:
                    STATE.faults.remove(fault)
            return dict(fault)
    return None


def _lookup_throttled(call: Call) -> bool:
    """True when this LookupEvents call is the 3rd or later within one second."""
    key = (call.account_id, call.region or "")
    now = time.monotonic()
    with STATE.lock:
        window = STATE.lookup_windows[key]
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= LOOKUP_EVENTS_PER_SECOND:
            STATE.throttled[(call.operation, call.account_id, call.region or "")] += 1
            return True
        window.append(now)
        return False


def _list_regions(call: Call, start_response: Callable) -> list[bytes]:
    params = json.loads(call.body or b"{}")
    account_id = params.get("AccountId") or call.account_id
    max_results = params.get("MaxResults", 20)
    if not 1 <= int(max_results) <= 50:
        return _aws_error(start_response, "account", "rest-json", 400, "ValidationException", "MaxResults must be between 1 and 50.")
    wanted = params.get("RegionOptStatusContains")
    regions = [
        {"RegionName": r, "RegionOptStatus": STATE.opt_status(account_id, r)}
        for r in ALL_REGIONS
        if not wanted or STATE.opt_status(account_id, r) in wanted
    ]
    offset = int(params.get("NextToken") or 0)
    page = regions[offset : offset + int(max_results)]
    body: dict[str, Any] = {"Regions": page}
    if offset + int(max_results) < len(regions):
        body["NextToken"] = str(offset + int(max_results))
    return _json(start_response, 200, body)


# PutEvents: "The total entry size must be less than 256KB" (source, detail type, detail,
# resources in UTF-8, 14 bytes for a time), at most 10 entries.
PUT_EVENTS_MAX_BYTES = 256 * 1024


def _put_events_checks(call: Call, start_response: Callable) -> list[bytes] | None:
    entries = json.loads(call.body or b"{}").get("Entries") or []
    size = 0
    for entry in entries:
        size += 14 if entry.get("Time") else 0
        for key in ("Source", "DetailType", "Detail"):
            size += len(str(entry.get(key) or "").encode())
        size += sum(len(str(r).encode()) for r in entry.get("Resources") or [])
    with STATE.lock:
        STATE.put_events_sizes.append(size)
    if size >= PUT_EVENTS_MAX_BYTES:
        return _aws_error(start_response, "events", "json", 400, "ValidationException", "Total size of the entries in the request is over the limit.")
    return None


def _put_events_entry_failure(call: Call, start_response: Callable, code: str) -> list[bytes]:
    """A 200 answer in which every entry failed with `code` (PutEvents reports failures per entry)."""
    entries = json.loads(call.body or b"{}").get("Entries") or []
    failed = [{"ErrorCode": code, "ErrorMessage": f"Injected {code}."} for _ in entries]
    return _json(start_response, 200, {"FailedEntryCount": len(failed), "Entries": failed})


def _reset_connection(environ: dict[str, Any]) -> None:
    """Drops the connection before any answer: shut down now (the handler's file objects keep
    the descriptor open, so close() alone would let the answer through), reset (linger 0)
    when the descriptor is finally closed."""
    sock = environ.get("werkzeug.socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


INVOKE_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations$")


def _stand_in(environ: dict[str, Any], start_response: Callable, url: str) -> list[bytes]:
    """Lambda Invoke of a function with a stand-in: the payload is POSTed to its URL; a 200
    answer is the function's result, any other its error (`X-Amz-Function-Error: Unhandled`, as
    Lambda reports a function's error)."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    payload = environ["wsgi.input"].read(length) if length else b"{}"
    request = urllib.request.Request(url, data=payload, method="POST", headers={"Content-Type": "application/json"})
    headers = [("Content-Type", "application/json"), ("X-Amz-Executed-Version", "$LATEST")]
    try:
        with urllib.request.urlopen(request, timeout=900) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
        headers.append(("X-Amz-Function-Error", "Unhandled"))
    start_response("200 OK", headers + [("Content-Length", str(len(body)))])
    return [body]


class ControlMiddleware:
    def __init__(self, app: Callable) -> None:
        self.app = app
        guardduty_ext.REGION_ENABLED = lambda account_id, region: STATE.region_enabled(account_id, region)

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        path = environ.get("PATH_INFO", "")
        invoked = INVOKE_PATH.match(path) if environ.get("REQUEST_METHOD") == "POST" else None
        if invoked:
            name = urllib.parse.unquote(invoked.group(1)).split(":function:")[-1].split(":")[0]
            with STATE.lock:
                url = STATE.stand_ins.get(name)
            if url:
                return _stand_in(environ, start_response, url)
        if path.startswith("/moto-api/ext/"):
            return self._control(environ, start_response, path[len("/moto-api/ext/") :])
        if path == "/moto-api/reset" and environ.get("REQUEST_METHOD") == "POST":
            reset()
            return self.app(environ, start_response)
        if "Credential=" not in environ.get("HTTP_AUTHORIZATION", ""):
            return self.app(environ, start_response)

        call = Call(environ)
        _record(call)
        if call.region and call.account_id and not STATE.region_enabled(call.account_id, call.region):
            code = "InvalidClientTokenId" if call.protocol == "query" else "UnrecognizedClientException"
            if call.protocol == "rest-xml":
                code = "InvalidAccessKeyId"
            return _aws_error(start_response, call.service, call.protocol, 403, code, "The security token included in the request is invalid.")
        if call.operation == "AssumeRole":
            role_arn = (call.form.get("RoleArn") or [""])[0]
            target = role_arn.split(":")[4] if role_arn.count(":") >= 5 else ""
            if target in STATE.denied_assume:
                return _aws_error(
                    start_response, "sts", "query", 403, "AccessDenied",
                    f"User: arn:aws:iam::{call.account_id}:user/guardlake is not authorized to perform: sts:AssumeRole on resource: {role_arn}",
                )  # fmt: skip
        if call.operation == "PutEvents":
            refused = _put_events_checks(call, start_response)
            if refused is not None:
                return refused
        fault = _fault_for(call)
        if fault and fault.get("entry_error"):
            return _put_events_entry_failure(call, start_response, str(fault["entry_error"]))
        if fault:
            if fault.get("latency_ms"):
                time.sleep(float(fault["latency_ms"]) / 1000.0)
            error = fault.get("error")
            if error == "reset":
                _reset_connection(environ)
                start_response("500 Error", [])
                return [b""]
            if error in ("500", "InternalError", "InternalFailure", "InternalServerError"):
                return _aws_error(start_response, call.service, call.protocol, 500, "InternalServerError", "Injected internal error.")
            if error:
                status = 429 if (error == "ThrottlingException" and call.service == "guardduty") else 400
                if error == "AccessDenied" or error == "AccessDeniedException":
                    status = 403
                if error in ("SlowDown", "ServiceUnavailable"):
                    status = 503  # S3 asks to slow down with 503
                return _aws_error(start_response, call.service, call.protocol, status, error, "Rate exceeded" if "Throttl" in error else f"Injected {error}.")
        if call.operation == "LookupEvents" and _lookup_throttled(call):
            return _aws_error(start_response, "cloudtrail", "json", 400, "ThrottlingException", "Rate exceeded")
        if call.service == "account" and call.operation == "ListRegions":
            return _list_regions(call, start_response)
        return self.app(environ, start_response)

    def _control(self, environ: dict[str, Any], start_response: Callable, name: str) -> list[bytes]:
        method = environ.get("REQUEST_METHOD")
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError as exc:
            return _json(start_response, 400, {"error": f"body is not JSON: {exc}"})
        try:
            if name == "guardduty/findings" and method == "POST":
                findings = body["findings"]
                raw_text = {str(k): base64.b64decode(v) for k, v in (body.get("raw_text_b64") or {}).items()}
                detector_id = guardduty_ext.seed(str(body["account_id"]), body["region"], findings, raw_text)
                return _json(start_response, 200, {"detector_id": detector_id, "seeded": len(findings)})
            if name == "guardduty/detector" and method == "POST":
                changed = {str(k): str(v) for k, v in (body.get("features") or {}).items()}
                detector_id = guardduty_ext.configure_detector(str(body["account_id"]), body["region"], body.get("status"), changed)
                return _json(start_response, 200, {"detector_id": detector_id})
            if name == "guardduty/coverage" and method == "POST":
                with guardduty_ext.LOCK:
                    guardduty_ext.COVERAGE[(str(body["account_id"]), body["region"])] = body["resources"]
                return _json(start_response, 200, {"ok": True})
            if name == "guardduty/suppress-samples" and method == "POST":
                with guardduty_ext.LOCK:
                    guardduty_ext.SUPPRESSED.add((str(body.get("account_id") or "*"), body["region"]))
                return _json(start_response, 200, {"ok": True})
            if name == "guardduty/member" and method == "POST":
                key = (str(body["admin_account"]), body["region"], str(body["account_id"]))
                with guardduty_ext.LOCK:
                    guardduty_ext.RELATIONSHIPS[key] = body.get("relationship")
                return _json(start_response, 200, {"ok": True})
            if name == "cloudtrail/events" and method == "POST":
                events = body["events"]
                cloudtrail_ext.seed(str(body["account_id"]), body["region"], events)
                return _json(start_response, 200, {"seeded": len(events)})
            if name == "regions" and method == "POST":
                status = body["status"]
                if status not in ("ENABLED", "DISABLED"):
                    return _json(start_response, 400, {"error": "status must be ENABLED or DISABLED"})
                with STATE.lock:
                    STATE.region_status[(str(body["account_id"]), body["region"])] = status
                return _json(start_response, 200, {"ok": True})
            if name == "deny-assume" and method == "POST":
                with STATE.lock:
                    STATE.denied_assume.add(str(body["account_id"]))
                return _json(start_response, 200, {"ok": True})
            if name == "faults" and method == "POST":
                if "operation" not in body:
                    return _json(start_response, 400, {"error": "operation is required"})
                with STATE.lock:
                    STATE.faults.append(dict(body))
                return _json(start_response, 200, {"ok": True, "faults": len(STATE.faults)})
            if name == "faults" and method == "DELETE":
                with STATE.lock:
                    STATE.faults.clear()
                return _json(start_response, 200, {"ok": True})
            if name == "lambda/stand-in" and method == "POST":
                with STATE.lock:
                    STATE.stand_ins[str(body["function_name"])] = str(body["url"])
                return _json(start_response, 200, {"ok": True})
            if name == "stats" and method == "GET":
                return _json(start_response, 200, _stats())
        except KeyError as exc:
            return _json(start_response, 400, {"error": f"missing field {exc.args[0]!r}"})
        return _json(start_response, 404, {"error": f"no control endpoint {method} /moto-api/ext/{name}"})


def _stats() -> dict[str, Any]:
    with STATE.lock:
        rows = [
            {
                "operation": op,
                "account_id": account,
                "region": region,
                "count": count,
                "max_per_second": STATE.max_rate[(op, account, region)],
                "throttled": STATE.throttled.get((op, account, region), 0),
                "first_at": STATE.first_at.get((op, account, region)),
                "last_at": STATE.last_at.get((op, account, region)),
            }
            for (op, account, region), count in sorted(STATE.counts.items())
        ]
        sizes = list(STATE.put_events_sizes)
    return {"requests": rows, "max_per_second": max((r["max_per_second"] for r in rows), default=0), "put_events_sizes": sizes}
