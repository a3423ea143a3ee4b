"""The backend routes of ``rkllm serve`` (``/rkllm/v1/...``): what
:class:`~rkllm_core.remote.RemoteRKLLM` calls, so the chat engine and both adapters run on a
model served by another machine. The JSON is :mod:`rkllm_core.remote_wire`'s.

- ``GET /rkllm/v1/models/{model}``: runtime, capabilities, parameters;
- ``POST .../run``: one run, streamed as NDJSON (chunks, then the result or the error);
- ``POST .../abort``: abort a run of this client (``run_id``), or all of its runs;
- ``POST .../embed``, ``POST .../rerank``; ``GET .../kv-cache``, ``POST .../kv-cache/clear``.

Each run waits for the model's turn (its FIFO queue) as the client named by the
``X-RKLLM-Client`` header. The KV cache belongs to whoever ran last: when a client's chat engine
counts on its cache (a ``ReadKVCacheSize(expected=...)`` step) but another client, the server's
own chat routes or an embedding ran since, the run answers
:class:`~rkllm_core.errors.StaleKVCacheError` without running, and the engine replays its
conversation. A client that disconnects aborts its run. Errors keep their class
(``{"error": {"type", "message", "partial_text"}}``), so the client raises the same exception.

Example:
    >>> import json, tempfile, pathlib
    >>> from fastapi.testclient import TestClient
    >>> from rkllm_core.server import ModelConfig, ServerConfig, create_app
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi there."\\n')
    >>> config = ServerConfig(models=[ModelConfig(path=str(path), library="host",
    ...                                           params={"max_context_len": 512})])
    >>> with TestClient(create_app(config)) as client:
    ...     info = client.get("/rkllm/v1/models/tiny").json()
    ...     lines = client.post("/rkllm/v1/models/tiny/run", json={"prompt": "Hi"}).text
    >>> info["runtime_info"]["release"]
    '1.3.0'
    >>> [json.loads(line) for line in lines.splitlines()][0]
    {'chunk': {'text': 'Hi', 'token_id': ...}}
    >>> json.loads(lines.splitlines()[-1])["result"]["text"]
    'Hi there.'
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from rkllm_core.errors import InvalidParameterError, RunTimeoutError, StaleKVCacheError
from rkllm_core.remote_wire import (
    CLIENT_HEADER,
    PREFIX,
    DecodedRun,
    decode_run,
    encode_array,
    encode_chunk,
    encode_error,
    encode_model_info,
    encode_result,
    encode_texts,
)
from rkllm_core.results import GenerationResult, PerfStats
from rkllm_core.server.app import note_model, server_of
from rkllm_core.server.metrics import Metrics
from rkllm_core.server.registry import QueueFullError, ServedModel
from rkllm_core.server.wire import log_failure, ndjson, ndjson_response, read_json, status_of
from rkllm_core.server.wire import until_disconnect as _until_disconnect

logger = logging.getLogger("rkllm_core.server")

router = APIRouter()

_T = TypeVar("_T")


@dataclass
class _LiveRun:
    """A run of a remote client, from its request until its end: what ``abort`` reaches."""

    owner: str
    stream: Any = None
    aborted: bool = False


def _runs(request: Request) -> dict[str, _LiveRun]:
    """This app's runs in flight by run id."""
    state = request.app.state
    runs: dict[str, _LiveRun] | None = getattr(state, "remote_runs", None)
    if runs is None:
        runs = state.remote_runs = {}
    return runs


def _owner(request: Request) -> str:
    """The queue owner of a request: its client, or a one-off owner when it names none."""
    client = request.headers.get(CLIENT_HEADER, "")
    if not client:
        return f"remote:{uuid.uuid4().hex}"
    if len(client) > 128 or not client.isprintable():
        raise InvalidParameterError(f"the {CLIENT_HEADER} header must be a printable id of "
                                    "at most 128 characters")
    return f"remote:{client}"


def _error(error: BaseException) -> JSONResponse:
    """An error answer that keeps the error's class (``{"error": {"type", ...}}``)."""
    log_failure(error)
    headers = {"Retry-After": str(error.retry_after)} if isinstance(error, QueueFullError) \
        else {}
    return JSONResponse({"error": encode_error(error)}, status_code=status_of(error)[0],
                        headers=headers)


