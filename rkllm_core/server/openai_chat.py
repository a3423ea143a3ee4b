"""``POST /v1/chat/completions``: OpenAI's Chat Completions over the chat engine, whole or
streamed, with tools, structured output, reasoning (``reasoning_content``), stop sequences and
usage that counts the prompt tokens the KV cache already held (``cached_tokens``).

A streamed reply is SSE: ``data: {chunk}`` events, blank-line separated, ending with
``data: [DONE]``; no comment pings. The first chunk is sent once the model produced its first
piece, so a request that fails before that (a full queue, a bad conversation) still gets its
HTTP status; a failure after it ends the stream with one ``data: {"error": {...}}`` event and no
``[DONE]``, which the official client raises.

Example:
    >>> import tempfile, pathlib
    >>> from fastapi.testclient import TestClient
    >>> from rkllm_core.server import ModelConfig, ServerConfig, create_app
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi there."\\n')
    >>> config = ServerConfig(models=[ModelConfig(path=str(path), library="host",
    ...                                           params={"max_context_len": 512})])
    >>> ask = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}]}
    >>> with TestClient(create_app(config)) as client:
    ...     whole = client.post("/v1/chat/completions", json=ask).json()
    ...     events = client.post("/v1/chat/completions", json=ask | {"stream": True}).text
    >>> whole["choices"][0]["message"]["content"], whole["choices"][0]["finish_reason"]
    ('Hi there.', 'stop')
    >>> import json
    >>> chunks = [json.loads(e[6:]) for e in events.split("\\n\\n") if e.startswith("data: {")]
    >>> "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    'Hi there.'
    >>> chunks[-1]["choices"][0]["finish_reason"], events.endswith("data: [DONE]\\n\\n")
    ('stop', True)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from rkllm_core.chat import ChatChunk, ChatResult
from rkllm_core.errors import InvalidParameterError
from rkllm_core.server.app import note_model, server_of
from rkllm_core.server.openai_convert import (
    Finish,
    ToolCallPieces,
    chat_messages,
    dump,
    finish_of,
    max_tokens_of,
    new_id,
    sampling_of,
    schema_of,
    stops_of,
    thinking_of,
    tool_choice_of,
    tool_specs,
    usage_of,
    validate,
)
from rkllm_core.server.registry import ServedModel
from rkllm_core.server.turns import TurnRequest, turn_items
from rkllm_core.server.wire import (
    SSE_DONE,
    Template,
    log_failure,
    openai_error_body,
    read_json,
    sse,
    sse_response,
    until_disconnect,
)

router = APIRouter()

_Item = TypeVar("_Item")

#: What :func:`~rkllm_core.server.turns.run_turn` yields, as a closable generator.
Turn = AsyncGenerator[ChatChunk | ChatResult, None]


def flag(body: Mapping[str, Any], name: str) -> bool:
    """A boolean request field (absent or null: false); anything else is refused.

    Example:
        >>> from rkllm_core.server.openai_chat import flag
        >>> flag({"stream": True}, "stream"), flag({}, "stream")
        (True, False)
    """
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return bool(value)
    raise InvalidParameterError(f"{name} must be true or false, got {value!r}")


@dataclass
class ChatCall:
    """A Chat Completions request read: the model it names, the turn it asks for, and how to
    answer (streamed, with a usage chunk).

    Example:
        >>> from rkllm_core.server.openai_chat import ChatCall
        >>> call = ChatCall.read({"model": "m", "messages": [{"role": "user", "content": "Hi"}],
        ...                       "max_tokens": 8, "stop": "\\n", "top_k": 1, "unknown": 1})
        >>> call.model, call.turn.max_new_tokens, call.turn.stop, call.turn.sampling
        ('m', 8, ['\\n'], {'top_k': 1})
    """

    model: str
    turn: TurnRequest
    stream: bool
    include_usage: bool

    @classmethod
    def read(cls, body: Mapping[str, Any]) -> ChatCall:
        """Check ``body`` with the ``openai`` package's ``CompletionCreateParams`` and turn it
        into the engine's terms; unknown fields are ignored."""
        from openai.types.chat.completion_create_params import CompletionCreateParamsBase

        # messages are checked one by one against the type of their role (clearer errors)
        top = {"model": "", **body, "messages": []} if "messages" in body else {
            "model": "", **body}
        params = validate(CompletionCreateParamsBase, top)
        messages = chat_messages(body.get("messages"))
        if (params.get("n") or 1) > 1:
            raise InvalidParameterError("n > 1 is not supported here: send the request n times")
        if params.get("functions") or params.get("function_call"):
            raise InvalidParameterError("functions and function_call are deprecated and not "
                                        "supported here; send tools and tool_choice")
        if params.get("logprobs") or params.get("top_logprobs"):
            raise InvalidParameterError("logprobs are not supported by this server; leave "
                                        "logprobs and top_logprobs unset")
        tools = tool_specs(params.get("tools"))
        choice, tools = tool_choice_of(params.get("tool_choice"), tools)
        schema, json_mode = schema_of(params.get("response_format"))
        sampling = sampling_of(
            temperature=params.get("temperature"), top_p=params.get("top_p"),
            top_k=body.get("top_k"), frequency_penalty=params.get("frequency_penalty"),
            presence_penalty=params.get("presence_penalty"),
            repeat_penalty=body.get("repeat_penalty", body.get("repetition_penalty")))
        turn = TurnRequest(
            messages, tools=tools, tool_choice=choice,
            enable_thinking=thinking_of(body, params.get("reasoning_effort")),
            stop=stops_of(params.get("stop")),
            max_new_tokens=max_tokens_of(params.get("max_completion_tokens"),
                                         params.get("max_tokens")),
            sampling=sampling, schema=schema, json_mode=json_mode)
        options = params.get("stream_options") or {}
        return cls(str(params["model"]), turn, flag(body, "stream"),
                   bool(options.get("include_usage")))


