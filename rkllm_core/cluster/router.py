"""The request router of the boards: conversations go back to the board (and slot) whose KV
cache holds them; everything else to the least-loaded board.

Ray Serve runs one router per caller of a deployment (here, in the ingress) and asks it, for
each request, which replicas to try (:meth:`ConversationAffinityRouter.choose_replicas`: ranks
of replicas, best first; Serve sends the request to the least-loaded replica of the first rank
that has room).

Example (the policy, without Ray: two boards of one slot each):
    >>> from rkllm_core.chat import ChatMessage
    >>> from rkllm_core.server.turns import TurnRequest
    >>> from rkllm_core.cluster.router import AffinityPolicy
    >>> policy = AffinityPolicy()
    >>> first = TurnRequest([ChatMessage.user("Hi")])
    >>> policy.rank("m", first, {"b1": 0, "b2": 0}, {"b1": 1, "b2": 1})
    [['b1', 'b2']]
    >>> policy.routed("b1", "m", first)
    >>> later = TurnRequest([*first.messages, ChatMessage.assistant("Hey"),
    ...                      ChatMessage.user("And then?")])
    >>> policy.rank("m", later, {"b1": 1, "b2": 0}, {"b1": 1, "b2": 1})
    [['b1'], ['b2']]
    >>> other = TurnRequest([ChatMessage.user("A new conversation")])
    >>> policy.rank("m", other, {"b1": 0, "b2": 0}, {"b1": 1, "b2": 1})
    [['b2', 'b1']]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ray.serve.request_router import (
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

from rkllm_core.cluster.affinity import SlotBook, conversation_key, resume_key

logger = logging.getLogger("rkllm_core.cluster")

Policy = Literal["affinity", "round_robin"]


@dataclass
class _Routed:
    at: float
    resume: str | None
    key: str


@dataclass
class AffinityPolicy:
    """The router's picture of every board: per board and model a
    :class:`~rkllm_core.cluster.affinity.SlotBook` (the conversation each slot holds), built
    from the requests this router sent and corrected by what the boards report.

    A board's report (``record_routing_stats``) is a few seconds old when it arrives, so the
    requests routed within ``report_lag_s`` before it are applied again on top of it; older
    ones yield to the board's word (a turn that failed, a slot the board chose differently,
    a board that restarted empty).

    Example: see :mod:`rkllm_core.cluster.router`.
    """

    report_lag_s: float = 5.0
    books: dict[Any, dict[str, SlotBook]] = field(default_factory=dict)
    recent: dict[Any, dict[str, list[_Routed]]] = field(default_factory=dict)
    reports: dict[Any, Any] = field(default_factory=dict)

    def book(self, replica: Any, model: str, slots: int) -> SlotBook:
        """The slots of ``model`` on ``replica`` as this router believes them."""
        per_model = self.books.setdefault(replica, {})
        if model not in per_model:
            per_model[model] = SlotBook(max(1, slots))
        return per_model[model]

    def rank(self, model: str | None, request: Any, loads: Mapping[Any, int],
             slots: Mapping[Any, int]) -> list[list[Any]]:
        """Ranks of replicas for a request (``request`` is a
        :class:`~rkllm_core.server.turns.TurnRequest`, or ``None`` for a call that uses no
        conversation): the boards holding the conversation it continues first, then every
        other board by load, then by how cold its cache is (an empty slot, or the slot used
        longest ago, costs the least to give away)."""
        replicas = list(loads)
        if model is None or request is None:
            return [sorted(replicas, key=lambda r: loads[r])]
        resume = resume_key(model, request)
        affine = [r for r in replicas
                  if self.book(r, model, slots[r]).holding(resume) is not None]
        others = sorted((r for r in replicas if r not in affine),
                        key=lambda r: (loads[r], self.book(r, model, slots[r]).coldness()))
        return [affine, others] if affine and others else [affine or others]

    def routed(self, replica: Any, model: str, request: Any, slots: int = 1) -> None:
        """A board accepted ``request``: it now holds (or soon will) that conversation, in the
        slot the board's own :class:`~rkllm_core.cluster.affinity.SlotBook` picks too."""
        resume, key = resume_key(model, request), conversation_key(model, request)
        book = self.book(replica, model, slots)
        book.hold(book.pick(resume), key)
        recent = self.recent.setdefault(replica, {}).setdefault(model, [])
        now = time.monotonic()
        recent[:] = [r for r in recent if now - r.at < self.report_lag_s]
        recent.append(_Routed(now, resume, key))

    def reported(self, replica: Any, stats: Mapping[str, Any] | None) -> None:
        """Take a board's report (``{"slots": {model: [key or None, ...]}}``) when it is new."""
        if not stats or self.reports.get(replica) is stats:
            return
        self.reports[replica] = stats
        now = time.monotonic()
        for model, keys in stats.get("slots", {}).items():
            book = SlotBook(len(keys), keys=list(keys))
            for r in self.recent.get(replica, {}).get(model, []):
                if now - r.at < self.report_lag_s:
                    book.hold(book.pick(r.resume), r.key)
            self.books.setdefault(replica, {})[model] = book

    def forget(self, replica: Any) -> None:
        """A board is gone (its replacement starts with empty caches)."""
        for table in (self.books, self.recent, self.reports):
            table.pop(replica, None)


