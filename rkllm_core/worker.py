"""The worker thread that owns a loaded model, and its run queue.

Every native call that touches the model (runs and settings alike) executes on the one thread a
:class:`RunWorker` owns, in FIFO order, so threads and asyncio tasks can share a model. Runs use
the synchronous ``rkllm_run`` (``rkllm_run_async`` hangs on runtime 1.2.1, rknn-llm #320); the
runtime's result callback fills the running :class:`_Run`, whose chunks and then result (or
error) flow through its :class:`~rkllm_core.streaming.Channel` to whoever consumes them
(:mod:`rkllm_core.streams`). ``rkllm_abort`` is the only call made from other threads, and never
from inside the runtime's callback (an abort decided there is sent from a short-lived helper
thread).

Example:
    >>> import tempfile, pathlib
    >>> from rkllm_core.library import load_library
    >>> from rkllm_core.params import ModelParams
    >>> from rkllm_core.worker import RunWorker
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\n')
    >>> lib = load_library("host")
    >>> param = lib.create_default_param()
    >>> ModelParams(model_path=path, max_context_len=512).fill_native(param, lib.release)
    >>> worker = RunWorker(lib, param, tokenizer_callback=None)
    >>> worker.call(lambda handle: lib.clear_kv_cache(handle, False), "clear_kv_cache()")
    0
    >>> worker.close(); worker.closed
    True
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from rkllm_core.abi.enums import LLMCallState
from rkllm_core.errors import ModelClosedError, ModelWedgedError, RKLLMError, RunError
from rkllm_core.library import RuntimeLibrary
from rkllm_core.native import NativeModel
from rkllm_core.results import FinishReason, GenerationResult, PerfStats, StreamChunk
from rkllm_core.streaming import Channel, StopMatcher, Utf8Decoder

logger = logging.getLogger("rkllm_core")

_NORMAL = int(LLMCallState.RKLLM_RUN_NORMAL)
_WAITING = int(LLMCallState.RKLLM_RUN_WAITING)
_FINISH = int(LLMCallState.RKLLM_RUN_FINISH)
_ERROR = int(LLMCallState.RKLLM_RUN_ERROR)
_HIDDEN_1_1 = int(LLMCallState.RKLLM_RUN_GET_LAST_HIDDEN_LAYER)

#: Seconds a run may take to end after rkllm_abort before the model counts as wedged
#: (rknn-llm #400 measured 1.3 s during prefill on a healthy NPU).
ABORT_GRACE = 10.0


@dataclass
class _Done:
    result: GenerationResult


@dataclass
class _Failure:
    error: BaseException


_Item = StreamChunk | _Done | _Failure


class _TokenView(ctypes.Structure):
    """The first two fields of every family's ``RKLLMResult``, with ``text`` read as a C
    string: one object per token gives both (``RunWorker`` checks the offsets)."""

    _fields_ = [("text", ctypes.c_char_p), ("token_id", ctypes.c_int32)]


def _text_offsets(struct: type[ctypes.Structure]) -> tuple[int, int]:
    fields = vars(struct)
    return fields["text"].offset, fields["token_id"].offset


_new_chunk = object.__new__


@dataclass(eq=False)
class _Run:
    """One queued ``rkllm_run``: its structs (kept alive until it ends) and what it produced.

    A batched run (``n_batch > 1``) carries one lane per input: each lane is a ``_Run`` of its
    own (never queued) that collects that input's text, tokens and perf stats."""

    kind: Literal["generate", "hidden", "logits"]
    input: Any
    infer: Any
    keepalive: list[Any]
    max_new_tokens: int  # the effective limit; <= 0 means none
    enforce_max_tokens: bool  # old families: we abort after max_new_tokens tokens
    stop: StopMatcher
    lanes: list[_Run] | None = None  # a batched run's per-input state
    on_token: Callable[[StreamChunk], object] | None = None
    before: list[Callable[[Any], None]] = field(default_factory=list)
    channel: Channel[_Item] = field(default_factory=Channel)
    state: Literal["queued", "running", "done", "cancelled"] = "queued"
    abort_reason: str | None = None
    abort_resent: bool = False  # the abort was sent again once a callback saw it pending
    error: BaseException | None = None
    runtime_error: bool = False
    return_code: int = 0
    decoder: Utf8Decoder = field(default_factory=Utf8Decoder)
    text_parts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    tokens_seen: int = 0
    arrays: list[np.ndarray] = field(default_factory=list)
    native_perf: dict[str, float] | None = None
    kv_size_before: int | None = None  # read by a ReadKVCacheSize setup step
    started: float = 0.0
    first_token: float | None = None
    ended: float = 0.0
    # the runtime's text pointers are read for this run's tokens (generate, not batched)
    streams_tokens: bool = field(init=False)

    def __post_init__(self) -> None:
        self.streams_tokens = self.kind == "generate" and self.lanes is None

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