def _served(request: Request, model: str) -> ServedModel:
    served = server_of(request).registry.get(model)
    note_model(request, served.id)
    return served


def _timeout(request: Request, asked: float | None) -> float | None:
    """The request's timeout, at most the server's ``request_timeout``."""
    limit = server_of(request).config.request_timeout
    if asked is None:
        return limit
    return asked if limit is None else min(asked, limit)


async def _answer(work: Awaitable[_T]) -> _T | JSONResponse:
    try:
        return await work
    except Exception as exc:  # every error keeps its class for the client
        return _error(exc)


@router.get(PREFIX + "/{model}")
async def model_info(request: Request, model: str) -> Any:
    """What a remote backend needs to know of a model: runtime, capabilities, parameters."""
    async def info() -> dict[str, Any]:
        served = _served(request, model)
        backend = served.backend
        return encode_model_info(served.id, served.config.role, backend.runtime_info,
                                 backend.capabilities, backend.params)
    return await _answer(info())


@router.post(PREFIX + "/{model}/run")
async def run(request: Request, model: str) -> Response:
    """One run of the model, streamed as NDJSON: ``{"chunk": ...}`` lines, then
    ``{"result": ...}`` or ``{"error": ...}``."""
    arrived = time.monotonic()
    try:
        served = _served(request, model)
        owner = _owner(request)
        decoded = decode_run(await read_json(request))
        run_id = decoded.run_id or uuid.uuid4().hex
        runs = _runs(request)
        if run_id in runs:
            raise InvalidParameterError(f"run id {run_id!r} is in use: give each run a new id")
        live = runs[run_id] = _LiveRun(owner)
    except Exception as exc:
        return _error(exc)
    timeout = _timeout(request, decoded.timeout)
    metrics = server_of(request).metrics
    lines = _run_lines(served, decoded, live, _Clock(metrics, arrived, timeout), runs, run_id)
    return ndjson_response(lines)


@dataclass
class _Clock:
    """A run's time: its deadline, and the metrics that count it."""

    metrics: Metrics
    arrived: float
    timeout: float | None

    def first_chunk(self, model: str) -> None:
        self.metrics.ttft.labels(model=model).observe(time.monotonic() - self.arrived)

    def ended(self, model: str, result: GenerationResult) -> None:
        kept = result.kv_cache_size_before or 0  # what the run did not prefill
        self.metrics.count_turn(model, kept + (result.perf.prefill_tokens or 0), kept,
                                len(result.token_ids), kept > 0)


async def _run_lines(served: ServedModel, run: DecodedRun, live: _LiveRun, clock: _Clock,
                     runs: dict[str, _LiveRun], run_id: str) -> AsyncIterator[bytes]:
    timeout = clock.timeout
    try:
        async with contextlib.AsyncExitStack() as stack:
            held = await _turn_within(stack, served, live.owner, timeout)
            if live.aborted:  # aborted while it waited: it never starts
                yield ndjson(encode_result(GenerationResult(
                    "", [], "abort", PerfStats(None, 0.0, 0, 0.0, 0.0, None))))
                return
            if not held and run.expected is not None:
                raise StaleKVCacheError(
                    "another client used this model's KV cache since this client's last run; "
                    "replay the conversation (the chat engine does this by itself)")
            stream = served.backend.astream(run.prompt, timeout=timeout, **run.options)
            live.stream = stream
            first = True
            try:
                async for chunk in stream:
                    if first:
                        clock.first_chunk(served.id)
                        first = False
                    yield ndjson(encode_chunk(chunk))
                result = stream.result
            finally:
                live.stream = None
                # a client that went away cancelled us: the run must end before the next turn
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
        clock.ended(served.id, result)
        yield ndjson(encode_result(result))
    except Exception as exc:  # not BaseException: a cancelled stream (client gone) says nothing
        log_failure(exc)
        yield ndjson({"error": encode_error(exc)})
    finally:
        runs.pop(run_id, None)


