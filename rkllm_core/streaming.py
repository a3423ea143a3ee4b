"""From the runtime's callback to a consumer: a wake-up channel and incremental UTF-8.

The result callback runs on our worker thread (or a runtime-owned one); consumers are other
threads or asyncio tasks. :class:`Channel` hands items over with a lock release for a waiting
thread and ``loop.call_soon_threadsafe`` for a waiting event loop, and only when a consumer waits:
nobody polls (a consumer that falls behind a fast producer naps for a millisecond at most).
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
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class _End:
    """The marker :meth:`Channel.get` returns once the channel is closed and drained."""

    def __repr__(self) -> str:
        return "Channel.END"


#: Items a consumer took in a row without waiting, which show a producer outpacing it: the
#: consumer then naps instead of asking to be woken by the next item.
_NAP_AFTER = 16
#: The longest a napping consumer leaves items waiting.
_NAP_SECONDS = 0.001
#: The longest a producer waits for a napper it woke to take the GIL.
_HAND_OVER_SECONDS = 0.002
_EMPTY: Any = object()  # what Channel._take returns when there is nothing to take yet


class Channel(Generic[T]):
    """A FIFO of items from one producer thread to thread or asyncio consumers.

    ``put`` takes no lock and wakes nobody unless a consumer waits (it runs in the runtime's
    callback, once per token). A waiting thread sleeps on a lock of its own that ``put``
    releases; a waiting event loop gets ``loop.call_soon_threadsafe``. After :meth:`close`,
    consumers drain what is left and then receive :attr:`END`.

    A consumer that took many items in a row without waiting (the producer outpaces it:
    tokens come faster than it reads them) naps instead: it sleeps for at most
    ``_NAP_SECONDS`` while items pile up, and the first ``put`` after that wakes it and waits
    (at most ``_HAND_OVER_SECONDS``) until it runs. Under CPython's GIL a consumer woken while
    the producer's callbacks keep coming would wait for the GIL, woken by every callback's
    release of it and seldom winning it, which costs both threads CPU on every token. Tokens
    that come one at a time (an NPU's 20-200 ms apart) always wake the consumer at once.

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
        self._lock = threading.Lock()  # guards the waiter lists, the hand-over and closing
        self._closed = False
        self._waiters: list[Callable[[], object]] = []  # woken by the next put
        self._nappers: list[Callable[[], object]] = []  # woken by a put after _nap_until
        self._nap_until = 0.0
        self._nap_thread: int | None = None  # the thread of the first napper
        self._hand_over_lock: Any = None  # held while a producer waits for a napper to run
        self._streak = 0  # items taken since a consumer last waited

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (items may still be waiting)."""
        return self._closed

    def put(self, item: T) -> None:
        """Append an item and wake every waiting consumer (a napping one once its nap is over)."""
        if self._closed:
            return  # a late item after close has no reader
        self._items.append(item)
        # a consumer registers before its last look at the items, so one that found them
        # empty is seen here (deque and list operations are atomic under the GIL)
        if self._waiters:
            self._wake()
        elif self._nappers and time.monotonic() >= self._nap_until:
            self._hand_over()

    def close(self) -> None:
        """No more items: consumers get :attr:`END` after draining. Idempotent."""
        with self._lock:
            self._closed = True
        self._wake()

    def _wake(self) -> None:
        with self._lock:
            waiters = self._waiters + self._nappers
            self._waiters, self._nappers = [], []
        for wake in waiters:
            wake()

    def _hand_over(self) -> None:
        """Wake the nappers and let go of the GIL until one of them holds it."""
        hand_over = threading.Lock()
        hand_over.acquire()
        with self._lock:
            nappers, self._nappers = self._nappers, []
            # a producer on the napper's own thread (an event loop's) cannot wait for it
            wait = bool(nappers) and self._nap_thread != threading.get_ident()
            if wait:
                self._hand_over_lock = hand_over
        for wake in nappers:
            wake()
        if wait:
            hand_over.acquire(timeout=_HAND_OVER_SECONDS)
            with self._lock:
                if self._hand_over_lock is hand_over:
                    self._hand_over_lock = None

    def _running(self) -> None:
        """A consumer is awake and holds the GIL: a producer waiting for that may go on."""
        if self._hand_over_lock is None:
            return
        with self._lock:
            hand_over, self._hand_over_lock = self._hand_over_lock, None
        if hand_over is not None:
            hand_over.release()

    def _must_wait(self, wake: Callable[[], object], nap: bool) -> bool:
        """Register ``wake`` unless an item or the end is already there."""
        with self._lock:
            if self._items or self._closed:
                return False
            waiting = self._waiters
            if nap:
                waiting = self._nappers
                if not waiting:
                    self._nap_until = time.monotonic() + _NAP_SECONDS
                    self._nap_thread = threading.get_ident()
            waiting.append(wake)
            if self._items:  # put between the look above and the append did not see us
                waiting.remove(wake)
                return False
            return True

    def _forget(self, wake: Callable[[], object]) -> None:
        with self._lock:
            for waiting in (self._waiters, self._nappers):
                if wake in waiting:
                    waiting.remove(wake)
        self._running()

    def _take(self) -> T | Any:
        """The next item, :attr:`END` when closed and drained, else ``_EMPTY``."""
        try:
            item = self._items.popleft()
        except IndexError:
            return Channel.END if self._closed else _EMPTY
        self._streak += 1
        return item

    def _streak_ends(self) -> bool:
        """The consumer must wait: whether it naps (it took many items in a row)."""
        nap = self._streak >= _NAP_AFTER
        self._streak = 0
        return nap

    def get(self, timeout: float | None = None) -> T | Any:
        """The next item, :attr:`END` when closed and drained; TimeoutError after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            item = self._take()
            if item is not _EMPTY:
                return item
            nap = self._streak_ends()
            sleeper = threading.Lock()
            sleeper.acquire()
            wake = sleeper.release
            if not self._must_wait(wake, nap):
                continue
            wait = _NAP_SECONDS if nap else None
            if deadline is not None:
                left = max(0.0, deadline - time.monotonic())
                wait = left if wait is None else min(wait, left)
            try:
                woken = sleeper.acquire(timeout=-1 if wait is None else wait)
            finally:
                self._forget(wake)
            if (not woken and deadline is not None and time.monotonic() >= deadline
                    and not self._items and not self._closed):
                raise TimeoutError("no item within the timeout")

    async def aget(self, timeout: float | None = None) -> T | Any:
        """Like :meth:`get` without blocking the event loop."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            item = self._take()
            if item is not _EMPTY:
                return item
            nap = self._streak_ends()
            future: asyncio.Future[None] = loop.create_future()

            def wake(future: asyncio.Future[None] = future) -> None:
                with contextlib.suppress(RuntimeError):  # a closed loop: its consumer is gone
                    loop.call_soon_threadsafe(_resolve, future)

            if not self._must_wait(wake, nap):
                continue
            nap_over = loop.call_later(_NAP_SECONDS, _resolve, future) if nap else None
            try:
                if deadline is None:
                    await future
                else:
                    try:
                        await asyncio.wait_for(future, max(0.0, deadline - loop.time()))
                    except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11
                        raise TimeoutError("no item within the timeout") from None
            finally:
                if nap_over is not None:
                    nap_over.cancel()
                self._forget(wake)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Utf8Decoder:
    """Incremental UTF-8 decoding of the runtime's byte pieces.

    Bytes of an incomplete character are kept (in :attr:`pending`) until the rest arrives,
    whether the runtime delivers them in a ``RKLLM_RUN_WAITING`` callback or with the next
    token; ``None`` (a NULL ``text``) and ``b""`` add nothing. Invalid bytes become U+FFFD;
    nothing raises.

    Example:
        >>> from rkllm_core.streaming import Utf8Decoder
        >>> dec = Utf8Decoder()
        >>> dec.feed(b"\\xf0\\x9f"), dec.feed(b"\\x99\\x82!"), dec.feed(b"\\xff"), dec.flush()
        ('', '🙂!', '\\ufffd', '')
    """

    def __init__(self) -> None:
        #: The start of a character whose other bytes have not arrived yet.
        self.pending = b""

    def feed(self, data: bytes | None) -> str:
        """Decode a piece; returns only complete characters."""
        if not data:
            return ""
        if self.pending:
            data = self.pending + data
        text, used = codecs.utf_8_decode(data, "replace", False)
        self.pending = data[used:]
        return text

    def flush(self) -> str:
        """End of stream: an incomplete character left over becomes U+FFFD."""
        pending, self.pending = self.pending, b""
        return codecs.utf_8_decode(pending, "replace", True)[0]


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
