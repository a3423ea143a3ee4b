"""Which conversation a KV cache holds, as keys the router and the boards agree on.

An RKLLM handle keeps one conversation in its KV cache, and the chat engine reuses it only when
a request's history is exactly what the cache holds: the previous request's messages and the
reply the model gave (:mod:`rkllm_core.chat.plans`). So a slot is described by one key, the
hash of the messages of the last request it ran (:func:`conversation_key`), and a request is
sent where its :func:`resume_key` — its history without the model's last reply, i.e. the
messages of the request that reply answered — is held. The reply itself is left out of both
keys, so the router can know where a conversation is the moment it routes it, without waiting
for the reply; a client that edits the reply loses nothing but the reuse the engine would have
refused anyway.

The keys hash the model id, the system prompt(s) and tools (the cache was set up for them),
then every other message in order (role, content, tool-call names and arguments, tool-result
ids and names: what :meth:`~rkllm_core.chat.ChatMessage.same_turn` compares).

:class:`SlotBook` is the one-conversation-per-slot model both sides keep: the boards to pick a
slot, the router to mirror what each board holds.

Example:
    >>> from rkllm_core.chat import ChatMessage
    >>> from rkllm_core.server.turns import TurnRequest
    >>> from rkllm_core.cluster.affinity import conversation_key, resume_key
    >>> first = TurnRequest([ChatMessage.system("Be brief."), ChatMessage.user("Hi")])
    >>> later = TurnRequest([*first.messages, ChatMessage.assistant("Hello!"),
    ...                      ChatMessage.user("How are you?")])
    >>> resume_key("m", first) is None
    True
    >>> resume_key("m", later) == conversation_key("m", first)
    True
    >>> resume_key("other-model", later) == conversation_key("m", first)
    False
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rkllm_core.chat import ChatMessage, ToolSpec

#: Hex digits of a key (64 bits: collisions between live conversations are not a concern).
KEY_DIGITS = 16


def _digest(*parts: Any) -> str:
    text = json.dumps(parts, ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=KEY_DIGITS // 2).hexdigest()


def _message_fields(message: ChatMessage) -> list[Any]:
    calls = [[c.name, dict(c.arguments)] for c in message.tool_calls]
    return [message.role, message.content, message.tool_call_id is not None, message.name,
            calls, len(message.images)]


def _root(model: str, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec],
          tool_choice: str) -> str:
    system = [m.content for m in messages if m.role == "system"]
    specs = [t.to_openai() for t in tools] if tool_choice != "none" else []
    return _digest("rkllm-conversation", model, system, specs, tool_choice)


def chain(model: str, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = (),
          tool_choice: str = "auto") -> list[str]:
    """The key after each non-system message of ``messages``: ``chain(...)[i]`` is the key of
    the conversation up to its ``i``-th non-system message.

    Example:
        >>> from rkllm_core.chat import ChatMessage
        >>> from rkllm_core.cluster.affinity import chain
        >>> a = chain("m", [ChatMessage.user("Hi"), ChatMessage.assistant("Hey")])
        >>> b = chain("m", [ChatMessage.user("Hi")])
        >>> len(a), a[0] == b[0], len(a[0])
        (2, True, 16)
    """
    key = _root(model, messages, tools, tool_choice)
    keys = []
    for message in messages:
        if message.role != "system":
            key = _digest(key, _message_fields(message))
            keys.append(key)
    return keys


def conversation_key(model: str, request: Any) -> str:
    """The key of what a slot holds once it has run ``request`` (a
    :class:`~rkllm_core.server.turns.TurnRequest`): all its messages (the reply is left out).

    Example: see :mod:`rkllm_core.cluster.affinity`.
    """
    keys = chain(model, request.messages, request.tools, request.tool_choice)
    return keys[-1] if keys else _root(model, request.messages, request.tools,
                                       request.tool_choice)


def resume_key(model: str, request: Any) -> str | None:
    """The key a slot must hold for ``request`` to reuse its cache: the request's history up
    to (not including) the model's last reply; ``None`` for a first turn, or a history that
    does not end with a reply (nothing can hold it).

    Example: see :mod:`rkllm_core.cluster.affinity`.
    """
    rest = [m for m in request.messages if m.role != "system"]
    k = len(rest)
    while k > 0 and rest[k - 1].role in ("user", "tool"):
        k -= 1  # the new inputs: the last user turn or the trailing tool results
    if k == 0 or rest[k - 1].role != "assistant":
        return None
    keys = chain(model, request.messages, request.tools, request.tool_choice)
    return keys[k - 2] if k >= 2 else _root(model, request.messages, request.tools,
                                            request.tool_choice)


@dataclass
class SlotBook:
    """What each slot of one board holds (a key, or ``None``) and when each was last used.

    :meth:`pick` chooses the slot for a request: the idle slot that holds the conversation it
    resumes; else an idle empty slot; else the idle slot used least recently (its conversation
    is the one least likely to come back); else, all busy, the least recently used one.

    Example:
        >>> from rkllm_core.cluster.affinity import SlotBook
        >>> book = SlotBook(2)
        >>> book.hold(book.pick(None), "a"); book.hold(book.pick(None), "b")
        >>> book.keys, book.pick("a"), book.pick("b"), book.pick("c")
        (['a', 'b'], 0, 1, 0)
    """

    size: int
    keys: list[str | None] = field(default_factory=list)
    used: list[float] = field(default_factory=list)
    busy: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.keys = self.keys or [None] * self.size
        self.used = self.used or [0.0] * self.size
        self.busy = self.busy or [False] * self.size

    def holding(self, key: str | None) -> int | None:
        """The slot that holds ``key``, if one does."""
        if key is None:
            return None
        return self.keys.index(key) if key in self.keys else None

    def pick(self, resume: str | None) -> int:
        """The slot a request resuming ``resume`` should run on."""
        held = self.holding(resume)
        if held is not None and not self.busy[held]:
            return held
        idle = [i for i in range(self.size) if not self.busy[i]] or list(range(self.size))
        return min(idle, key=lambda i: (self.keys[i] is not None, self.used[i]))

    def hold(self, slot: int, key: str | None) -> None:
        """Record that ``slot`` holds ``key`` now (``None``: nothing reusable)."""
        if key is not None:  # one conversation is in one slot only
            for i, other in enumerate(self.keys):
                if other == key and i != slot:
                    self.keys[i] = None
        self.keys[slot] = key
        self.used[slot] = time.monotonic()

    def coldness(self) -> tuple[int, float]:
        """How cheap it is to take a slot here for a new conversation (smaller is cheaper):
        empty slots first, then the oldest use."""
        empty = sum(1 for k in self.keys if k is None)
        return (-empty, min(self.used) if self.used else 0.0)
