"""One consumer of a run's items, for both backends: :class:`RunStream` and :class:`AsyncRunStream`.

A run, wherever it executes, hands its consumer the items of one protocol through a
:class:`~rkllm_core.streaming.Channel`: :class:`~rkllm_core.results.StreamChunk` s, then either a
done item with the :class:`~rkllm_core.results.GenerationResult` or a failure with the exception,
then the channel's end. The in-process model's worker puts them there itself
(:mod:`rkllm_core.streams`); the isolated parent's reader turns the child's messages into them
(:mod:`rkllm_core.isolated`). Each side supplies a :class:`RunSource` with only what differs:
how to abort the run, what "wedged" means, and how much later than the run's own clock it may
act (``margin``). The rules are here, once:

- waiting for the next item ends at ``timeout + margin``; then the run is aborted (reason
  ``"timeout"``) or, if it had just ended, read on. Once it has ended (see below), the stream
  raises :class:`~rkllm_core.errors.RunTimeoutError` ("did not start" if it was still queued),
  or the run's own timeout or crash if it reported one while ending;
- an aborted run has ``grace + margin`` seconds to end, whoever aborted it; one that does not is
  wedged, and so is one that reports a :class:`~rkllm_core.errors.ModelWedgedError` itself:
  ``RunSource.wedged`` pays for it (mark the model wedged, kill the child) and gives the error;
- ``close()`` / ``aclose()`` abort and wait for the end under that same deadline, keeping the
  result (what else the end brings is dropped: it is what aborting caused); ``break``, garbage
  collection, Ctrl-C, a cancelled task and an exception in ``on_chunk`` abort without waiting;
- an error that ends a run carries ``partial_text``, the source's text so far, if it has room
  for it and none yet.

Example:
    >>> import tempfile, pathlib
    >>> from rkllm_core import IsolatedRKLLM, RKLLM
    >>> from rkllm_core.consumer import RunStream
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "one two"\\n')
    >>> with RKLLM(path, library="host", max_context_len=512) as here, \\
    ...         IsolatedRKLLM(path, library="host", max_context_len=512) as there:
    ...     streams = [here.stream("count"), there.stream("count")]
    ...     texts = [[chunk.text for chunk in stream] for stream in streams]
    >>> [isinstance(s, RunStream) for s in streams], texts
    ([True, True], [['one', ' two'], ['one', ' two']])
"""

from __future__ import annotations

import copy
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Any, Literal

from rkllm_core.errors import (
    ModelWedgedError,
    RKLLMError,
    RunError,
    RuntimeCrashedError,
    RunTimeoutError,
)
from rkllm_core.results import GenerationResult, StreamChunk
from rkllm_core.streaming import Channel
from rkllm_core.worker import _Done, _Failure, _Item

#: The items a run hands its consumer: chunks, then a done (its result) or a failure (its error).
RunItem = _Item
#: What a run was when the consumer aborted it (a source that cannot tell says "running").
RunState = Literal["queued", "running", "done"]


class RunSource(ABC):
    """Where one run executes, as its consumer sees it: what the two backends do differently.

    Example: :class:`rkllm_core.streams.TextStream` reads an in-process run through one, and
    :class:`rkllm_core.isolated.IsolatedTextStream` a run in the child process (see the module
    example).
    """

    #: the run's items, in order, then ``Channel.END``
    channel: Channel[RunItem]
    #: seconds an aborted run may take to end before it counts as wedged
    grace: float
    #: seconds this side may act later than the run's own clock (a child process's report
    #: crosses a pipe); added to the run's timeout and to ``grace``
    margin: float = 0.0
    #: called with each chunk the consumer hands out (in the consumer's thread)
    on_chunk: Callable[[StreamChunk], object] | None = None

    @property
    @abstractmethod
    def text(self) -> str:
        """The text the run streamed so far."""

    @abstractmethod
    def abort(self, reason: Literal["abort", "timeout"]) -> RunState:
        """Ask the run to stop (or take it off the queue); does not wait. Returns what it was."""

    @abstractmethod
    def wedged(self, error: ModelWedgedError | None) -> ModelWedgedError:
        """The run ignored its abort: ``error`` is the run's own report of it, or None if its
        end did not come within the grace. Pay for it and return the error to raise."""

    def may_wait(self) -> bool:
        """Whether this thread may wait for the run's end (not if the run needs it to end)."""
        return True


def _with_partial_text(error: BaseException, text: str) -> BaseException:
    """``error`` carrying ``text`` as its ``partial_text``, if it has room for it and none yet."""
    if (
        not text
        or not isinstance(error, (RunError, RunTimeoutError, RuntimeCrashedError))
        or error.partial_text
    ):
        return error
    fresh = copy.copy(error)  # the same error may end several runs (a crash, a wedge)
    fresh.partial_text = text
    return fresh


