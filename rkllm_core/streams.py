"""Consuming an in-process run: :class:`TextStream` and :class:`AsyncTextStream`.

A stream yields the run's :class:`~rkllm_core.results.StreamChunk` s as the worker produces
them and keeps the :class:`~rkllm_core.results.GenerationResult` at the end. The rules for
leaving early, timeouts and wedged runs are :mod:`rkllm_core.consumer`'s, shared with
:class:`~rkllm_core.IsolatedRKLLM`; this module supplies what is particular to a run on this
process's :class:`~rkllm_core.worker.RunWorker`: aborting it there (or taking it off the queue),
and a run that ignores the abort for the worker's ``abort_grace`` marking the model wedged.
:func:`consume` and :func:`aconsume` drive a stream to its end for the calls that return only
the result.

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

from typing import Literal, cast

from rkllm_core.consumer import AsyncRunStream, RunSource, RunState, RunStream, adrive, drive
from rkllm_core.errors import ModelWedgedError
from rkllm_core.results import GenerationResult
from rkllm_core.worker import RunWorker, _Run


class _WorkerRun(RunSource):
    """A run queued on this process's worker."""

    def __init__(self, worker: RunWorker, run: _Run) -> None:
        self.worker = worker
        self.run = run
        self.channel = run.channel
        self.grace = worker.abort_grace

    @property
    def text(self) -> str:
        return self.run.text

    def abort(self, reason: Literal["abort", "timeout"]) -> RunState:
        return cast(RunState, self.worker.abort_run(self.run, reason))

    def wedged(self, error: ModelWedgedError | None) -> ModelWedgedError:
        # the worker refuses new runs until this one returns, and fails the queued ones
        return error if error is not None else self.worker.mark_wedged(self.run)

    def may_wait(self) -> bool:
        return not self.worker.in_worker()  # the run ends only once its callback returns


class TextStream(RunStream):
    """The chunks of one run as they arrive; see :meth:`RKLLM.stream`.

    Stopping early (``break``, an exception, ``close()``, garbage collection, Ctrl-C) aborts
    the run; the model stays usable. ``result`` holds the :class:`GenerationResult` once the
    stream is exhausted. The rest is :class:`~rkllm_core.consumer.RunStream`'s.

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

    def __init__(
        self, worker: RunWorker, run: _Run, timeout: float | None, owner: object = None
    ) -> None:
        super().__init__(_WorkerRun(worker, run), timeout, owner)
        self._run = run


class AsyncTextStream(AsyncRunStream):
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

    def __init__(
        self, worker: RunWorker, run: _Run, timeout: float | None, owner: object = None
    ) -> None:
        super().__init__(_WorkerRun(worker, run), timeout, owner)
        self._run = run


def consume(
    worker: RunWorker, run: _Run, timeout: float | None, owner: object = None
) -> GenerationResult:
    """Wait for a submitted run's result; leaving early (an exception) aborts the run."""
    return drive(TextStream(worker, run, timeout, owner=owner))


async def aconsume(
    worker: RunWorker, run: _Run, timeout: float | None, owner: object = None
) -> GenerationResult:
    """:func:`consume` for asyncio: awaits the run's channel, so the loop never blocks; a
    cancelled task aborts the run (or takes it off the queue)."""
    return await adrive(AsyncTextStream(worker, run, timeout, owner=owner))
