"""The ingress of the cluster: ``rkllm serve``'s own FastAPI app, over models that live on the
boards.

:class:`Ingress` is a Ray Serve ingress deployment (``@serve.ingress``) whose app is
:func:`~rkllm_core.server.create_app` unchanged; only its registry differs:
:class:`ClusterRegistry` holds a :class:`RemoteModel` per model, which answers what the routes
call on a :class:`~rkllm_core.server.registry.ServedModel` (``start_turn``,
``start_completion``, ``embed``, ``rerank``, ``id``, ``config``, ``stats``,
``context_length``...) by calling the boards through a deployment handle, whose router
(:class:`~rkllm_core.cluster.router.ConversationAffinityRouter`) picks the board.

Errors keep their meaning across Ray: a board's error is its :class:`~rkllm_core.cluster.
replica.BoardError` (the same status and code a single server answers), a full handle queue is
:class:`~rkllm_core.server.registry.QueueFullError` (429 with ``Retry-After``), and a board
that died with requests in flight (a runtime crash inside the process, a board that left) is
:class:`BoardLostError`, a 503 in the protocol's shape.

Example (the error a request in flight on a dead board gets):
    >>> from ray.exceptions import ActorDiedError
    >>> from rkllm_core.cluster.ingress import local_error
    >>> error = local_error(ActorDiedError())
    >>> type(error).__name__, error.status, error.code
    ('BoardLostError', 503, 'runtime_unavailable')
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, cast

from rkllm_core.chat import ChatResult
from rkllm_core.cluster.replica import BoardError, Started
from rkllm_core.errors import UnsupportedFeatureError
from rkllm_core.results import GenerationResult
from rkllm_core.server.config import ModelConfig, ServerConfig
from rkllm_core.server.registry import (
    ModelRegistry,
    QueueFullError,
    ServedModel,
    ServerError,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

    from rkllm_core.chat import ChatEngine
    from rkllm_core.server.metrics import Metrics
    from rkllm_core.server.turns import StartedStream, TurnRequest

logger = logging.getLogger("rkllm_core.cluster")


class BoardLostError(ServerError):
    """The board running this request stopped (its runtime crashed inside the process, or the
    board left the cluster); Ray starts a new replica, other boards keep serving."""

    status = 503
    code = "runtime_unavailable"
    kind = "server_error"


def local_error(error: BaseException) -> BaseException:
    """The error the ingress raises for what a deployment handle raised.

    Example: see :mod:`rkllm_core.cluster.ingress`.
    """
    from ray.exceptions import RayActorError, RayTaskError
    from ray.serve.exceptions import BackPressureError

    if isinstance(error, RayTaskError) and isinstance(error.cause, BaseException):
        return local_error(error.cause)
    if isinstance(error, BoardError):
        return error.local()
    if isinstance(error, BackPressureError):
        return QueueFullError(
            f"every board is busy and {error.args[0]} requests already wait (the limit, "
            "--max-queue); retry later or raise --max-queue",
            round(error.retry_after_s or 5))
    if isinstance(error, RayActorError):
        return BoardLostError(
            "the board running this request stopped (its runtime crashed or the board left "
            "the cluster); Ray is starting a new replica and the other boards keep serving: "
            "retry the request")
    return error


def _raise_local(error: BaseException) -> NoReturn:
    raise local_error(error) from None


class BoardInfo:
    """What the ingress knows of a model's runtime (``runtime_info``, ``capabilities``,
    ``params``), read from a board at start; the rest of a backend lives on the boards.

    Example:
        >>> from rkllm_core.cluster.ingress import BoardInfo
        >>> info = BoardInfo({"runtime_info": "1.3.0", "capabilities": None, "params": None})
        >>> info.runtime_info, info.closed
        ('1.3.0', False)
        >>> info.generate("Hi")
        Traceback (most recent call last):
        ...
        rkllm_core.errors.UnsupportedFeatureError: ...
    """

    closed = False

    def __init__(self, described: Mapping[str, Any]) -> None:
        self.runtime_info = described["runtime_info"]
        self.capabilities = described["capabilities"]
        self.params = described["params"]

    def __getattr__(self, name: str) -> Any:
        raise UnsupportedFeatureError(
            f"{name}: a model served by a cluster runs on its boards; the backend routes "
            "(/rkllm/v1/...) need a single `rkllm serve` (without --ray)")


class BoardChat:
    """What the ingress knows of a model's chat engine (``mode``, ``preset``: what
    ``/api/show`` reports); the engines themselves run on the boards.

    Example:
        >>> from rkllm_core.cluster.ingress import BoardChat
        >>> BoardChat({"mode": "native", "preset": None}).mode
        'native'
    """

    def __init__(self, described: Mapping[str, Any]) -> None:
        self.mode = described.get("mode")
        self.preset = described.get("preset")

    def __getattr__(self, name: str) -> Any:
        raise UnsupportedFeatureError(f"{name}: the chat engines of a cluster run on its boards")


class LocalBoards:
    """The part of a Ray Serve deployment handle the ingress uses (``.options(stream=,
    method_name=).remote(...)``, ``.describe.remote(...)``), over one
    :class:`~rkllm_core.cluster.replica.Board` in this process: the ingress without Ray, for
    its examples and tests.

    Example: see :class:`RemoteModel`.
    """

    def __init__(self, board: Any, *, stream: bool = False, method_name: str = "") -> None:
        self.board = board
        self.stream = stream
        self.method_name = method_name

    def options(self, *, stream: bool = False, method_name: str = "") -> LocalBoards:
        """The handle for one method, streamed or not."""
        return LocalBoards(self.board, stream=stream, method_name=method_name)

    def __getattr__(self, name: str) -> LocalBoards:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.options(method_name=name)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Call the board's method: an async iterator (with ``cancel()``) when streamed, else
        an awaitable."""
        result = getattr(self.board, self.method_name)(*args, **kwargs)
        if self.stream:
            return _LocalStream(result)
        if inspect.isawaitable(result):
            return result

        async def value() -> Any:
            return result

        return value()