class _Consumer:
    """The rules both :class:`RunStream` and :class:`AsyncRunStream` follow; they only wait."""

    def __init__(self, source: RunSource, timeout: float | None, owner: object = None) -> None:
        self._owner = owner  # keeps the model (and so the run) alive while we stream
        self._source = source
        self._channel = source.channel
        self._on_chunk = source.on_chunk
        self._timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout + source.margin
        self._result: GenerationResult | None = None
        self._finished = False
        self._was: RunState = "running"
        self._late: BaseException | None = None  # the failure an aborted run ended with

    @property
    def result(self) -> GenerationResult:
        """The final result; available once the stream has been consumed (or closed).

        Example: ``stream.result.finish_reason`` (see :class:`rkllm_core.TextStream`).
        """
        if self._result is None:
            raise RKLLMError("the run has not finished: iterate the stream to its end first")
        return self._result

    @property
    def text(self) -> str:
        """The text the run has produced so far: the chunks handed out and those waiting.

        Example: ``stream.text`` after a few chunks (see :class:`RunStream`).
        """
        return self._source.text

    def abort(self) -> None:
        """Ask the run to stop (or drop it if it has not started); does not wait (as
        :meth:`RunStream.close` does). The stream then ends with what came before the abort.

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "a b c d"\\n')
            >>> with RKLLM(path, library="host", max_context_len=512) as llm:
            ...     stream = llm.stream("go")
            ...     first = next(stream).text
            ...     stream.abort()
            ...     rest = [chunk.text for chunk in stream]
            >>> first, stream.result.finish_reason in ("abort", "stop")
            ('a', True)
        """
        if not self._finished:
            self._source.abort("abort")

    # -- the rules: each decision once, for both ways of waiting ---------------------------

    def _remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def _accept(self, item: Any) -> StreamChunk | None:
        """One item: a chunk to hand out, or None (read on, or the stream has finished)."""
        if type(item) is StreamChunk:
            if self._on_chunk is not None:
                try:
                    self._on_chunk(item)
                except BaseException:
                    self._interrupted()
                    raise
            return item
        if item is Channel.END:
            self._finished = True
        elif isinstance(item, _Done):
            self._result = item.result
        else:
            assert isinstance(item, _Failure)
            self._finished = True
            raise self._failure(item.error)
        return None

    def _failure(self, error: BaseException) -> BaseException:
        if isinstance(error, ModelWedgedError):
            error = self._source.wedged(error)
        return _with_partial_text(error, self._source.text)

    def _interrupted(self) -> None:
        """The consumer left (Ctrl-C, a cancelled task, ``on_chunk`` raised): stop the run."""
        self._source.abort("abort")

    def _time_is_up(self) -> bool:
        """The deadline passed: abort the run. False if it had ended anyway (then read on)."""
        self._was = self._source.abort("timeout")
        if self._was == "done":
            self._deadline = None
            return False
        return True

    def _grace_deadline(self) -> float:
        return time.monotonic() + self._source.grace + self._source.margin

    def _keep(self, item: Any) -> None:
        """An item of an aborted run: keep its result or the failure it ended with."""
        if isinstance(item, _Done):
            self._result = item.result
        elif isinstance(item, _Failure) and self._late is None:
            self._late = item.error

    def _ended(self) -> None:
        """The aborted run ended in time; a wedge it reported itself is still a wedge."""
        self._finished = True
        if isinstance(self._late, ModelWedgedError):
            late, self._late = self._late, None
            raise self._failure(late)

    def _not_ended(self) -> BaseException:
        self._finished = True
        return _with_partial_text(self._source.wedged(None), self._source.text)

    def _timeout_error(self) -> BaseException:
        late, self._late = self._late, None
        if isinstance(late, (RunTimeoutError, RuntimeCrashedError)):
            return self._failure(late)  # the run's own verdict (a child times its runs itself)
        if self._was == "queued":
            return RunTimeoutError(
                f"the run did not start within {self._timeout} s: the model was busy with earlier "
                "runs (raise timeout=, or use another model instance)"
            )
        return RunTimeoutError(
            f"the run did not finish within {self._timeout} s and was aborted",
            partial_text=self._source.text,
        )

    def __del__(self) -> None:
        # a consumer that went away (break, GC) must not leave the run going
        if not getattr(self, "_finished", True):
            self._source.abort("abort")