async def _turn_within(stack: contextlib.AsyncExitStack, served: ServedModel, owner: str,
                       timeout: float | None) -> bool:
    """Enter ``served``'s queue as ``owner``, waiting at most ``timeout`` for the turn (then
    the run has ``timeout`` of its own)."""
    try:
        held: bool = await asyncio.wait_for(stack.enter_async_context(served.turn(owner)),
                                            timeout)
    except asyncio.TimeoutError:
        raise RunTimeoutError(
            f"the run did not start within {timeout} s: the model was busy with earlier "
            "requests (raise timeout=, or serve another copy of the model)") from None
    return held


@router.post(PREFIX + "/{model}/abort")
async def abort(request: Request, model: str) -> Any:
    """Abort a run of this client (``{"run_id": ...}``), or every run it has on this model;
    ``{"aborted": true}`` if one was running or waiting."""
    async def stop() -> dict[str, bool]:
        _served(request, model)
        body = await read_json(request)
        owner = _owner(request)
        wanted = body.get("run_id")
        runs = _runs(request)
        found = False
        for run_id, live in list(runs.items()):
            if live.owner != owner or (wanted is not None and run_id != wanted):
                continue
            found = True
            live.aborted = True
            if live.stream is not None:
                live.stream.abort()
        return {"aborted": found}
    return await _answer(stop())


@router.post(PREFIX + "/{model}/embed")
async def embed(request: Request, model: str) -> Any:
    """Embeddings of ``texts`` (one row each), as an encoded float32 array."""
    async def vectors() -> dict[str, Any]:
        served = _served(request, model)
        body = await read_json(request)
        texts = body.get("texts")
        if not isinstance(texts, (str, list)):
            raise InvalidParameterError("embed needs texts: a list of strings")
        options = {k: body[k] for k in ("pooling", "normalize", "instruction")
                   if body.get(k) is not None}
        timeout = _timeout(request, body.get("timeout"))
        rows = await _until_disconnect(request, served.embed(encode_texts(texts),
                                                             timeout=timeout, **options))
        return {"embeddings": encode_array(rows)}
    return await _answer(vectors())


@router.post(PREFIX + "/{model}/rerank")
async def rerank(request: Request, model: str) -> Any:
    """Relevance (0-1) of each of ``documents`` to ``query``."""
    async def scores() -> dict[str, Any]:
        served = _served(request, model)
        body = await read_json(request)
        query, documents = body.get("query"), body.get("documents")
        if not isinstance(query, str) or not isinstance(documents, list):
            raise InvalidParameterError("rerank needs query (a string) and documents (a list "
                                        "of strings)")
        options = {k: body[k] for k in ("instruction", "yes_token_id", "no_token_id")
                   if body.get(k) is not None}
        timeout = _timeout(request, body.get("timeout"))
        values = await _until_disconnect(request, served.rerank(query, documents,
                                                                timeout=timeout, **options))
        return {"scores": [float(v) for v in values]}
    return await _answer(scores())


@router.get(PREFIX + "/{model}/kv-cache")
async def kv_cache(request: Request, model: str) -> Any:
    """``{"size": n}``: the positions the model's KV cache holds now (runtime 1.2.1+)."""
    async def size() -> dict[str, int]:
        backend = _served(request, model).backend
        return {"size": int(await asyncio.to_thread(lambda: backend.kv_cache_size))}
    return await _answer(size())


@router.post(PREFIX + "/{model}/kv-cache/clear")
async def clear_kv_cache(request: Request, model: str) -> Any:
    """Clear the KV cache (``keep_system_prompt``, ``ranges`` as ``[[start, end], ...]``) in
    the model's queue; the client then owns the (empty) cache."""
    async def clear() -> dict[str, bool]:
        served = _served(request, model)
        body = await read_json(request)
        keep = bool(body.get("keep_system_prompt", False))
        ranges = body.get("ranges")
        if ranges is not None:
            try:
                ranges = [(int(start), int(end)) for start, end in ranges]
            except (TypeError, ValueError):
                raise InvalidParameterError(
                    "ranges must be a list of [start, end] position pairs") from None
        async with served.turn(_owner(request)):
            await asyncio.to_thread(served.backend.clear_kv_cache, keep, ranges)
        return {"cleared": True}
    return await _answer(clear())
