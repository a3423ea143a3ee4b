"""What every route shares: errors in each protocol's shape, the stream framings (SSE for
OpenAI, NDJSON for Ollama), and a run that stops when its client goes away.

An OpenAI error is ``{"error": {"message", "type", "param", "code"}}`` (the ``openai`` package's
``ErrorObject``); an Ollama error is ``{"error": "message"}``. Both carry the status of
:func:`status_of`, and a refused request (429) a ``Retry-After`` header. A stream that fails
after its first chunk cannot change its status any more: it ends with one error event in its
own framing, which the official clients raise.

Example:
    >>> from rkllm_core.errors import InvalidParameterError
    >>> from rkllm_core.server.wire import openai_error, sse
    >>> openai_error(InvalidParameterError("temperature must be >= 0")).status_code
    400
    >>> sse({"a": 1})
    b'data: {"a":1}\\n\\n'
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError

from rkllm_core.chat.structured import StructuredOutputError
from rkllm_core.errors import (
    BusyError,
    InvalidParameterError,
    ModelClosedError,
    ModelWedgedError,
    RKLLMError,
    RuntimeCrashedError,
    RunTimeoutError,
    StaleKVCacheError,
    UnsupportedFeatureError,
)
from rkllm_core.server.registry import QueueFullError, ServerError

logger = logging.getLogger("rkllm_core.server")

_T = TypeVar("_T")
_M = TypeVar("_M", bound=BaseModel)


class ClientGoneError(ServerError):
    """The client closed its connection; its run was aborted (never sent: nobody listens)."""

    status = 499
    code = "client_closed_request"


def status_of(error: BaseException) -> tuple[int, str, str]:
    """(HTTP status, error code, OpenAI error type) for an exception a route raised."""
    if isinstance(error, ServerError):
        return error.status, error.code, error.kind
    if isinstance(error, StructuredOutputError):
        # the model's fault, not the request's: its reply failed the schema twice
        return 500, "invalid_model_output", "server_error"
    if isinstance(error, ValidationError):  # a request is checked in parse(): this is ours
        return 500, "internal_error", "server_error"
    if isinstance(error, (InvalidParameterError, RequestValidationError, ValueError)):
        return 400, "invalid_request", "invalid_request_error"
    if isinstance(error, UnsupportedFeatureError):
        return 400, "unsupported_feature", "invalid_request_error"
    if isinstance(error, StaleKVCacheError):
        return 409, "stale_kv_cache", "invalid_request_error"
    if isinstance(error, (ModelWedgedError, RuntimeCrashedError, ModelClosedError)):
        return 503, "runtime_unavailable", "server_error"
    if isinstance(error, RunTimeoutError):
        return 504, "timeout", "server_error"
    if isinstance(error, BusyError):
        return 429, "busy", "rate_limit_error"
    if isinstance(error, RKLLMError):
        return 500, "runtime_error", "server_error"
    return 500, "internal_error", "server_error"


def _fields(error: ValidationError) -> str:
    parts = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{where}: {e['msg']}")
    return "invalid request: " + "; ".join(parts)


def _message(error: BaseException) -> str:
    if status_of(error)[0] >= 500 and not isinstance(error, RKLLMError):
        return f"internal error ({type(error).__name__}); see the server log"
    return str(error) or type(error).__name__


def _headers(error: BaseException) -> dict[str, str]:
    if isinstance(error, QueueFullError):
        return {"Retry-After": str(error.retry_after)}
    return {}


def openai_error_body(error: BaseException) -> dict[str, Any]:
    """``{"error": {...}}`` as the OpenAI API (and its ``ErrorObject`` type) has it."""
    from openai.types import ErrorObject

    _status, code, kind = status_of(error)
    body = ErrorObject(message=_message(error), type=kind, param=None, code=code)
    return {"error": body.model_dump()}


def openai_error(error: BaseException) -> JSONResponse:
    """The OpenAI-shaped error response for ``error``."""
    status = status_of(error)[0]
    return JSONResponse(openai_error_body(error), status_code=status, headers=_headers(error))


def ollama_error(error: BaseException) -> JSONResponse:
    """The Ollama-shaped error response (``{"error": "..."}``) for ``error``."""
    status = status_of(error)[0]
    return JSONResponse({"error": _message(error)}, status_code=status, headers=_headers(error))


def log_failure(error: BaseException) -> None:
    """Log what a client gets as a 5xx with its traceback; 4xx are the client's mistakes."""
    if status_of(error)[0] >= 500 and not isinstance(error, ClientGoneError):
        logger.error("request failed: %s", error, exc_info=error)


