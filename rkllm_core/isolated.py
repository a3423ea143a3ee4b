"""``IsolatedRKLLM``: the runtime in a child process, so a crash or a wedged NPU costs a restart.

A fault inside ``librkllmrt`` takes the whole process with it: a second ``rkllm_init`` after a
failed one segfaults on runtime 1.3.0 (rknn-llm issue 522), and an NPU that stops answering
leaves ``rkllm_run`` blocked for good. :class:`IsolatedRKLLM` loads the model in a child
process it owns (a fresh interpreter started with ``subprocess``, talking over two pipes) and
offers the same calls as :class:`~rkllm_core.RKLLM` for generation, streaming, asyncio, aborts,
embeddings and the KV cache. When the child dies, the calls in flight raise
:class:`~rkllm_core.errors.RuntimeCrashedError`; when a run ignores ``rkllm_abort`` the child
is killed and the call raises :class:`~rkllm_core.errors.ModelWedgedError`. Either way the next
call starts a new child (with an empty KV cache) and answers.

The pieces: :mod:`rkllm_core.isolated_protocol` (the messages), :mod:`rkllm_core.isolated_child`
(the child's side), :mod:`rkllm_core.isolated_process` (the parent's handle on one child), and
the stream consumer of :mod:`rkllm_core.consumer`, which the in-process model shares.

Example: see :class:`IsolatedRKLLM` (it kills the child mid-session and keeps answering).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import threading
import weakref
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Literal

from rkllm_core.abi import Capabilities, get_family
from rkllm_core.consumer import AsyncRunStream, RunSource, RunState, RunStream, adrive, drive
from rkllm_core.errors import (
    InvalidParameterError,
    ModelClosedError,
    ModelWedgedError,
    RKLLMError,
    RuntimeCrashedError,
)
from rkllm_core.isolated_process import ChildProcess, Pending
from rkllm_core.isolated_protocol import Abort, AsyncCall, Call, Cancel, Run, Value
from rkllm_core.results import GenerationResult, RuntimeInfo, StreamChunk
from rkllm_core.streaming import Channel

logger = logging.getLogger("rkllm_core")

#: Seconds the child may take to start and load the model.
START_TIMEOUT = 120.0
#: Seconds a run may take to end after an abort before the child is killed as wedged.
ABORT_GRACE = 10.0
#: Seconds the parent waits beyond the child's own clock, for the child's report to arrive.
CHILD_MARGIN = 2.0


def _stop_child(holder: list[ChildProcess | None], grace: float) -> None:
    child, holder[0] = holder[0], None
    if child is not None:
        child.stop(grace)


class _ChildRun(RunSource):
    """A run in the child process: it times itself out and reports its own wedge; the parent
    acts ``CHILD_MARGIN`` later, and a wedge (the child's or ours) costs the child."""

    margin = CHILD_MARGIN

    def __init__(
        self,
        child: ChildProcess,
        rid: int,
        pending: Pending,
        abort_grace: float,
        on_token: Callable[[StreamChunk], object] | None,
    ) -> None:
        self.child = child
        self.rid = rid
        self.channel = pending.channel
        self.parts = pending.parts  # the reader adds each chunk's text as it arrives
        self.grace = abort_grace
        self.on_chunk = on_token  # runs in this process, in the consumer's thread

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def abort(self, reason: Literal["abort", "timeout"]) -> RunState:
        with contextlib.suppress(RKLLMError):  # a dead child has nothing left to abort
            self.child.send(Abort(self.rid))
        return "running"  # as far as this process knows

    def wedged(self, error: ModelWedgedError | None) -> ModelWedgedError:
        if error is None:
            error = ModelWedgedError(
                f"the runtime process (pid {self.child.pid}) did not end the run within "
                f"{self.grace + self.margin} s of its abort: it was killed, and the next call "
                "starts a new one"
            )
        self.child.condemn(error)  # the next call starts a new child
        return error


class IsolatedTextStream(RunStream):
    """The chunks of one run in the child process; see :meth:`IsolatedRKLLM.stream`.

    Its rules (close, abort, timeouts, partial text) are :class:`~rkllm_core.consumer.RunStream`'s,
    the same as :class:`~rkllm_core.TextStream`'s; only each wait is ``CHILD_MARGIN`` longer, and
    a wedged run costs the child.

    Example:
        >>> import tempfile, pathlib
        >>> from rkllm_core import IsolatedRKLLM
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "a b c d"\\n')
        >>> with IsolatedRKLLM(path, library="host", max_context_len=512) as llm:
        ...     with llm.stream("go") as stream:
        ...         first = next(stream).text
        >>> first, stream.result.finish_reason in ("abort", "stop"), stream.text.startswith("a")
        ('a', True, True)
    """

    def __init__(self, owner: IsolatedRKLLM, source: _ChildRun, timeout: float | None) -> None:
        super().__init__(source, timeout, owner)


class AsyncIsolatedTextStream(AsyncRunStream):
    """The asyncio twin of :class:`IsolatedTextStream`; never blocks the event loop.

    Example:
        >>> import asyncio, tempfile, pathlib
        >>> from rkllm_core import IsolatedRKLLM
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "one two"\\n')
        >>> async def main() -> tuple[list[str], str]:
        ...     with IsolatedRKLLM(path, library="host", max_context_len=512) as llm:
        ...         async with llm.astream("count") as stream:
        ...             pieces = [chunk.text async for chunk in stream]
        ...         return pieces, stream.result.finish_reason
        >>> asyncio.run(main())
        (['one', ' two'], 'stop')
    """

    def __init__(self, owner: IsolatedRKLLM, source: _ChildRun, timeout: float | None) -> None:
        super().__init__(source, timeout, owner)


class IsolatedRKLLM:
    """An :class:`~rkllm_core.RKLLM` whose runtime lives in a child process this object owns.

    Takes RKLLM's arguments (``library`` must be ``None``, a path or ``"host"``: it is opened in
    the child). ``generate``, ``stream``, ``agenerate``, ``astream``, ``abort``, ``embed``,
    ``clear_kv_cache``, ``kv_cache_size``, ``runtime_info`` and ``close`` behave as RKLLM's;
    ``on_token`` runs in this process, ``before`` hooks are not available (they need the
    handle). A child that dies raises :class:`~rkllm_core.errors.RuntimeCrashedError` in the
    calls in flight; a run that ignores its abort past ``abort_grace`` gets the child killed and
    raises :class:`~rkllm_core.errors.ModelWedgedError`. The next call starts a new child (the
    KV cache starts empty); ``restarts`` counts them. The cost: starting a child takes about a
    second, and each chunk crosses a pipe.

    Example:
        >>> import os, signal, tempfile, pathlib
        >>> from rkllm_core import IsolatedRKLLM, RuntimeCrashedError
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "still here"\\n')
        >>> llm = IsolatedRKLLM(path, library="host", max_context_len=512)
        >>> os.kill(llm.pid, signal.SIGKILL)             # a crash inside the runtime
        >>> try:
        ...     llm.generate("Hi")
        ... except RuntimeCrashedError:
        ...     print("crashed")
        crashed
        >>> llm.generate("Hi").text, llm.restarts        # a new child answers
        ('still here', 1)
        >>> "".join(chunk.text for chunk in llm.stream("Hi"))
        'still here'
        >>> import asyncio
        >>> async def both() -> tuple[str, str]:
        ...     streamed = [chunk.text async for chunk in llm.astream("Hi")]
        ...     return "".join(streamed), (await llm.agenerate("Hi")).text
        >>> asyncio.run(both())
        ('still here', 'still here')
        >>> llm.embed(["a cat", "a dog"]).shape
        (2, 64)
        >>> async def vectors_and_scores() -> tuple[tuple[int, ...], list[float]]:
        ...     rows = await llm.aembed(["a cat"])
        ...     scores = await llm.arerank("cats?", ["a cat"], yes_token_id=1, no_token_id=2)
        ...     return rows.shape, scores
        >>> shape, scores = asyncio.run(vectors_and_scores())
        >>> shape, len(scores), len(llm.rerank("cats?", ["a cat", "a car"], yes_token_id=1,
        ...                                     no_token_id=2))
        ((1, 64), 1, 2)
        >>> llm.params.max_context_len, llm.capabilities.function_tools
        (512, True)
        >>> _ = llm.generate("Hi", keep_history=True)
        >>> llm.kv_cache_size > 0, llm.abort()            # nothing is running to abort
        (True, False)
        >>> llm.clear_kv_cache(); llm.kv_cache_size
        0
        >>> llm.runtime_info.is_host_runtime, llm.closed
        (True, False)
        >>> llm.close(); llm.closed
        True
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        library: str | os.PathLike[str] | None = None,
        runtime_version: str | None = None,
        abort_grace: float = ABORT_GRACE,
        start_timeout: float = START_TIMEOUT,
        **rkllm_kwargs: Any,
    ) -> None:
        if library is not None and not isinstance(library, (str, os.PathLike)):
            raise InvalidParameterError(
                "IsolatedRKLLM opens the library in its child process: pass library= as None, "
                "a path or 'host', not a loaded RuntimeLibrary"
            )
        if not isinstance(abort_grace, (int, float)) or not abort_grace > 0:
            raise InvalidParameterError(f"abort_grace must be > 0 seconds, got {abort_grace!r}")
        self.abort_grace = float(abort_grace)
        self.start_timeout = float(start_timeout)
        self._init_kwargs: dict[str, Any] = dict(
            rkllm_kwargs,
            model_path=model_path,
            library=library,
            runtime_version=runtime_version,
            abort_grace=self.abort_grace,
        )
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._closed = False
        self.restarts = 0
        self._holder: list[ChildProcess | None] = [None]
        self._finalizer = weakref.finalize(self, _stop_child, self._holder, self.abort_grace)
        self._current()  # load now, so a bad model fails here, like RKLLM

    # -- the child ---------------------------------------------------------------------------

    def _current(self) -> ChildProcess:
        with self._lock:
            if self._closed:
                raise ModelClosedError(
                    "the model is closed: create a new IsolatedRKLLM to run it again"
                )
            child = self._holder[0]
            if child is not None and child.dead is None:
                return child
            if child is not None:
                self.restarts += 1
                logger.warning("restarting the runtime process (the last one %s)", child.dead)
                threading.Thread(target=child.stop, args=(1.0,), daemon=True).start()
            self._holder[0] = None
            child = ChildProcess(self._init_kwargs, self.start_timeout)
            self._holder[0] = child
            return child

    @property
    def pid(self) -> int:
        """The child process's id (a new one after a restart).

        Example: ``os.kill(llm.pid, signal.SIGKILL)`` (see the class example).
        """
        return self._current().pid

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run.

        Example: ``llm.close(); assert llm.closed``.
        """
        return self._closed

    def close(self) -> None:
        """Close the model in the child and end the child. Idempotent.

        Example: ``llm.close()`` (see the class example), or use ``with IsolatedRKLLM(...)``.
        """
        with self._lock:
            self._closed = True
        self._finalizer()

    def __enter__(self) -> IsolatedRKLLM:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"IsolatedRKLLM({str(self._init_kwargs['model_path'])!r}, {state})"

    @property
    def runtime_info(self) -> RuntimeInfo:
        """The child's :class:`~rkllm_core.model.RuntimeInfo`.

        Example: ``llm.runtime_info.release``.
        """
        return self._current().info

    @property
    def params(self) -> Any:
        """The :class:`~rkllm_core.ModelParams` the child loaded the model with.

        Example: ``llm.params.max_context_len``.
        """
        return self._current().params

    @property
    def capabilities(self) -> Capabilities:
        """What the child's runtime release can do (see :class:`~rkllm_core.abi.Capabilities`).

        Example: ``llm.capabilities.function_tools``.
        """
        return get_family(self.runtime_info.family).capabilities

    # -- requests ----------------------------------------------------------------------------

    def _start(
        self, kwargs: dict[str, Any], on_token: Callable[[StreamChunk], object] | None = None
    ) -> _ChildRun:
        if "before" in kwargs:
            raise InvalidParameterError(
                "before= hooks need the native handle, which lives in the child process: use "
                "RKLLM for them"
            )
        try:
            pickle.dumps(kwargs)
        except Exception as exc:
            raise InvalidParameterError(
                f"the arguments must be picklable to reach the child process: {exc}"
            ) from exc
        child = self._current()
        rid = next(self._ids)
        pending = child.open(rid)
        try:
            child.send(Run(rid, kwargs))
        except BaseException:
            child.forget(rid)
            raise
        return _ChildRun(child, rid, pending, self.abort_grace, on_token)

    def _call(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        child = self._current()
        rid = next(self._ids)
        channel = child.open(rid).channel
        try:
            child.send(Call(rid, method, args, kwargs or {}))
            try:
                item = channel.get(self._call_limit(timeout))
            except TimeoutError:
                raise self._unanswered(child, method, timeout) from None
        finally:
            child.forget(rid)
        return self._answer(child, item)

    async def _acall(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """:meth:`_call` of an async method in the child, never blocking the event loop; a
        cancelled caller cancels the call in the child, which aborts its runs there."""
        child = self._current()
        rid = next(self._ids)
        channel = child.open(rid).channel
        try:
            child.send(AsyncCall(rid, method, args, kwargs or {}))
            try:
                item = await channel.aget(self._call_limit(timeout))
            except TimeoutError:
                raise self._unanswered(child, method, timeout) from None
            except BaseException:
                with contextlib.suppress(RKLLMError):
                    child.send(Cancel(rid))
                raise
        finally:
            child.forget(rid)
        return self._answer(child, item)

    def _call_limit(self, timeout: float | None) -> float | None:
        # the child gives up on the call after timeout + abort_grace; we, CHILD_MARGIN later
        return None if timeout is None else timeout + self.abort_grace + CHILD_MARGIN

    def _unanswered(
        self, child: ChildProcess, method: str, timeout: float | None
    ) -> ModelWedgedError:
        error = ModelWedgedError(
            f"{method} got no answer from the runtime process within "
            f"{self._call_limit(timeout)} s: it was killed, and the next call starts a new one"
        )
        child.condemn(error)
        return error

    def _answer(self, child: ChildProcess, item: Any) -> Any:
        if isinstance(item, Value):
            return item.value
        if item is Channel.END:
            raise RuntimeCrashedError("the runtime process ended before answering")
        error = item.error
        if isinstance(error, ModelWedgedError):
            child.condemn(error)  # it ignored rkllm_abort: the next call starts a new child
        raise error

    def stream(
        self, prompt: str | None = None, *, timeout: float | None = None, **kwargs: Any
    ) -> IsolatedTextStream:
        """Like :meth:`RKLLM.stream <rkllm_core.RKLLM.stream>`; the run executes in the child.

        Example: ``"".join(c.text for c in llm.stream("Hi"))`` (see the class example).
        """
        kwargs.update(prompt=prompt, timeout=timeout)
        return IsolatedTextStream(self, self._start(kwargs), timeout)

    def generate(
        self,
        prompt: str | None = None,
        *,
        timeout: float | None = None,
        on_token: Callable[[StreamChunk], object] | None = None,
        **kwargs: Any,
    ) -> GenerationResult:
        """Like :meth:`RKLLM.generate <rkllm_core.RKLLM.generate>`; ``on_token`` runs here.

        Example: ``llm.generate("Hi").text`` (see the class example).
        """
        kwargs.update(prompt=prompt, timeout=timeout)
        return drive(IsolatedTextStream(self, self._start(kwargs, on_token), timeout))

    def astream(
        self, prompt: str | None = None, *, timeout: float | None = None, **kwargs: Any
    ) -> AsyncIsolatedTextStream:
        """Async :meth:`stream`; cancelling the consuming task aborts the run.

        Example: ``[c.text async for c in llm.astream("Hi")]``.
        """
        kwargs.update(prompt=prompt, timeout=timeout)
        return AsyncIsolatedTextStream(self, self._start(kwargs), timeout)

    async def agenerate(
        self,
        prompt: str | None = None,
        *,
        timeout: float | None = None,
        on_token: Callable[[StreamChunk], object] | None = None,
        **kwargs: Any,
    ) -> GenerationResult:
        """Async :meth:`generate`; never blocks the event loop.

        Example: ``(await llm.agenerate("Hi")).text``.
        """
        kwargs.update(prompt=prompt, timeout=timeout)
        return await adrive(AsyncIsolatedTextStream(self, self._start(kwargs, on_token), timeout))

    def abort(self) -> bool:
        """Abort the run executing in the child now; False if none was.

        Example: ``llm.abort()`` from another thread.
        """
        child = self._holder[0]
        if child is None or child.dead is not None:
            return False
        return bool(self._call("abort", timeout=self.abort_grace))

    def embed(
        self, texts: str | Sequence[str], *, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """Like :meth:`RKLLM.embed <rkllm_core.RKLLM.embed>`: ``(len(texts), dim)`` float32.

        Example: ``llm.embed(["a cat", "a dog"]).shape``.
        """
        return self._call("embed", (texts,), dict(kwargs, timeout=timeout), timeout)

    async def aembed(
        self, texts: str | Sequence[str], *, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """Async :meth:`embed`; cancelling it aborts the batch in the child.

        Example: ``(await llm.aembed(["a cat"])).shape``.
        """
        return await self._acall("aembed", (texts,), dict(kwargs, timeout=timeout), timeout)

    def rerank(
        self, query: str, documents: Sequence[str], *, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """Like :meth:`RKLLM.rerank <rkllm_core.RKLLM.rerank>`: one score per document.

        Example: ``llm.rerank("cats?", ["a cat", "a car"], yes_token_id=1, no_token_id=2)``.
        """
        return self._call("rerank", (query, documents), dict(kwargs, timeout=timeout), timeout)

    async def arerank(
        self, query: str, documents: Sequence[str], *, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """Async :meth:`rerank`; cancelling it aborts the runs in the child.

        Example: ``await llm.arerank("cats?", ["a cat"], yes_token_id=1, no_token_id=2)``.
        """
        return await self._acall(
            "arerank", (query, documents), dict(kwargs, timeout=timeout), timeout
        )

    def clear_kv_cache(
        self,
        keep_system_prompt: bool = False,
        ranges: Sequence[tuple[int, int]] | tuple[int, int] | None = None,
    ) -> None:
        """Like :meth:`RKLLM.clear_kv_cache <rkllm_core.RKLLM.clear_kv_cache>`.

        Example: ``llm.clear_kv_cache()``.
        """
        self._call("clear_kv_cache", (keep_system_prompt, ranges))

    @property
    def kv_cache_size(self) -> int:
        """Like :attr:`RKLLM.kv_cache_size <rkllm_core.RKLLM.kv_cache_size>` (1.2.1+).

        Example: ``llm.kv_cache_size``.
        """
        return int(self._call("kv_cache_size"))


__all__ = ["AsyncIsolatedTextStream", "IsolatedRKLLM", "IsolatedTextStream"]