class RunWorker:
    """One loaded model's worker thread: owns the native handle, runs the queued runs and
    settings calls in FIFO order, and receives the runtime's result callback; knows nothing of
    the public API.

    Kept apart from :class:`~rkllm_core.model.RKLLM` so ``weakref.finalize`` can close it
    without keeping the RKLLM object alive.
    """

    def __init__(self, lib: RuntimeLibrary, param: Any, tokenizer_callback: Any,
                 abort_grace: float = ABORT_GRACE) -> None:
        self.lib = lib
        self.abort_grace = abort_grace
        self.wedged: _Run | None = None  # a run that ignored rkllm_abort for abort_grace
        self._cond = threading.Condition()
        self._jobs: deque[_Run | _Call] = deque()
        self._closed = False
        self._callback_thread: int | None = None  # the thread inside a result callback now
        self.current: _Run | None = None
        result_struct = lib.family.struct("RKLLMResult")
        if _text_offsets(result_struct) != _text_offsets(_TokenView):
            raise RKLLMError(f"RKLLMResult of family {lib.family.key} does not start with text "
                             "and token_id: the token path's _TokenView needs a new layout")
        self.native = NativeModel(lib, param, self._handle, tokenizer_callback=tokenizer_callback)
        self._result_type = ctypes.POINTER(result_struct)
        self._release_buffers = 2 if lib.family.capabilities.callback_releases_buffers else 0
        self._thread = threading.Thread(target=self._loop, name="rkllm-worker", daemon=True)
        self._thread.start()

    # -- the queue ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def in_worker(self) -> bool:
        """True on the worker thread or inside a result callback (any thread)."""
        thread = threading.get_ident()
        return thread == self._thread.ident or thread == self._callback_thread

    def _refuse_reentry(self, what: str) -> None:
        if self.in_worker():
            raise RKLLMError(
                f"{what} was called from inside a run's callback (on_token); the model runs one "
                "thing at a time, so this would wait for itself: call it after the run")

    def submit(self, job: _Run | _Call, what: str) -> None:
        self._refuse_reentry(what)
        with self._cond:
            if self._closed:
                raise ModelClosedError("the model is closed: create a new RKLLM to run it again")
            if self.wedged is not None:
                raise self._wedged_error()
            self._jobs.append(job)
            self._cond.notify_all()

    def call(self, fn: Callable[[Any], Any], what: str) -> Any:
        """Run ``fn(handle)`` on the worker, after the runs queued before it."""
        job = _Call(fn)
        self.submit(job, what)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.value

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._jobs and not self._closed:
                        self._cond.wait()
                    if not self._jobs:
                        return
                    job = self._jobs.popleft()
                    if isinstance(job, _Run):
                        job.state = "running"
                        self.current = job
                if isinstance(job, _Run):
                    self._execute(job)
                else:
                    job.execute(self.native.handle)
        finally:
            try:
                self.native.close()
            except Exception:
                logger.exception("rkllm_destroy failed")

    def _execute(self, run: _Run) -> None:
        run.started = time.monotonic()
        try:
            if run.abort_reason is None:
                for hook in run.before:  # on this thread, so nothing runs in between
                    hook(self.native.handle)
                logger.debug("rkllm_run: %s run", run.kind)
                # a batch's input is an array, which ctypes passes as a pointer to its first item
                inputs = run.input if isinstance(run.input, ctypes.Array) else ctypes.byref(
                    run.input)
                run.return_code = self.lib.run(self.native.handle, inputs,
                                               ctypes.byref(run.infer), None)
        except BaseException as exc:  # e.g. a before-hook failed: report it to the consumer
            run.error = run.error or exc
        errors = self.native.callback_errors
        if errors:  # the handler catches everything itself; this is the last safety net
            run.error = run.error or errors[0]
            errors.clear()
        run.ended = time.monotonic()
        with self._cond:
            run.state = "done"
            self.current = None
            if self.wedged is run:
                self.wedged = None
                logger.warning("the wedged run returned at last; the model accepts runs again")
        _finish(run)

    def _wedged_error(self) -> ModelWedgedError:
        return ModelWedgedError(
            f"the model is wedged: the runtime has not returned from rkllm_run within "
            f"{self.abort_grace} s of rkllm_abort, so nothing else can run on it. close() it and "
            "load the model again (on a board, an NPU that stays wedged needs the process to "
            "exit), or use rkllm_core.IsolatedRKLLM, which restarts a wedged runtime for you")

    def mark_wedged(self, run: _Run) -> ModelWedgedError:
        """``run`` ignored rkllm_abort: refuse new work until it returns; fail what is queued."""
        with self._cond:
            if run.state == "running":
                self.wedged = run
            pending = [job for job in self._jobs]
            self._jobs.clear()
            for job in pending:
                if isinstance(job, _Run):
                    job.state = "cancelled"
        error = self._wedged_error()
        logger.error("%s", error)
        for job in pending:
            if isinstance(job, _Run):
                job.error = error
                _finish(job)
            else:
                job.fail(error)
        return error

    def abort_run(self, run: _Run, reason: str) -> str:
        """Stop ``run``: drop it if still queued, else abort it. Returns what it was."""
        with self._cond:
            if run.state == "queued":
                self._jobs.remove(run)
                run.state = "cancelled"
                run.abort_reason = reason
                was = "queued"
            elif run.state == "running":
                if run.abort_reason is None:
                    run.abort_reason = reason
                if self._callback_thread == threading.get_ident():
                    self._abort_later(run)
                else:
                    # under the lock: the worker cannot destroy the handle meanwhile
                    self.lib.abort(self.native.handle)
                return "running"
            else:
                return "done"
        _finish(run)
        return was

    def _abort_later(self, run: _Run) -> None:
        """Call rkllm_abort from another thread: calling it inside the runtime's own callback
        is undocumented (it may wait for the run it is called from)."""

        def abort() -> None:
            with self._cond:
                if run.state == "running":
                    self.lib.abort(self.native.handle)

        threading.Thread(target=abort, name="rkllm-abort", daemon=True).start()

    def abort_current(self) -> bool:
        """Abort whatever run is executing now; False if none is."""
        run = self.current
        return run is not None and self.abort_run(run, "abort") == "running"

    def close(self) -> None:
        """Cancel queued work, abort the running run, wait for it, destroy the handle."""
        with self._cond:
            already = self._closed
            self._closed = True
            pending = list(self._jobs)
            self._jobs.clear()
            for job in pending:
                if isinstance(job, _Run):
                    job.state = "cancelled"
            running = self.current
            self._cond.notify_all()
        for job in pending:
            if isinstance(job, _Run):
                job.error = ModelClosedError("the model was closed before this run started")
                _finish(job)
            else:
                job.fail(ModelClosedError("the model was closed before this call ran"))
        if running is not None and not already:
            self.abort_run(running, "abort")
        if self.in_worker():
            return  # closed from a callback: the worker destroys the handle when the run ends
        self._thread.join(self.abort_grace if running is not None else None)
        if self._thread.is_alive():
            # rkllm_destroy during a run would free memory the runtime still uses: leave it
            logger.error("close(): the runtime did not return from rkllm_run within %s s of "
                         "rkllm_abort; the model handle is left to the process exit",
                         self.abort_grace)

    # -- the result callback --------------------------------------------------------------

    def _handle(self, result: int | None, userdata: int | None, state: int) -> int:
        run = self.current
        if run is None:
            return 0
        self._callback_thread = threading.get_ident()
        try:
            return self._on_result(run, result, state)
        except BaseException as exc:
            run.error = run.error or exc
            if run.abort_reason is None:
                run.abort_reason = "error"
                self._abort_later(run)
            return 0
        finally:
            self._callback_thread = None

    def _on_result(self, run: _Run, result: int | None, state: int) -> int:
        if not result:
            return 0
        if state == _NORMAL and run.streams_tokens:  # the per-token path: keep it short
            token = _TokenView.from_address(result)
            return self._on_token(run, token.text, token.token_id)
        results = ctypes.cast(result, self._result_type)
        if run.lanes is None:
            return self._on_one(run, results[0], state)
        # a batched run: one result per input; a negative token id marks a finished input
        if state in (_NORMAL, _WAITING) and run.first_token is None:
            run.first_token = time.monotonic()
        for i, lane in enumerate(run.lanes):
            r = results[i]
            if state in (_NORMAL, _WAITING) and int(r.token_id) < 0 and not r.text:
                continue
            self._on_one(lane, r, state)
        run.runtime_error = any(lane.runtime_error for lane in run.lanes)
        return 0

    def _on_one(self, run: _Run, r: Any, state: int) -> int:
        """One RKLLMResult of ``run`` (the run itself, or one lane of a batch)."""
        if state == _FINISH:
            perf = getattr(r, "perf", None)
            if perf is not None:
                run.native_perf = {name: getattr(perf, name) for name, _ in perf._fields_}
            return 0
        if state == _ERROR:
            run.runtime_error = True
            return 0
        if run.abort_reason is not None:
            return self._aborting(run)
        if run.kind == "hidden" and state in (_NORMAL, _HIDDEN_1_1):
            layer = r.last_hidden_layer
            if layer.hidden_states and layer.num_tokens > 0 and layer.embd_size > 0:
                # the runtime frees this buffer when the callback returns: copy it now
                run.arrays.append(np.ctypeslib.as_array(
                    layer.hidden_states, (layer.num_tokens, layer.embd_size)).copy())
                return self._release_buffers
            return 0
        if run.kind == "logits" and state == _NORMAL:
            logits = r.logits
            if logits.logits and logits.num_tokens > 0 and logits.vocab_size > 0:
                run.arrays.append(np.ctypeslib.as_array(
                    logits.logits, (logits.num_tokens, logits.vocab_size)).copy())
                return self._release_buffers
            return 0
        if run.kind != "generate" or state not in (_NORMAL, _WAITING):
            return 0
        return self._on_token(run, ctypes.string_at(r.text) if r.text else None,
                              int(r.token_id))

    def _aborting(self, run: _Run) -> int:
        """Deliver nothing more. Send the abort once more, since the runtime clears its flag
        when a run starts (an abort may have come just before)."""
        if not run.abort_resent:
            run.abort_resent = True
            self._abort_later(run)
        return 0

    def _on_token(self, run: _Run, raw: bytes | None, token_id: int) -> int:
        """The text piece and token of one generate callback (``RKLLM_RUN_NORMAL`` or
        ``RKLLM_RUN_WAITING``): decoded, checked for stops, handed to the consumer."""
        if run.abort_reason is not None:
            return self._aborting(run)
        if run.first_token is None:
            run.first_token = time.monotonic()
        run.tokens_seen += 1
        if token_id >= 0:
            run.token_ids.append(token_id)
        decoder = run.decoder
        if raw is not None and not decoder.pending:
            try:  # a whole character sequence, nearly always: no decoder state to keep
                text = raw.decode()
            except UnicodeDecodeError:
                text = decoder.feed(raw)
        else:
            text = decoder.feed(raw)
        stop = run.stop
        if stop.stops:
            text = stop.feed(text)
        run.text_parts.append(text)
        # StreamChunk is a frozen dataclass, whose __init__ sets each field through
        # object.__setattr__: filling its __dict__ makes the same object ~4 times faster
        chunk = _new_chunk(StreamChunk)
        fields = chunk.__dict__
        fields["text"] = text
        fields["token_id"] = token_id if token_id >= 0 else None
        if run.on_token is not None:
            run.on_token(chunk)
        run.channel.put(chunk)
        if run.abort_reason is not None:  # on_token aborted the run
            return 0
        if stop.stopped:
            run.abort_reason = "stop"
        elif run.enforce_max_tokens and run.tokens_seen >= run.max_new_tokens:
            run.abort_reason = "length"
        else:
            return 0
        run.abort_resent = True
        self._abort_later(run)
        return 0


