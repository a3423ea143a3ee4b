"""Between OpenAI's wire types and the chat engine's: request parts checked with the ``openai``
package's own param types, messages and tools turned into :class:`~rkllm_core.chat.ChatMessage`
and :class:`~rkllm_core.chat.ToolSpec`, tool-call deltas numbered and named the way the
official client's stream helper accumulates them, usage and finish reasons.

A request field of the wrong form is an :class:`~rkllm_core.errors.InvalidParameterError` that
names the field (``messages[1].content[0]: ...``); fields the types do not know are ignored.

Example:
    >>> from rkllm_core.server.openai_convert import chat_messages
    >>> turns = chat_messages([
    ...     {"role": "developer", "content": "Be terse."},
    ...     {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
    ...     {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1",
    ...      "type": "function", "function": {"name": "get_weather",
    ...                                       "arguments": '{"city": "Paris"}'}}]},
    ...     {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}])
    >>> [(t.role, t.content) for t in turns][::3], turns[3].name
    ([('system', 'Be terse.'), ('tool', 'sunny')], 'get_weather')
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from rkllm_core.chat import ChatMessage, ChatResult, ToolCall, ToolCallDelta, ToolSpec
from rkllm_core.chat.messages import new_call_id
from rkllm_core.errors import InvalidParameterError, RunError
from rkllm_core.params import SamplingParams

Finish = Literal["stop", "length", "tool_calls"]


def new_id(prefix: str) -> str:
    """A fresh object id in OpenAI's style (``chatcmpl-…``, ``resp_…``).

    Example:
        >>> from rkllm_core.server.openai_convert import new_id
        >>> new_id("chatcmpl-").startswith("chatcmpl-"), len(new_id("resp_"))
        (True, 29)
    """
    return prefix + uuid.uuid4().hex[:24]


# -- checking request parts with the openai package's types ----------------------------------------

@functools.cache
def _adapter(kind: Any) -> TypeAdapter[Any]:
    return TypeAdapter(kind)


def _where(prefix: str, loc: Sequence[Any]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not part[:1].isupper():  # the name of a union member (a TypedDict class) is noise
            path += f".{part}" if path else part
    return path or "body"


def _describe(error: ValidationError, prefix: str) -> str:
    problems = error.errors()
    parts = [f"{_where(prefix, e['loc'])}: {e['msg']}" for e in problems[:3]]
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return "invalid request: " + "; ".join(parts) + more


def _materialize(value: Any, path: str) -> Any:
    """``value`` with the lists pydantic checks lazily (``Iterable`` fields) read out, so every
    part is checked now and the result can be read twice."""
    if isinstance(value, dict):
        return {k: _materialize(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return value
    items = []
    try:
        for i, item in enumerate(value):
            items.append(_materialize(item, f"{path}[{i}]"))
    except ValidationError as exc:
        raise InvalidParameterError(_describe(exc, path)) from None
    return items


def validate(kind: Any, data: Any, where: str = "") -> Any:
    """``data`` checked as ``kind`` (a param type of the ``openai`` package), with every list read
    out; fields the type does not know are dropped. A mismatch is an InvalidParameterError naming
    the field.

    Example:
        >>> from openai.types.chat import ChatCompletionUserMessageParam
        >>> from rkllm_core.errors import InvalidParameterError
        >>> from rkllm_core.server.openai_convert import validate
        >>> validate(ChatCompletionUserMessageParam, {"role": "user", "content": "Hi", "x": 1})
        {'content': 'Hi', 'role': 'user'}
        >>> try:
        ...     validate(ChatCompletionUserMessageParam, {"role": "user"}, "messages[0]")
        ... except InvalidParameterError as exc:
        ...     print(exc)
        invalid request: messages[0].content: Field required
    """
    try:
        checked = _adapter(kind).validate_python(data)
    except ValidationError as exc:
        raise InvalidParameterError(_describe(exc, where)) from None
    return _materialize(checked, where)


# -- messages --------------------------------------------------------------------------------------

def _message_types() -> dict[str, Any]:
    from openai.types import chat

    return {"system": chat.ChatCompletionSystemMessageParam,
            "developer": chat.ChatCompletionDeveloperMessageParam,
            "user": chat.ChatCompletionUserMessageParam,
            "assistant": chat.ChatCompletionAssistantMessageParam,
            "tool": chat.ChatCompletionToolMessageParam,
            "function": chat.ChatCompletionFunctionMessageParam}


def text_of(content: Any, where: str) -> str:
    """The text of a message's content: a string, or a list of text parts (joined by newlines).
    An image, audio or file part is refused: the served models take text.

    Example:
        >>> from rkllm_core.server.openai_convert import text_of
        >>> text_of([{"type": "text", "text": "Hello"}, {"type": "input_text", "text": "you"}], "")
        'Hello\\nyou'
    """
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("text", "input_text", "output_text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("refusal", "reasoning_text", "summary_text"):
            continue
        else:
            raise InvalidParameterError(
                f"{where}[{j}]: {kind or 'untyped'} parts are not supported: the models served "
                "here take text only; send the text as a string or as text parts")
    return "\n".join(texts)


def arguments_of(text: Any, where: str) -> dict[str, Any]:
    """A tool call's arguments (a JSON object string, as models write them) as a dict.

    Example:
        >>> from rkllm_core.server.openai_convert import arguments_of
        >>> arguments_of('{"city": "Paris"}', "arguments"), arguments_of("", "arguments")
        ({'city': 'Paris'}, {})
    """
    if isinstance(text, Mapping):
        return dict(text)
    if text is None or not str(text).strip():
        return {}
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(
            f"{where}: the arguments are not JSON ({exc}); send them as a JSON object string, "
            "as the model produced them") from None
    if not isinstance(value, dict):
        raise InvalidParameterError(f"{where}: the arguments must be a JSON object, got "
                                    f"{type(value).__name__}")
    return value


def _tool_call(call: Mapping[str, Any], where: str) -> ToolCall:
    if call.get("type") != "function" or "function" not in call:
        raise InvalidParameterError(f"{where}: only function tool calls are supported")
    fn = call["function"]
    return ToolCall(fn["name"], arguments_of(fn.get("arguments"), f"{where}.function.arguments"),
                    id=call["id"])


def chat_messages(messages: Any) -> list[ChatMessage]:
    """Chat Completions ``messages`` as the engine's messages (``developer`` is a system
    prompt; a tool result takes its tool's name from the call it answers).

    Example: see :mod:`rkllm_core.server.openai_convert`.
    """
    if not isinstance(messages, list) or not messages:
        raise InvalidParameterError(
            "messages must be a non-empty list of {\"role\": ..., \"content\": ...} objects")
    kinds = _message_types()
    names: dict[str, str] = {}
    out: list[ChatMessage] = []
    for i, raw in enumerate(messages):
        where = f"messages[{i}]"
        role = raw.get("role") if isinstance(raw, Mapping) else None
        kind = kinds.get(role) if isinstance(role, str) else None
        if kind is None:
            raise InvalidParameterError(
                f"{where}.role: {role!r} is not one of {', '.join(kinds)}")
        message = validate(kind, raw, where)
        text = text_of(message.get("content"), f"{where}.content")
        if role in ("system", "developer"):
            out.append(ChatMessage.system(text))
        elif role == "user":
            out.append(ChatMessage.user(text))
        elif role == "assistant":
            calls = [_tool_call(c, f"{where}.tool_calls[{j}]")
                     for j, c in enumerate(message.get("tool_calls") or [])]
            legacy = message.get("function_call")
            if legacy:
                calls.append(ToolCall(legacy["name"], arguments_of(
                    legacy.get("arguments"), f"{where}.function_call.arguments")))
            names.update((c.id, c.name) for c in calls)
            out.append(ChatMessage.assistant(text, tool_calls=calls))
        elif role == "tool":
            call_id = message["tool_call_id"]
            out.append(ChatMessage.tool(text, tool_call_id=call_id, name=names.get(call_id)))
        else:
            out.append(ChatMessage.tool(text, name=message["name"]))
    return out


# -- tools -----------------------------------------------------------------------------------------

def tool_specs(tools: Any, where: str = "tools") -> list[ToolSpec]:
    """Function tools as ToolSpecs: Chat Completions' ``{"type": "function", "function":
    {...}}`` or the Responses API's flat ``{"type": "function", "name": ...}``; other tool
    types are refused.

    Example:
        >>> from rkllm_core.server.openai_convert import tool_specs
        >>> flat = {"type": "function", "name": "f", "parameters": {"type": "object"}}
        >>> [t.name for t in tool_specs([flat])]
        ['f']
    """
    specs = []
    for j, tool in enumerate(tools or []):
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            raise unsupported_tool(tool, f"{where}[{j}]")
        specs.append(ToolSpec.from_openai(tool))
    return specs


def unsupported_tool(tool: Any, where: str) -> InvalidParameterError:
    """The error for a tool that is not a function tool (built-in, custom, MCP...).

    Example:
        >>> from rkllm_core.server.openai_convert import unsupported_tool
        >>> print(unsupported_tool({"type": "web_search"}, "tools[0]"))
        tools[0]: 'web_search' tools are not supported here; give function tools (...)
    """
    kind = tool.get("type") if isinstance(tool, Mapping) else type(tool).__name__
    return InvalidParameterError(f"{where}: {kind!r} tools are not supported here; give "
                                 "function tools ({\"type\": \"function\", ...})")


def tool_choice_of(choice: Any, tools: list[ToolSpec]) -> tuple[str, list[ToolSpec]]:
    """The engine's ``tool_choice`` (``auto``, ``none``, ``required`` or a tool's name) and the
    tools it may call, from either API's ``tool_choice``.

    Example:
        >>> from rkllm_core.chat import ToolSpec
        >>> from rkllm_core.server.openai_convert import tool_choice_of
        >>> tools = [ToolSpec("f"), ToolSpec("g")]
        >>> tool_choice_of({"type": "function", "function": {"name": "g"}}, tools)[0]
        'g'
        >>> choice, allowed = tool_choice_of({"type": "allowed_tools", "mode": "required",
        ...                                   "tools": [{"type": "function", "name": "f"}]}, tools)
        >>> choice, [t.name for t in allowed]
        ('required', ['f'])
    """
    if choice is None:
        return "auto", tools
    if isinstance(choice, str):
        return choice, tools
    kind = choice.get("type")
    if kind == "function":
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        if name not in {t.name for t in tools}:
            raise InvalidParameterError(
                f"tool_choice names the function {name!r}, which is not among `tools` "
                f"({', '.join(t.name for t in tools) or 'none given'})")
        return str(name), tools
    if kind == "allowed_tools":
        spec = choice.get("allowed_tools", choice)
        wanted = {(t.get("function") or {}).get("name") or t.get("name")
                  for t in spec.get("tools", [])}
        return str(spec.get("mode", "auto")), [t for t in tools if t.name in wanted]
    raise InvalidParameterError(
        f"tool_choice of type {kind!r} is not supported; use \"auto\", \"none\", \"required\" "
        "or a function")


# -- sampling, thinking, limits --------------------------------------------------------------------

def sampling_of(**values: Any) -> dict[str, Any]:
    """The sampling fields a request set, checked (``temperature=-1`` is refused here, whatever
    the runtime then takes per run).

    Example:
        >>> from rkllm_core.server.openai_convert import sampling_of
        >>> sampling_of(temperature=0.2, top_p=None, top_k=5)
        {'temperature': 0.2, 'top_k': 5}
        >>> sampling_of(temperature=-1)
        Traceback (most recent call last):
        ...
        rkllm_core.errors.InvalidParameterError: invalid request: temperature: Input should be ...
    """
    asked = {k: v for k, v in values.items() if v is not None}
    try:
        SamplingParams(**asked)
    except ValidationError as exc:
        raise InvalidParameterError(_describe(exc, "")) from None
    return asked


def thinking_of(body: Mapping[str, Any], effort: str | None) -> bool:
    """Whether a request asks for the model's thinking: ``chat_template_kwargs.enable_thinking``
    or ``enable_thinking`` when given (the vLLM / llama.cpp extras), else a ``reasoning_effort``
    other than ``none`` / ``minimal``.

    Example:
        >>> from rkllm_core.server.openai_convert import thinking_of
        >>> thinking_of({}, "medium"), thinking_of({}, "minimal"), thinking_of({}, None)
        (True, False, False)
        >>> thinking_of({"chat_template_kwargs": {"enable_thinking": True}}, None)
        True
    """
    extras = body.get("chat_template_kwargs")
    for source in (extras if isinstance(extras, Mapping) else {}, body):
        flag = source.get("enable_thinking")
        if isinstance(flag, bool):
            return flag
    return effort not in (None, "none", "minimal")


def stops_of(stop: str | Sequence[str] | None) -> list[str]:
    """``stop`` (one string or a list) as a list without empty strings.

    Example:
        >>> from rkllm_core.server.openai_convert import stops_of
        >>> stops_of("\\n"), stops_of(["a", ""]), stops_of(None)
        (['\\n'], ['a'], [])
    """
    if stop is None:
        return []
    return [s for s in ([stop] if isinstance(stop, str) else stop) if s]


def max_tokens_of(*values: int | None, name: str = "max_tokens") -> int | None:
    """The first limit given among ``values`` (e.g. ``max_completion_tokens``, ``max_tokens``);
    it must be at least 1.

    Example:
        >>> from rkllm_core.server.openai_convert import max_tokens_of
        >>> max_tokens_of(None, 16), max_tokens_of(None, None)
        (16, None)
    """
    for value in values:
        if value is not None:
            if value < 1:
                raise InvalidParameterError(f"{name} must be at least 1, got {value}")
            return value
    return None


def schema_of(response_format: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, bool]:
    """(JSON schema, json_mode) from a ``response_format`` (Chat Completions) or ``text.format``
    (Responses): ``json_object`` asks for any JSON object, ``json_schema`` for that schema.

    Example:
        >>> from rkllm_core.server.openai_convert import schema_of
        >>> schema_of({"type": "json_schema", "json_schema": {"name": "a", "schema": {
        ...     "type": "object"}}})
        ({'type': 'object'}, False)
        >>> schema_of({"type": "json_object"}), schema_of({"type": "text"})
        ((None, True), (None, False))
    """
    kind = (response_format or {}).get("type", "text")
    if kind == "json_object":
        return None, True
    if kind == "json_schema":
        assert response_format is not None
        spec = response_format.get("json_schema", response_format)
        return dict(spec.get("schema") or {"type": "object"}), False
    if kind == "text":
        return None, False
    raise InvalidParameterError(
        f"response format {kind!r} is not supported; use text, json_object or json_schema")


# -- results ---------------------------------------------------------------------------------------

def finish_of(result: ChatResult) -> Finish:
    """OpenAI's finish reason for a finished turn. A turn that did not end by itself or by its
    limit (aborted, failed) is an error, never a ``stop``: its reply is cut short.

    Example:
        >>> from rkllm_core.chat import ChatMessage, ChatResult, ChatUsage
        >>> from rkllm_core.server.openai_convert import finish_of
        >>> usage = ChatUsage(3, 1, 3, 0.0, 0.0, 0.0)
        >>> finish_of(ChatResult(ChatMessage.assistant("Hi"), [], "length", usage, None,
        ...                      "native", False, "1.3.0"))
        'length'
    """
    reason = result.finish_reason
    if reason in ("stop", "length", "tool_calls"):
        return reason  # type: ignore[return-value]
    raise RunError(f"the run ended ({reason}) before its reply was complete; try again",
                   result.raw_text)


def usage_of(result: ChatResult) -> Any:
    """``CompletionUsage`` of a turn: prompt tokens (the whole context the reply was computed
    on), completion tokens, and the prompt tokens the KV cache already held as
    ``prompt_tokens_details.cached_tokens``.

    Example:
        >>> from rkllm_core.chat import ChatMessage, ChatResult, ChatUsage
        >>> from rkllm_core.server.openai_convert import usage_of
        >>> usage = ChatUsage(120, 8, 20, 0.0, 0.0, 0.0)
        >>> u = usage_of(ChatResult(ChatMessage.assistant("Hi"), [], "stop", usage, None,
        ...                         "native", True, "1.3.0"))
        >>> u.prompt_tokens, u.completion_tokens, u.total_tokens
        (120, 8, 128)
        >>> u.prompt_tokens_details.cached_tokens
        100
    """
    from openai.types import CompletionUsage
    from openai.types.completion_usage import PromptTokensDetails

    from rkllm_core.server.turns import cached_tokens

    u = result.usage
    return CompletionUsage(prompt_tokens=u.input_tokens, completion_tokens=u.output_tokens,
                           total_tokens=u.total_tokens,
                           prompt_tokens_details=PromptTokensDetails(
                               cached_tokens=cached_tokens(result)))


def dump(model: Any) -> dict[str, Any]:
    """A response model of the ``openai`` package as JSON data: the fields that were set (a
    ``None`` set on purpose stays ``null``) under their wire names, extras such as
    ``reasoning_content`` included.

    Example:
        >>> from openai.types.chat.chat_completion_chunk import ChoiceDelta
        >>> from rkllm_core.server.openai_convert import dump
        >>> dump(ChoiceDelta(content=None, reasoning_content="hm"))
        {'content': None, 'reasoning_content': 'hm'}
    """
    data: dict[str, Any] = model.model_dump(mode="json", exclude_unset=True, by_alias=True)
    return data


@dataclass
class CallPiece:
    """A piece of one tool call as OpenAI streams it: ``index`` counts the calls of the turn
    from 0; ``id`` and ``name`` come with the first piece of a call only (the client's stream
    helper concatenates whatever repeats), ``arguments`` is argument text to append."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


