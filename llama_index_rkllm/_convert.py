"""LlamaIndex message, block and tool types to and from :mod:`rkllm_core.chat` types.

Conversion only: behaviour lives in :mod:`rkllm_core.chat`. LlamaIndex 0.14 carries an
assistant's tool calls as :class:`ToolCallBlock` s in ``blocks`` (mirrored in
``additional_kwargs["tool_calls"]``, which LlamaIndex's streaming structured output reads) and
reasoning as a :class:`ThinkingBlock`; tool results are ``role="tool"`` messages with
``additional_kwargs["tool_call_id"]``.

Example:
    >>> from llama_index.core.llms import ChatMessage as LIChatMessage
    >>> from llama_index_rkllm._convert import to_chat_messages
    >>> [m.role for m in to_chat_messages([LIChatMessage(role="system", content="Be brief."),
    ...                                    LIChatMessage(role="user", content="Hi")])]
    ['system', 'user']
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import (
    CachePoint,
    ChatResponse,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.base.llms.types import ChatMessage as LIChatMessage
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.llms.utils import parse_partial_json

from rkllm_core.chat.engine import ChatChunk, ChatResult
from rkllm_core.chat.messages import ChatMessage, Role, ToolCall, ToolSpec
from rkllm_core.errors import InvalidParameterError

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

_ROLES: dict[str, Role] = {
    MessageRole.SYSTEM.value: "system", MessageRole.DEVELOPER.value: "system",
    MessageRole.USER.value: "user", MessageRole.ASSISTANT.value: "assistant",
    MessageRole.CHATBOT.value: "assistant", MessageRole.MODEL.value: "assistant",
    MessageRole.TOOL.value: "tool", MessageRole.FUNCTION.value: "tool",
}


def _arguments(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            parsed = json.loads(value)
        except ValueError:
            try:
                parsed = parse_partial_json(value)
            except (ValueError, TypeError):
                return {}  # arguments still streaming, or never valid JSON
        return dict(parsed) if isinstance(parsed, Mapping) else {}
    return {}


def _legacy_tool_calls(message: LIChatMessage) -> list[ToolCall]:
    """Calls in ``additional_kwargs["tool_calls"]`` (OpenAI dicts or objects) of messages that
    other integrations or older memory stored without ToolCallBlocks."""
    calls = []
    for i, raw in enumerate(message.additional_kwargs.get("tool_calls") or []):
        data = raw if isinstance(raw, Mapping) else getattr(raw, "model_dump", lambda: {})()
        fn = data.get("function", data)
        name = fn.get("name") or data.get("tool_name")
        if not name:
            continue
        args = fn.get("arguments", data.get("tool_kwargs"))
        calls.append(ToolCall(str(name), _arguments(args),
                              str(data.get("id") or data.get("tool_id") or f"call_{i}")))
    return calls


def to_chat_message(message: LIChatMessage) -> ChatMessage:
    """One LlamaIndex message as a :class:`~rkllm_core.chat.ChatMessage`."""
    role = _ROLES.get(MessageRole(message.role).value)
    if role is None:
        raise InvalidParameterError(f"a message with role {message.role!r} cannot be sent to "
                                    "the model: use system, user, assistant and tool messages")
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in message.blocks:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolCallBlock):
            calls.append(ToolCall(block.tool_name, _arguments(block.tool_kwargs),
                                  block.tool_call_id or f"call_{len(calls)}"))
        elif isinstance(block, (ThinkingBlock, CachePoint)):
            continue  # reasoning is never sent back; cache hints mean nothing here
        elif block.block_type == "image":
            raise InvalidParameterError(
                "an ImageBlock needs to be encoded first: RKLLM models take image embeddings "
                "from the model's vision encoder (run it with rknn); pass them as "
                'additional_kwargs={"image_embeddings": [array n_tokens x hidden, ...]}')
        else:
            raise InvalidParameterError(
                f"a {type(block).__name__} cannot be sent to the model; use TextBlocks")
    text = "\n".join(texts)
    extra = message.additional_kwargs
    if role == "assistant":
        return ChatMessage.assistant(text, tool_calls=calls or _legacy_tool_calls(message))
    if role == "tool":
        call_id = extra.get("tool_call_id")
        name = extra.get("name") or extra.get("tool_name")
        return ChatMessage.tool(text, tool_call_id=str(call_id) if call_id else None,
                                name=str(name) if name else None)
    if role == "user":
        return ChatMessage.user(text, images=extra.get("image_embeddings") or ())
    return ChatMessage.system(text)


def to_chat_messages(messages: Sequence[LIChatMessage]) -> list[ChatMessage]:
    """LlamaIndex messages to :class:`~rkllm_core.chat.ChatMessage` s."""
    return [to_chat_message(m) for m in messages]


def to_tool_specs(tools: Sequence[BaseTool]) -> list[ToolSpec]:
    """LlamaIndex tools to the chat layer's JSON-schema tool specs."""
    return [ToolSpec.from_openai(t.metadata.to_openai_tool(skip_length_check=True))
            for t in tools]


