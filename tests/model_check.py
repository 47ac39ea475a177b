"""Checks JSON values against a shape of an AWS service model shipped in the pinned botocore.

`problems(value, shape)` walks the value and the shape together, using wire names
(`locationName`), and reports members the model does not know, required members that are
missing, and values of the wrong type. Timestamps without a declared format arrive as epoch
seconds in rest-json, so they must be numbers.
"""

from __future__ import annotations

from typing import Any

import botocore.session

_SESSION = botocore.session.get_session()


def shape(service: str, name: str):
    return _SESSION.get_service_model(service).shape_for(name)


def problems(value: Any, shp, path: str = "$") -> list[str]:
    kind = shp.type_name
    if value is None:
        return [f"{path}: null (the API omits members without a value)"]
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"{path}: expected object for {shp.name}, got {type(value).__name__}"]
        by_wire = {m.serialization.get("name", k): (k, m) for k, m in shp.members.items()}
        found: list[str] = []
        for key, member_value in value.items():
            if key not in by_wire:
                found.append(f"{path}.{key}: not a member of {shp.name}")
                continue
            found += problems(member_value, by_wire[key][1], f"{path}.{key}")
        for required in shp.required_members:
            wire = shp.members[required].serialization.get("name", required)
            if wire not in value:
                found.append(f"{path}: required member {wire} missing from {shp.name}")
        return found
    if kind == "list":
        if not isinstance(value, list):
            return [f"{path}: expected list, got {type(value).__name__}"]
        return [p for i, item in enumerate(value) for p in problems(item, shp.member, f"{path}[{i}]")]
    if kind == "map":
        if not isinstance(value, dict):
            return [f"{path}: expected map, got {type(value).__name__}"]
        return [p for k, v in value.items() for p in problems(v, shp.value, f"{path}.{k}")]
    if kind == "string":
        return [] if isinstance(value, str) else [f"{path}: expected string, got {value!r}"]
    if kind == "boolean":
        return [] if isinstance(value, bool) else [f"{path}: expected boolean, got {value!r}"]
    if kind in ("integer", "long"):
        return [] if isinstance(value, int) and not isinstance(value, bool) else [f"{path}: expected integer, got {value!r}"]
    if kind in ("double", "float"):
        return [] if isinstance(value, (int, float)) and not isinstance(value, bool) else [f"{path}: expected number, got {value!r}"]
    if kind == "timestamp":
        fmt = shp.serialization.get("timestampFormat")
        if fmt == "iso8601":
            return [] if isinstance(value, str) else [f"{path}: expected ISO-8601 string, got {value!r}"]
        return [] if isinstance(value, (int, float)) and not isinstance(value, bool) else [f"{path}: expected epoch seconds, got {value!r}"]
    return []


def finding_problems(finding: dict) -> list[str]:
    return problems(finding, shape("guardduty", "Finding"))