@dataclass
class _Reply:
    """The envelope every object of one reply shares."""

    id: str
    created: int
    model: str
    _texts: dict[str, Template] = field(default_factory=dict, repr=False)

    def text_chunk(self, name: str, text: str) -> bytes:
        """The SSE event of a delta that carries only ``text`` in its field ``name``
        (``content`` or ``reasoning_content``), from a :class:`~rkllm_core.server.wire.
        Template` the openai type renders once per reply (the per-token hot path)."""
        template = self._texts.get(name)
        if template is None:
            from openai.types.chat.chat_completion_chunk import ChoiceDelta

            template = self._texts[name] = Template(
                lambda marks: self.chunk(ChoiceDelta.model_validate({name: marks["text"]})),
                ["text"])
        return template.fill(text=text)

    def chunk(self, delta: Any = None, finish: Finish | None = None,
              usage: Any = None) -> bytes:
        from openai.types.chat import ChatCompletionChunk
        from openai.types.chat.chat_completion_chunk import Choice

        choices = [] if delta is None else [
            Choice(index=0, delta=delta, finish_reason=finish, logprobs=None)]
        fields: dict[str, Any] = {"usage": usage} if usage is not None else {}
        return sse(dump(ChatCompletionChunk(id=self.id, object="chat.completion.chunk",
                                            created=self.created, model=self.model,
                                            choices=choices, **fields)))

    def completion(self, result: ChatResult) -> dict[str, Any]:
        from openai.types.chat import (
            ChatCompletion,
            ChatCompletionMessage,
            ChatCompletionMessageFunctionToolCall,
        )
        from openai.types.chat.chat_completion import Choice
        from openai.types.chat.chat_completion_message_function_tool_call import Function

        reply = result.message
        calls = [ChatCompletionMessageFunctionToolCall(
            id=c.id, type="function", function=Function(name=c.name,
                                                        arguments=c.arguments_json()))
            for c in reply.tool_calls]
        fields: dict[str, Any] = {"tool_calls": calls} if calls else {}
        if reply.reasoning:
            fields["reasoning_content"] = reply.reasoning
        message = ChatCompletionMessage(
            role="assistant", content=reply.content if reply.content or not calls else None,
            refusal=None, **fields)
        return dump(ChatCompletion(
            id=self.id, object="chat.completion", created=self.created, model=self.model,
            choices=[Choice(index=0, message=message, finish_reason=finish_of(result),
                            logprobs=None)],
            usage=usage_of(result)))


