"""What a chat turn gives back: :class:`ChatChunk` (one streamed piece), :class:`ChatResult`
(the finished turn) and :class:`ChatUsage` (its token counts and timings), plus ``Mode``, the
three ways a turn reaches the model (see :mod:`rkllm_core.chat.engine`).

Example:
    >>> from rkllm_core.chat import ChatChunk, ChatUsage
    >>> ChatChunk("Hi").content
    'Hi'
    >>> ChatUsage(input_tokens=12, output_tokens=3, prefill_tokens=12, prefill_ms=4.0,
    ...           decode_ms=9.0, tokens_per_second=333.3).total_tokens
    15
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rkllm_core.chat.messages import ChatMessage, InvalidToolCall
from rkllm_core.chat.output import ToolCallDelta

Mode = Literal["native", "tokens", "raw"]


@dataclass(frozen=True)
class ChatUsage:
    """Tokens of one call: ``input_tokens`` is the whole context the reply was computed on
    (reused cache plus what was prefilled now), ``prefill_tokens`` what this call prefilled.

    Example:
        >>> import tempfile, pathlib
        >>> from rkllm_core import RKLLM
        >>> from rkllm_core.chat import ChatEngine, ChatMessage
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi there."\\n')
        >>> with RKLLM(path, library="host", max_context_len=512) as llm:
        ...     chat = ChatEngine(llm)
        ...     first = chat.generate([ChatMessage.user("Hello")])
        ...     second = chat.generate([ChatMessage.user("Hello"), first.message,
        ...                             ChatMessage.user("Again")])
        >>> u = second.usage  # the first turn was in the KV cache: only the new one prefilled
        >>> u.prefill_tokens < u.input_tokens, u.total_tokens == u.input_tokens + u.output_tokens
        (True, True)
    """

    input_tokens: int
    output_tokens: int
    prefill_tokens: int
    prefill_ms: float
    decode_ms: float
    tokens_per_second: float

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


@dataclass
class ChatChunk:
    """One streamed piece of an assistant turn.

    Example:
        >>> import tempfile, pathlib
        >>> from rkllm_core import RKLLM
        >>> from rkllm_core.chat import ChatEngine, ChatMessage
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi there."\\n')
        >>> with RKLLM(path, library="host", max_context_len=512) as llm:
        ...     chunks = list(ChatEngine(llm).stream([ChatMessage.user("Hello")]))
        >>> "".join(c.content for c in chunks), chunks[0].reasoning, chunks[0].tool_calls
        ('Hi there.', '', [])
    """

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    token_id: int | None = None


@dataclass
class ChatResult:
    """A finished assistant turn.

    ``finish_reason``: ``stop`` (end of turn or a stop sequence), ``tool_calls`` (the turn
    asks for tools), ``length``, ``abort`` or ``error``.

    Example:
        >>> import tempfile, pathlib
        >>> from rkllm_core import RKLLM
        >>> from rkllm_core.chat import ChatEngine, ChatMessage
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi there."\\n')
        >>> with RKLLM(path, library="host", max_context_len=512) as llm:
        ...     turn = ChatEngine(llm).generate([ChatMessage.user("Hello")], stop=[" there"])
        >>> turn.message.content, turn.finish_reason, turn.stop_sequence, turn.mode
        ('Hi', 'stop', ' there', 'native')
    """

    message: ChatMessage
    invalid_tool_calls: list[InvalidToolCall]
    finish_reason: str
    usage: ChatUsage
    stop_sequence: str | None
    mode: Mode
    reused_cache: bool
    runtime_release: str
    raw_text: str = ""

    def metadata(self) -> dict[str, Any]:
        """What the adapters report about a turn: finish reason, timings, the runtime release,
        the chat mode and whether the KV cache was reused.

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> from rkllm_core.chat import ChatEngine, ChatMessage
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi."\\n')
            >>> with RKLLM(path, library="host", max_context_len=512) as llm:
            ...     meta = ChatEngine(llm).generate([ChatMessage.user("Hello")]).metadata()
            >>> meta["finish_reason"], meta["chat_mode"], meta["runtime_release"]
            ('stop', 'native', '1.3.0')
        """
        u = self.usage
        return {
            "finish_reason": self.finish_reason,
            "stop_sequence": self.stop_sequence,
            "prefill_tokens": u.prefill_tokens,
            "prefill_ms": u.prefill_ms,
            "decode_ms": u.decode_ms,
            "tokens_per_second": u.tokens_per_second,
            "runtime_release": self.runtime_release,
            "chat_mode": self.mode,
            "kv_cache_reused": self.reused_cache,
        }


__all__ = ["ChatChunk", "ChatResult", "ChatUsage", "Mode"]
