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

Example: see :class:`IsolatedRKLLM` (it kills the child mid-session and keeps answering).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any

from rkllm_core.abi import Capabilities, get_family
from rkllm_core.errors import (
    InvalidParameterError,
    ModelClosedError,
    ModelWedgedError,
    RKLLMError,
    RuntimeCrashedError,
)
from rkllm_core.streaming import Channel

logger = logging.getLogger("rkllm_core")

#: Seconds the child may take to start and load the model.
START_TIMEOUT = 120.0
#: Seconds a run may take to end after an abort before the child is killed as wedged.
ABORT_GRACE = 10.0
#: Seconds on top, for the child to report its own timeout before the parent gives up on it.
_MARGIN = 2.0

_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RKLLMError(f"{type(exc).__name__}: {exc}")
    return exc


# ---------------------------------------------------------------------------------------------
# The child process


def _child_main(read_fd: int, write_fd: int) -> None:
    """Entry point of the child: load the model, then serve requests until EOF or "close"."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (it aborts)
    incoming = Connection(read_fd, writable=False)
    outgoing = Connection(write_fd, readable=False)
    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        # a parent that is gone has nobody to tell
        with send_lock, contextlib.suppress(OSError, ValueError):
            outgoing.send(message)

    from rkllm_core.model import RKLLM

    try:
        _, init_kwargs = incoming.recv()
        llm = RKLLM(**init_kwargs)
    except BaseException as exc:
        send(("failed", _picklable(exc)))
        return
    send(("ready", llm.runtime_info, os.getpid(), llm.params))
    streams: dict[int, Any] = {}
    servers: list[threading.Thread] = []
    # async calls (aembed, arerank) run on a loop of their own, so a "cancel" from the parent
    # cancels them as a cancelled task would in one process: the runtime is aborted
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True, name="rkllm-child-loop").start()
    async_calls: dict[int, concurrent.futures.Future[Any]] = {}

    def serve_stream(rid: int, stream: Any) -> None:
        try:
            for _chunk in stream:
                pass  # each chunk was sent from the runtime's callback (forward_from)
            send(("done", rid, stream.result))
        except BaseException as exc:
            send(("error", rid, _picklable(exc)))
        finally:
            streams.pop(rid, None)

    def forward_from(rid: int) -> Callable[[Any], None]:
        def forward(chunk: Any) -> None:
            # written to the pipe inside the runtime's callback, before the runtime goes on:
            # if it crashes right after, the parent still has every token it emitted
            send(("chunk", rid, chunk.text, chunk.token_id))
        return forward

    def serve_call(rid: int, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            if method == "kv_cache_size":
                value = llm.kv_cache_size
            else:
                value = getattr(llm, method)(*args, **kwargs)
            send(("value", rid, value))
        except BaseException as exc:
            send(("error", rid, _picklable(exc)))

    def serve_async_call(rid: int, method: str, args: tuple[Any, ...],
                         kwargs: dict[str, Any]) -> None:
        try:
            call = asyncio.run_coroutine_threadsafe(getattr(llm, method)(*args, **kwargs), loop)
        except BaseException as exc:
            send(("error", rid, _picklable(exc)))
            return
        async_calls[rid] = call

        def done(future: concurrent.futures.Future[Any]) -> None:
            async_calls.pop(rid, None)
            if future.cancelled():
                send(("error", rid, RKLLMError(f"{method} was cancelled")))
            elif future.exception() is not None:
                send(("error", rid, _picklable(future.exception())))  # type: ignore[arg-type]
            else:
                send(("value", rid, future.result()))
        call.add_done_callback(done)

    try:
        while True:
            try:
                message = incoming.recv()
            except (EOFError, OSError):
                return  # the parent died or closed us
            kind = message[0]
            if kind == "close":
                return
            if kind == "run":
                _, rid, kwargs = message
                try:
                    # queued now: runs keep the callers' order
                    stream = llm.stream(on_token=forward_from(rid), **kwargs)
                except BaseException as exc:
                    send(("error", rid, _picklable(exc)))
                    continue
                streams[rid] = stream
                server = threading.Thread(target=serve_stream, args=(rid, stream), daemon=True,
                                          name=f"rkllm-child-run-{rid}")
                server.start()
                servers[:] = [t for t in servers if t.is_alive()] + [server]
            elif kind == "abort":
                target = streams.get(message[1])
                if target is not None:
                    target.abort()
            elif kind == "call":
                _, rid, method, args, kwargs = message
                threading.Thread(target=serve_call, args=(rid, method, args, kwargs),
                                 daemon=True, name=f"rkllm-child-call-{rid}").start()
            elif kind == "acall":
                _, rid, method, args, kwargs = message
                serve_async_call(rid, method, args, kwargs)
            elif kind == "cancel":
                pending = async_calls.get(message[1])
                if pending is not None:
                    pending.cancel()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        llm.close()  # aborts the run in flight and fails the queued ones
        for server in servers:  # so that each reports its end before the process exits
            server.join(timeout=5)


# ---------------------------------------------------------------------------------------------
# The parent's side


class _Child:
    """One child process, its pipes, and the reader thread that routes its replies."""

    def __init__(self, init_kwargs: dict[str, Any], start_timeout: float) -> None:
        parent_read, child_write = os.pipe()
        child_read, parent_write = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        code = (f"from rkllm_core.isolated import _child_main; "
                f"_child_main({child_read}, {child_write})")
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code], pass_fds=(child_read, child_write),
                stdin=subprocess.DEVNULL, env=env)
        finally:
            os.close(child_read)
            os.close(child_write)
        self._out = Connection(parent_write, readable=False)
        self._in = Connection(parent_read, writable=False)
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending: dict[int, Channel[tuple[Any, ...]]] = {}
        self.dead: RKLLMError | None = None
        self.closing = False
        self.pid = self.process.pid
        try:
            self.send(("init", init_kwargs))
            if not self._in.poll(start_timeout):
                raise RuntimeCrashedError(
                    f"the runtime process did not load the model within {start_timeout} s")
            reply = self._in.recv()
        except (EOFError, OSError) as exc:
            self._abandon()
            raise RuntimeCrashedError(
                f"the runtime process died while loading the model "
                f"({_describe_exit(self.process.returncode)})") from exc
        except BaseException:
            self._abandon()
            raise
        if reply[0] == "failed":
            self._abandon()
            raise reply[1]
        _, self.info, _pid, self.params = reply
        self._reader = threading.Thread(target=self._read, name="rkllm-isolated-reader",
                                        daemon=True)
        self._reader.start()

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            try:
                self._out.send(message)
            except (OSError, ValueError) as exc:
                self.condemn(RuntimeCrashedError(
                    "the runtime process is gone; the next call starts a new one"))
                assert self.dead is not None
                raise self.dead from exc

    def condemn(self, error: RKLLMError) -> None:
        """Mark the child unusable (the first reason wins) and kill it."""
        with self._lock:
            if self.dead is None:
                self.dead = error
        self.kill()

    def open(self, rid: int) -> Channel[tuple[Any, ...]]:
        channel: Channel[tuple[Any, ...]] = Channel()
        with self._lock:
            if self.dead is not None:
                raise self.dead
            self._pending[rid] = channel
        return channel

    def forget(self, rid: int) -> None:
        with self._lock:
            self._pending.pop(rid, None)

    def _read(self) -> None:
        while True:
            try:
                message = self._in.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                channel = self._pending.get(message[1])
            if channel is not None:
                channel.put(message)
                if message[0] in ("done", "error", "value"):
                    channel.close()
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        crash: RKLLMError = RuntimeCrashedError(
            f"the runtime process (pid {self.pid}) died: {_describe_exit(code)}. A crash in "
            "librkllmrt (e.g. rknn-llm issue 522) or a kill; the next call starts a new "
            "process, with an empty KV cache")
        if self.closing:
            crash = ModelClosedError("the model was closed while this call was waiting")
        with self._lock:
            self.dead = self.dead or crash
            pending, self._pending = list(self._pending.values()), {}
        for channel in pending:
            channel.put(("crash", -1, self.dead))
            channel.close()
        self._in.close()

    def _abandon(self) -> None:
        """A child that never became ready: end it and close our ends of its pipes."""
        self.kill()
        self._out.close()
        self._in.close()

    def kill(self) -> None:
        """End the process at once (a wedged runtime cannot be asked)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def stop(self, grace: float) -> None:
        """Ask the child to close the model and exit; kill it after ``grace`` seconds."""
        self.closing = True
        with contextlib.suppress(RKLLMError):
            self.send(("close",))
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            logger.error("the runtime process did not exit within %s s: killing it", grace)
            self.kill()
        with self._send_lock:
            self._out.close()
        reader = getattr(self, "_reader", None)
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=5)


