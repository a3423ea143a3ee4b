"""The models a server holds: each loaded once, shared by every route, behind one FIFO queue.

A model runs one request at a time (an NPU runs one ``rkllm_run`` per handle, and a chat turn
must plan against the KV cache the previous turn left). :meth:`ServedModel.turn` is that queue:
requests enter in arrival order and wait their turn; when ``max_queue`` requests already wait,
the next one is refused with :class:`QueueFullError` (HTTP 429 with ``Retry-After``) instead of
waiting without bound.

The KV cache holds one conversation. Whoever ran last owns it: the server's own chat engine
(``"chat"``), the embedding and rerank calls (which clear it) or a remote client of the backend
routes (its client id). :meth:`ServedModel.turn` tells the caller whether it still owns the
cache, so the chat engine replays a conversation whose cache another caller replaced.

Example:
    >>> import asyncio, tempfile, pathlib
    >>> from rkllm_core.server.config import ModelConfig
    >>> from rkllm_core.server.registry import ModelRegistry
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi."\\n')
    >>> registry = ModelRegistry([ModelConfig(path=str(path), library="host",
    ...                                       params={"max_context_len": 512})])
    >>> async def ask() -> str:
    ...     served = registry.get("tiny:latest")
    ...     async with served.turn("chat"):
    ...         from rkllm_core.chat import ChatMessage
    ...         turn = await served.chat.agenerate([ChatMessage.user("Hello")])
    ...     return turn.message.content
    >>> asyncio.run(ask())
    'Hi.'
    >>> registry.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkllm_core.errors import InvalidParameterError, RKLLMError
from rkllm_core.server.config import ModelConfig

if TYPE_CHECKING:
    from rkllm_core.backend import Backend
    from rkllm_core.chat import ChatEngine
    from rkllm_core.server.metrics import Metrics
    from rkllm_core.server.turns import StartedStream, TurnRequest

logger = logging.getLogger("rkllm_core.server")


class ServerError(RKLLMError):
    """An error the server answers with its own HTTP status (``status``) and error code."""

    status = 500
    code = "server_error"
    kind = "server_error"


class ModelNotFoundError(ServerError):
    """The request names a model this server does not serve."""

    status = 404
    code = "model_not_found"
    kind = "invalid_request_error"


class WrongRoleError(ServerError):
    """The request names a model whose role does not serve this route."""

    status = 400
    code = "model_not_supported"
    kind = "invalid_request_error"


class QueueFullError(ServerError):
    """``max_queue`` requests already wait for this model; ``retry_after`` is a hint in
    seconds."""

    status = 429
    code = "queue_full"
    kind = "rate_limit_error"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class QueueStats:
    """What the queue of one model looks like now, and how long turns took lately."""

    waiting: int = 0
    running: int = 0
    served: int = 0
    refused: int = 0
    recent_seconds: list[float] = field(default_factory=list)

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the queue ahead times a recent turn's time."""
        per_turn = (sum(self.recent_seconds) / len(self.recent_seconds)
                    if self.recent_seconds else 5.0)
        return max(1, round(per_turn * max(1, self.waiting)))