class _LocalStream:
    def __init__(self, items: AsyncGenerator[Any, None]) -> None:
        self._items = items

    def __aiter__(self) -> _LocalStream:
        return self

    async def __anext__(self) -> Any:
        return await anext(self._items)

    def cancel(self) -> None:
        asyncio.get_running_loop().create_task(self._items.aclose())


class RemoteModel(ServedModel):
    """A model served by the boards, with the interface the routes use on a
    :class:`~rkllm_core.server.registry.ServedModel`; ``boards`` is the boards' deployment
    handle (or :class:`LocalBoards`).

    Example (one board in this process, without Ray):
        >>> import asyncio, tempfile, pathlib
        >>> from fastapi.testclient import TestClient
        >>> from rkllm_core.server import ModelConfig, ServerConfig, create_app
        >>> from rkllm_core.cluster.replica import Board
        >>> from rkllm_core.cluster.ingress import ClusterRegistry, LocalBoards
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi."\\n')
        >>> config = ServerConfig(models=[ModelConfig(path=str(path), library="host",
        ...                                           params={"max_context_len": 512})])
        >>> board = Board(config.models, name="b1")
        >>> registry = ClusterRegistry(config.models, LocalBoards(board))
        >>> asyncio.run(registry.describe())
        >>> with TestClient(create_app(config, registry=registry)) as client:
        ...     reply = client.post("/v1/chat/completions", json={
        ...         "model": "tiny", "messages": [{"role": "user", "content": "Hello"}]})
        >>> reply.headers["x-rkllm-replica"], reply.json()["choices"][0]["message"]["content"]
        ('b1/slot-0', 'Hi.')
        >>> board.close()
    """

    def __init__(self, config: ModelConfig, boards: Any, *, max_queue: int) -> None:
        super().__init__(config, isolated=False, max_queue=max_queue)
        self._boards = boards
        self._info: BoardInfo | None = None
        self._engine: BoardChat | None = None
        self._context_length = 0

    async def describe(self) -> None:
        """Read the model's runtime and parameters from a board (at start)."""
        try:
            described = await self._boards.describe.remote(self.id)
        except Exception as exc:
            _raise_local(exc)
        self._info = BoardInfo(described)
        self._engine = BoardChat(described)
        self._context_length = int(described.get("context_length") or 0)

    def load(self) -> None:
        """Nothing to load here: the boards load their models."""

    def close(self) -> None:
        """Nothing to free here: the boards own their models."""

    @property
    def backend(self) -> Any:
        """The model's runtime description (:class:`BoardInfo`)."""
        if self._info is None:
            raise UnsupportedFeatureError(f"model {self.id!r}: not described by a board yet")
        return self._info

    @property
    def chat(self) -> ChatEngine:
        """The chat engine's mode and preset (:class:`BoardChat`); the engines run on the
        boards."""
        if self._engine is None:
            raise UnsupportedFeatureError(f"model {self.id!r}: not described by a board yet")
        return cast("ChatEngine", self._engine)

    @property
    def context_length(self) -> int:
        """The context the boards loaded the model with."""
        return self._context_length or super().context_length

    @contextlib.asynccontextmanager
    async def turn(self, owner: str) -> AsyncIterator[bool]:
        """The queues are on the boards (one per slot): what needs a model's queue and runtime
        here (raw completions, the backend routes) is not served by a cluster."""
        raise UnsupportedFeatureError(
            "a cluster serves chat, embeddings and reranking; raw completions "
            "(/v1/completions, /api/generate with raw) and the backend routes (/rkllm/v1/...) "
            "need a single `rkllm serve` (without --ray): send this to one board's own server")
        yield False  # pragma: no cover

    # -- what the routes call --------------------------------------------------------------

    async def _start(self, method: str, metrics: Metrics, arrived: float,
                     **arguments: Any) -> StartedStream:
        from rkllm_core.server.turns import start

        stream = self._boards.options(stream=True, method_name=method).remote(
            model=self.id, **arguments)
        self.stats.waiting += 1
        try:
            marker = await anext(stream)
        except BaseException as exc:
            stream.cancel()
            if isinstance(exc, Exception):
                _raise_local(exc)
            raise
        finally:
            self.stats.waiting -= 1
        if not isinstance(marker, Started):
            stream.cancel()
            raise RuntimeError(f"a board answered {type(marker).__name__} before its stream")
        return await start(self._relay(stream, metrics, arrived), replica=marker.replica)

    async def _relay(self, stream: Any, metrics: Metrics, arrived: float,
                     ) -> AsyncGenerator[Any, None]:
        first, done = True, False
        self.stats.running += 1
        try:
            async for item in stream:
                if first:
                    metrics.ttft.labels(model=self.id).observe(time.monotonic() - arrived)
                    first = False
                if isinstance(item, ChatResult):
                    from rkllm_core.server.turns import cached_tokens

                    usage = item.usage
                    metrics.count_turn(self.id, usage.input_tokens, cached_tokens(item),
                                       usage.output_tokens, item.reused_cache)
                elif isinstance(item, GenerationResult):
                    perf = item.perf
                    metrics.count_turn(self.id, perf.prefill_tokens or 0 if perf else 0, 0,
                                       len(item.token_ids), False)
                yield item
            done = True
        except Exception as exc:
            _raise_local(exc)
        finally:
            self.stats.running -= 1
            self.stats.served += 1
            if not done:
                stream.cancel()  # the client left: the board aborts the run

    async def start_turn(self, request: TurnRequest, metrics: Metrics, arrived: float, *,
                         timeout: float | None = None) -> StartedStream:
        """Start a chat turn on the board that holds its conversation (or the least-loaded
        one) and wait for its first chunk; ``.replica`` names the board and slot."""
        return await self._start("chat", metrics, arrived, request=request, timeout=timeout)

    async def start_completion(self, prompt: str, metrics: Metrics, arrived: float, *,
                               max_new_tokens: int | None = None,
                               sampling: Mapping[str, Any] | None = None,
                               stop: Sequence[str] = (),
                               timeout: float | None = None) -> StartedStream:
        """Start a raw completion on the least-loaded board."""
        return await self._start("completion", metrics, arrived, prompt=prompt,
                                 max_new_tokens=max_new_tokens, sampling=dict(sampling or {}),
                                 stop=list(stop), timeout=timeout)

    async def embed(self, texts: Sequence[str], **options: Any) -> Any:
        """Embeddings of ``texts``, computed on the least-loaded board."""
        try:
            _replica, rows = await self._boards.options(method_name="embed").remote(
                model=self.id, texts=list(texts), options=options)
        except Exception as exc:
            _raise_local(exc)
        return rows

    async def rerank(self, query: str, documents: Sequence[str], **options: Any) -> list[float]:
        """Relevance of each document to ``query``, computed on the least-loaded board."""
        cfg = self.config
        options.setdefault("yes_token_id", cfg.yes_token_id)
        options.setdefault("no_token_id", cfg.no_token_id)
        try:
            _replica, scores = await self._boards.options(method_name="rerank").remote(
                model=self.id, query=query, documents=list(documents), options=options)
        except Exception as exc:
            _raise_local(exc)
        return list(scores)


