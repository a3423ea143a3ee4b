"""The chat layer's own message, tool and tool-call types, shared by both adapters.

Adapters convert LangChain / LlamaIndex messages to these and back; nothing here imports a
framework. Messages are immutable so a conversation's prefix can be compared with what the
runtime's KV cache holds.

Example:
    >>> from rkllm_core.chat.messages import ChatMessage, ToolCall, ToolSpec
    >>> call = ToolCall(name="get_weather", arguments={"city": "Paris"}, id="call_1")
    >>> history = [
    ...     ChatMessage.system("You are terse."),
    ...     ChatMessage.user("Weather in Paris?"),
    ...     ChatMessage.assistant("", tool_calls=[call]),
    ...     ChatMessage.tool("sunny", tool_call_id="call_1", name="get_weather"),
    ... ]
    >>> history[2].to_openai()["tool_calls"][0]["function"]["name"]
    'get_weather'
    >>> ToolSpec("get_weather", "Weather of a city", {"type": "object"}).to_openai()["type"]
    'function'
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]


def new_call_id() -> str:
    """A fresh tool-call id (``call_`` and 24 hex digits), as OpenAI-style clients expect."""
    return "call_" + uuid.uuid4().hex[:24]


@dataclass(frozen=True)
class ToolCall:
    """A well-formed call the model asked for: a tool name and its JSON arguments.

    Example:
        >>> from rkllm_core.chat import ToolCall
        >>> call = ToolCall("get_weather", {"city": "Paris"}, id="call_1")
        >>> call.arguments_json()
        '{"city": "Paris"}'
        >>> call.to_openai()["function"]
        {'name': 'get_weather', 'arguments': {'city': 'Paris'}}
    """

    name: str
    arguments: Mapping[str, Any]
    id: str = field(default_factory=new_call_id)

    def arguments_json(self) -> str:
        """The arguments as compact JSON (what OpenAI-style messages carry)."""
        return json.dumps(dict(self.arguments), ensure_ascii=False)

    def to_openai(self) -> dict[str, Any]:
        """``{"id", "type": "function", "function": {"name", "arguments"}}`` (arguments a dict)."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": dict(self.arguments)}}


@dataclass(frozen=True)
class InvalidToolCall:
    """Tool-call text the model produced that could not be parsed; kept raw, never raised.

    Example:
        >>> from rkllm_core.chat import OutputParser
        >>> parser = OutputParser(tool_format="hermes")
        >>> _ = parser.feed('<tool_call>{"name": "f", "arguments": {oops}}</tool_call>')
        >>> bad = parser.finish_result().invalid_tool_calls[0]
        >>> bad.name, bad.raw
        ('f', '{"name": "f", "arguments": {oops}}')
    """

    raw: str
    error: str
    name: str | None = None
    id: str = field(default_factory=new_call_id)


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call, as a JSON-schema function definition.

    Example:
        >>> from rkllm_core.chat import ToolSpec
        >>> spec = ToolSpec("get_weather", "The weather in a city",
        ...                 {"type": "object", "properties": {"city": {"type": "string"}}})
        >>> openai = spec.to_openai()
        >>> openai["function"]["name"], ToolSpec.from_openai(openai) == spec
        ('get_weather', True)
    """

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}})

    def __post_init__(self) -> None:
        from rkllm_core.errors import InvalidParameterError

        if not isinstance(self.name, str) or not self.name.strip():
            raise InvalidParameterError(f"a tool needs a non-empty string name, got {self.name!r}")
        if not isinstance(self.description, str):
            raise InvalidParameterError(f"tool {self.name!r}: description must be a string")
        if not isinstance(self.parameters, Mapping):
            raise InvalidParameterError(
                f"tool {self.name!r}: parameters must be a JSON-schema object (a dict), got "
                f"{type(self.parameters).__name__}")
        try:
            json.dumps(dict(self.parameters))
        except (TypeError, ValueError) as exc:
            raise InvalidParameterError(
                f"tool {self.name!r}: parameters are not JSON ({exc}); use dicts, lists, "
                "strings, numbers and booleans") from None

    def to_openai(self) -> dict[str, Any]:
        """``{"type": "function", "function": {"name", "description", "parameters"}}``."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description,
            "parameters": dict(self.parameters)}}

    @classmethod
    def from_openai(cls, spec: Mapping[str, Any]) -> ToolSpec:
        """Accept ``{"type": "function", "function": {...}}`` or the bare function dict."""
        fn = spec.get("function", spec)
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            from rkllm_core.errors import InvalidParameterError

            raise InvalidParameterError(
                f"a tool needs a non-empty string 'name' (got {spec!r}); give "
                "{'type': 'function', 'function': {'name': ..., 'parameters': {...}}}"
            )
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, Mapping):
            from rkllm_core.errors import InvalidParameterError

            raise InvalidParameterError(
                f"tool {fn['name']!r}: 'parameters' must be a JSON-schema object, got "
                f"{type(params).__name__}"
            )
        return cls(fn["name"], str(fn.get("description") or ""), params)