# -- request bodies ----------------------------------------------------------------------------

async def read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or :class:`InvalidParameterError` saying why not."""
    raw = await request.body()
    try:
        data = json.loads(raw or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidParameterError(f"the request body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidParameterError("the request body must be a JSON object")
    return data


def parse(model: type[_M], data: dict[str, Any]) -> _M:
    """``data`` validated as ``model`` (a request type of the ``openai`` or ``ollama``
    package); fields the type does not know are ignored, never an error. A body that does not
    fit is :class:`~rkllm_core.errors.InvalidParameterError` naming each field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidParameterError(_fields(exc)) from None


# -- framings ----------------------------------------------------------------------------------

def _dumps(value: Any) -> bytes:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_none=True)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def sse(value: Any) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line (no comments, no pings)."""
    return b"data: " + _dumps(value) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def ndjson(value: Any) -> bytes:
    """One line of an NDJSON stream."""
    return _dumps(value) + b"\n"


class Template:
    """A streamed line rendered once by its protocol's type around placeholders, then filled
    per token with JSON strings: the same bytes as building and dumping the typed model for
    each token (a pydantic model per token costs ~80 µs; this ~2).

    Example:
        >>> from rkllm_core.server.wire import Template, ndjson
        >>> line = Template(lambda v: ndjson({"model": "m", "text": v["text"], "done": False}),
        ...                 ["text"])
        >>> line.fill(text="hi there").decode().strip()
        '{"model":"m","text":"hi there","done":false}'
    """

    def __init__(self, render: Callable[[dict[str, str]], bytes], names: Sequence[str]) -> None:
        marks = {name: f"\u0000rkllm:{name}\u0000" for name in names}
        whole = render(marks)
        found = sorted((whole.index(json.dumps(mark).encode()), name)
                       for name, mark in marks.items())
        self._parts: list[bytes] = []
        self._names = [name for _, name in found]
        start = 0
        for at, name in found:
            self._parts.append(whole[start:at])
            start = at + len(json.dumps(marks[name]).encode())
        self._parts.append(whole[start:])

    def fill(self, **values: str) -> bytes:
        """The line with each placeholder replaced by its value (a string)."""
        out = [self._parts[0]]
        for name, part in zip(self._names, self._parts[1:], strict=True):
            out.append(json.dumps(values[name], ensure_ascii=False).encode())
            out.append(part)
        return b"".join(out)


def sse_response(events: AsyncIterator[bytes]) -> StreamingResponse:
    """An SSE stream response (``text/event-stream``, not cached, not buffered by proxies)."""
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def ndjson_response(lines: AsyncIterator[bytes]) -> StreamingResponse:
    """An NDJSON stream response, as Ollama streams (``application/x-ndjson``)."""
    return StreamingResponse(lines, media_type="application/x-ndjson")


# -- runs tied to their client -------------------------------------------------------------------

async def until_disconnect(request: Request, work: Awaitable[_T]) -> _T:
    """Await ``work``; if the client disconnects first, cancel it (which aborts its run) and
    raise :class:`ClientGoneError`. Streams need none of this: the ASGI server cancels a
    streaming response's generator when its client goes."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise ClientGoneError("the client disconnected; its run was aborted")
    return task.result()
