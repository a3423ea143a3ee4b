"""``POST /v1/completions``: OpenAI's text completions. The prompt reaches the model as written,
without the chat template, and the model's raw text comes back (whole or streamed as SSE).

A completion is not a chat turn, so it goes to the backend directly, in the model's queue,
never through the chat engine. How a prompt skips the chat template depends on how the model is
served:

- token ids (``"prompt": [1, 2, 3]``) are sent as they are;
- a runtime without a template of its own (1.1), or a model served in ``raw`` mode, gets the
  text with the runtime's template switched off;
- a model with a tokenizer (the config's ``tokenizer``, or a GGUF file's own vocabulary) gets
  the text tokenized here, special tokens included (``<|im_start|>`` is one token);
- any other model (native mode, no tokenizer) refuses text prompts: switching the runtime's
  template off cannot be undone (``rkllm_set_chat_template``) and would break its chat turns,
  and a prompt sent through the template would be answered as a chat turn, not continued.

The KV cache is cleared before a completion; the next chat turn replays its conversation.

Example:
    >>> import tempfile, pathlib
    >>> from fastapi.testclient import TestClient
    >>> from rkllm_core.server import ModelConfig, ServerConfig, create_app
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\nwhen contains "echo" reply " You said: {input}"'
    ...                     '\\ndefault reply "Hi."\\n')
    >>> config = ServerConfig(models=[ModelConfig(path=str(path), library="host", mode="raw",
    ...                                           preset="chatml",
    ...                                           params={"max_context_len": 512})])
    >>> with TestClient(create_app(config)) as client:
    ...     done = client.post("/v1/completions", json={"model": "tiny", "prompt": "echo Once"})
    >>> done.json()["choices"][0]["text"], done.json()["choices"][0]["finish_reason"]
    (' You said: echo Once', 'stop')
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from rkllm_core.errors import InvalidParameterError, RunError
from rkllm_core.server.app import note_model, server_of
from rkllm_core.server.metrics import Metrics
from rkllm_core.server.openai_chat import first_item, flag
from rkllm_core.server.openai_convert import (
    dump,
    max_tokens_of,
    new_id,
    sampling_of,
    stops_of,
    validate,
)
from rkllm_core.server.registry import ServedModel
from rkllm_core.server.turns import sampling_for
from rkllm_core.server.wire import (
    SSE_DONE,
    log_failure,
    openai_error_body,
    read_json,
    sse,
    sse_response,
    until_disconnect,
)

if TYPE_CHECKING:
    from rkllm_core.results import GenerationResult

router = APIRouter()


@dataclass
class CompletionCall:
    """A completions request read: one prompt (text or token ids) and how to run and answer it.

    Example:
        >>> from rkllm_core.server.openai_completions import CompletionCall
        >>> call = CompletionCall.read({"model": "m", "prompt": ["Once upon"], "max_tokens": 8})
        >>> call.prompt, call.tokens, call.max_new_tokens
        ('Once upon', None, 8)
        >>> CompletionCall.read({"model": "m", "prompt": [1, 2, 3]}).tokens
        [1, 2, 3]
    """

    model: str
    prompt: str | None
    tokens: list[int] | None
    stream: bool
    include_usage: bool
    echo: bool
    max_new_tokens: int | None
    stop: list[str]
    sampling: dict[str, Any]

    @classmethod
    def read(cls, body: Mapping[str, Any]) -> CompletionCall:
        """Check ``body`` with the ``openai`` package's ``CompletionCreateParams``; unknown
        fields are ignored."""
        from openai.types.completion_create_params import CompletionCreateParamsBase

        params = validate(CompletionCreateParamsBase, {"model": "", **body})
        prompt = params["prompt"]
        if isinstance(prompt, list) and len(prompt) == 1 and not isinstance(prompt[0], int):
            prompt = prompt[0]
        if isinstance(prompt, list) and not all(isinstance(t, int) for t in prompt):
            raise InvalidParameterError(
                "prompt: give one prompt per request (a string or a list of token ids); "
                f"got {len(prompt)} prompts")
        if prompt is None or prompt == "" or prompt == []:
            raise InvalidParameterError("prompt is empty: give the text to complete")
        if params.get("suffix"):
            raise InvalidParameterError("suffix (fill in the middle) is not supported; write "
                                        "the model's own FIM markers into the prompt instead")
        if (params.get("n") or 1) > 1 or (params.get("best_of") or 1) > 1:
            raise InvalidParameterError("n and best_of above 1 are not supported here: send "
                                        "the request several times")
        if params.get("logprobs"):
            raise InvalidParameterError("logprobs are not supported by this server")
        echo = bool(params.get("echo"))
        if echo and not isinstance(prompt, str):
            raise InvalidParameterError("echo needs a text prompt, not token ids")
        sampling = sampling_of(
            temperature=params.get("temperature"), top_p=params.get("top_p"),
            top_k=body.get("top_k"), frequency_penalty=params.get("frequency_penalty"),
            presence_penalty=params.get("presence_penalty"),
            repeat_penalty=body.get("repeat_penalty", body.get("repetition_penalty")))
        options = params.get("stream_options") or {}
        return cls(str(params["model"]), prompt if isinstance(prompt, str) else None,
                   list(prompt) if isinstance(prompt, list) else None, flag(body, "stream"),
                   bool(options.get("include_usage")), echo,
                   max_tokens_of(params.get("max_tokens")), stops_of(params.get("stop")),
                   sampling)


@functools.lru_cache(maxsize=8)
def _tokenizer(source: str) -> Any:
    from rkllm_core.chat.tokenizer import ChatTokenizer

    path = Path(source)
    if path.is_dir():
        return ChatTokenizer.from_pretrained_dir(path)
    if path.suffix == ".gguf":
        return ChatTokenizer.from_gguf(path)
    return ChatTokenizer.from_file(path)


async def run_inputs(served: ServedModel, call: CompletionCall) -> dict[str, Any]:
    """How the prompt reaches ``served`` without its chat template: the backend's run
    arguments (``prompt`` or ``tokens``, and the ``setup`` before the run); see the module.

    Example:
        >>> import asyncio, tempfile, pathlib
        >>> from rkllm_core.server.config import ModelConfig
        >>> from rkllm_core.server.openai_completions import CompletionCall, run_inputs
        >>> from rkllm_core.server.registry import ModelRegistry
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text("RKLLM-SCRIPTED 1\\n")
        >>> registry = ModelRegistry([ModelConfig(path=str(path), library="host",
        ...                                       params={"max_context_len": 512})])
        >>> call = CompletionCall.read({"model": "m", "prompt": [5, 6]})
        >>> sorted(asyncio.run(run_inputs(registry.get("m"), call)))
        ['setup', 'tokens']
        >>> registry.close()
    """
    from rkllm_core.backend import ClearKVCache, SetChatTemplate

    capabilities = served.backend.capabilities
    clear = [ClearKVCache()] if capabilities.kv_cache_clear else []
    if call.tokens is not None:
        return {"tokens": call.tokens, "setup": clear}
    if not capabilities.chat_template:
        return {"prompt": call.prompt, "setup": clear}
    if served.chat.mode == "raw":
        # the engine already runs this model with the template off; this clears the cache too
        return {"prompt": call.prompt, "setup": [SetChatTemplate("", "", "")]}
    cfg = served.config
    source = cfg.tokenizer or (cfg.path if cfg.path.endswith(".gguf") else None)
    if source is None:
        raise InvalidParameterError(
            f"model {served.id!r} is served in {served.chat.mode} mode, where the runtime "
            "applies its chat template to text, so it cannot complete raw text: send the "
            "prompt as token ids, or give the model a `tokenizer` (or `mode = \"raw\"` with a "
            "`preset`) in the server's config file; or use /v1/chat/completions")
    tokenizer = await asyncio.to_thread(_tokenizer, source)
    assert call.prompt is not None
    return {"tokens": tokenizer.encode(call.prompt, parse_special=True), "setup": clear}


async def _run(served: ServedModel, call: CompletionCall, inputs: dict[str, Any],
               metrics: Metrics, arrived: float, timeout: float | None,
               ) -> AsyncIterator[str | GenerationResult]:
    """The completion's text pieces, then its GenerationResult; leaving early aborts it."""
    first = True
    async with served.turn("completion"):
        stream = served.backend.astream(
            **inputs, keep_history=False, max_new_tokens=call.max_new_tokens,
            sampling=sampling_for(served, call.sampling), stop=call.stop or None,
            timeout=timeout)
        async with contextlib.aclosing(stream):
            async for piece in stream:
                if first:
                    metrics.ttft.labels(model=served.id).observe(time.monotonic() - arrived)
                    first = False
                if piece.text:
                    yield piece.text
        result = stream.result
    metrics.count_turn(served.id, _prompt_tokens(result, inputs), 0, len(result.token_ids),
                       False)
    yield result


