"""Structured output without constrained decoding: ask for JSON, find it, check it, repair once.

The runtime cannot constrain decoding, so a JSON-schema answer is requested by instruction, the
first JSON value in the reply is extracted (code fences and chatter around it are tolerated) and
validated against the whole schema by a JSON Schema (Draft 2020-12) validator: ``$ref`` and
``$defs`` at any depth, ``items``, ``anyOf`` / ``oneOf`` / ``allOf``, ``enum``,
``additionalProperties`` and the rest. A reply that fails gets one repair turn that quotes the
validator's messages, each with the JSON path of the value it is about. ``_structured_flow`` is
that exchange as steps (the turns to run, the checks of their replies), which the chat engine's
sync and async ``generate_structured`` both drive.

Example:
    >>> from rkllm_core.chat.structured import extract_json, schema_errors
    >>> schema = {"type": "object", "properties": {"city": {"type": "string"}},
    ...           "required": ["city"]}
    >>> value = extract_json('Sure! ```json\\n{"city": "Paris"}\\n```')
    >>> value, schema_errors(value, schema)
    ({'city': 'Paris'}, [])
    >>> schema_errors({}, schema)
    ["$: 'city' is a required property"]
    >>> schema_errors({"city": ["Paris"]}, schema)
    ["$.city: ['Paris'] is not of type 'string'"]
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from rkllm_core.chat.conversation import _split_system
from rkllm_core.chat.messages import ChatMessage, ToolSpec
from rkllm_core.chat.results import ChatResult
from rkllm_core.errors import InvalidParameterError, RKLLMError

#: Longest validator message quoted in a repair turn: a message starts with the repr of the
#: offending value, which can be a whole object, and the model's context is small.
_MESSAGE_CHARS = 240

#: Keywords whose values are data, not subschemas: a ``$ref`` key inside them is not a reference.
_DATA_KEYWORDS = frozenset({"const", "default", "enum", "examples"})


class StructuredOutputError(RKLLMError, ValueError):
    """The model's reply was not valid JSON for the schema, even after the repair turn."""

    def __init__(self, message: str, raw: str) -> None:
        super().__init__(message)
        self.raw = raw


def json_instruction(schema: Mapping[str, Any] | None) -> str:
    """The system-prompt sentence that asks for JSON (matching ``schema`` when given).

    Example:
        >>> json_instruction(None)
        'Respond only with a single JSON object and nothing else.'
    """
    if schema is None:
        return "Respond only with a single JSON object and nothing else."
    return ("Respond only with a single JSON value that matches this JSON schema, and nothing "
            f"else:\n{json.dumps(dict(schema), ensure_ascii=False)}")


def extract_json(text: str) -> Any:
    """The first complete JSON object or array in ``text``; ValueError when there is none.

    Example:
        >>> extract_json('Here it is: [1, 2] and more text')
        [1, 2]
    """
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


def check_schema(schema: Mapping[str, Any]) -> None:
    """Refuse a ``schema`` that is not a usable Draft 2020-12 JSON Schema, before any run.

    Raises :class:`~rkllm_core.errors.InvalidParameterError` naming the problem: the schema is
    not JSON data, breaks the Draft 2020-12 metaschema, or has a ``$ref`` to a place in the
    document that does not exist. Checked schemas are compiled once and cached.

    Example:
        >>> check_schema({"type": "object", "properties": {"n": {"type": "integer"}}})
        >>> check_schema({"type": "objekt"})
        Traceback (most recent call last):
        ...
        rkllm_core.errors.InvalidParameterError: the structured-output schema is not a valid \
JSON Schema (Draft 2020-12): at $.type, 'objekt' is not valid under any of the given schemas. \
Fix the schema (a pydantic model's model_json_schema() is always valid).
    """
    _validator(schema)


