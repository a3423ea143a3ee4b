"""From the runtime's callback to a consumer: a wake-up channel and incremental UTF-8.

The result callback runs on our worker thread (or a runtime-owned one); consumers are other
threads or asyncio tasks. :class:`Channel` hands items over with condition-variable wake-ups for
threads and ``loop.call_soon_threadsafe`` for event loops: nobody polls or sleeps.
:class:`Utf8Decoder` turns the byte pieces of each callback into text, holding incomplete
characters (``RKLLM_RUN_WAITING``) until they complete, and never raising on invalid bytes.
:class:`StopMatcher` cuts a text stream at stop strings without ever releasing part of one.

Example:
    >>> from rkllm_core.streaming import Channel, Utf8Decoder
    >>> dec = Utf8Decoder()
    >>> [dec.feed(b) for b in (b"Gr\\xc3", b"\\xbc\\xc3\\x9f", None, b"e")]
    ['Gr', 'üß', '', 'e']
    >>> ch: Channel[int] = Channel()
    >>> ch.put(1); ch.close()
    >>> ch.get(), ch.get() is Channel.END
    (1, True)
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class _End:
    """The marker :meth:`Channel.get` returns once the channel is closed and drained."""

    def __repr__(self) -> str:
        return "Channel.END"


class Channel(Generic[T]):
    """A FIFO of items from one producer thread to thread or asyncio consumers.

    ``get`` blocks on a condition variable; ``aget`` awaits a future that the producer
    completes through ``loop.call_soon_threadsafe``. After :meth:`close`, consumers drain what
    is left and then receive :attr:`END`.

    Example:
        >>> import asyncio, threading
        >>> from rkllm_core.streaming import Channel
        >>> ch: Channel[str] = Channel()
        >>> def produce() -> None:
        ...     ch.put("a"); ch.put("b"); ch.close()
        >>> async def consume() -> list[str]:
        ...     threading.Thread(target=produce).start()
        ...     items = []
        ...     while (item := await ch.aget()) is not Channel.END:
        ...         items.append(item)
        ...     return items
        >>> asyncio.run(consume())
        ['a', 'b']
    """

    END: Any = _End()

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (items may still be waiting)."""
        return self._closed

    def put(self, item: T) -> None:
        """Append an item and wake every waiting consumer."""
        with self._cond:
            if self._closed:
                return  # a late item after close has no reader
            self._items.append(item)
            self._wake()

    def close(self) -> None:
        """No more items: consumers get :attr:`END` after draining. Idempotent."""
        with self._cond:
            self._closed = True
            self._wake()

    def _wake(self) -> None:
        self._cond.notify_all()
        waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # a closed loop: its consumer is gone
                loop.call_soon_threadsafe(_resolve, future)

    def get(self, timeout: float | None = None) -> T | Any:
        """The next item, :attr:`END` when closed and drained; TimeoutError after ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                raise TimeoutError("no item within the timeout")
            return self._items.popleft() if self._items else Channel.END

    async def aget(self, timeout: float | None = None) -> T | Any:
        """Like :meth:`get` without blocking the event loop."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            with self._cond:
                if self._items:
                    return self._items.popleft()
                if self._closed:
                    return Channel.END
                future: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, future))
            try:
                if deadline is None:
                    await future
                else:
                    try:
                        await asyncio.wait_for(future, max(0.0, deadline - loop.time()))
                    except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11
                        raise TimeoutError("no item within the timeout") from None
            except BaseException:
                with self._cond:
                    if (loop, future) in self._waiters:
                        self._waiters.remove((loop, future))
                raise


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Utf8Decoder:
    """Incremental UTF-8 decoding of the runtime's byte pieces.

    Bytes of an incomplete character are kept until the rest arrives, whether the runtime
    delivers them in a ``RKLLM_RUN_WAITING`` callback or with the next token; ``None`` (a NULL
    ``text``) and ``b""`` add nothing. Invalid bytes become U+FFFD; nothing raises.

    Example:
        >>> from rkllm_core.streaming import Utf8Decoder
        >>> dec = Utf8Decoder()
        >>> dec.feed(b"\\xf0\\x9f"), dec.feed(b"\\x99\\x82!"), dec.feed(b"\\xff"), dec.flush()
        ('', '🙂!', '\\ufffd', '')
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes | None) -> str:
        """Decode a piece; returns only complete characters."""
        if not data:
            return ""
        return str(self._decoder.decode(data, final=False))

    def flush(self) -> str:
        """End of stream: an incomplete character left over becomes U+FFFD."""
        return str(self._decoder.decode(b"", final=True))


def held_prefix(text: str, markers: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that may be the start of one of ``markers``: the
    text a stream must hold back until it knows whether a marker follows.

    Example:
        >>> from rkllm_core.streaming import held_prefix
        >>> held_prefix("Hello <tool", ["<tool_call>"]), held_prefix("Hello", ["<tool_call>"])
        (5, 0)
    """
    best = 0
    for marker in markers:
        for k in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:k]):
                best = k
                break
    return best


class StopMatcher:
    """Release streamed text up to (not including) the first stop string.

    Text that could be the start of a stop string is held back until it can be decided, so a
    stop string split across tokens is still found and never partly released.

    Example:
        >>> from rkllm_core.streaming import StopMatcher
        >>> m = StopMatcher(["\\nUser:"])
        >>> m.feed("Hi!\\nUs"), m.feed("er: more"), m.stopped
        ('Hi!', '', True)
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.stopped = False
        self.hit: str | None = None  # the stop string that ended the text
        self._held = ""

    def feed(self, text: str) -> str:
        """Add text; return what is now safe to release."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        self._held += text
        # the stop that completes first in the text wins (then the longer one), so the cut
        # does not depend on how the text was split into pieces
        found = [(i + len(s), i, s) for s in self.stops if (i := self._held.find(s)) >= 0]
        if found:
            _, cut, self.hit = min(found)
            out, self._held, self.stopped = self._held[:cut], "", True
            return out
        keep = held_prefix(self._held, self.stops)
        out = self._held[: len(self._held) - keep]
        self._held = self._held[len(self._held) - keep:]
        return out

    def flush(self) -> str:
        """The stream ended: release what was held back (it matched no stop string)."""
        out, self._held = ("" if self.stopped else self._held), ""
        return out