class ConversationAffinityRouter(RequestRouter):
    """Routes a chat turn to the board whose KV cache holds its conversation; any other
    request, and a conversation no board holds, to the least-loaded board (ties: the board
    with the coldest cache). ``policy="round_robin"`` ignores caches and load: each request
    goes to the next board in turn and waits there if it is busy (what a plain reverse proxy
    does; the benchmark's baseline).

    Why not Ray's ``PrefixCacheAffinityRouter``: it is built for engines whose KV cache holds
    many prefixes at once (vLLM's paged blocks with automatic prefix caching). It keeps a
    character-level prefix tree of every prompt a replica has seen and sends a request where
    the longest shared prefix lives, evicting only by the tree's size. An RKLLM handle holds
    ONE conversation, and the chat engine reuses it only when the request's history is exactly
    what the cache holds; a partial prefix (a shared system prompt, the first few turns of a
    conversation the board has since replaced) is worth nothing, because the engine clears
    the cache and replays. The tree would still pull every conversation that shares a long
    system prompt onto one board, and would keep sending a conversation to a board that has
    since run another one. So this router keeps, per board and slot, the one conversation the
    slot holds (replaced when another conversation runs there), and matches a request on its
    exact resume key (:mod:`rkllm_core.cluster.affinity`). It reads the boards' own reports
    through Ray Serve's routing-stats hook (``record_routing_stats``) rather than a shared
    actor, and blocks on nothing while routing.

    Configured through the deployment's ``RequestRouterConfig``; ``initialize_state`` takes
    ``policy`` and ``report_lag_s``. Example: see :mod:`rkllm_core.cluster.router` (the policy)
    and :func:`rkllm_core.cluster.build_app` (the deployment).
    """

    def initialize_state(self, policy: Policy = "affinity", report_lag_s: float = 5.0,
                         **_: Any) -> None:
        """Called by Ray Serve with the config's ``request_router_kwargs``."""
        if policy not in ("affinity", "round_robin"):
            raise ValueError(f"unknown routing policy {policy!r}: affinity or round_robin")
        self._policy: Policy = policy
        self._affinity = AffinityPolicy(report_lag_s=report_lag_s)
        self._turn = 0
        self._rotation: dict[str, int] = {}  # round robin: each request's turn, on arrival

    def _state(self) -> AffinityPolicy:
        if not hasattr(self, "_affinity"):  # initialize_state not called (no kwargs given)
            self.initialize_state()
        return self._affinity

    @staticmethod
    def _chat_call(pending_request: PendingRequest | None) -> tuple[str | None, Any]:
        if pending_request is None or pending_request.metadata.call_method != "chat":
            return None, None
        kwargs = pending_request.kwargs
        return kwargs.get("model"), kwargs.get("request")

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None,
                              ) -> list[list[RunningReplica]]:
        """Ranks of replicas for one request, best first (Ray Serve's extension point)."""
        state = self._state()
        if pending_request is not None:
            # every replica is in the ranks: when none has room, back off before asking again
            pending_request.routing_context.should_backoff = True
        if not candidate_replicas:
            return []
        if self._policy == "round_robin":
            key = pending_request.metadata.internal_request_id if pending_request else ""
            if key not in self._rotation:
                if len(self._rotation) > 4096:  # requests cancelled before they were routed
                    for stale in list(self._rotation)[:2048]:
                        del self._rotation[stale]
                self._rotation[key] = self._turn
                self._turn += 1
            return [[candidate_replicas[self._rotation[key] % len(candidate_replicas)]]]
        by_id = {r.replica_id: r for r in candidate_replicas}
        for r in candidate_replicas:
            state.reported(r.replica_id, r.routing_stats)
        cache = self._replica_queue_len_cache
        loads = {rid: cache.get(rid) or 0 for rid in by_id}
        slots = {rid: r.max_ongoing_requests for rid, r in by_id.items()}
        model, request = self._chat_call(pending_request)
        ranks = state.rank(model, request, loads, slots)
        return [[by_id[rid] for rid in rank] for rank in ranks if rank]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result: Any) -> None:
        """A replica accepted a request: note the conversation it now holds."""
        self._state()
        self._rotation.pop(pending_request.metadata.internal_request_id, None)
        model, request = self._chat_call(pending_request)
        if model is not None and request is not None and self._policy == "affinity":
            replica = self.curr_replicas.get(replica_id)
            slots = replica.max_ongoing_requests if replica is not None else 1
            self._state().routed(replica_id, model, request, slots)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        """A board's replica died: forget what it held."""
        super().on_replica_actor_died(replica_id)
        self._state().forget(replica_id)

    def update_replicas(self, replicas: Sequence[RunningReplica]) -> None:
        """The set of replicas changed: forget the ones that left."""
        super().update_replicas(list(replicas))
        state = self._state()
        for gone in set(state.books) - {r.replica_id for r in replicas}:
            state.forget(gone)
