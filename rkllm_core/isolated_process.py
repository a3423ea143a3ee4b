"""The parent's handle on one child process of :class:`~rkllm_core.IsolatedRKLLM`.

:class:`ChildProcess` starts the child (:mod:`rkllm_core.isolated_child`), waits for it to load
the model, and routes its replies: a reader thread turns each message of
:mod:`rkllm_core.isolated_protocol` into an item of :data:`rkllm_core.consumer.RunItem` (a
:class:`~rkllm_core.results.StreamChunk`, a done or a failure; a call's value as it came) and
puts it on the channel of the request it answers. When the child dies, every request in flight
gets a :class:`~rkllm_core.errors.RuntimeCrashedError` (a
:class:`~rkllm_core.errors.ModelClosedError` if we were closing it) and so do later ones.

Example:
    >>> import tempfile, pathlib
    >>> from rkllm_core.isolated_process import ChildProcess
    >>> from rkllm_core.isolated_protocol import Run
    >>> from rkllm_core.streaming import Channel
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "one two"\\n')
    >>> child = ChildProcess({"model_path": path, "library": "host", "max_context_len": 512},
    ...                      start_timeout=60)
    >>> channel = child.open(1).channel
    >>> child.send(Run(1, {"prompt": "count"}))
    >>> items = []
    >>> while (item := channel.get(10)) is not Channel.END:
    ...     items.append(item)
    >>> [chunk.text for chunk in items[:-1]], items[-1].result.finish_reason
    (['one', ' two'], 'stop')
    >>> child.stop(grace=5); child.dead
    ModelClosedError('the model was closed while this call was waiting')
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkllm_core.errors import ModelClosedError, RKLLMError, RuntimeCrashedError
from rkllm_core.isolated_protocol import (
    Chunk,
    Close,
    Done,
    Error,
    Failed,
    Init,
    Ready,
    ToChild,
    Value,
    receive,
)
from rkllm_core.isolated_protocol import send as send_message
from rkllm_core.results import RuntimeInfo, StreamChunk
from rkllm_core.streaming import Channel
from rkllm_core.worker import _Done, _Failure

if TYPE_CHECKING:
    from rkllm_core.params import ModelParams

logger = logging.getLogger("rkllm_core")

_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
_ENTRY = "from rkllm_core.isolated_child import main; main({read_fd}, {write_fd})"


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


@dataclass(eq=False)
class Pending:
    """The answer to one request as it arrives: its items (a run's chunks, then its done or
    failure; a call's value or failure), and the text of a run's chunks so far."""

    channel: Channel[Any] = field(default_factory=Channel)
    parts: list[str] = field(default_factory=list)


class ChildProcess:
    """One child process, its pipes, and the reader thread that routes its replies.

    Example: see the module example; :class:`~rkllm_core.IsolatedRKLLM` owns one at a time.
    """

    def __init__(self, init_kwargs: dict[str, Any], start_timeout: float) -> None:
        parent_read, child_write = os.pipe()
        child_read, parent_write = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        code = _ENTRY.format(read_fd=child_read, write_fd=child_write)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code],
                pass_fds=(child_read, child_write),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        finally:
            os.close(child_read)
            os.close(child_write)
        self._out = Connection(parent_write, readable=False)
        self._in = Connection(parent_read, writable=False)
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending: dict[int, Pending] = {}
        #: why the child cannot be used any more (the first reason wins), or None
        self.dead: RKLLMError | None = None
        self.closing = False
        self.pid = self.process.pid
        try:
            self.send(Init(init_kwargs))
            if not self._in.poll(start_timeout):
                raise RuntimeCrashedError(
                    f"the runtime process did not load the model within {start_timeout} s"
                )
            reply = receive(self._in)
        except (EOFError, OSError) as exc:
            self._abandon()
            raise RuntimeCrashedError(
                f"the runtime process died while loading the model "
                f"({_describe_exit(self.process.returncode)})"
            ) from exc
        except BaseException:
            self._abandon()
            raise
        if isinstance(reply, Failed):
            self._abandon()
            raise reply.error
        assert isinstance(reply, Ready), reply
        self.info: RuntimeInfo = reply.info
        self.params: ModelParams = reply.params
        self._reader = threading.Thread(
            target=self._read, name="rkllm-isolated-reader", daemon=True
        )
        self._reader.start()

    def send(self, message: ToChild) -> None:
        """Write ``message`` to the child; a child that is gone is condemned and raises."""
        with self._send_lock:
            try:
                send_message(self._out, message)
            except (OSError, ValueError) as exc:
                self.condemn(
                    RuntimeCrashedError(
                        "the runtime process is gone; the next call starts a new one"
                    )
                )
                assert self.dead is not None
                raise self.dead from exc

    def condemn(self, error: RKLLMError) -> None:
        """Mark the child unusable (the first reason wins) and kill it."""
        with self._lock:
            if self.dead is None:
                self.dead = error
        self.kill()

    def open(self, rid: int) -> Pending:
        """Where the answer to request ``rid`` will arrive (send the request after this)."""
        pending = Pending()
        with self._lock:
            if self.dead is not None:
                raise self.dead
            self._pending[rid] = pending
        return pending

    def forget(self, rid: int) -> None:
        """Nobody waits for the answer to ``rid`` any more."""
        with self._lock:
            self._pending.pop(rid, None)

    def _read(self) -> None:
        pending = self._pending
        while True:
            try:
                message = receive(self._in)
            except (EOFError, OSError):
                break
            if type(message) is Chunk:  # the hot path: one per token
                request = pending.get(message.rid)  # one dict read needs no lock
                if request is not None:
                    request.parts.append(message.text)
                    request.channel.put(StreamChunk(message.text, message.token_id))
                continue
            with self._lock:  # a request's last message: nothing more comes for it
                request = pending.pop(message.rid, None)
            if request is None:
                continue
            channel = request.channel
            if isinstance(message, Done):
                channel.put(_Done(message.result))
            elif isinstance(message, Error):
                channel.put(_Failure(message.error))
            else:
                assert isinstance(message, Value), message
                channel.put(message)
            channel.close()
        self._died()

    def _died(self) -> None:
        """The pipe closed: fail whatever still waits for an answer, then and later."""
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        if self.closing:
            crash: RKLLMError = ModelClosedError("the model was closed while this call was waiting")
        else:
            crash = RuntimeCrashedError(
                f"the runtime process (pid {self.pid}) died: {_describe_exit(code)}. A crash in "
                "librkllmrt (e.g. rknn-llm issue 522) or a kill; the next call starts a new "
                "process, with an empty KV cache"
            )
        with self._lock:
            self.dead = self.dead or crash
            waiting, self._pending = list(self._pending.values()), {}
        for request in waiting:
            request.channel.put(_Failure(self.dead))
            request.channel.close()
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
            self.send(Close())
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
