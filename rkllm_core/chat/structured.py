"""Structured output without constrained decoding: ask for JSON, find it, check it, repair once.

The runtime cannot constrain decoding, so a JSON-schema answer is requested by instruction, the
first JSON value in the reply is extracted (code fences and chatter around it are tolerated) and
checked against the schema's structure (types, required keys, enums; nested objects and
arrays). A reply that fails gets one repair turn that quotes the error.

Example:
    >>> from rkllm_core.chat.structured import extract_json, schema_errors
    >>> schema = {"type": "object", "properties": {"city": {"type": "string"}},
    ...           "required": ["city"]}
    >>> value = extract_json('Sure! ```json\\n{"city": "Paris"}\\n```')
    >>> value, schema_errors(value, schema)
    ({'city': 'Paris'}, [])
    >>> schema_errors({}, schema)
    ["$: missing required key 'city'"]
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rkllm_core.errors import RKLLMError


class StructuredOutputError(RKLLMError, ValueError):
    """The model's reply was not valid JSON for the schema, even after the repair turn."""

    def __init__(self, message: str, raw: str) -> None:
        super().__init__(message)
        self.raw = raw


def json_instruction(schema: Mapping[str, Any] | None) -> str:
    """The system-prompt sentence that asks for JSON (matching ``schema`` when given)."""
    if schema is None:
        return "Respond only with a single JSON object and nothing else."
    return ("Respond only with a single JSON value that matches this JSON schema, and nothing "
            f"else:\n{json.dumps(dict(schema), ensure_ascii=False)}")


def extract_json(text: str) -> Any:
    """The first complete JSON object or array in ``text``; ValueError when there is none."""
    decoder = json.JSONDecoder()
    for start, ch in enumerate(text):
        if ch in "{[":
            try:
                value, _ = decoder.raw_decode(text, start)
            except ValueError:
                continue
            return value
    stripped = text.strip()
    return json.loads(stripped)  # a bare scalar, or raises with the parser's message


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "integer": (int,),
    "number": (int, float), "boolean": (bool,), "null": (type(None),),
}


def schema_errors(value: Any, schema: Mapping[str, Any], path: str = "$") -> list[str]:
    """Where ``value`` breaks ``schema`` (a practical subset of JSON Schema); [] when it fits."""
    errors: list[str] = []
    expected = schema.get("type")
    if "anyOf" in schema or "oneOf" in schema:
        options = schema.get("anyOf") or schema.get("oneOf") or []
        if not any(not schema_errors(value, o, path) for o in options if isinstance(o, Mapping)):
            errors.append(f"{path}: matches none of the allowed forms")
        return errors
    if isinstance(expected, str) and expected in _TYPES:
        ok = isinstance(value, _TYPES[expected])
        if expected in ("integer", "number") and isinstance(value, bool):
            ok = False
        if not ok:
            return [f"{path}: expected {expected}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']!r}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing required key {key!r}")
        for key, sub in props.items():
            if key in value and isinstance(sub, Mapping):
                errors.extend(schema_errors(value[key], _resolve(sub, schema), f"{path}.{key}"))
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            errors.extend(schema_errors(item, schema["items"], f"{path}[{i}]"))
    return errors


def _resolve(sub: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = sub.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        node: Any = root
        for part in ref[2:].split("/"):
            node = node.get(part, {}) if isinstance(node, Mapping) else {}
        return node if isinstance(node, Mapping) else {}
    return sub


def check_reply(text: str, schema: Mapping[str, Any] | None) -> tuple[Any, str | None]:
    """(value, None) when ``text`` holds JSON fitting ``schema``; (None, error) otherwise."""
    try:
        value = extract_json(text)
    except ValueError as exc:
        return None, f"the reply is not JSON ({exc})"
    if schema is not None:
        problems = schema_errors(value, schema)
        if problems:
            return None, "; ".join(problems[:5])
    elif not isinstance(value, dict):
        return None, "the reply must be a JSON object"
    return value, None


def repair_request(error: str) -> str:
    """The user turn that asks the model to fix its reply."""
    return (f"That reply was not valid: {error}. Reply again with only the corrected JSON, "
            "nothing else.")
