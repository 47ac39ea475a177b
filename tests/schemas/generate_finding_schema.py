"""Writes schemas/guardduty/finding.schema.json: JSON Schema (draft 2020-12) of the GuardDuty
`Finding` exactly as the API returns it, generated from the service model in the pinned botocore.

Wire names (`locationName`: `sourceIPs`, `LoginAttributes`), required members, types, and each
member's documentation. Timestamps without a declared format arrive as epoch seconds in the
rest-json protocol, so they are numbers; the top-level createdAt/updatedAt are strings in the
model. Usage: python tests/schemas/generate_finding_schema.py [--check]
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from pathlib import Path

import botocore
import botocore.session

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "schemas" / "guardduty" / "finding.schema.json"
README = ROOT / "schemas" / "README.md"
EXAMPLES = ROOT / "schemas" / "guardduty" / "examples"

# JSON path (as in schema_drift: [] for list items) → the `findings` column it lands in.
# Mirrors src/normalize/guardduty.rs; tests/py/test_schemas.py checks each pair on real rows.
COLUMNS = [
    ("id", "id"), ("arn", "arn"), ("accountId", "account_id"), ("region", "region"), ("partition", "partition"),
    ("type", "type, threat_purpose, resource_type_affected"), ("severity", "severity, severity_label"),
    ("confidence", "confidence"), ("title", "title"), ("description", "description"), ("createdAt", "created_at"),
    ("updatedAt", "updated_at (and dt)"), ("schemaVersion", "schema_version"),
    ("service.archived", "archived"), ("service.count", "count"), ("service.eventFirstSeen", "event_first_seen"),
    ("service.eventLastSeen", "event_last_seen"), ("service.detectorId", "detector_id"),
    ("service.featureName", "feature_name"), ("service.additionalInfo.value", "sample"),
    ("service.additionalInfo.sample", "sample (exports and EventBridge events)"),
    ("service.detection.sequence.signals[].uid", "sequence_signal_count (signals counted)"),
    ("service.detection.sequence.signals[].firstSeenAt", "sequence_first_seen (earliest)"),
    ("service.detection.sequence.signals[].lastSeenAt", "sequence_last_seen (latest)"),
    ("resource.resourceType", "resource_type"), ("resource.instanceDetails.instanceId", "instance_id"),
    ("resource.accessKeyDetails.accessKeyId", "access_key_id"), ("resource.accessKeyDetails.principalId", "principal_id"),
    ("resource.accessKeyDetails.userName", "user_name"),
    ("resource.kubernetesDetails.kubernetesUserDetails.username", "user_name (when no access key)"),
    ("resource.rdsDbUserDetails.user", "user_name (when no access key)"),
    ("resource.s3BucketDetails[].name", "s3_bucket_names"), ("resource.eksClusterDetails.name", "eks_cluster_name"),
    ("service.action.actionType", "action_type"),
    ("service.action.awsApiCallAction.api", "api"), ("service.action.awsApiCallAction.serviceName", "service_name"),
    ("service.action.awsApiCallAction.callerType", "caller_type"),
    ("service.action.*.remoteIpDetails.ipAddressV4", "remote_ip"),
    ("service.action.*.remoteIpDetails.country.countryName", "remote_country"),
    ("service.action.*.remoteIpDetails.city.cityName", "remote_city"),
    ("service.action.*.remoteIpDetails.organization.asn", "remote_asn"),
    ("service.action.*.remoteIpDetails.organization.org", "remote_org"),
    ("service.action.networkConnectionAction.localPortDetails.port", "local_port"),
    ("service.action.portProbeAction.portProbeDetails[].localPortDetails.port", "local_port (first detail)"),
    ("service.action.networkConnectionAction.remotePortDetails.port", "remote_port"),
    ("service.action.networkConnectionAction.protocol", "protocol"), ("service.action.dnsRequestAction.protocol", "protocol"),
    ("service.action.networkConnectionAction.connectionDirection", "connection_direction"),
    ("service.action.networkConnectionAction.blocked", "blocked"), ("service.action.portProbeAction.blocked", "blocked"),
    ("service.action.dnsRequestAction.blocked", "blocked"),
]  # fmt: skip


def text(doc: str | None) -> str:
    if not doc:
        return ""
    plain = re.sub(r"<[^>]+>", " ", doc)
    return re.sub(r"\s+", " ", html.unescape(plain)).strip()


def build() -> dict:
    model = botocore.session.get_session().get_service_model("guardduty")
    defs: dict[str, dict] = {}

    def schema_for(shape) -> dict:
        kind = shape.type_name
        if kind == "structure":
            if shape.name not in defs:
                defs[shape.name] = {}  # placeholder against recursion
                properties = {}
                required = []
                for name, member in shape.members.items():
                    wire = member.serialization.get("name", name)
                    member_schema = dict(schema_for(member))
                    doc = text(shape.members[name].documentation)
                    if doc:
                        member_schema["description"] = doc
                    properties[wire] = member_schema
                    if name in shape.required_members:
                        required.append(wire)
                definition = {"type": "object", "properties": properties, "additionalProperties": False}
                if required:
                    definition["required"] = required
                doc = text(shape.documentation)
                if doc:
                    definition["description"] = doc
                defs[shape.name] = definition
            return {"$ref": f"#/$defs/{shape.name}"}
        if kind == "list":
            return {"type": "array", "items": schema_for(shape.member)}
        if kind == "map":
            return {"type": "object", "additionalProperties": schema_for(shape.value)}
        if kind == "string":
            out: dict = {"type": "string"}
            if shape.enum:
                # Open in practice: new values appear without notice, so they are documented, not enforced.
                out["x-known-values"] = list(shape.enum)
            return out
        if kind == "boolean":
            return {"type": "boolean"}
        if kind in ("integer", "long"):
            return {"type": "integer"}
        if kind in ("double", "float"):
            return {"type": "number"}
        if kind == "timestamp":
            if shape.serialization.get("timestampFormat") == "iso8601":
                return {"type": "string", "format": "date-time"}
            return {"type": "number", "description": "Epoch seconds."}
        return {}

    root = schema_for(model.shape_for("Finding"))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:guardlake:guardduty:finding",
        "title": "Amazon GuardDuty Finding",
        "description": (
            "A GuardDuty finding as GetFindings returns it (rest-json wire names). Generated by "
            f"tests/schemas/generate_finding_schema.py from the GuardDuty model of botocore {botocore.__version__} "
            f"(API version {model.api_version}); do not edit by hand."
        ),
        **root,
        "$defs": dict(sorted(defs.items())),
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def leaf_paths(value, path: str = "") -> set[str]:
    if isinstance(value, dict):
        return {p for k, v in value.items() for p in leaf_paths(v, f"{path}.{k}" if path else k)}
    if isinstance(value, list):
        return {p for item in value for p in leaf_paths(item, f"{path}[]")} or {f"{path}[]"}
    return {path}


def carries(paths: set[str], pattern: str) -> bool:
    if "*" not in pattern:
        return pattern in paths
    head, tail = pattern.split("*")
    return any(p.startswith(head) and p.endswith(tail) for p in paths)


def render_readme() -> str:
    examples = {p.stem: json.loads(p.read_text()) for p in sorted(EXAMPLES.glob("*.json"))}
    paths = {name: leaf_paths(f) for name, f in examples.items()}
    names = list(examples)
    lines = [
        "# schemas",
        "",
        "The one definition of everything guardlake writes and reads; do not edit generated files by hand.",
        "",
        "| file | what | made by |",
        "|---|---|---|",
        "| `findings.json`, `runs.json`, `coverage.json`, `schema_drift.json`, `cloudtrail_events.json`, `finding_events.json` | the lake's tables: columns, types, descriptions; the Arrow schema, the Athena DDL (`guardlake schema --format ddl`) and the column docs (`--format markdown`) come from them | hand |",
        "| `guardduty/finding.schema.json` | JSON Schema (draft 2020-12) of a GuardDuty `Finding` as GetFindings returns it | `make schemas` |",
        "| `guardduty/known_types.json` | finding, resource and action types guardlake knows; others are reported as drift | hand |",
        "| `guardduty/examples/*.json` | one finding per shape (action type × resource type), each valid against the schema | hand, from `tests/emulator/shapes.py` |",
        "",
        "## Shapes",
        "",
        "| example | type | action type | resource type |",
        "|---|---|---|---|",
    ]
    for name, f in examples.items():
        action = f.get("service", {}).get("action", {}).get("actionType", "(none)")
        lines.append(f"| `{name}` | `{f['type']}` | {action} | {f['resource']['resourceType']} |")
    lines += [
        "",
        "## Where each JSON path lands",
        "",
        "Every finding is also kept whole in `findings.raw`; the typed columns are these paths. `*` is any",
        "action block that has the member. A mark means the example of that shape carries the path.",
        "",
        "| JSON path | `findings` column | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for pattern, column in COLUMNS:
        marks = " | ".join("x" if carries(paths[n], pattern) else "" for n in names)
        lines.append(f"| `{pattern}` | {column} | {marks} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 when the checked-in file is stale")
    args = parser.parse_args()
    outputs = {OUT: render(), README: render_readme()}
    if args.check:
        stale = [str(path) for path, fresh in outputs.items() if not path.exists() or path.read_text() != fresh]
        if stale:
            print(f"stale: {', '.join(stale)}: run `make schemas`", file=sys.stderr)
            sys.exit(1)
        return
    for path, fresh in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(fresh)
        print(f"wrote {path} ({len(fresh)} bytes)")


if __name__ == "__main__":
    main()