def _stop_child(holder: list[_Child | None], grace: float) -> None:
    child, holder[0] = holder[0], None
    if child is not None:
        child.stop(grace)


class _IsolatedStreamBase:
    def __init__(self, owner: IsolatedRKLLM, child: _Child, rid: int,
                 channel: Channel[tuple[Any, ...]], timeout: float | None,
                 on_token: Callable[[Any], object] | None = None) -> None:
        self._owner = owner
        self._child = child
        self._rid = rid
        self._channel = channel
        self._deadline = None if timeout is None else \
            time.monotonic() + timeout + owner.abort_grace + _MARGIN
        self._on_token = on_token
        self._parts: list[str] = []
        self._result: Any = None
        self._finished = False

    @property
    def result(self) -> Any:
        """The :class:`~rkllm_core.GenerationResult` once the stream was consumed."""
        if self._result is None:
            raise RKLLMError("the run has not finished: iterate the stream to its end first")
        return self._result

    @property
    def text(self) -> str:
        """The text streamed so far."""
        return "".join(self._parts)

    def abort(self) -> None:
        """Ask the run to stop; does not wait."""
        if not self._finished:
            with contextlib.suppress(RKLLMError):
                self._child.send(("abort", self._rid))

    def _remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def _accept(self, message: Any) -> Any:
        """A StreamChunk to hand out, or None to read on; raises at the end."""
        from rkllm_core.model import StreamChunk

        if message is Channel.END:
            self._end()
            raise StopIteration
        kind = message[0]
        if kind == "chunk":
            chunk = StreamChunk(message[2], message[3])
            self._parts.append(chunk.text)
            if self._on_token is not None:
                self._on_token(chunk)
            return chunk
        if kind == "done":
            self._result = message[2]
            return None
        self._end()
        error = message[2]
        if kind == "crash" and isinstance(error, RuntimeCrashedError):
            raise type(error)(str(error), partial_text=self.text)
        if isinstance(error, ModelWedgedError):
            self._owner._discard(self._child, error)  # it ignored rkllm_abort: restart it
        raise error

    def _wedged(self) -> ModelWedgedError:
        self._end()
        error = ModelWedgedError(
            f"the runtime process (pid {self._child.pid}) did not answer within the run's "
            "timeout plus the abort grace: it was killed, and the next call starts a new one",
            partial_text=self.text)
        self._owner._discard(self._child, error)
        return error

    def _end(self) -> None:
        self._finished = True
        self._child.forget(self._rid)

    def __del__(self) -> None:
        if not getattr(self, "_finished", True):
            self.abort()


