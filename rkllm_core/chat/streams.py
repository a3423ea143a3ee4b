"""The streams of one assistant turn: :class:`ChatStream` and its asyncio twin
:class:`AsyncChatStream` read the model's text stream through an
:class:`~rkllm_core.chat.OutputParser` into :class:`~rkllm_core.chat.ChatChunk` objects, stop at
a stop sequence, replay the turn once when the KV cache changed behind the engine, and hand the
end of the run to the engine, which records it as a :class:`~rkllm_core.chat.ChatResult`.
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from rkllm_core.chat.output import OutputParser
from rkllm_core.chat.plans import _Plan
from rkllm_core.chat.results import ChatChunk, ChatResult
from rkllm_core.errors import RKLLMError, StaleKVCacheError

if TYPE_CHECKING:
    from rkllm_core.chat.engine import ChatEngine

logger = logging.getLogger("rkllm_core")


async def _consume(stream: AsyncChatStream, on_chunk: Callable[[ChatChunk], Any] | None) -> None:
    async for chunk in stream:
        if on_chunk is not None:
            value = on_chunk(chunk)
            if inspect.isawaitable(value):
                await value


class _ChatStreamBase:
    def __init__(self, engine: ChatEngine, start: Callable[[], tuple[_Plan, Any]]) -> None:
        self._engine = engine
        self._start = start
        self._plan, self._text = start()
        self._parser = OutputParser(**self._plan.parser_kwargs)
        self._result: ChatResult | None = None

    def _replay(self) -> None:
        """The cache was not what the engine recorded: forget it and start the turn again."""
        logger.info("the KV cache changed behind the chat engine; replaying the conversation")
        self._engine.reset()
        self._plan, self._text = self._start()
        self._parser = OutputParser(**self._plan.parser_kwargs)

    @property
    def result(self) -> ChatResult:
        """The finished turn; available once the stream was iterated to its end."""
        if self._result is None:
            raise RKLLMError("the turn has not finished: iterate the stream to its end first")
        return self._result

    def _chunk(self, piece: Any) -> ChatChunk | None:
        delta = self._parser.feed(piece.text)
        if self._parser.stopped:
            self._text.abort()
        if not delta:
            return None
        return ChatChunk(delta.content, delta.reasoning, delta.tool_calls, piece.token_id)

    def _tail(self, generation: Any, error: BaseException | None) -> ChatChunk | None:
        delta = self._parser.finish()
        self._result = self._engine._finish(self._plan, self._parser, generation, error)
        if not delta:
            return None
        return ChatChunk(delta.content, delta.reasoning, delta.tool_calls, None)


class ChatStream(_ChatStreamBase):
    """Chunks of one assistant turn as the model produces them; ``result`` at the end.

    Leaving the loop early (``break``, an exception) aborts the run; the model stays usable and
    the next turn replays what the cache no longer holds.

    Example:
        >>> import tempfile, pathlib
        >>> from rkllm_core import RKLLM
        >>> from rkllm_core.chat import ChatEngine, ChatMessage
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi there."\\n')
        >>> with RKLLM(path, library="host", max_context_len=512) as llm:
        ...     stream = ChatEngine(llm).stream([ChatMessage.user("Hello")])
        ...     text = "".join(chunk.content for chunk in stream)
        >>> text == stream.result.message.content == "Hi there."
        True
    """

    def __iter__(self) -> Iterator[ChatChunk]:
        try:
            try:
                first = next(iter(self._text), None)
            except StaleKVCacheError:
                self._replay()
                first = next(iter(self._text), None)
            for piece in itertools.chain([first] if first is not None else [], self._text):
                chunk = self._chunk(piece)
                if chunk is not None:
                    yield chunk
                if self._parser.stopped:
                    break
        except BaseException as exc:
            self._text.abort()
            self._engine._finish(self._plan, self._parser, None, exc)
            raise
        if self._parser.stopped:
            self._text.close()  # the run was aborted at the stop sequence: wait for its end
        generation = self._text.result
        tail = self._tail(generation, None)
        if tail is not None:
            yield tail


class AsyncChatStream(_ChatStreamBase):
    """The asyncio twin of :class:`ChatStream`.

    Example:
        >>> import asyncio
        >>> import tempfile, pathlib
        >>> from rkllm_core import RKLLM
        >>> from rkllm_core.chat import ChatEngine, ChatMessage
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi there."\\n')
        >>> async def main() -> tuple[str, str]:
        ...     with RKLLM(path, library="host", max_context_len=512) as llm:
        ...         stream = ChatEngine(llm).astream([ChatMessage.user("Hello")])
        ...         text = "".join([chunk.content async for chunk in stream])
        ...         return text, stream.result.finish_reason
        >>> asyncio.run(main())
        ('Hi there.', 'stop')
    """

    async def _iterate(self) -> AsyncIterator[ChatChunk]:
        try:
            try:
                first = await anext(aiter(self._text), None)
            except StaleKVCacheError:
                self._replay()
                first = await anext(aiter(self._text), None)
            if first is not None:
                chunk = self._chunk(first)
                if chunk is not None:
                    yield chunk
            async for piece in self._text:
                if self._parser.stopped:
                    break
                chunk = self._chunk(piece)
                if chunk is not None:
                    yield chunk
                if self._parser.stopped:
                    break
            if self._parser.stopped:
                await self._text.aclose()
        except BaseException as exc:
            self._text.abort()
            self._engine._finish(self._plan, self._parser, None, exc)
            raise
        tail = self._tail(self._text.result, None)
        if tail is not None:
            yield tail

    def __aiter__(self) -> AsyncIterator[ChatChunk]:
        return self._iterate()


__all__ = ["AsyncChatStream", "ChatStream"]