@dataclass
class Lane:
    """One loaded model's queue: the FIFO lock, who last used its KV cache, and the counts.
    Served ids that name the same file with the same settings (a chat and an embedding id of
    one model) share one loaded model, so they share its lane."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    owner: str | None = None
    stats: QueueStats = field(default_factory=QueueStats)


class ServedModel:
    """One model of the server: its config, its loaded backend, its chat engine and its queue.

    Example: see :mod:`rkllm_core.server.registry`.
    """

    def __init__(self, config: ModelConfig, *, isolated: bool, max_queue: int,
                 lane: Lane | None = None) -> None:
        self.config = config
        self.id = config.id
        self.isolated = config.isolated if config.isolated is not None else isolated
        self.max_queue = max_queue
        self._lane = lane or Lane()
        self.stats = self._lane.stats
        self.created = int(time.time())
        self._backend: Backend | None = None
        self._chat: ChatEngine | None = None
        self._lock = self._lane.lock  # FIFO: a new caller never overtakes one that waits

    # -- the model ---------------------------------------------------------------------------

    def load(self) -> None:
        """Load the model now (the server does this for every model at start)."""
        _ = self.chat if self.config.role == "chat" else self.backend

    @property
    def loaded(self) -> bool:
        """Whether the model is loaded (every model is, once the server has started)."""
        return self._backend is not None and not self._backend.closed

    @property
    def backend(self) -> Backend:
        """The loaded model (in this process, or in a child process when isolated)."""
        if self._backend is None:
            from rkllm_core.shared import shared_model

            cfg = self.config
            self._backend = shared_model(cfg.path, library=cfg.library,
                                         runtime_version=cfg.runtime_version,
                                         isolated=self.isolated, **cfg.params)
        return self._backend

    @property
    def chat(self) -> ChatEngine:
        """The chat engine every chat route of this model uses (one KV-cache bookkeeping)."""
        if self._chat is None:
            from rkllm_core.chat import ChatEngine

            cfg = self.config
            self._chat = ChatEngine(self.backend, mode=cfg.mode, preset=cfg.preset,
                                    tokenizer=cfg.tokenizer,
                                    tool_format=cfg.tool_format)  # type: ignore[arg-type]
        return self._chat

    @property
    def context_length(self) -> int:
        """The context this model was loaded with."""
        value = self.config.params.get("max_context_len")
        if value is None and self._backend is not None:
            value = getattr(self._backend.params, "max_context_len", None)
        return int(value or 0)

    def close(self) -> None:
        """Free the model."""
        if self._backend is not None:
            self._backend.close()
        self._backend = self._chat = None

    # -- what the routes call ------------------------------------------------------------------

    async def start_turn(self, request: TurnRequest, metrics: Metrics, arrived: float, *,
                         timeout: float | None = None) -> StartedStream:
        """Start a chat turn in this model's queue (:func:`~rkllm_core.server.turns.run_turn`)
        and wait for its first chunk; iterate the result for every chunk, then the
        :class:`~rkllm_core.chat.ChatResult`."""
        from rkllm_core.server.turns import run_turn, start

        return await start(run_turn(self, request, metrics, arrived, timeout=timeout))

    async def start_completion(self, prompt: str, metrics: Metrics, arrived: float, *,
                               max_new_tokens: int | None = None,
                               sampling: Mapping[str, Any] | None = None,
                               stop: Sequence[str] = (),
                               timeout: float | None = None) -> StartedStream:
        """Start a raw text completion of ``prompt`` (no chat template) and wait for its first
        chunk; iterate the result for :class:`~rkllm_core.StreamChunk` pieces, then the
        :class:`~rkllm_core.GenerationResult`."""
        from rkllm_core.server.turns import run_completion, start

        return await start(run_completion(
            self, prompt, max_new_tokens=max_new_tokens, sampling=sampling or {}, stop=stop,
            metrics=metrics, arrived=arrived, timeout=timeout))

    async def embed(self, texts: Sequence[str], **options: Any) -> Any:
        """Embeddings of ``texts`` (an array, one row each) in this model's queue; ``options``
        are :class:`~rkllm_core.backend.EmbedOptions`."""
        async with self.turn("embed"):
            return await self.backend.aembed(list(texts), **options)

    async def rerank(self, query: str, documents: Sequence[str], **options: Any) -> list[float]:
        """Relevance of each document to ``query`` (0-1) in this model's queue, with the yes/no
        token ids of the config when it gives them."""
        cfg = self.config
        options.setdefault("yes_token_id", cfg.yes_token_id)
        options.setdefault("no_token_id", cfg.no_token_id)
        async with self.turn("embed"):
            return await self.backend.arerank(query, list(documents), **options)

    # -- the queue ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def turn(self, owner: str) -> AsyncIterator[bool]:
        """Wait for this model's turn (FIFO); yields whether ``owner`` ran last on the model,
        so its KV cache still holds what ``owner`` left there. Raises :class:`QueueFullError`
        when ``max_queue`` requests already wait."""
        stats = self.stats
        if stats.waiting >= self.max_queue and self._lock.locked():
            stats.refused += 1
            raise QueueFullError(
                f"model {self.id!r} has {stats.waiting} requests waiting (the limit, "
                f"--max-queue {self.max_queue}); retry later or raise --max-queue",
                stats.retry_after())
        stats.waiting += 1
        try:
            await self._lock.acquire()
        finally:
            stats.waiting -= 1
        started = time.monotonic()
        stats.running = 1
        try:
            held = self._lane.owner == owner
            if not held and owner == "chat" and self._chat is not None:
                self._chat.reset()  # someone else used the cache: replay the conversation
            self._lane.owner = owner
            yield held
        finally:
            stats.running = 0
            stats.served += 1
            stats.recent_seconds = [*stats.recent_seconds[-9:], time.monotonic() - started]
            self._lock.release()


class ModelRegistry:
    """Every model of a server by id; ``get`` also takes Ollama's ``name:latest``.

    Example: see :mod:`rkllm_core.server.registry`.
    """

    def __init__(self, models: Sequence[ModelConfig], *, isolated: bool = False,
                 max_queue: int = 32) -> None:
        lanes: dict[str, Lane] = {}
        self.models: dict[str, ServedModel] = {}
        for m in models:
            alone = m.isolated if m.isolated is not None else isolated
            key = json.dumps([str(Path(m.path).expanduser().resolve()), m.library,
                              m.runtime_version, alone, m.params], sort_keys=True, default=str)
            self.models[m.id] = ServedModel(m, isolated=isolated, max_queue=max_queue,
                                            lane=lanes.setdefault(key, Lane()))
            sharing = [o for o in self.models.values() if o._lane is self.models[m.id]._lane]
            if len({o.config.mode == "raw" for o in sharing if o.config.role == "chat"}) > 1:
                raise InvalidParameterError(
                    f"models {', '.join(o.id for o in sharing)} name the same file with the same "
                    "settings (so one loaded model), but raw mode switches the runtime's chat "
                    "template off for all of them: give them the same mode, or different "
                    "params so each loads its own")

    def get(self, name: str | None, role: str | None = None) -> ServedModel:
        """The model named ``name`` (``id`` or ``id:latest``); with ``role``, one that serves
        it. A missing name picks the only model of that role, if there is exactly one."""
        candidates = [m for m in self.models.values() if role is None or m.config.role == role]
        if not name:
            if len(candidates) == 1:
                return candidates[0]
            raise ModelNotFoundError(
                "the request names no model; give `model`: one of "
                f"{', '.join(self.models) or '(none)'}")
        served = self.models.get(name.removesuffix(":latest"))
        if served is None:
            raise ModelNotFoundError(
                f"model {name!r} is not served here; served models: "
                f"{', '.join(self.models) or '(none)'}")
        if role is not None and served.config.role != role:
            raise WrongRoleError(
                f"model {name!r} is a {served.config.role} model and does not serve this "
                f"route (it needs a {role} model); "
                f"{role} models here: {', '.join(m.id for m in candidates) or '(none)'}")
        return served

    def load_all(self) -> None:
        """Load every model (a model that fails to load stops the server with its error)."""
        for served in self.models.values():
            logger.info("loading %s from %s", served.id, served.config.path)
            served.load()

    def close(self) -> None:
        """Free every model."""
        for served in self.models.values():
            try:
                served.close()
            except Exception:
                logger.exception("closing %s failed", served.id)

    def __iter__(self) -> Any:
        return iter(self.models.values())