def tool_choice_name(tool_choice: Any, tool_required: bool) -> str:
    """LlamaIndex's ``tool_choice`` / ``tool_required`` to the engine's: auto, none, required
    or a tool name."""
    if isinstance(tool_choice, Mapping):
        fn = tool_choice.get("function", tool_choice)
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if not name:
            raise InvalidParameterError(f"tool_choice {tool_choice!r} names no tool")
        return str(name)
    if tool_choice in (None, "auto"):
        return "required" if tool_required else "auto"
    if tool_choice == "any":
        return "required"
    if isinstance(tool_choice, str):
        return tool_choice
    raise InvalidParameterError(f"tool_choice {tool_choice!r} is not understood: give 'auto', "
                                "'none', 'required' or a tool name")


def usage(result: ChatResult) -> dict[str, int]:
    """Token counts under the keys LlamaIndex's token counter reads."""
    u = result.usage
    return {"prompt_tokens": u.input_tokens, "completion_tokens": u.output_tokens,
            "total_tokens": u.total_tokens}


def raw_response(result: ChatResult, model_name: str) -> dict[str, Any]:
    """``ChatResponse.raw``: usage, finish reason, timings and the runtime release."""
    return {
        "model": model_name,
        "usage": usage(result),
        **result.metadata(),
        "invalid_tool_calls": [{"raw": c.raw, "error": c.error, "name": c.name}
                               for c in result.invalid_tool_calls],
    }


def _openai_call(call_id: str | None, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": arguments}}


def _message(content: str, reasoning: str, calls: list[ToolCallBlock]) -> LIChatMessage:
    blocks: list[Any] = []
    if reasoning:
        blocks.append(ThinkingBlock(content=reasoning))
    blocks.append(TextBlock(text=content))
    blocks.extend(calls)
    extra: dict[str, Any] = {}
    if calls:
        extra["tool_calls"] = [
            _openai_call(c.tool_call_id, c.tool_name, c.tool_kwargs
                         if isinstance(c.tool_kwargs, str) else json.dumps(c.tool_kwargs,
                                                                           ensure_ascii=False))
            for c in calls]
    return LIChatMessage(role=MessageRole.ASSISTANT, blocks=blocks, additional_kwargs=extra)


def to_chat_response(result: ChatResult, model_name: str, delta: str | None = None
                     ) -> ChatResponse:
    """A finished turn as a :class:`ChatResponse` with tool calls, reasoning and usage."""
    calls = [ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=dict(c.arguments))
             for c in result.message.tool_calls]
    message = _message(result.message.content, result.message.reasoning or "", calls)
    return ChatResponse(message=message, raw=raw_response(result, model_name), delta=delta,
                        additional_kwargs=usage(result))


class StreamAccumulator:
    """Builds the growing :class:`ChatResponse` of a streamed turn, one engine chunk at a time.

    Tool calls appear as soon as their name is known, with ``tool_kwargs`` holding the argument
    JSON streamed so far (a string until the turn ends).
    """

    def __init__(self) -> None:
        self.content = ""
        self.reasoning = ""
        self._calls: dict[int, list[str | None]] = {}  # index -> [id, name, arguments]

    def add(self, chunk: ChatChunk) -> ChatResponse:
        """The response after ``chunk``: whole text so far, ``delta`` the new text."""
        self.content += chunk.content
        self.reasoning += chunk.reasoning
        for d in chunk.tool_calls:
            entry = self._calls.setdefault(d.index, [None, None, ""])
            entry[0] = d.id or entry[0]
            entry[1] = d.name or entry[1]
            entry[2] = (entry[2] or "") + d.arguments
        calls = [ToolCallBlock(tool_call_id=e[0], tool_name=e[1], tool_kwargs=e[2] or "")
                 for _, e in sorted(self._calls.items()) if e[1]]
        extra: dict[str, Any] = {}
        if chunk.reasoning:
            extra["thinking_delta"] = chunk.reasoning
        return ChatResponse(message=_message(self.content, self.reasoning, calls),
                            delta=chunk.content, additional_kwargs=extra)


def tool_selections(message: LIChatMessage) -> list[ToolSelection]:
    """The tool calls of an assistant message (partial argument JSON is parsed leniently)."""
    calls = [b for b in message.blocks if isinstance(b, ToolCallBlock)]
    if calls:
        return [ToolSelection(tool_id=c.tool_call_id or "", tool_name=c.tool_name,
                              tool_kwargs=_arguments(c.tool_kwargs)) for c in calls]
    return [ToolSelection(tool_id=c.id, tool_name=c.name, tool_kwargs=dict(c.arguments))
            for c in _legacy_tool_calls(message)]
