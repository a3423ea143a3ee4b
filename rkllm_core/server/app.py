"""The ASGI app of ``rkllm serve``: FastAPI with the OpenAI, Ollama and backend routes over one
:class:`~rkllm_core.server.registry.ModelRegistry`.

Around every route: the API key (``Authorization: Bearer KEY`` on every route but the health
check ``/``), a request-size limit, CORS only for configured origins, errors in each protocol's
own shape (Ollama's for ``/api/...``, OpenAI's elsewhere) and one structured access-log line
per request (logger ``rkllm_core.server.access``, JSON, no bodies).

Example:
    >>> import tempfile, pathlib
    >>> from fastapi.testclient import TestClient
    >>> from rkllm_core.server import ModelConfig, ServerConfig, create_app
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi."\\n')
    >>> config = ServerConfig(models=[ModelConfig(path=str(path), library="host",
    ...                                           params={"max_context_len": 512})],
    ...                       api_key="secret")
    >>> with TestClient(create_app(config)) as client:
    ...     health = client.get("/").status_code
    ...     refused = client.get("/metrics").status_code
    ...     allowed = client.get("/metrics", headers={"Authorization": "Bearer secret"})
    >>> health, refused, allowed.status_code
    (200, 401, 200)
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rkllm_core.errors import RKLLMError
from rkllm_core.server.config import ServerConfig
from rkllm_core.server.metrics import Metrics
from rkllm_core.server.registry import ModelRegistry, ServerError
from rkllm_core.server.wire import log_failure, ollama_error, openai_error

access_log = logging.getLogger("rkllm_core.server.access")

#: The answer of ``GET /``: Ollama's own words, which some clients check for.
HEALTH_TEXT = "Ollama is running"


@dataclass
class ServerState:
    """What the routes share: the config, the models and the metrics
    (``request.app.state.server``)."""

    config: ServerConfig
    registry: ModelRegistry
    metrics: Metrics


def server_of(request: Request) -> ServerState:
    """The :class:`ServerState` of the app serving ``request``."""
    state: ServerState = request.app.state.server
    return state


class Unauthorized(ServerError):
    """No or a wrong API key."""

    status = 401
    code = "invalid_api_key"
    kind = "invalid_request_error"


class TooLarge(ServerError):
    """The request body is larger than ``max_request_bytes``."""

    status = 413
    code = "request_too_large"
    kind = "invalid_request_error"


def _error_response(path: str, error: BaseException) -> JSONResponse:
    log_failure(error)
    return ollama_error(error) if path.startswith("/api/") else openai_error(error)


class _Guard:
    """API key, body-size limit, access log and request metrics, as plain ASGI middleware
    (so a streaming response still sees its client disconnect)."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        config = self.state.config
        path: str = scope["path"]
        started = time.monotonic()
        status = {"code": 0}
        scope.setdefault("state", {})

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                replica = scope["state"].get("replica")
                if replica:  # the board and slot that ran it (rkllm serve --ray)
                    message.setdefault("headers", []).append(
                        (b"x-rkllm-replica", replica.encode("latin-1", "replace")))
            await send(message)

        try:
            error = self._refusal(scope, config)
            if error is not None:
                await _error_response(path, error)(scope, receive, sending)
                return
            limit, seen = config.max_request_bytes, 0

            async def receiving() -> Message:
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > limit:
                        raise TooLarge(f"the request body is over {limit} bytes "
                                       "(--max-request-bytes)")
                return message

            try:
                await self.app(scope, receiving, sending)
            except TooLarge as exc:
                if status["code"] == 0:
                    await _error_response(path, exc)(scope, receive, sending)
        finally:
            self._account(scope, path, status["code"], started)

    def _refusal(self, scope: Scope, config: ServerConfig) -> ServerError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > config.max_request_bytes:
            return TooLarge(f"the request body is {length} bytes, over the limit of "
                            f"{config.max_request_bytes} (--max-request-bytes)")
        if config.api_key is None or (scope["path"] == "/" and scope["method"] in
                                      ("GET", "HEAD")) or scope["method"] == "OPTIONS":
            return None
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
                given.strip().encode(), config.api_key.encode()):
            return Unauthorized("this server needs an API key: send the header "
                                "`Authorization: Bearer <key>` (the key given to --api-key)")
        return None

    def _account(self, scope: Scope, path: str, status: int, started: float) -> None:
        model = scope["state"].get("model", "")
        route = scope.get("route")
        template = getattr(route, "path", None) or "other"
        self.state.metrics.requests.labels(route=template, model=model,
                                           status=str(status)).inc()
        client = scope.get("client")
        access_log.info(json.dumps({
            "method": scope["method"], "path": path, "status": status, "model": model,
            "ms": round((time.monotonic() - started) * 1000, 1),
            "client": f"{client[0]}:{client[1]}" if client else None}))


def create_app(config: ServerConfig, *, registry: ModelRegistry | None = None) -> FastAPI:
    """The server's FastAPI app; it loads every model at start-up and frees them at shutdown.

    Example: see :mod:`rkllm_core.server.app`.
    """
    from rkllm_core.server import backend_routes, ollama_routes, openai_routes

    models = registry or ModelRegistry(config.models, isolated=config.isolated,
                                       max_queue=config.max_queue)
    metrics = Metrics(lambda: [(m.id, m.stats.waiting, m.stats.running) for m in models])
    state = ServerState(config, models, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        models.load_all()
        try:
            yield
        finally:
            models.close()

    app = FastAPI(title="rkllm serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = state

    async def on_error(request: Request, error: Exception) -> Response:
        return _error_response(request.url.path, error)

    for kind in (RKLLMError, ValidationError, RequestValidationError, ValueError, Exception):
        app.add_exception_handler(kind, on_error)

    @app.get("/", response_class=PlainTextResponse)
    @app.head("/", response_class=PlainTextResponse)
    async def health() -> str:
        """Health check (no API key needed); Ollama clients look for this answer."""
        return HEALTH_TEXT

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus metrics of this server."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    app.include_router(openai_routes.router)
    app.include_router(ollama_routes.router)
    app.include_router(backend_routes.router)
    app.add_middleware(_Guard, state=state)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins,
                           allow_methods=["*"], allow_headers=["*"])
    return app


def note_model(request: Request, model: str) -> None:
    """Record the model a request names, for the access log and the metrics."""
    request.scope.setdefault("state", {})["model"] = model


__all__ = ["HEALTH_TEXT", "ServerState", "create_app", "note_model", "server_of"]


