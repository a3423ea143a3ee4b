"""One board of the cluster: the Ray Serve deployment that owns the board's NPU.

A :class:`Board` loads every model of the server once per slot (``--slots N``: N instances of
each chat model, each with its own RKLLM handle and so its own KV cache; runtime 1.2.2+ allows
several instances in one process) and runs the same chat turns, completions, embeddings and
reranks as a single server (:class:`~rkllm_core.server.registry.ServedModel` per slot, its
FIFO queue and KV-cache bookkeeping). Which slot a request takes is
:class:`~rkllm_core.cluster.affinity.SlotBook`'s choice: the slot holding the conversation the
request continues, else the coldest one.

What it gives the rest of the cluster:

- streams that start with :class:`Started` (the board and slot, for ``X-RKLLM-Replica``), then
  the items of :meth:`~rkllm_core.server.registry.ServedModel.start_turn`; an error becomes a
  :class:`BoardError`, which crosses Ray intact and keeps its HTTP status;
- ``record_routing_stats`` (Ray Serve's routing-stats hook): what each slot holds, for the
  router;
- ``check_health`` (Ray Serve's health check): raises once a runtime is gone (a wedged or
  closed in-process model), so Ray replaces the replica; a runtime that crashes in process
  takes the replica's process with it, which Ray sees at once.

Example (a board run directly, outside Ray, as the tests of the policy do):
    >>> import asyncio, tempfile, pathlib
    >>> from rkllm_core.chat import ChatMessage
    >>> from rkllm_core.server.config import ModelConfig
    >>> from rkllm_core.server.turns import TurnRequest
    >>> from rkllm_core.cluster.replica import Board
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi."\\n')
    >>> board = Board([ModelConfig(path=str(path), library="host",
    ...                            params={"max_context_len": 512})], slots=2, name="b1")
    >>> async def ask(messages):
    ...     items = [i async for i in board.chat(model="tiny", request=TurnRequest(messages))]
    ...     return items[0].replica, items[-1].message.content
    >>> first = [ChatMessage.user("Hello")]
    >>> asyncio.run(ask(first))
    ('b1/slot-0', 'Hi.')
    >>> asyncio.run(ask([ChatMessage.user("Another conversation")]))
    ('b1/slot-1', 'Hi.')
    >>> asyncio.run(ask([*first, ChatMessage.assistant("Hi."), ChatMessage.user("More")]))
    ('b1/slot-0', 'Hi.')
    >>> board.close()
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rkllm_core.cluster.affinity import SlotBook, conversation_key, resume_key
from rkllm_core.errors import ModelClosedError, ModelWedgedError, RKLLMError
from rkllm_core.server.config import ModelConfig
from rkllm_core.server.metrics import Metrics
from rkllm_core.server.registry import QueueFullError, ServedModel, ServerError

if TYPE_CHECKING:
    from rkllm_core.backend import Backend
    from rkllm_core.server.turns import TurnRequest

logger = logging.getLogger("rkllm_core.cluster")


@dataclass(frozen=True)
class Started:
    """The first item of every stream a board sends: who runs it (``board/slot-N``)."""

    replica: str


class BoardError(ServerError):
    """An error a board raised, as the server answers it: its HTTP status, error code and
    type travel with it (Ray pickles errors; the original class may not survive that, its
    meaning does). :meth:`local` gives back the error the ingress raises.

    Example:
        >>> from rkllm_core.errors import InvalidParameterError
        >>> from rkllm_core.cluster.replica import BoardError
        >>> e = BoardError.of(InvalidParameterError("bad tools"), "b1")
        >>> e.status, e.code, str(e)
        (400, 'invalid_request', 'bad tools')
        >>> import pickle
        >>> pickle.loads(pickle.dumps(e)).status
        400
    """

    def __init__(self, message: str, status: int = 500, code: str = "server_error",
                 kind: str = "server_error", retry_after: int | None = None,
                 board: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.kind = kind
        self.retry_after = retry_after
        self.board = board

    def __reduce__(self) -> tuple[Any, ...]:
        return (BoardError, (str(self), self.status, self.code, self.kind, self.retry_after,
                             self.board))

    @classmethod
    def of(cls, error: BaseException, board: str) -> BoardError:
        """``error`` as the server would answer it."""
        from rkllm_core.server.wire import status_of

        status, code, kind = status_of(error)
        if status >= 500 and not isinstance(error, RKLLMError):
            message = f"internal error ({type(error).__name__}) on {board}; see its log"
        else:
            message = str(error) or type(error).__name__
        return cls(message, status, code, kind, getattr(error, "retry_after", None), board)

    def local(self) -> ServerError:
        """The error the ingress raises for this one (a full queue is a
        :class:`~rkllm_core.server.registry.QueueFullError` again, for ``Retry-After``)."""
        if self.code == QueueFullError.code:
            return QueueFullError(str(self), self.retry_after or 1)
        return self


class SlotModel(ServedModel):
    """A :class:`~rkllm_core.server.registry.ServedModel` with a runtime instance of its own
    (:func:`rkllm_core.shared.shared_model` would hand every slot the same one).

    Example: see :mod:`rkllm_core.cluster.replica`.
    """

    @property
    def backend(self) -> Backend:
        """This slot's own loaded model."""
        if self._backend is None:
            cfg = self.config
            if self.isolated:
                from rkllm_core.isolated import IsolatedRKLLM

                self._backend = IsolatedRKLLM(cfg.path, library=cfg.library,
                                              runtime_version=cfg.runtime_version, **cfg.params)
            else:
                from rkllm_core.model import RKLLM

                self._backend = RKLLM(cfg.path, library=cfg.library,
                                      runtime_version=cfg.runtime_version, **cfg.params)
        return self._backend