class RunStream(_Consumer):
    """The chunks of one run as they arrive, for threads; see :meth:`rkllm_core.RKLLM.stream`.

    Stopping early (``break``, an exception, ``close()``, garbage collection, Ctrl-C) aborts the
    run; ``result`` holds the :class:`~rkllm_core.results.GenerationResult` once the stream is
    exhausted. Use as a context manager to close it on the way out.

    Example:
        >>> import tempfile, pathlib
        >>> from rkllm_core import RKLLM
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "one two three"\\n')
        >>> with RKLLM(path, library="host", max_context_len=512) as llm:
        ...     with llm.stream("count") as stream:
        ...         pieces = [chunk.text for chunk in stream]
        >>> "".join(pieces), stream.text, stream.result.finish_reason
        ('one two three', 'one two three', 'stop')
    """

    def __iter__(self) -> Iterator[StreamChunk]:
        return self

    def __next__(self) -> StreamChunk:
        while not self._finished:
            chunk = self._accept(self._get())
            if chunk is not None:
                return chunk
        raise StopIteration

    def _get(self) -> Any:
        try:
            return self._channel.get(self._remaining())
        except TimeoutError:
            if not self._time_is_up():
                return self._channel.get()
            self._wait_for_end()
            raise self._timeout_error() from None
        except BaseException:
            self._interrupted()
            raise

    def _wait_for_end(self) -> None:
        deadline = self._grace_deadline()
        try:
            while (
                item := self._channel.get(max(0.0, deadline - time.monotonic()))
            ) is not Channel.END:
                self._keep(item)
        except TimeoutError:
            raise self._not_ended() from None
        self._ended()

    def close(self) -> None:
        """Abort the run if it is still going and wait until it has ended.

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "a b c d"\\n')
            >>> with RKLLM(path, library="host", max_context_len=512) as llm:
            ...     stream = llm.stream("go")
            ...     first = next(stream).text
            ...     stream.close()
            >>> first, stream.text.startswith("a"), stream.result.text.startswith("a")
            ('a', True, True)
        """
        if self._finished:
            return
        self._source.abort("abort")
        if self._source.may_wait():
            self._wait_for_end()

    def __enter__(self) -> RunStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRunStream(_Consumer):
    """The asyncio twin of :class:`RunStream`; waiting never blocks the event loop.

    Cancelling the task that iterates it, ``break`` or ``aclose()`` abort the run.

    Example:
        >>> import asyncio, tempfile, pathlib
        >>> from rkllm_core import RKLLM
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "one two"\\n')
        >>> async def main() -> tuple[str, str]:
        ...     with RKLLM(path, library="host", max_context_len=512) as llm:
        ...         async with llm.astream("count") as stream:
        ...             text = "".join([c.text async for c in stream])
        ...         return text, stream.result.finish_reason
        >>> asyncio.run(main())
        ('one two', 'stop')
    """

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self

    async def __anext__(self) -> StreamChunk:
        while not self._finished:
            chunk = self._accept(await self._aget())
            if chunk is not None:
                return chunk
        raise StopAsyncIteration

    async def _aget(self) -> Any:
        try:
            return await self._channel.aget(self._remaining())
        except TimeoutError:
            if not self._time_is_up():
                return await self._channel.aget()
            await self._await_end()
            raise self._timeout_error() from None
        except BaseException:
            self._interrupted()
            raise

    async def _await_end(self) -> None:
        deadline = self._grace_deadline()
        try:
            while (
                item := await self._channel.aget(max(0.0, deadline - time.monotonic()))
            ) is not Channel.END:
                self._keep(item)
        except TimeoutError:
            raise self._not_ended() from None
        self._ended()

    async def aclose(self) -> None:
        """Abort the run if it is still going and wait (asynchronously) until it has ended.

        Example:
            >>> import asyncio, tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "a b c d"\\n')
            >>> async def main() -> str:
            ...     with RKLLM(path, library="host", max_context_len=512) as llm:
            ...         stream = llm.astream("go")
            ...         await stream.__anext__()
            ...         await stream.aclose()
            ...         return stream.result.finish_reason
            >>> asyncio.run(main()) in ("abort", "stop")
            True
        """
        if self._finished:
            return
        self._source.abort("abort")
        if self._source.may_wait():
            await self._await_end()

    async def __aenter__(self) -> AsyncRunStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def drive(stream: RunStream) -> GenerationResult:
    """Consume ``stream`` to its end and return its result (for the calls that return only it).

    Example: ``drive(llm.stream("Hi")).text`` is ``llm.generate("Hi").text``.
    """
    for _ in stream:
        pass
    return stream.result


async def adrive(stream: AsyncRunStream) -> GenerationResult:
    """:func:`drive` for asyncio; a cancelled task aborts the run.

    Example: ``(await adrive(llm.astream("Hi"))).text``.
    """
    async for _ in stream:
        pass
    return stream.result