class ClusterRegistry(ModelRegistry):
    """The server's models, each a :class:`RemoteModel` over the boards' handle.

    Example: see :class:`RemoteModel`.
    """

    def __init__(self, models: Sequence[ModelConfig], boards: Any, *,
                 max_queue: int = 32) -> None:
        self.models = {m.id: RemoteModel(m, boards, max_queue=max_queue) for m in models}

    async def describe(self) -> None:
        """Read every model's runtime from a board."""
        for served in self.models.values():
            assert isinstance(served, RemoteModel)
            await served.describe()


class Ingress:
    """The ingress deployment: ``create_app(config, registry=ClusterRegistry(...))`` as a Ray
    Serve ASGI app (wrapped with ``@serve.ingress`` by
    :func:`rkllm_core.cluster.build_app`; the app is built once the replica starts).

    Example (not run here: it needs a Ray cluster; ``tests/cluster`` runs it)::

        app = build_app(config, replicas=3)   # Ingress.bind(config, Board.bind(...))
        serve.run(app, route_prefix="/")
    """

    def __init__(self, config: ServerConfig, boards: Any) -> None:
        self.config = config
        self.registry = ClusterRegistry(config.models, boards, max_queue=config.max_queue)

    async def __serve_build_asgi_app__(self) -> FastAPI:
        from rkllm_core.server.app import create_app

        await self.registry.describe()
        return create_app(self.config, registry=self.registry)
