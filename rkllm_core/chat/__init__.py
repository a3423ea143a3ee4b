"""The chat layer both adapters share: messages, templates and presets, local tokenization,
tool calls, reasoning, stop sequences, structured output and KV-cache reuse.

Example:
    >>> from rkllm_core.chat import ChatMessage, OutputParser
    >>> ChatMessage.user("Hi").role
    'user'
    >>> OutputParser().feed("plain text").content
    'plain text'
"""

from rkllm_core.chat.engine import (
    AsyncChatStream,
    ChatChunk,
    ChatEngine,
    ChatResult,
    ChatStream,
    ChatUsage,
)
from rkllm_core.chat.messages import ChatMessage, InvalidToolCall, ToolCall, ToolSpec
from rkllm_core.chat.output import Delta, OutputParser, ParsedOutput, ToolCallDelta
from rkllm_core.chat.structured import StructuredOutputError

__all__ = [
    "AsyncChatStream",
    "ChatChunk",
    "ChatEngine",
    "ChatMessage",
    "ChatResult",
    "ChatStream",
    "ChatUsage",
    "Delta",
    "InvalidToolCall",
    "OutputParser",
    "ParsedOutput",
    "StructuredOutputError",
    "ToolCall",
    "ToolCallDelta",
    "ToolSpec",
]