def schema_errors(value: Any, schema: Mapping[str, Any]) -> list[str]:
    """Where ``value`` breaks ``schema``, as ``"<JSON path>: <validator message>"``; [] when it
    fits. The whole document is the schema, so ``$ref`` resolves wherever it appears.

    Raises :class:`~rkllm_core.errors.InvalidParameterError` for a schema
    :func:`check_schema` refuses.

    Example:
        >>> item = {"type": "object", "properties": {"qty": {"type": "integer"}}}
        >>> order = {"$defs": {"Item": item},
        ...          "type": "object", "properties": {"items": {
        ...              "type": "array", "items": {"$ref": "#/$defs/Item"}}}}
        >>> schema_errors({"items": [3, {"qty": "two"}]}, order)
        ["$.items[0]: 3 is not of type 'object'", "$.items[1].qty: 'two' is not of type 'integer'"]
    """
    validator = _validator(schema)
    try:
        errors = sorted(validator.iter_errors(value), key=_document_order)
    except Unresolvable as exc:  # a reference check_schema could not judge (not a local one)
        raise InvalidParameterError(
            f"the structured-output schema has a $ref that does not resolve: {exc}. Keep the "
            "definitions the schema refers to inside it, under $defs.") from exc
    return [_describe(best_match([error]) if error.context else error) for error in errors]


def check_reply(text: str, schema: Mapping[str, Any] | None) -> tuple[Any, str | None]:
    """(value, None) when ``text`` holds JSON fitting ``schema``; (None, error) otherwise.

    Without a schema any JSON object fits.

    Example:
        >>> check_reply('{"n": 3}', {"type": "object", "properties": {"n": {"type": "string"}}})
        (None, "$.n: 3 is not of type 'string'")
        >>> check_reply('{"n": 3}', None)
        ({'n': 3}, None)
    """
    try:
        value = extract_json(text)
    except ValueError as exc:
        return None, f"the reply is not JSON ({exc})"
    if schema is not None:
        problems = schema_errors(value, schema)
        if problems:
            return None, _summary(problems)
    elif not isinstance(value, dict):
        return None, "the reply must be a JSON object"
    return value, None


def arguments_error(arguments: Mapping[str, Any], schema: Mapping[str, Any]) -> str | None:
    """What is wrong with a tool call's ``arguments`` for ``schema``; None when they fit.

    Example:
        >>> schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
        >>> arguments_error({"n": "3"}, schema), arguments_error({"n": 3}, schema)
        ("$.n: '3' is not of type 'integer'", None)
    """
    problems = schema_errors(dict(arguments), schema)
    return _summary(problems) if problems else None


def repair_request(error: str) -> str:
    """The user turn that asks the model to fix its reply.

    Example:
        >>> repair_request("$.n: '3' is not of type 'integer'")
        "That reply was not valid: $.n: '3' is not of type 'integer'. Reply again with only the \
corrected JSON, nothing else."
    """
    return (f"That reply was not valid: {error}. Reply again with only the corrected JSON, "
            "nothing else.")


# -- compiling and describing ----------------------------------------------------------------


def _validator(schema: Mapping[str, Any]) -> Any:
    """The compiled validator of ``schema`` (cached by its JSON text)."""
    if not isinstance(schema, Mapping):
        raise InvalidParameterError(
            f"the structured-output schema must be a JSON Schema dict, got "
            f"{type(schema).__name__}; pass a dict, or a pydantic model's model_json_schema()")
    try:
        key = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(
            f"the structured-output schema must be JSON data (dicts, lists, strings, numbers, "
            f"booleans, null): {exc}. Pass a JSON Schema dict, or a pydantic model's "
            "model_json_schema()") from exc
    return _compiled(key)