def _prompt_tokens(result: GenerationResult, inputs: Mapping[str, Any]) -> int:
    if result.perf.prefill_tokens is not None:
        return int(result.perf.prefill_tokens)
    return len(inputs.get("tokens") or ())


def _finish(result: GenerationResult) -> str:
    if result.finish_reason in ("stop", "length"):
        return result.finish_reason
    raise RunError(f"the run ended ({result.finish_reason}) before its text was complete; try "
                   "again", result.text)


@dataclass
class _Reply:
    id: str
    created: int
    model: str
    echo: str

    def completion(self, text: str | None, finish: str | None = None,
                   usage: Any = None) -> dict[str, Any]:
        from openai.types import Completion, CompletionChoice

        # finish_reason is null until the last chunk, which the type does not allow: constructed
        choices = [] if text is None else [CompletionChoice.model_construct(
            text=text, index=0, logprobs=None, finish_reason=finish)]
        fields: dict[str, Any] = {"usage": usage} if usage is not None else {}
        return dump(Completion(id=self.id, object="text_completion", created=self.created,
                               model=self.model, choices=choices, **fields))

    def usage(self, result: GenerationResult, inputs: Mapping[str, Any]) -> Any:
        from openai.types import CompletionUsage

        prompt, made = _prompt_tokens(result, inputs), len(result.token_ids)
        return CompletionUsage(prompt_tokens=prompt, completion_tokens=made,
                               total_tokens=prompt + made)


