"""The child process of :class:`~rkllm_core.IsolatedRKLLM`: one :class:`~rkllm_core.RKLLM`,
served over two pipes until the parent closes it or goes away.

The parent starts ``python -c "from rkllm_core.isolated_child import main; main(r, w)"`` with
the two pipe ends; :func:`main` loads the model from the :class:`~.isolated_protocol.Init` it
reads first, answers :class:`~.isolated_protocol.Ready` (or :class:`~.isolated_protocol.Failed`)
and then serves the requests of :mod:`rkllm_core.isolated_protocol`: each run is streamed by a
thread of its own, each call runs on one, and async calls on the child's event loop.

Example (what the parent does, by hand):
    >>> import os, subprocess, sys, tempfile, pathlib
    >>> from multiprocessing.connection import Connection
    >>> from rkllm_core.isolated_protocol import Chunk, Close, Done, Init, Ready, Run
    >>> from rkllm_core.isolated_protocol import receive, send
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "one two"\\n')
    >>> parent_read, child_write = os.pipe()
    >>> child_read, parent_write = os.pipe()
    >>> child = subprocess.Popen(
    ...     [sys.executable, "-c", "from rkllm_core.isolated_child import main; "
    ...      f"main({child_read}, {child_write})"], pass_fds=(child_read, child_write))
    >>> os.close(child_read); os.close(child_write)
    >>> to_child = Connection(parent_write, readable=False)
    >>> from_child = Connection(parent_read, writable=False)
    >>> send(to_child, Init({"model_path": path, "library": "host", "max_context_len": 512}))
    >>> isinstance(receive(from_child), Ready)
    True
    >>> send(to_child, Run(1, {"prompt": "count"}))
    >>> [receive(from_child) for _ in range(2)]
    [Chunk(rid=1, text='one', token_id=...), Chunk(rid=1, text=' two', token_id=...)]
    >>> done = receive(from_child)
    >>> isinstance(done, Done), done.result.text
    (True, 'one two')
    >>> send(to_child, Close()); child.wait()
    0
    >>> to_child.close(); from_child.close()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from rkllm_core.errors import RKLLMError
from rkllm_core.isolated_protocol import (
    Abort,
    AsyncCall,
    Call,
    Cancel,
    Chunk,
    Close,
    Done,
    Error,
    Failed,
    FromChild,
    Init,
    Ready,
    Run,
    Value,
    picklable,
    receive,
    send,
)

if TYPE_CHECKING:
    from rkllm_core.model import RKLLM
    from rkllm_core.results import StreamChunk
    from rkllm_core.streams import TextStream


def main(read_fd: int, write_fd: int) -> None:
    """Entry point of the child: load the model, then serve requests until EOF or Close."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (it aborts)
    incoming = Connection(read_fd, writable=False)
    outgoing = Connection(write_fd, readable=False)
    send_lock = threading.Lock()

    def reply(message: FromChild) -> None:
        # a parent that is gone has nobody to tell
        with send_lock, contextlib.suppress(OSError, ValueError):
            send(outgoing, message)

    from rkllm_core.model import RKLLM

    try:
        init = receive(incoming)
        if not isinstance(init, Init):
            raise RKLLMError(f"the first message must be Init, got {init!r}")
        llm = RKLLM(**init.kwargs)
    except BaseException as exc:
        reply(Failed(picklable(exc)))
        return
    reply(Ready(llm.runtime_info, os.getpid(), llm.params))
    _Server(llm, reply).serve(incoming)


class _Server:
    """Serves one loaded model's requests; every answer goes through ``reply``."""

    def __init__(self, llm: RKLLM, reply: Callable[[FromChild], None]) -> None:
        self.llm = llm
        self.reply = reply
        self.streams: dict[int, TextStream] = {}
        self.servers: list[threading.Thread] = []
        # async calls (aembed, arerank) run on a loop of their own, so a Cancel from the parent
        # cancels them as a cancelled task would in one process: the runtime is aborted
        self.loop = asyncio.new_event_loop()
        self.async_calls: dict[int, concurrent.futures.Future[Any]] = {}

    def serve(self, incoming: Connection) -> None:
        threading.Thread(target=self.loop.run_forever, daemon=True, name="rkllm-child-loop").start()
        try:
            while True:
                try:
                    message = receive(incoming)
                except (EOFError, OSError):
                    return  # the parent died or closed us
                if isinstance(message, Close):
                    return
                if isinstance(message, Run):
                    self.start_run(message)
                elif isinstance(message, Abort):
                    stream = self.streams.get(message.rid)
                    if stream is not None:
                        stream.abort()
                elif isinstance(message, Call):
                    threading.Thread(
                        target=self.call,
                        args=(message,),
                        daemon=True,
                        name=f"rkllm-child-call-{message.rid}",
                    ).start()
                elif isinstance(message, AsyncCall):
                    self.start_async_call(message)
                elif isinstance(message, Cancel):
                    pending = self.async_calls.get(message.rid)
                    if pending is not None:
                        pending.cancel()
                else:  # a parent of another version: stop rather than guess
                    raise RKLLMError(f"the runtime process got an unknown message: {message!r}")
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.llm.close()  # aborts the run in flight and fails the queued ones
            for server in self.servers:  # so that each reports its end before the process exits
                server.join(timeout=5)

    def start_run(self, message: Run) -> None:
        rid = message.rid
        try:
            # queued now: runs keep the callers' order
            stream = self.llm.stream(on_token=self.forward_from(rid), **message.kwargs)
        except BaseException as exc:
            self.reply(Error(rid, picklable(exc)))
            return
        self.streams[rid] = stream
        server = threading.Thread(
            target=self.stream, args=(rid, stream), daemon=True, name=f"rkllm-child-run-{rid}"
        )
        server.start()
        self.servers[:] = [t for t in self.servers if t.is_alive()] + [server]

    def forward_from(self, rid: int) -> Callable[[StreamChunk], None]:
        reply = self.reply

        def forward(chunk: StreamChunk) -> None:
            # written to the pipe inside the runtime's callback, before the runtime goes on:
            # if it crashes right after, the parent still has every token it emitted
            reply(Chunk(rid, chunk.text, chunk.token_id))

        return forward

    def stream(self, rid: int, stream: TextStream) -> None:
        try:
            for _chunk in stream:
                pass  # each chunk was sent from the runtime's callback (forward_from)
            self.reply(Done(rid, stream.result))
        except BaseException as exc:
            self.reply(Error(rid, picklable(exc)))
        finally:
            self.streams.pop(rid, None)

    def call(self, message: Call) -> None:
        try:
            if message.method == "kv_cache_size":
                value = self.llm.kv_cache_size
            else:
                value = getattr(self.llm, message.method)(*message.args, **message.kwargs)
            self.reply(Value(message.rid, value))
        except BaseException as exc:
            self.reply(Error(message.rid, picklable(exc)))

    def start_async_call(self, message: AsyncCall) -> None:
        rid, method = message.rid, message.method
        try:
            call = asyncio.run_coroutine_threadsafe(
                getattr(self.llm, method)(*message.args, **message.kwargs), self.loop
            )
        except BaseException as exc:
            self.reply(Error(rid, picklable(exc)))
            return
        self.async_calls[rid] = call

        def done(future: concurrent.futures.Future[Any]) -> None:
            self.async_calls.pop(rid, None)
            try:
                if future.cancelled():
                    raise RKLLMError(f"{method} was cancelled")
                self.reply(Value(rid, future.result()))  # result() raises the call's error
            except BaseException as exc:
                self.reply(Error(rid, picklable(exc)))

        call.add_done_callback(done)
