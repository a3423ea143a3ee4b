"""LangChain message and tool types to and from :mod:`rkllm_core.chat` types.

Conversion only: behaviour lives in :mod:`rkllm_core.chat`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages import (
    ChatMessage as LCChatMessage,
)
from langchain_core.messages.tool import ToolCall as LCToolCall
from langchain_core.messages.tool import invalid_tool_call, tool_call_chunk
from langchain_core.utils.function_calling import convert_to_openai_tool

from rkllm_core.chat.engine import ChatChunk, ChatResult
from rkllm_core.chat.messages import ChatMessage, ToolCall, ToolSpec
from rkllm_core.errors import InvalidParameterError


def _text(content: str | list[str | dict[str, Any]]) -> tuple[str, list[Any]]:
    """Text of a LangChain content (string or content blocks) and its image embeddings."""
    if isinstance(content, str):
        return content, []
    parts: list[str] = []
    images: list[Any] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif block.get("type") in ("image_embedding", "rkllm_image"):
            images.append(block["embedding"])
        elif block.get("type") in ("image", "image_url"):
            raise InvalidParameterError(
                "an image content block needs to be encoded first: RKLLM models take image "
                "embeddings from the model's vision encoder (run it with rknn), given as "
                '{"type": "image_embedding", "embedding": <numpy array n_tokens x hidden>}')
        elif block.get("type") in ("reasoning", "thinking"):
            continue  # never sent back to the model
        elif block.get("type") == "tool_use":
            continue  # carried by AIMessage.tool_calls
        else:
            raise InvalidParameterError(
                f"content block of type {block.get('type')!r} is not supported; use text blocks")
    return "".join(parts), images


def to_chat_messages(messages: Sequence[BaseMessage]) -> list[ChatMessage]:
    """LangChain messages to :class:`~rkllm_core.chat.ChatMessage`."""
    out: list[ChatMessage] = []
    for m in messages:
        text, images = _text(m.content)
        if isinstance(m, SystemMessage):
            out.append(ChatMessage.system(text))
        elif isinstance(m, HumanMessage):
            out.append(ChatMessage.user(text, images=images))
        elif isinstance(m, AIMessage):
            calls = [ToolCall(c["name"], c.get("args") or {}, c.get("id") or f"call_{i}")
                     for i, c in enumerate(m.tool_calls)]
            # a turn with tool calls is kept stripped, as the engine records it for the cache
            out.append(ChatMessage.assistant(text.strip() if calls else text, tool_calls=calls))
        elif isinstance(m, ToolMessage):
            if m.status == "error" and not text.lower().startswith("error"):
                text = f"Error: {text}"
            out.append(ChatMessage.tool(text, tool_call_id=m.tool_call_id, name=m.name))
        elif isinstance(m, LCChatMessage) and m.role in ("system", "user", "assistant", "tool"):
            out.append(ChatMessage(m.role, text))  # type: ignore[arg-type]
        else:
            raise InvalidParameterError(
                f"{type(m).__name__} (role {getattr(m, 'role', m.type)!r}) cannot be sent to the "
                "model: use system, human, AI and tool messages")
    return out


def to_tool_specs(tools: Sequence[Any]) -> list[ToolSpec]:
    """LangChain tools, pydantic models, functions or dicts to tool specs."""
    return [ToolSpec.from_openai(convert_to_openai_tool(t)) for t in tools]


def _lc_tool_call(call: ToolCall) -> LCToolCall:
    return LCToolCall(name=call.name, args=dict(call.arguments), id=call.id, type="tool_call")


def to_ai_message(result: ChatResult, model_name: str) -> AIMessage:
    """The finished turn as an :class:`AIMessage` with tool calls, usage and metadata."""
    extra: dict[str, Any] = {}
    if result.message.reasoning:
        extra["reasoning_content"] = result.message.reasoning
    invalid = [invalid_tool_call(name=c.name, args=c.raw, id=c.id, error=c.error)
               for c in result.invalid_tool_calls]
    return AIMessage(
        content=result.message.content,
        additional_kwargs=extra,
        tool_calls=[_lc_tool_call(c) for c in result.message.tool_calls],
        invalid_tool_calls=invalid,
        usage_metadata=usage_metadata(result),
        response_metadata=response_metadata(result, model_name),
    )


def usage_metadata(result: ChatResult) -> Any:
    """LangChain's ``UsageMetadata`` dict."""
    u = result.usage
    return {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
            "total_tokens": u.total_tokens}


def response_metadata(result: ChatResult, model_name: str) -> dict[str, Any]:
    """Model name, finish reason, timings and the runtime release of one turn."""
    return {"model_name": model_name, "model_provider": "rkllm", **result.metadata()}


class StreamAssembler:
    """Turns engine chunks into :class:`AIMessageChunk` objects whose sum equals the message
    that ``invoke`` returns for the same turn (the engine's streamed pieces add up exactly to
    its final text; this adds the metadata in a closing chunk)."""

    def chunk(self, chunk: ChatChunk) -> AIMessageChunk | None:
        """One streamed piece (None when it carries nothing)."""
        if not (chunk.content or chunk.reasoning or chunk.tool_calls):
            return None
        return to_chunk(chunk)

    def last(self, result: ChatResult, model_name: str) -> AIMessageChunk:
        """The closing chunk: usage and response metadata."""
        return AIMessageChunk(content="", usage_metadata=usage_metadata(result),
                              response_metadata=response_metadata(result, model_name),
                              chunk_position="last")


def to_chunk(chunk: ChatChunk) -> AIMessageChunk:
    """One engine piece as it is, as an :class:`AIMessageChunk` (token callbacks of invoke)."""
    extra: dict[str, Any] = {"reasoning_content": chunk.reasoning} if chunk.reasoning else {}
    calls = [tool_call_chunk(name=d.name, args=d.arguments, id=d.id, index=d.index)
             for d in chunk.tool_calls]
    return AIMessageChunk(content=chunk.content, additional_kwargs=extra, tool_call_chunks=calls)


def message_as_chunk(message: AIMessage) -> AIMessageChunk:
    """A whole :class:`AIMessage` as the one and last chunk of a stream."""
    return AIMessageChunk(
        content=message.content, additional_kwargs=message.additional_kwargs,
        tool_call_chunks=[tool_call_chunk(name=c["name"], args=dumps_args(c["args"]),
                                          id=c["id"], index=i)
                          for i, c in enumerate(message.tool_calls)],
        usage_metadata=message.usage_metadata, response_metadata=message.response_metadata,
        chunk_position="last")


def tool_choice_name(tool_choice: Any, tools: Sequence[ToolSpec]) -> str:
    """LangChain's ``tool_choice`` forms to the engine's: auto / none / required / a name."""
    if tool_choice is None or tool_choice == "auto":
        return "auto"
    if tool_choice is True:
        if len(tools) != 1:
            raise InvalidParameterError("tool_choice=True needs exactly one tool")
        return tools[0].name
    if tool_choice is False or tool_choice == "none":
        return "none"
    if tool_choice in ("any", "required"):
        return "required"
    if isinstance(tool_choice, dict):
        fn = tool_choice.get("function", tool_choice)
        return str(fn.get("name"))
    if isinstance(tool_choice, str):
        return tool_choice
    raise InvalidParameterError(f"tool_choice {tool_choice!r} is not understood")


def dumps_args(args: Any) -> str:
    """Tool arguments as JSON text."""
    return args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