class IsolatedTextStream(_IsolatedStreamBase):
    """The chunks of one run in the child process; see :meth:`IsolatedRKLLM.stream`."""

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        try:
            while True:
                try:
                    message = self._channel.get(self._remaining())
                except TimeoutError:
                    raise self._wedged() from None
                chunk = self._accept(message)
                if chunk is not None:
                    return chunk
        except (StopIteration, RKLLMError):
            raise
        except BaseException:
            self.abort()  # Ctrl-C, or on_token raised
            self._end()
            raise

    def close(self) -> None:
        """Abort the run if it is still going and wait for its end."""
        if self._finished:
            return
        self.abort()
        deadline = time.monotonic() + self._owner.abort_grace + _MARGIN
        try:
            while (message := self._channel.get(max(0.0, deadline - time.monotonic()))) \
                    is not Channel.END:
                if message[0] == "done":
                    self._result = message[2]
        except TimeoutError:
            raise self._wedged() from None
        self._end()

    def __enter__(self) -> IsolatedTextStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncIsolatedTextStream(_IsolatedStreamBase):
    """The asyncio twin of :class:`IsolatedTextStream`; never blocks the event loop."""

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._finished:
            raise StopAsyncIteration
        try:
            while True:
                try:
                    message = await self._channel.aget(self._remaining())
                except TimeoutError:
                    raise self._wedged() from None
                chunk = self._accept(message)
                if chunk is not None:
                    return chunk
        except StopIteration:
            raise StopAsyncIteration from None
        except RKLLMError:
            raise
        except BaseException:
            self.abort()  # cancelled
            self._end()
            raise

    async def aclose(self) -> None:
        """Abort the run if it is still going and wait (asynchronously) for its end."""
        if self._finished:
            return
        self.abort()
        try:
            while (message := await self._channel.aget(self._owner.abort_grace + _MARGIN)) \
                    is not Channel.END:
                if message[0] == "done":
                    self._result = message[2]
        except TimeoutError:
            raise self._wedged() from None
        self._end()


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
                "a path or 'host', not a loaded RuntimeLibrary")
        if not isinstance(abort_grace, (int, float)) or not abort_grace > 0:
            raise InvalidParameterError(f"abort_grace must be > 0 seconds, got {abort_grace!r}")
        self.abort_grace = float(abort_grace)
        self.start_timeout = float(start_timeout)
        self._init_kwargs: dict[str, Any] = dict(
            rkllm_kwargs, model_path=model_path, library=library,
            runtime_version=runtime_version, abort_grace=self.abort_grace)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._closed = False
        self.restarts = 0
        self._holder: list[_Child | None] = [None]
        self._finalizer = weakref.finalize(self, _stop_child, self._holder, self.abort_grace)
        self._current()  # load now, so a bad model fails here, like RKLLM

    # -- the child ---------------------------------------------------------------------------

    def _current(self) -> _Child:
        with self._lock:
            if self._closed:
                raise ModelClosedError(
                    "the model is closed: create a new IsolatedRKLLM to run it again")
            child = self._holder[0]
            if child is not None and child.dead is None:
                return child
            if child is not None:
                self.restarts += 1
                logger.warning("restarting the runtime process (the last one %s)",
                               child.dead)
                threading.Thread(target=child.stop, args=(1.0,), daemon=True).start()
            self._holder[0] = None
            child = _Child(self._init_kwargs, self.start_timeout)
            self._holder[0] = child
            return child

    def _discard(self, child: _Child, error: RKLLMError) -> None:
        """Kill a wedged child; the next call starts a new one."""
        child.condemn(error)

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

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"IsolatedRKLLM({str(self._init_kwargs['model_path'])!r}, {state})"

    @property
    def runtime_info(self) -> Any:
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

    def _start(self, kwargs: dict[str, Any]) -> tuple[_Child, int, Channel[tuple[Any, ...]]]:
        if "before" in kwargs:
            raise InvalidParameterError(
                "before= hooks need the native handle, which lives in the child process: use "
                "RKLLM for them")
        try:
            pickle.dumps(kwargs)
        except Exception as exc:
            raise InvalidParameterError(
                f"the arguments must be picklable to reach the child process: {exc}") from exc
        child = self._current()
        rid = next(self._ids)
        channel = child.open(rid)
        try:
            child.send(("run", rid, kwargs))
        except BaseException:
            child.forget(rid)
            raise
        return child, rid, channel

    def _call(self, method: str, args: tuple[Any, ...] = (),
              kwargs: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        child = self._current()
        rid = next(self._ids)
        channel = child.open(rid)
        try:
            child.send(("call", rid, method, args, kwargs or {}))
            limit = None if timeout is None else timeout + self.abort_grace + _MARGIN
            try:
                message = channel.get(limit)
            except TimeoutError:
                error = ModelWedgedError(
                    f"{method} got no answer from the runtime process within {limit} s: it was "
                    "killed, and the next call starts a new one")
                self._discard(child, error)
                raise error from None
        finally:
            child.forget(rid)
        return self._answer(child, message)

    async def _acall(self, method: str, args: tuple[Any, ...] = (),
                     kwargs: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """:meth:`_call` of an async method in the child, never blocking the event loop; a
        cancelled caller cancels the call in the child, which aborts its runs there."""
        child = self._current()
        rid = next(self._ids)
        channel = child.open(rid)
        try:
            child.send(("acall", rid, method, args, kwargs or {}))
            limit = None if timeout is None else timeout + self.abort_grace + _MARGIN
            try:
                message = await channel.aget(limit)
            except TimeoutError:
                error = ModelWedgedError(
                    f"{method} got no answer from the runtime process within {limit} s: it was "
                    "killed, and the next call starts a new one")
                self._discard(child, error)
                raise error from None
            except BaseException:
                with contextlib.suppress(RKLLMError):
                    child.send(("cancel", rid))
                raise
        finally:
            child.forget(rid)
        return self._answer(child, message)

    def _answer(self, child: _Child, message: Any) -> Any:
        if message is Channel.END:
            raise RuntimeCrashedError("the runtime process ended before answering")
        if message[0] == "value":
            return message[2]
        if isinstance(message[2], ModelWedgedError):
            self._discard(child, message[2])
        raise message[2]

    def stream(self, prompt: str | None = None, *, timeout: float | None = None,
               **kwargs: Any) -> IsolatedTextStream:
        """Like :meth:`RKLLM.stream <rkllm_core.RKLLM.stream>`; the run executes in the child.

        Example: ``"".join(c.text for c in llm.stream("Hi"))`` (see the class example).
        """
        kwargs.update(prompt=prompt, timeout=timeout)
        child, rid, channel = self._start(kwargs)
        return IsolatedTextStream(self, child, rid, channel, timeout)

    def generate(self, prompt: str | None = None, *, timeout: float | None = None,
                 on_token: Callable[[Any], object] | None = None,
                 **kwargs: Any) -> Any:
        """Like :meth:`RKLLM.generate <rkllm_core.RKLLM.generate>`; ``on_token`` runs here.

        Example: ``llm.generate("Hi").text`` (see the class example).
        """
        kwargs.update(prompt=prompt, timeout=timeout)
        child, rid, channel = self._start(kwargs)
        stream = IsolatedTextStream(self, child, rid, channel, timeout, on_token)
        for _ in stream:
            pass
        return stream.result

    def astream(self, prompt: str | None = None, *, timeout: float | None = None,
                **kwargs: Any) -> AsyncIsolatedTextStream:
        """Async :meth:`stream`; cancelling the consuming task aborts the run.

        Example: ``[c.text async for c in llm.astream("Hi")]``.
        """
        kwargs.update(prompt=prompt, timeout=timeout)
        child, rid, channel = self._start(kwargs)
        return AsyncIsolatedTextStream(self, child, rid, channel, timeout)

    async def agenerate(self, prompt: str | None = None, *, timeout: float | None = None,
                        on_token: Callable[[Any], object] | None = None,
                        **kwargs: Any) -> Any:
        """Async :meth:`generate`; never blocks the event loop.

        Example: ``(await llm.agenerate("Hi")).text``.
        """
        kwargs.update(prompt=prompt, timeout=timeout)
        child, rid, channel = self._start(kwargs)
        stream = AsyncIsolatedTextStream(self, child, rid, channel, timeout, on_token)
        async for _ in stream:
            pass
        return stream.result

    def abort(self) -> bool:
        """Abort the run executing in the child now; False if none was.

        Example: ``llm.abort()`` from another thread.
        """
        child = self._holder[0]
        if child is None or child.dead is not None:
            return False
        return bool(self._call("abort", timeout=self.abort_grace))

    def embed(self, texts: str | Sequence[str], *, timeout: float | None = None,
              **kwargs: Any) -> Any:
        """Like :meth:`RKLLM.embed <rkllm_core.RKLLM.embed>`: ``(len(texts), dim)`` float32.

        Example: ``llm.embed(["a cat", "a dog"]).shape``.
        """
        return self._call("embed", (texts,), dict(kwargs, timeout=timeout), timeout)

    async def aembed(self, texts: str | Sequence[str], *, timeout: float | None = None,
                     **kwargs: Any) -> Any:
        """Async :meth:`embed`; cancelling it aborts the batch in the child.

        Example: ``(await llm.aembed(["a cat"])).shape``.
        """
        return await self._acall("aembed", (texts,), dict(kwargs, timeout=timeout), timeout)

    def rerank(self, query: str, documents: Sequence[str], *, timeout: float | None = None,
               **kwargs: Any) -> Any:
        """Like :meth:`RKLLM.rerank <rkllm_core.RKLLM.rerank>`: one score per document.

        Example: ``llm.rerank("cats?", ["a cat", "a car"], yes_token_id=1, no_token_id=2)``.
        """
        return self._call("rerank", (query, documents), dict(kwargs, timeout=timeout), timeout)

    async def arerank(self, query: str, documents: Sequence[str], *,
                      timeout: float | None = None, **kwargs: Any) -> Any:
        """Async :meth:`rerank`; cancelling it aborts the runs in the child.

        Example: ``await llm.arerank("cats?", ["a cat"], yes_token_id=1, no_token_id=2)``.
        """
        return await self._acall("arerank", (query, documents), dict(kwargs, timeout=timeout),
                                 timeout)

    def clear_kv_cache(self, keep_system_prompt: bool = False,
                       ranges: Sequence[tuple[int, int]] | tuple[int, int] | None = None) -> None:
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