@dataclass
class ToolCallPieces:
    """The engine's tool-call deltas as :class:`CallPiece` objects: a call starts once its name
    is known (argument text before that is held), calls are numbered in the order they start.

    Example:
        >>> from rkllm_core.chat import ToolCallDelta
        >>> from rkllm_core.server.openai_convert import ToolCallPieces
        >>> pieces = ToolCallPieces()
        >>> first = pieces.feed([ToolCallDelta(3, "call_1", "f"),
        ...                      ToolCallDelta(3, None, None, "{")])
        >>> [(p.index, p.id, p.name, p.arguments) for p in first]
        [(0, 'call_1', 'f', ''), (0, None, None, '{')]
    """

    started: dict[int, int] = field(default_factory=dict)
    held: dict[int, str] = field(default_factory=dict)

    def feed(self, deltas: Sequence[ToolCallDelta]) -> list[CallPiece]:
        """The pieces these deltas add."""
        out = []
        for d in deltas:
            index = self.started.get(d.index)
            if index is None:
                if d.name is None:
                    self.held[d.index] = self.held.get(d.index, "") + d.arguments
                    continue
                index = self.started[d.index] = len(self.started)
                out.append(CallPiece(index, self.held.pop(d.index, "") + d.arguments,
                                     d.id or new_call_id(), d.name))
            elif d.arguments:
                out.append(CallPiece(index, d.arguments))
        return out
