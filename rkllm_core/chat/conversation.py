"""The conversation as the chat engine reads it: the tool list checked, the system prompt split
off, the trailing user or tool turn that is new, tool results and an earlier history written as
text for a runtime that takes one input at a time, and the sentences that ask for tools.

Example:
    >>> from rkllm_core.chat import ChatMessage
    >>> from rkllm_core.chat.conversation import _split_system, _trailing_inputs
    >>> system, rest = _split_system([ChatMessage.system("Be brief."), ChatMessage.user("Hi")])
    >>> system, [m.content for m in _trailing_inputs(rest)[1]]
    ('Be brief.', ['Hi'])
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from rkllm_core.chat.messages import ChatMessage, ToolSpec
from rkllm_core.errors import InvalidParameterError

ToolChoice = str  # "auto" | "none" | "required" | "any" | a tool name


def _tool_specs(tools: Any) -> list[ToolSpec]:
    """``tools`` as a list of ToolSpec: specs or OpenAI-style dicts, names unique."""
    if isinstance(tools, (ToolSpec, Mapping, str)) or not isinstance(tools, Sequence):
        raise InvalidParameterError(
            f"tools must be a list of ToolSpec or OpenAI-style tool dicts, got "
            f"{type(tools).__name__}")
    specs: list[ToolSpec] = []
    for tool in tools:
        if isinstance(tool, ToolSpec):
            specs.append(tool)
        elif isinstance(tool, Mapping):
            specs.append(ToolSpec.from_openai(tool))
        else:
            raise InvalidParameterError(
                f"tools must be ToolSpec objects or OpenAI-style dicts, got {type(tool).__name__}")
    names = [s.name for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InvalidParameterError(f"tool names must be unique; repeated: {', '.join(repeated)}")
    return specs


def _split_system(messages: Sequence[ChatMessage]) -> tuple[str | None, list[ChatMessage]]:
    system = [m.content for m in messages if m.role == "system"]
    rest = [m for m in messages if m.role != "system"]
    return ("\n\n".join(system) if system else None), rest


def _trailing_inputs(rest: list[ChatMessage]) -> tuple[list[ChatMessage], list[ChatMessage]]:
    """(history, new inputs): the last user turn, or the trailing run of tool results."""
    if not rest:
        raise InvalidParameterError("the conversation is empty: give at least one user message")
    last = rest[-1]
    if last.role == "user":
        return rest[:-1], [last]
    if last.role == "tool":
        k = len(rest)
        while k > 0 and rest[k - 1].role == "tool":
            k -= 1
        return rest[:k], rest[k:]
    raise InvalidParameterError(
        "the conversation ends with an assistant turn; the model answers a user or tool "
        "message: append one (to continue the assistant's text, use tokens or raw mode)")


def _tool_results_text(tools: list[ChatMessage]) -> str:
    """Several tool results in one tool turn, as Rockchip's 1.3.0 server sends them."""
    if len(tools) == 1:
        return tools[0].content
    return json.dumps([{"name": m.name, "tool_call_id": m.tool_call_id, "content": m.content}
                       for m in tools], ensure_ascii=False)


def _transcript(history: Sequence[ChatMessage]) -> str:
    lines = []
    for m in history:
        if m.role == "user":
            lines.append(f"User: {m.content}")
        elif m.role == "assistant":
            calls = "".join(f"\n<tool_call>\n{json.dumps({'name': c.name, 'arguments': dict(c.arguments)}, ensure_ascii=False)}\n</tool_call>"  # noqa: E501
                            for c in m.tool_calls)
            lines.append(f"Assistant: {m.content}{calls}")
        elif m.role == "tool":
            lines.append(f"Tool result{f' ({m.name})' if m.name else ''}: {m.content}")
    return "\n".join(lines)


def hermes_tool_instructions(tools: Sequence[ToolSpec]) -> str:
    """The Hermes / Qwen tool block for a system prompt (used where the runtime cannot add it).

    Example:
        >>> from rkllm_core.chat import ToolSpec
        >>> block = hermes_tool_instructions([ToolSpec("get_weather", "Weather of a city",
        ...                                            {"type": "object"})])
        >>> block.startswith("# Tools"), '"name": "get_weather"' in block
        (True, True)
    """
    specs = "\n".join(json.dumps(t.to_openai(), ensure_ascii=False) for t in tools)
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{specs}\n</tools>\n\nFor each function call, return a json object with "
            "function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def tool_choice_instruction(tool_choice: ToolChoice, tools: Sequence[ToolSpec]) -> str:
    """The sentence that asks for a tool call when ``tool_choice`` requires one ("" for auto).

    Example:
        >>> from rkllm_core.chat import ToolSpec
        >>> tools = [ToolSpec("get_weather", "Weather of a city", {"type": "object"})]
        >>> tool_choice_instruction("auto", tools), tool_choice_instruction("get_weather", tools)
        ('', 'You must call the tool `get_weather`.')
    """
    if tool_choice in ("auto", "none"):
        return ""
    if tool_choice in ("required", "any"):
        return "You must answer with at least one tool call."
    if tool_choice not in {t.name for t in tools}:
        raise InvalidParameterError(
            f"tool_choice {tool_choice!r} names no bound tool; bound tools: "
            f"{', '.join(t.name for t in tools) or '(none)'}")
    return f"You must call the tool `{tool_choice}`."


__all__ = ["ToolChoice", "hermes_tool_instructions", "tool_choice_instruction"]