class _Call:
    """A settings call queued behind the runs, executed on the worker."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def execute(self, handle: Any) -> None:
        try:
            self.value = self.fn(handle)
        except BaseException as exc:
            self.error = exc
        self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


def _perf(run: _Run) -> PerfStats:
    if run.native_perf is not None:
        p = run.native_perf
        decode_ms = float(p["generate_time_ms"])
        decode_tokens = int(p["generate_tokens"])
        return PerfStats(
            prefill_tokens=int(p["prefill_tokens"]),
            prefill_ms=float(p["prefill_time_ms"]),
            decode_tokens=decode_tokens,
            decode_ms=decode_ms,
            tokens_per_second=decode_tokens * 1000.0 / decode_ms if decode_ms > 0 else 0.0,
            peak_memory_mb=float(p["memory_usage_mb"]),
        )
    first = run.first_token if run.first_token is not None else run.ended
    started = run.started or first
    decode_ms = max(0.0, (run.ended - first) * 1000.0)
    return PerfStats(
        prefill_tokens=None,
        prefill_ms=max(0.0, (first - started) * 1000.0),
        decode_tokens=run.tokens_seen,
        decode_ms=decode_ms,
        tokens_per_second=run.tokens_seen * 1000.0 / decode_ms if decode_ms > 0 else 0.0,
        peak_memory_mb=None,
    )


def _finish(run: _Run) -> None:
    """Release the undecoded tail, then hand the consumer the result or the error."""
    for lane in run.lanes or ():
        lane.state, lane.started, lane.ended = run.state, run.started, run.ended
        lane.error, lane.return_code = run.error, run.return_code
        lane.abort_reason = lane.abort_reason or run.abort_reason
        _finish(lane)  # each lane's result (or error) waits in its own channel
    if run.kind == "generate" and run.state == "done":
        # an aborted run may end inside a character: drop it rather than emit U+FFFD
        pending = run.decoder.flush() if run.abort_reason is None else ""
        tail = run.stop.feed(pending) + run.stop.flush()
        if tail:
            chunk = StreamChunk(tail, None)
            run.text_parts.append(tail)
            if run.on_token is not None:
                try:
                    run.on_token(chunk)  # it sees every chunk the stream has, the tail included
                except BaseException as exc:
                    run.error = run.error or exc
            run.channel.put(chunk)
    if run.error is not None:
        run.channel.put(_Failure(run.error))
    elif run.runtime_error or run.return_code != 0:
        error = RunError(
            f"the runtime reported an error (rkllm_run returned {run.return_code}"
            f"{', RKLLM_RUN_ERROR' if run.runtime_error else ''}) after {run.tokens_seen} tokens; "
            "its log on stderr says why (input longer than max_context_len, unknown LoRA name, "
            "wrong image count, ...)", partial_text=run.text)
        run.channel.put(_Failure(error))
    else:
        reason: FinishReason
        if run.abort_reason == "stop":
            reason = "stop"
        elif run.abort_reason == "length":
            reason = "length"
        elif run.abort_reason is not None:
            reason = "abort"
        elif run.max_new_tokens > 0 and run.tokens_seen >= run.max_new_tokens:
            reason = "length"
        else:
            reason = "stop"
        run.channel.put(_Done(GenerationResult(run.text, list(run.token_ids), reason, _perf(run),
                                               run.kv_size_before, run.stop.hit)))
    run.channel.close()

