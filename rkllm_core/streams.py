"""Consuming a run: :class:`TextStream` and :class:`AsyncTextStream` read a queued run's channel.

A stream yields the run's :class:`~rkllm_core.results.StreamChunk` s as the worker produces
them and keeps the :class:`~rkllm_core.results.GenerationResult` at the end. Leaving a stream
early (``break``, an exception, ``close()``, garbage collection, a cancelled task, a timeout)
aborts the run or takes it off the queue; a run that ignores the abort for the worker's
``abort_grace`` marks the model wedged. :func:`consume` and :func:`aconsume` drive a stream to
its end for the calls that return only the result.

Example:
    >>> import tempfile, pathlib
    >>> from rkllm_core import RKLLM, TextStream
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "one two"\\n')
    >>> with RKLLM(path, library="host", max_context_len=512) as llm:
    ...     stream = llm.stream("count")
    ...     texts = [chunk.text for chunk in stream]
    >>> isinstance(stream, TextStream), texts, stream.result.finish_reason
    (True, ['one', ' two'], 'stop')
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any

from rkllm_core.errors import RKLLMError, RunTimeoutError
from rkllm_core.results import GenerationResult, StreamChunk
from rkllm_core.streaming import Channel
from rkllm_core.worker import RunWorker, _Done, _Failure, _Run


class _StreamBase:
    def __init__(self, worker: RunWorker, run: _Run, timeout: float | None,
                 owner: object = None) -> None:
        self._owner = owner  # keeps the RKLLM (and so the model) alive while we stream
        self._worker = worker
        self._run = run
        self._timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._result: GenerationResult | None = None
        self._finished = False

    @property
    def result(self) -> GenerationResult:
        """The final result; available once the stream has been consumed (or closed).

        Example: see :class:`TextStream` and :meth:`RKLLM.astream`.
        """
        if self._result is None:
            raise RKLLMError("the run has not finished: iterate the stream to its end first")
        return self._result

    @property
    def text(self) -> str:
        """The text streamed so far.

        Example: ``stream.text`` after a few chunks of :meth:`RKLLM.stream`.
        """
        return self._run.text

    def abort(self) -> None:
        """Ask the run to stop (or drop it if it has not started); does not wait.

        Example: ``stream.abort()``; :meth:`TextStream.close` also waits for the run's end.
        """
        if not self._finished:
            self._worker.abort_run(self._run, "abort")

    def _remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def _accept(self, item: Any) -> StreamChunk | None:
        """Handle one channel item; a chunk to yield, or None to read on."""
        if item is Channel.END:
            self._finished = True
            raise StopIteration
        if isinstance(item, StreamChunk):
            return item
        if isinstance(item, _Done):
            self._result = item.result
            return None
        self._finished = True
        assert isinstance(item, _Failure)
        raise item.error

    def _timed_out(self, was: str) -> RunTimeoutError:
        if was == "queued":
            return RunTimeoutError(
                f"the run did not start within {self._timeout} s: the model was busy with earlier "
                "runs (raise timeout=, or use another model instance)")
        return RunTimeoutError(
            f"the run did not finish within {self._timeout} s and was aborted",
            partial_text=self._run.text)

    def __del__(self) -> None:
        # a consumer that went away (break, GC) must not leave the run going
        if not getattr(self, "_finished", True):
            self._worker.abort_run(self._run, "abort")


class TextStream(_StreamBase):
    """The chunks of one run as they arrive; see :meth:`RKLLM.stream`.

    Stopping early (``break``, an exception, ``close()``, garbage collection, Ctrl-C) aborts
    the run; the model stays usable. ``result`` holds the :class:`GenerationResult` once the
    stream is exhausted.

    Example:
        >>> import tempfile, pathlib
        >>> from rkllm_core import RKLLM
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "one two three"\\n')
        >>> with RKLLM(path, library="host", max_context_len=512) as llm:
        ...     stream = llm.stream("count")
        ...     pieces = [chunk.text for chunk in stream]
        >>> "".join(pieces), stream.result.finish_reason
        ('one two three', 'stop')
    """

    def __iter__(self) -> Iterator[StreamChunk]:
        return self

    def __next__(self) -> StreamChunk:
        if self._finished:
            raise StopIteration
        while True:
            chunk = self._accept(self._get())
            if chunk is not None:
                return chunk

    def _get(self) -> Any:
        try:
            return self._run.channel.get(self._remaining())
        except TimeoutError:
            was = self._worker.abort_run(self._run, "timeout")
            if was == "done":
                return self._run.channel.get()
            self._drain()
            raise self._timed_out(was) from None
        except BaseException:
            self._worker.abort_run(self._run, "abort")
            raise

    def _drain(self) -> None:
        """Wait for the aborted run's end (up to the abort grace), keeping its result."""
        deadline = time.monotonic() + self._worker.abort_grace
        try:
            while (item := self._run.channel.get(max(0.0, deadline - time.monotonic()))) \
                    is not Channel.END:
                if isinstance(item, _Done):
                    self._result = item.result
        except TimeoutError:
            self._finished = True
            raise self._worker.mark_wedged(self._run) from None
        self._finished = True

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
            >>> first, stream.result.text.startswith("a")
            ('a', True)
        """
        if not self._finished:
            self._worker.abort_run(self._run, "abort")
            if self._worker.in_worker():
                return
            self._drain()

    def __enter__(self) -> TextStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTextStream(_StreamBase):
    """The asyncio twin of :class:`TextStream`; waiting never blocks the event loop.

    Cancelling the task that iterates it, ``break`` or ``aclose()`` abort the run.

    Example:
        >>> import asyncio, tempfile, pathlib
        >>> from rkllm_core import RKLLM
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "one two"\\n')
        >>> async def main() -> str:
        ...     with RKLLM(path, library="host", max_context_len=512) as llm:
        ...         return "".join([c.text async for c in llm.astream("count")])
        >>> asyncio.run(main())
        'one two'
    """

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self

    async def __anext__(self) -> StreamChunk:
        if self._finished:
            raise StopAsyncIteration
        try:
            while True:
                chunk = self._accept(await self._aget())
                if chunk is not None:
                    return chunk
        except StopIteration:
            raise StopAsyncIteration from None

    async def _aget(self) -> Any:
        channel = self._run.channel
        try:
            return await channel.aget(self._remaining())
        except TimeoutError:
            was = self._worker.abort_run(self._run, "timeout")
            if was == "done":
                return await channel.aget()
            await self._adrain()
            raise self._timed_out(was) from None
        except BaseException:
            self._worker.abort_run(self._run, "abort")
            raise

    async def _adrain(self) -> None:
        deadline = time.monotonic() + self._worker.abort_grace
        try:
            while (item := await self._run.channel.aget(
                    max(0.0, deadline - time.monotonic()))) is not Channel.END:
                if isinstance(item, _Done):
                    self._result = item.result
        except TimeoutError:
            self._finished = True
            raise self._worker.mark_wedged(self._run) from None
        self._finished = True

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
        if not self._finished:
            self._worker.abort_run(self._run, "abort")
            await self._adrain()

    async def __aenter__(self) -> AsyncTextStream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()


def consume(worker: RunWorker, run: _Run, timeout: float | None,
            owner: object = None) -> GenerationResult:
    """Wait for a submitted run's result; leaving early (an exception) aborts the run."""
    stream = TextStream(worker, run, timeout, owner=owner)
    try:
        for _ in stream:
            pass
    except BaseException:
        stream.abort()
        raise
    return stream.result


async def aconsume(worker: RunWorker, run: _Run, timeout: float | None,
                   owner: object = None) -> GenerationResult:
    """:func:`consume` for asyncio: awaits the run's channel, so the loop never blocks; a
    cancelled task aborts the run (or takes it off the queue)."""
    stream = AsyncTextStream(worker, run, timeout, owner=owner)
    try:
        async for _ in stream:
            pass
    except BaseException:
        stream.abort()
        raise
    return stream.result