def _delta(chunk: ChatChunk, calls: ToolCallPieces) -> Any:
    """The ``ChoiceDelta`` of one engine chunk (None when it adds nothing visible)."""
    from openai.types.chat.chat_completion_chunk import (
        ChoiceDelta,
        ChoiceDeltaToolCall,
        ChoiceDeltaToolCallFunction,
    )

    fields: dict[str, Any] = {}
    if chunk.content:
        fields["content"] = chunk.content
    if chunk.reasoning:
        fields["reasoning_content"] = chunk.reasoning
    pieces = calls.feed(chunk.tool_calls)
    if pieces:
        fields["tool_calls"] = [
            ChoiceDeltaToolCall(index=p.index, id=p.id, type="function",
                                function=ChoiceDeltaToolCallFunction(name=p.name,
                                                                     arguments=p.arguments))
            if p.id is not None else
            ChoiceDeltaToolCall(index=p.index,
                                function=ChoiceDeltaToolCallFunction(arguments=p.arguments))
            for p in pieces]
    return ChoiceDelta(**fields) if fields else None


def start_turn(request: Request, model: str, wanted: TurnRequest,
               arrived: float) -> tuple[ServedModel, Turn]:
    """The chat model ``model`` names and its turn for ``wanted`` (not started until
    iterated), run in the model's queue under the server's request timeout."""
    state = server_of(request)
    served = state.registry.get(model, "chat")
    note_model(request, served.id)
    return served, cast(Turn, turn_items(served, wanted, state.metrics, arrived,
                                         timeout=state.config.request_timeout,
                                         scope=request.scope))


async def turn_result(turn: Turn) -> ChatResult:
    """The :class:`~rkllm_core.chat.ChatResult` at the end of a :func:`run_turn` iteration
    (its chunks are dropped: a non-streamed answer is built from the result)."""
    async with contextlib.aclosing(turn):
        async for item in turn:
            if isinstance(item, ChatResult):
                return item
    raise RuntimeError("the turn ended without its result")  # run_turn always yields one


async def first_item(request: Request, turn: AsyncGenerator[_Item, None]) -> _Item:
    """The first chunk of a streamed turn, awaited before the response starts: a request that
    fails before it (a full queue, a bad conversation) still gets its HTTP status, and a client
    that leaves while it waits in the queue aborts its turn."""
    try:
        return await until_disconnect(request, anext(turn))
    except BaseException:
        await turn.aclose()
        raise


async def _events(first: ChatChunk | ChatResult, turn: Turn, reply: _Reply,
                  include_usage: bool) -> AsyncIterator[bytes]:
    from openai.types.chat.chat_completion_chunk import ChoiceDelta

    async with contextlib.aclosing(turn):
        try:
            yield reply.chunk(ChoiceDelta(role="assistant", content=""))
            calls = ToolCallPieces()
            item = first
            while not isinstance(item, ChatResult):
                if item.tool_calls or (item.content and item.reasoning):
                    delta = _delta(item, calls)
                    if delta is not None:
                        yield reply.chunk(delta)
                elif item.content:
                    yield reply.text_chunk("content", item.content)
                elif item.reasoning:
                    yield reply.text_chunk("reasoning_content", item.reasoning)
                item = await anext(turn)
            yield reply.chunk(ChoiceDelta(), finish_of(item))
            if include_usage:
                yield reply.chunk(usage=usage_of(item))
        except Exception as exc:
            log_failure(exc)
            yield sse(openai_error_body(exc))
            return
    yield SSE_DONE


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    """OpenAI's Chat Completions (``stream`` true: SSE chunks)."""
    arrived = time.monotonic()
    call = ChatCall.read(await read_json(request))
    served, turn = start_turn(request, call.model, call.turn, arrived)
    reply = _Reply(new_id("chatcmpl-"), int(time.time()), served.id)
    if not call.stream:
        result = await until_disconnect(request, turn_result(turn))
        return JSONResponse(reply.completion(result))
    first = await first_item(request, turn)
    return sse_response(_events(first, turn, reply, call.include_usage))