@functools.lru_cache(maxsize=128)
def _compiled(text: str) -> Any:
    schema = json.loads(text)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidParameterError(
            f"the structured-output schema is not a valid JSON Schema (Draft 2020-12): at "
            f"{exc.json_path}, {exc.message}. Fix the schema (a pydantic model's "
            "model_json_schema() is always valid).") from exc
    missing = sorted(set(_unresolved_local_refs(schema)))
    if missing:
        raise InvalidParameterError(
            f"the structured-output schema refers to definitions it does not hold: "
            f"{', '.join(missing)}. Add them (under $defs) or fix the $ref.")
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _unresolved_local_refs(schema: Any) -> Iterator[str]:
    """The ``#...`` references of ``schema`` that point nowhere in it. Subschemas with their own
    ``$id`` start another document and are left to the validator."""
    resolver = Registry().resolver_with_root(DRAFT202012.create_resource(schema))

    def walk(node: Any, root: bool) -> Iterator[str]:
        if isinstance(node, list):
            for child in node:
                yield from walk(child, False)
        elif isinstance(node, dict):
            if not root and isinstance(node.get("$id"), str):
                return
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#"):
                try:
                    resolver.lookup(ref)
                except Unresolvable:
                    yield ref
            for key, child in node.items():
                if key not in _DATA_KEYWORDS:
                    yield from walk(child, False)

    yield from walk(schema, True)


def _document_order(error: Any) -> list[tuple[int, Any]]:
    # array indices sort as numbers, keys as text: errors read top to bottom like the JSON
    return [(0, p) if isinstance(p, int) else (1, str(p)) for p in error.absolute_path]


def _describe(error: Any) -> str:
    message = str(error.message)
    if len(message) > _MESSAGE_CHARS:
        half = _MESSAGE_CHARS // 2
        message = f"{message[:half]} … {message[-half:]}"
    return f"{error.json_path}: {message}"


def _summary(problems: list[str]) -> str:
    shown = "; ".join(problems[:5])
    return shown if len(problems) <= 5 else f"{shown} (and {len(problems) - 5} more)"


# ---------------------------------------------------------------------------------------------
# The structured-output exchange, as steps the sync and async engines run

_Request = tuple[list[ChatMessage], dict[str, Any]]


def _structured_flow(messages: Sequence[ChatMessage], schema: Mapping[str, Any] | None,
                     method: str, name: str, description: str,
                     validate: Callable[[Any], Any] | None = None,
                     ) -> Generator[_Request, ChatResult, tuple[Any, ChatResult]]:
    """The steps of a structured answer, shared by the sync and async engines: it yields the
    turns to run (history, extra generate arguments) and receives their results."""

    def accepted(value: Any) -> tuple[Any, str | None]:
        # a check the JSON schema cannot express (a pydantic validator): repaired the same way
        if validate is None:
            return value, None
        try:
            return validate(value), None
        except ValueError as exc:
            return None, str(exc)

    history = list(messages)
    if method == "function_calling":
        if schema is None:
            raise InvalidParameterError("function_calling needs a schema")
        check_schema(schema)  # a schema the validator refuses fails here, before any run
        extra: dict[str, Any] = {"tools": [ToolSpec(name, description, schema)],
                                 "tool_choice": name}
        result = yield history, extra
        for attempt in range(2):
            call = next((c for c in result.message.tool_calls if c.name == name), None)
            if call is not None:
                value, problem = dict(call.arguments), arguments_error(call.arguments, schema)
                if problem is None:
                    value, problem = accepted(value)
                if problem is None:
                    return value, result
                error = problem
            else:
                error = f"no call to the tool `{name}`"
            if attempt == 0:
                history = [*history, result.message, ChatMessage.user(repair_request(error))]
                result = yield history, extra
        raise StructuredOutputError(f"the model did not produce a valid `{name}` call: "
                                    f"{error}", result.raw_text)
    if method not in ("json_schema", "json_mode"):
        raise InvalidParameterError(
            f"method must be json_schema, json_mode or function_calling, not {method!r}")
    wanted = schema if method == "json_schema" else None
    if wanted is not None:
        check_schema(wanted)
    sentence = json_instruction(wanted)
    system, rest = _split_system(history)
    history = [ChatMessage.system(f"{system}\n\n{sentence}" if system else sentence), *rest]
    for attempt in range(2):
        result = yield history, {}
        value, problem = check_reply(result.message.content, wanted)
        if problem is None:
            value, problem = accepted(value)
        if problem is None:
            return value, result
        if attempt == 0:
            history = [*history, result.message, ChatMessage.user(repair_request(problem))]
    raise StructuredOutputError(f"the model's reply is not valid JSON for the schema: "
                                f"{problem}", result.raw_text)