def replica_name() -> str:
    """``host:replica-id`` inside a Ray Serve replica, the host name elsewhere.

    Example:
        >>> from rkllm_core.cluster.replica import replica_name
        >>> import socket
        >>> replica_name() == socket.gethostname()
        True
    """
    host = socket.gethostname()
    try:
        from ray import serve

        return f"{host}:{serve.get_replica_context().replica_tag}"
    except Exception:  # not in a replica (RayServeException), or no ray at all
        return host


class Board:
    """The models of one board, ``slots`` instances of each chat model. Deployed by
    :func:`rkllm_core.cluster.build_app` with ``resources={"npu": 1}`` and
    ``max_ongoing_requests=slots``.

    Example: see :mod:`rkllm_core.cluster.replica`.
    """

    def __init__(self, models: Sequence[ModelConfig], *, slots: int = 1,
                 isolated: bool = False, max_queue: int = 32, name: str | None = None) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.name = name or replica_name()
        self.slot_count = slots
        self.metrics = Metrics()  # the board's own; the ingress counts what clients see
        self.models: dict[str, list[SlotModel]] = {}
        self.books: dict[str, SlotBook] = {}
        self._broken: str | None = None
        try:
            for config in models:
                count = slots if config.role == "chat" else 1
                copies = [SlotModel(config, isolated=isolated, max_queue=max_queue)
                          for _ in range(count)]
                self.models[config.id] = copies
                self.books[config.id] = SlotBook(count)
                for served in copies:
                    logger.info("%s: loading %s from %s", self.name, config.id, config.path)
                    served.load()
        except BaseException:
            self.close()
            raise

    # -- choosing a slot -------------------------------------------------------------------------

    def _copies(self, model: str) -> list[SlotModel]:
        copies = self.models.get(model)
        if copies is None:
            from rkllm_core.server.registry import ModelNotFoundError

            raise ModelNotFoundError(f"model {model!r} is not loaded on {self.name}")
        return copies

    @contextlib.contextmanager
    def _slot(self, model: str, resume: str | None, holds: str | None,
              ) -> Iterator[tuple[str, SlotModel]]:
        """Take a slot for one request; it holds ``holds`` once the request ran, or nothing
        reusable if it failed."""
        copies = self._copies(model)
        book = self.books[model]
        index = book.pick(resume)
        book.busy[index] = True
        book.hold(index, holds)  # now, so a request arriving meanwhile sees where this went
        ok = False
        try:
            yield f"{self.name}/slot-{index}", copies[index]
            ok = True
        finally:
            book.busy[index] = False
            if not ok and book.keys[index] == holds:
                book.hold(index, None)

    def _failed(self, error: BaseException, served: SlotModel) -> BoardError:
        if isinstance(error, (ModelWedgedError, ModelClosedError)) and not served.isolated:
            # an in-process runtime that is wedged or gone serves nothing more: let Ray
            # replace this replica (an isolated one restarts its own child process)
            self._broken = f"{served.id} on {self.name}: {error}"
        board_error = BoardError.of(error, self.name)
        if board_error.status >= 500:
            logger.error("%s: request failed: %s", self.name, error, exc_info=error)
        return board_error

    # -- what the ingress calls -----------------------------------------------------------------

    async def chat(self, *, model: str, request: TurnRequest,
                   timeout: float | None = None) -> AsyncIterator[Any]:
        """One chat turn: :class:`Started`, then its chunks and its
        :class:`~rkllm_core.chat.ChatResult`."""
        async for item in self._stream(model, resume_key(model, request),
                                       conversation_key(model, request), "turn",
                                       request=request, timeout=timeout):
            yield item

    async def completion(self, *, model: str, prompt: str, max_new_tokens: int | None = None,
                         sampling: Mapping[str, Any] | None = None, stop: Sequence[str] = (),
                         timeout: float | None = None) -> AsyncIterator[Any]:
        """A raw completion: :class:`Started`, then its chunks and its
        :class:`~rkllm_core.GenerationResult`."""
        async for item in self._stream(model, None, None, "completion", prompt=prompt,
                                       max_new_tokens=max_new_tokens, sampling=sampling,
                                       stop=stop, timeout=timeout):
            yield item

    async def _stream(self, model: str, resume: str | None, holds: str | None, kind: str,
                      **arguments: Any) -> AsyncIterator[Any]:
        served: SlotModel | None = None
        try:
            with self._slot(model, resume, holds) as (replica, served):
                begun = time.monotonic()
                if kind == "turn":
                    started = await served.start_turn(arguments.pop("request"), self.metrics,
                                                    begun, **arguments)
                else:
                    started = await served.start_completion(arguments.pop("prompt"),
                                                          self.metrics, begun, **arguments)
                yield Started(replica)
                async for item in started:
                    yield item
        except Exception as exc:
            if served is None:
                raise BoardError.of(exc, self.name) from None
            raise self._failed(exc, served) from None

    async def embed(self, *, model: str, texts: Sequence[str],
                    options: Mapping[str, Any] | None = None) -> tuple[str, Any]:
        """(replica, embeddings of ``texts``)."""
        served: SlotModel | None = None
        try:
            with self._slot(model, None, None) as (replica, served):
                return replica, await served.embed(texts, **dict(options or {}))
        except Exception as exc:
            raise (BoardError.of(exc, self.name) if served is None
                   else self._failed(exc, served)) from None

    async def rerank(self, *, model: str, query: str, documents: Sequence[str],
                     options: Mapping[str, Any] | None = None) -> tuple[str, list[float]]:
        """(replica, relevance of each document to ``query``)."""
        served: SlotModel | None = None
        try:
            with self._slot(model, None, None) as (replica, served):
                return replica, await served.rerank(query, documents, **dict(options or {}))
        except Exception as exc:
            raise (BoardError.of(exc, self.name) if served is None
                   else self._failed(exc, served)) from None

    def describe(self, model: str) -> dict[str, Any]:
        """What the ingress shows of ``model``: the runtime, its capabilities, the loaded
        parameters and context (the same on every board of a cluster)."""
        served = self._copies(model)[0]
        backend = served.backend
        chat = served.chat if served.config.role == "chat" else None
        return {"runtime_info": backend.runtime_info, "capabilities": backend.capabilities,
                "params": backend.params, "context_length": served.context_length,
                "mode": chat.mode if chat else None, "preset": chat.preset if chat else None,
                "board": self.name, "slots": len(self.models[model])}

    # -- Ray Serve's hooks ---------------------------------------------------------------------

    def record_routing_stats(self) -> dict[str, Any]:
        """What each slot holds (Ray Serve calls this every few seconds and hands the answer to
        the router, :class:`~rkllm_core.cluster.router.ConversationAffinityRouter`)."""
        return {"board": self.name,
                "slots": {model: list(book.keys) for model, book in self.books.items()}}

    def check_health(self) -> None:
        """Raise when a runtime of this board is gone, so Ray replaces the replica."""
        if self._broken is not None:
            raise RuntimeError(f"runtime gone: {self._broken}")
        for copies in self.models.values():
            for served in copies:
                backend = served._backend
                if backend is not None and backend.closed:
                    raise RuntimeError(f"runtime gone: {served.id} on {self.name} is closed")

    def close(self) -> None:
        """Free every model."""
        for copies in getattr(self, "models", {}).values():
            for served in copies:
                try:
                    served.close()
                except Exception:
                    logger.exception("closing %s failed", served.id)

    def __del__(self) -> None:
        self.close()
