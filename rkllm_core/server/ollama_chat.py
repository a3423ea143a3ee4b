"""``POST /api/chat`` and ``POST /api/generate``: Ollama's chat and completion calls over the
chat engine, streamed as NDJSON (Ollama's default) or answered whole.

A stream is one JSON object per ``\\n``-terminated line (``application/x-ndjson``): each a
``ChatResponse`` / ``GenerateResponse`` with the text it adds and ``done: false``; a tool call
is sent whole in one line, as Ollama does; the last line has ``done: true``, ``done_reason`` and
the timings in nanoseconds. The response starts once the model's first piece is there, so
what fails before it (a full queue, a conversation the engine refuses) still gets its own
status; what fails after it ends the stream with one line ``{"error": "..."}``, which the
``ollama`` client raises as ``ResponseError``.

An empty ``messages`` (chat) or ``prompt`` (generate) is Ollama's "load the model" call: the
answer is ``done: true, done_reason: "load"`` at once (the models are loaded at start).

Example:
    >>> import json, tempfile, pathlib
    >>> from fastapi.testclient import TestClient
    >>> from rkllm_core.server import ModelConfig, ServerConfig, create_app
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi there."\\n')
    >>> config = ServerConfig(models=[ModelConfig(path=str(path), library="host",
    ...                                           params={"max_context_len": 512})])
    >>> with TestClient(create_app(config)) as client:
    ...     lines = client.post("/api/chat", json={
    ...         "model": "tiny", "messages": [{"role": "user", "content": "Hello"}]}).text
    ...     whole = client.post("/api/generate", json={
    ...         "model": "tiny:latest", "prompt": "Hello", "stream": False}).json()
    >>> parts = [json.loads(line) for line in lines.splitlines()]
    >>> "".join(p["message"]["content"] for p in parts), parts[-1]["done_reason"]
    ('Hi there.', 'stop')
    >>> whole["response"], whole["done"]
    ('Hi there.', True)
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar, cast

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from ollama._types import ChatRequest, ChatResponse, GenerateRequest, GenerateResponse, Message
from pydantic import BaseModel

from rkllm_core.backend import ClearKVCache, RunSetup, SetChatTemplate
from rkllm_core.chat import ChatChunk, ChatMessage, ChatResult, ChatUsage
from rkllm_core.errors import InvalidParameterError
from rkllm_core.server.app import note_model, server_of
from rkllm_core.server.ollama_convert import (
    chat_messages,
    done_reason,
    dump,
    now,
    ollama_tool_calls,
    reply_message,
    text_only,
    thinking,
    timings,
    tool_specs,
    turn_settings,
)
from rkllm_core.server.registry import ServedModel
from rkllm_core.server.turns import TurnRequest, sampling_for, turn_items
from rkllm_core.server.wire import (
    Template,
    log_failure,
    ndjson,
    ndjson_response,
    ollama_error,
    parse,
    read_json,
    until_disconnect,
)

logger = logging.getLogger("rkllm_core.server")

router = APIRouter()

_Request = TypeVar("_Request", ChatRequest, GenerateRequest)


# -- the two routes --------------------------------------------------------------------------

@router.post("/api/chat")
async def chat(request: Request) -> Response:
    """Ollama's chat: messages (with tool results), tools, ``think``, ``format``, ``options``.

    Example: see :mod:`rkllm_core.server.ollama_chat`.
    """
    arrived, data, body, served = await _opened(request, ChatRequest)
    messages = chat_messages(data.get("messages"))
    if not messages:
        return JSONResponse(dump(ChatResponse(
            model=body.model, created_at=now(), message=Message(role="assistant", content=""),
            done=True, done_reason="load")))
    _refuse_logprobs(body.logprobs)
    turn = TurnRequest(messages, tools=tool_specs(data.get("tools")),
                       enable_thinking=thinking(body.think),
                       **turn_settings(body.options, body.format))
    timeout = server_of(request).config.request_timeout
    items = _turn_items(served, request, turn, arrived, timeout)
    if body.stream is False:
        result = await until_disconnect(request, _last(items))
        return JSONResponse(dump(ChatResponse(
            model=body.model, created_at=now(), message=reply_message(result), done=True,
            done_reason=done_reason(result.finish_reason), **timings(result.usage, arrived))))
    return await _streamed(request, _chat_lines(body.model, items, arrived))


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    """Ollama's completion: ``prompt`` and ``system`` as one user turn through the chat engine,
    or with ``raw: true`` the prompt as written; ``think``, ``format``, ``options``.

    ``context`` (the token ids Ollama hands back to continue a completion) is accepted and not
    used, and none is returned: the runtime keeps its KV cache on the device, gives no way to
    export it per request, and has no tokenizer to turn a reply into ids; a client that sends
    ``context`` gets a fresh completion of its prompt.

    Example: see :mod:`rkllm_core.server.ollama_chat`.
    """
    arrived, _data, body, served = await _opened(request, GenerateRequest)
    if body.suffix:
        raise InvalidParameterError(
            "suffix (fill-in-the-middle) is not supported: the runtime takes one prompt; write "
            "the text around the gap into the prompt in the model's own FIM format and send it "
            "with raw: true")
    if body.template:
        raise InvalidParameterError(
            "template is not supported: the prompt template is the model's; apply your "
            "template to the prompt yourself and send it with raw: true")
    _refuse_logprobs(body.logprobs)
    if body.context:
        logger.debug("generate: ignoring `context` (%d ids): the KV cache cannot be handed "
                     "back per request", len(body.context))
    if not body.prompt:
        return JSONResponse(dump(GenerateResponse(
            model=body.model, created_at=now(), response="", done=True, done_reason="load")))
    settings = turn_settings(body.options, body.format)
    timeout = server_of(request).config.request_timeout
    items: AsyncGenerator[ChatChunk | ChatResult, None]
    if body.raw:
        if settings["json_mode"] or settings["schema"] is not None:
            raise InvalidParameterError(
                "format cannot be combined with raw: true: structured output goes through the "
                "chat template; drop one of them")
        items = _raw_items(served, request, body.prompt, settings, _raw_setup(served), arrived,
                           timeout)
    else:
        messages = ([ChatMessage.system(body.system)] if body.system else []) + [
            ChatMessage.user(body.prompt)]
        turn = TurnRequest(messages, enable_thinking=thinking(body.think), **settings)
        items = _turn_items(served, request, turn, arrived, timeout)
    if body.stream is False:
        result = await until_disconnect(request, _last(items))
        return JSONResponse(dump(GenerateResponse(
            model=body.model, created_at=now(), response=result.message.content,
            thinking=result.message.reasoning or None, done=True,
            done_reason=done_reason(result.finish_reason), **timings(result.usage, arrived))))
    return await _streamed(request, _generate_lines(body.model, items, arrived))


async def _opened(request: Request, kind: type[_Request],
                  ) -> tuple[float, dict[str, Any], _Request, ServedModel]:
    """When the request arrived, its body as JSON and as ``kind``, and the chat model it names."""
    arrived = time.monotonic()
    data = await read_json(request)
    if data.get("images"):  # checked before the type, which wants images it could read
        raise text_only("images")
    body = parse(kind, data)
    served = server_of(request).registry.get(body.model, "chat")
    note_model(request, served.id)
    return arrived, data, body, served


def _refuse_logprobs(logprobs: bool | None) -> None:
    if logprobs:
        raise InvalidParameterError(
            "logprobs are not supported: the runtime does not report token probabilities "
            "while it streams; send the request without `logprobs`")


# -- turns: the engine's, or a raw prompt ------------------------------------------------------

def _turn_items(served: ServedModel, request: Request, turn: TurnRequest, arrived: float,
                timeout: float | None) -> AsyncGenerator[ChatChunk | ChatResult, None]:
    metrics = server_of(request).metrics
    return cast(AsyncGenerator[ChatChunk | ChatResult, None],
                turn_items(served, turn, metrics, arrived, timeout=timeout,
                           scope=request.scope))


async def _raw_items(served: ServedModel, request: Request, prompt: str,
                     settings: dict[str, Any], setup: list[RunSetup], arrived: float,
                     timeout: float | None) -> AsyncGenerator[ChatChunk | ChatResult, None]:
    """The prompt as written, straight to the model (no template, no history), in the model's
    queue; its pieces as chunks, then a :class:`ChatResult` of the whole completion."""
    metrics = server_of(request).metrics
    first = True
    async with served.turn("generate"):
        stream = served.backend.astream(
            prompt, keep_history=False, max_new_tokens=settings["max_new_tokens"],
            sampling=sampling_for(served, settings["sampling"]),
            stop=settings["stop"] or None, setup=setup, timeout=timeout)
        try:
            async for piece in stream:
                if first:
                    metrics.ttft.labels(model=served.id).observe(time.monotonic() - arrived)
                    first = False
                if piece.text:
                    yield ChatChunk(piece.text)
            generation = stream.result
        finally:
            await stream.aclose()
    perf = generation.perf
    prefill = perf.prefill_tokens or 0
    usage = ChatUsage(prefill, len(generation.token_ids), prefill, perf.prefill_ms,
                      perf.decode_ms, perf.tokens_per_second)
    metrics.count_turn(served.id, prefill, 0, usage.output_tokens, False)
    yield ChatResult(ChatMessage.assistant(generation.text), [], generation.finish_reason,
                     usage, generation.stop_sequence, "raw", False,
                     served.backend.runtime_info.release, generation.text)


def _raw_setup(served: ServedModel) -> list[RunSetup]:
    """What the runtime must do before a raw prompt: switch its template off and start from an
    empty KV cache. Refused for a model in native mode, whose template is the one baked into
    the ``.rkllm`` file: once switched off it cannot be restored, and its chat would break."""
    capabilities = served.backend.capabilities
    setup: list[RunSetup] = [ClearKVCache()] if capabilities.kv_cache_clear else []
    if not capabilities.chat_template:
        return setup  # runtime 1.1 applies no template: every prompt goes as written
    if served.chat.mode == "native":
        raise InvalidParameterError(
            f"raw: true needs a model whose chat template the server applies, but "
            f"{served.id!r} runs in native mode (the runtime applies the template baked into "
            "its .rkllm file to every prompt); set `preset` (and mode = \"raw\") or "
            "`tokenizer` for this model in the rkllm serve config file, or send the prompt "
            "without raw")
    # tokens and raw modes never use the runtime's template: switching it off costs them nothing
    return [SetChatTemplate("", "", ""), *setup]


async def _last(items: AsyncGenerator[ChatChunk | ChatResult, None]) -> ChatResult:
    """The :class:`ChatResult` that ends ``items`` (a non-streamed answer)."""
    async with contextlib.aclosing(items):
        async for item in items:
            if isinstance(item, ChatResult):
                return item
    raise RuntimeError("the turn ended without a result")


# -- NDJSON lines ----------------------------------------------------------------------------

async def _chat_lines(model: str, items: AsyncGenerator[ChatChunk | ChatResult, None],
                      arrived: float) -> AsyncGenerator[BaseModel | bytes, None]:
    # a line of text only is filled in a template the ollama type rendered once (hot path)
    text_line = Template(lambda v: ndjson(ChatResponse(
        model=model, created_at=v["at"], done=False,
        message=Message(role="assistant", content=v["text"]))), ["at", "text"])
    async with contextlib.aclosing(items):
        async for item in items:
            if isinstance(item, ChatResult):
                calls = ollama_tool_calls(item.message.tool_calls)
                if calls:  # whole calls in one line, as Ollama sends them
                    yield ChatResponse(model=model, created_at=now(), done=False,
                                       message=Message(role="assistant", content="",
                                                       tool_calls=calls))
                yield ChatResponse(model=model, created_at=now(),
                                   message=Message(role="assistant", content=""), done=True,
                                   done_reason=done_reason(item.finish_reason),
                                   **timings(item.usage, arrived))
            elif item.content and not item.reasoning:
                yield text_line.fill(at=now(), text=item.content)
            elif item.content or item.reasoning:
                yield ChatResponse(model=model, created_at=now(), done=False, message=Message(
                    role="assistant", content=item.content, thinking=item.reasoning or None))


async def _generate_lines(model: str, items: AsyncGenerator[ChatChunk | ChatResult, None],
                          arrived: float) -> AsyncGenerator[BaseModel | bytes, None]:
    text_line = Template(lambda v: ndjson(GenerateResponse(
        model=model, created_at=v["at"], response=v["text"], done=False)), ["at", "text"])
    async with contextlib.aclosing(items):
        async for item in items:
            if isinstance(item, ChatResult):
                yield GenerateResponse(model=model, created_at=now(), response="", done=True,
                                       done_reason=done_reason(item.finish_reason),
                                       **timings(item.usage, arrived))
            elif item.content and not item.reasoning:
                yield text_line.fill(at=now(), text=item.content)
            elif item.content or item.reasoning:
                yield GenerateResponse(model=model, created_at=now(), response=item.content,
                                       thinking=item.reasoning or None, done=False)


async def _streamed(request: Request, lines: AsyncGenerator[BaseModel | bytes, None]) -> Response:
    """An NDJSON response of ``lines``, started once the first line is there (while the
    request waits for it, a client that leaves aborts its turn)."""
    try:
        first = await until_disconnect(request, anext(lines))
    except BaseException:
        await lines.aclose()
        raise
    return ndjson_response(_framed(first, lines))


async def _framed(first: BaseModel | bytes, lines: AsyncGenerator[BaseModel | bytes, None]
                  ) -> AsyncIterator[bytes]:
    try:
        yield first if isinstance(first, bytes) else ndjson(first)
        async for line in lines:
            yield line if isinstance(line, bytes) else ndjson(line)
    except Exception as exc:  # the status is sent: the stream's last line says what failed
        log_failure(exc)
        yield ndjson(json.loads(bytes(ollama_error(exc).body)))
    finally:
        await lines.aclose()