@dataclass(frozen=True)
class ChatMessage:
    """One message of a conversation.

    ``images`` holds image embeddings (numpy arrays of ``n_image_tokens x hidden``) for a
    multimodal user turn; ``reasoning`` the thinking text of an assistant turn (never sent back
    to the model, as the families' templates drop it).

    Example:
        >>> from rkllm_core.chat import ChatMessage, ToolCall
        >>> call = ToolCall("get_weather", {"city": "Paris"}, id="call_1")
        >>> turns = [ChatMessage.system("Be terse."), ChatMessage.user("Weather in Paris?"),
        ...          ChatMessage.assistant("", tool_calls=[call]),
        ...          ChatMessage.tool("sunny", tool_call_id="call_1", name="get_weather")]
        >>> [t.to_openai()["role"] for t in turns]
        ['system', 'user', 'assistant', 'tool']
        >>> again = ChatMessage.assistant("", tool_calls=[ToolCall("get_weather",
        ...                                                         {"city": "Paris"})])
        >>> turns[2].same_turn(again)  # a framework's new call id is the same turn
        True
    """

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    reasoning: str | None = None
    images: tuple[Any, ...] = ()

    @classmethod
    def system(cls, content: str) -> ChatMessage:
        """A system prompt."""
        return cls("system", content)

    @classmethod
    def user(cls, content: str, *, images: Iterable[Any] = ()) -> ChatMessage:
        """A user turn, optionally with image embeddings."""
        return cls("user", content, images=tuple(images))

    @classmethod
    def assistant(cls, content: str = "", *, tool_calls: Iterable[ToolCall] = (),
                  reasoning: str | None = None) -> ChatMessage:
        """An assistant turn, optionally with the tool calls it made."""
        return cls("assistant", content, tool_calls=tuple(tool_calls), reasoning=reasoning)

    @classmethod
    def tool(cls, content: str, *, tool_call_id: str | None = None,
             name: str | None = None) -> ChatMessage:
        """The result of a tool call."""
        return cls("tool", content, tool_call_id=tool_call_id, name=name)

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI-style dict that Hugging Face chat templates consume."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out

    def __post_init__(self) -> None:
        from rkllm_core.errors import InvalidParameterError

        if self.role not in ("system", "user", "assistant", "tool"):
            raise InvalidParameterError(
                f"message role {self.role!r} is not one of system, user, assistant, tool")
        if not isinstance(self.content, str):
            raise InvalidParameterError(
                f"message content must be a string, got {type(self.content).__name__}")

    def same_turn(self, other: ChatMessage) -> bool:
        """True when the two messages put the same thing into the model's context.

        Reasoning is ignored (templates drop it) and tool-call ids are ignored when both sides
        carry calls with equal names and arguments (frameworks regenerate ids).
        """
        if (self.role, self.content, self.tool_call_id is None, self.name) != (
                other.role, other.content, other.tool_call_id is None, other.name):
            return False
        if len(self.tool_calls) != len(other.tool_calls) or len(self.images) != len(other.images):
            return False
        for a, b in zip(self.tool_calls, other.tool_calls, strict=True):
            if a.name != b.name or dict(a.arguments) != dict(b.arguments):
                return False
        return all(x is y for x, y in zip(self.images, other.images, strict=True))
