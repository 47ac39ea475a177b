"""EventBridge input transformers as EventBridge renders them, where moto's differ.

moto substitutes each `<name>` placeholder with the raw text of its value, so a string value
holding a quote or a newline yields invalid JSON, and a path that resolves to nothing leaves
`<name>` in the output. EventBridge escapes string values for the JSON template they are
placed in, and renders a missing value as null. `install()` replaces moto's
`EventTemplateParser.parse` with that behaviour; everything else (paths, the template, the
predefined `<aws.events.*>` variables) is moto's.
"""

from __future__ import annotations

import json
from typing import Any


def _text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return json.dumps(value)[1:-1]  # escaped, for a placeholder inside quotes
    return json.dumps(value)


def parse(input_template: str, input_paths_map: dict[str, Any], event: dict[str, Any]) -> Any:
    from jsonpath_ng.ext import parse as jsonpath
    from moto.events.utils import EventTemplateParser

    template = input_template or EventTemplateParser.DEFAULT_EVENT_INPUT_TEMPLATE
    paths = input_paths_map or EventTemplateParser.DEFAULT_EVENT_INPUT_PATHS_MAP
    for name, path in paths.items():
        matches = jsonpath(path).find(event)  # type: ignore[no-untyped-call]
        template = template.replace(f"<{name}>", _text(matches[0].value if matches else None))
    template = template.replace("<aws.events.event.json>", json.dumps(event))
    template = template.replace("<aws.events.event.ingestion-time>", _text(event.get("ingestion-time")))
    return json.loads(template)


def install() -> None:
    from moto.events import utils

    utils.EventTemplateParser.parse = staticmethod(parse)  # type: ignore[method-assign]