Run = AsyncGenerator["str | GenerationResult", None]


async def _whole(run: Run) -> tuple[str, GenerationResult]:
    text = []
    async with contextlib.aclosing(run):
        async for item in run:
            if isinstance(item, str):
                text.append(item)
            else:
                return "".join(text), item
    raise RuntimeError("the run ended without its result")


async def _events(first: str | GenerationResult, run: Run, reply: _Reply,
                  inputs: Mapping[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
    async with contextlib.aclosing(run):
        try:
            if reply.echo:
                yield sse(reply.completion(reply.echo))
            item = first
            while isinstance(item, str):
                yield sse(reply.completion(item))
                item = await anext(run)
            yield sse(reply.completion("", _finish(item)))
            if include_usage:
                yield sse(reply.completion(None, usage=reply.usage(item, inputs)))
        except Exception as exc:
            log_failure(exc)
            yield sse(openai_error_body(exc))
            return
    yield SSE_DONE


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    """OpenAI's text completions (``stream`` true: SSE chunks)."""
    arrived = time.monotonic()
    call = CompletionCall.read(await read_json(request))
    state = server_of(request)
    served = state.registry.get(call.model, "chat")
    note_model(request, served.id)
    inputs = await run_inputs(served, call)
    reply = _Reply(new_id("cmpl-"), int(time.time()), served.id,
                   call.prompt if call.echo and call.prompt else "")
    run = cast(Run, _run(served, call, inputs, state.metrics, arrived,
                         state.config.request_timeout))
    if not call.stream:
        text, result = await until_disconnect(request, _whole(run))
        return JSONResponse(reply.completion(reply.echo + text, _finish(result),
                                             reply.usage(result, inputs)))
    first = await first_item(request, run)
    return sse_response(_events(first, run, reply, inputs, call.include_usage))
