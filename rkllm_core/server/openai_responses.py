"""``POST /v1/responses``: OpenAI's Responses API (what n8n and newer clients use) over the chat
engine: ``input`` as a string or a list of items (messages, ``function_call`` and
``function_call_output``), ``instructions``, function ``tools``, ``text.format`` for structured
output, ``reasoning`` for the model's thinking.

This server stores nothing: every request carries its whole conversation
(``previous_response_id`` is refused), and the chat engine's KV cache makes a conversation that
grows by a turn cheap anyway. Streamed, the reply is the typed event sequence of
``openai.types.responses`` (``response.created``, ``response.output_item.added``,
``response.output_text.delta``, ..., ``response.completed``, or ``response.incomplete`` when
``max_output_tokens`` cut it), each as an SSE ``event:`` / ``data:`` pair; a failure after the
first event ends it with ``error`` and ``response.failed``.

Example:
    >>> import tempfile, pathlib
    >>> from fastapi.testclient import TestClient
    >>> from rkllm_core.server import ModelConfig, ServerConfig, create_app
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi there."\\n')
    >>> config = ServerConfig(models=[ModelConfig(path=str(path), library="host",
    ...                                           params={"max_context_len": 512})])
    >>> with TestClient(create_app(config)) as client:
    ...     whole = client.post("/v1/responses", json={"model": "tiny", "input": "Hello"}).json()
    ...     events = client.post("/v1/responses", json={"model": "tiny", "input": "Hello",
    ...                                                "stream": True}).text
    >>> whole["status"], whole["output"][0]["content"][0]["text"]
    ('completed', 'Hi there.')
    >>> names = [line[7:] for line in events.splitlines() if line.startswith("event: ")]
    >>> for name in dict.fromkeys(names):  # each kind once, in order
    ...     print(name)
    response.created
    response.in_progress
    response.output_item.added
    response.content_part.added
    response.output_text.delta
    response.output_text.done
    response.content_part.done
    response.output_item.done
    response.completed
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from rkllm_core.chat import ChatChunk, ChatMessage, ChatResult, ToolCall
from rkllm_core.errors import InvalidParameterError
from rkllm_core.server.openai_chat import Turn, first_item, flag, start_turn, turn_result
from rkllm_core.server.openai_convert import (
    CallPiece,
    ToolCallPieces,
    arguments_of,
    dump,
    finish_of,
    max_tokens_of,
    new_id,
    sampling_of,
    schema_of,
    text_of,
    thinking_of,
    tool_choice_of,
    tool_specs,
    unsupported_tool,
    validate,
)
from rkllm_core.server.turns import TurnRequest, cached_tokens
from rkllm_core.server.wire import (
    log_failure,
    read_json,
    sse,
    sse_response,
    status_of,
    until_disconnect,
)

router = APIRouter()

#: The status of an output item.
ItemStatus = Literal["in_progress", "completed", "incomplete"]
#: The status of a response.
Status = Literal["in_progress", "completed", "incomplete", "failed"]


def input_messages(items: Any, instructions: str | None = None) -> list[ChatMessage]:
    """The Responses API's ``input`` (and ``instructions``) as the engine's messages. A
    ``function_call`` item joins the assistant turn before it; a ``function_call_output`` is a
    tool result named after the call it answers; reasoning items are dropped (templates drop
    them too).

    Example:
        >>> from rkllm_core.server.openai_responses import input_messages
        >>> turns = input_messages([
        ...     {"role": "user", "content": "Weather in Paris?"},
        ...     {"type": "function_call", "call_id": "c1", "name": "get_weather",
        ...      "arguments": '{"city": "Paris"}'},
        ...     {"type": "function_call_output", "call_id": "c1", "output": "sunny"}],
        ...     instructions="Be terse.")
        >>> [t.role for t in turns], turns[2].tool_calls[0].name, turns[3].name
        (['system', 'user', 'assistant', 'tool'], 'get_weather', 'get_weather')
    """
    from openai.types.responses import ResponseFunctionToolCallParam
    from openai.types.responses.easy_input_message_param import EasyInputMessageParam
    from openai.types.responses.response_input_item_param import FunctionCallOutput

    out = [ChatMessage.system(instructions)] if instructions else []
    if isinstance(items, str):
        return [*out, ChatMessage.user(items)]
    if not isinstance(items, list) or not items:
        raise InvalidParameterError(
            "input must be a string or a non-empty list of input items (messages, "
            "function_call, function_call_output)")
    names: dict[str, str] = {}
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, Mapping):
            raise InvalidParameterError(f"{where}: an input item is an object, got "
                                        f"{type(item).__name__}")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise InvalidParameterError(
                    f"{where}.role: {role!r} is not one of user, system, developer, assistant")
            if isinstance(item.get("content"), str):
                validate(EasyInputMessageParam, item, where)
            text = text_of(item.get("content"), f"{where}.content")
            out.append(ChatMessage.user(text) if role == "user" else
                       ChatMessage.assistant(text) if role == "assistant" else
                       ChatMessage.system(text))
        elif kind == "function_call":
            call = validate(ResponseFunctionToolCallParam, item, where)
            made = ToolCall(call["name"], arguments_of(call["arguments"], f"{where}.arguments"),
                            id=call["call_id"])
            names[made.id] = made.name
            if out and out[-1].role == "assistant":
                last = out.pop()
                out.append(ChatMessage.assistant(last.content,
                                                 tool_calls=[*last.tool_calls, made]))
            else:
                out.append(ChatMessage.assistant("", tool_calls=[made]))
        elif kind == "function_call_output":
            result = validate(FunctionCallOutput, item, where)
            out.append(ChatMessage.tool(text_of(result["output"], f"{where}.output"),
                                        tool_call_id=result["call_id"],
                                        name=names.get(result["call_id"])))
        elif kind != "reasoning":
            raise InvalidParameterError(
                f"{where}: input items of type {kind!r} are not supported here; send "
                "messages, function_call and function_call_output items (this server stores "
                "no items and runs no built-in tools)")
    return out


def function_tools(tools: Any) -> list[dict[str, Any]]:
    """The Responses API's ``tools``, checked as the ``openai`` package's ``FunctionToolParam``
    (``strict`` and ``parameters`` may be left out, as the API allows); other kinds of tool are
    refused.

    Example:
        >>> from rkllm_core.server.openai_responses import function_tools
        >>> function_tools([{"type": "function", "name": "f"}])
        [{'name': 'f', 'parameters': None, 'strict': None, 'type': 'function'}]
    """
    from openai.types.responses import FunctionToolParam

    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidParameterError("tools must be a list of function tools")
    checked = []
    for j, tool in enumerate(tools):
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            raise unsupported_tool(tool, f"tools[{j}]")
        checked.append(validate(FunctionToolParam, {"strict": None, "parameters": None, **tool},
                                f"tools[{j}]"))
    return checked


@dataclass
class ResponsesCall:
    """A Responses API request read: the model, the turn, whether to stream, and the checked
    parameters the response echoes back.

    Example:
        >>> from rkllm_core.server.openai_responses import ResponsesCall
        >>> call = ResponsesCall.read({"model": "m", "input": "Hi", "max_output_tokens": 16,
        ...                            "reasoning": {"effort": "low"}, "unknown": True})
        >>> call.turn.max_new_tokens, call.turn.enable_thinking, call.stream
        (16, True, False)
    """

    model: str
    turn: TurnRequest
    stream: bool
    params: dict[str, Any]

    @classmethod
    def read(cls, body: Mapping[str, Any]) -> ResponsesCall:
        """Check ``body`` with the ``openai`` package's ``ResponseCreateParams`` and turn it
        into the engine's terms; unknown fields are ignored."""
        from openai.types.responses.response_create_params import ResponseCreateParamsBase

        # input items and tools are checked one by one against the type of their kind
        params = validate(ResponseCreateParamsBase, {**body, "input": "", "tools": []})
        params["tools"] = function_tools(body.get("tools"))
        if "input" not in body:
            raise InvalidParameterError("input is required: a string or a list of input items")
        for name in ("previous_response_id", "conversation"):
            if params.get(name):
                raise InvalidParameterError(
                    f"{name} is not supported: this server stores no responses; send the whole "
                    "conversation in `input`")
        messages = input_messages(body["input"], params.get("instructions"))
        tools = tool_specs(params.get("tools"))
        choice, tools = tool_choice_of(params.get("tool_choice"), tools)
        schema, json_mode = schema_of((params.get("text") or {}).get("format"))
        sampling = sampling_of(
            temperature=params.get("temperature"), top_p=params.get("top_p"),
            top_k=body.get("top_k"),
            repeat_penalty=body.get("repeat_penalty", body.get("repetition_penalty")),
            frequency_penalty=body.get("frequency_penalty"),
            presence_penalty=body.get("presence_penalty"))
        effort = (params.get("reasoning") or {}).get("effort")
        turn = TurnRequest(
            messages, tools=tools, tool_choice=choice,
            enable_thinking=thinking_of(body, effort),
            max_new_tokens=max_tokens_of(params.get("max_output_tokens"),
                                         name="max_output_tokens"),
            sampling=sampling, schema=schema, json_mode=json_mode)
        return cls(str(params.get("model") or ""), turn, flag(body, "stream"), params)


# -- the response and its items --------------------------------------------------------------------

def _text_part(text: str) -> Any:
    from openai.types.responses import ResponseOutputText

    return ResponseOutputText(type="output_text", text=text, annotations=[], logprobs=[])


def _message(item_id: str, text: str, status: ItemStatus) -> Any:
    from openai.types.responses import ResponseOutputMessage

    return ResponseOutputMessage(id=item_id, type="message", role="assistant", status=status,
                                 content=[_text_part(text)] if status != "in_progress" else [])


def _reasoning(item_id: str, text: str, status: ItemStatus) -> Any:
    from openai.types.responses import ResponseReasoningItem
    from openai.types.responses.response_reasoning_item import Content

    content = [Content(type="reasoning_text", text=text)] if status != "in_progress" else []
    return ResponseReasoningItem(id=item_id, type="reasoning", summary=[], content=content,
                                 status=status)


def _call(item_id: str, call_id: str, name: str, arguments: str, status: ItemStatus) -> Any:
    from openai.types.responses import ResponseFunctionToolCall

    return ResponseFunctionToolCall(id=item_id, type="function_call", call_id=call_id, name=name,
                                    arguments=arguments, status=status)


@dataclass
class _Reply:
    """One response's envelope: its id, time, model and what the request asked."""

    id: str
    created: int
    model: str
    params: dict[str, Any]

    def response(self, status: Status, output: list[Any], result: ChatResult | None = None,
                 error: BaseException | None = None) -> Any:
        from openai.types.responses import Response, ResponseError, ResponseUsage
        from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

        p = self.params
        extra: dict[str, Any] = {
            name: p[name] for name in ("instructions", "max_output_tokens", "metadata",
                                       "reasoning", "temperature", "text", "top_p")
            if p.get(name) is not None}
        if result is not None:
            u = result.usage
            extra["usage"] = ResponseUsage(
                input_tokens=u.input_tokens, output_tokens=u.output_tokens,
                total_tokens=u.total_tokens,
                input_tokens_details=InputTokensDetails(cached_tokens=cached_tokens(result),
                                                        cache_write_tokens=u.prefill_tokens),
                output_tokens_details=OutputTokensDetails(reasoning_tokens=0))
            if status == "incomplete":
                extra["incomplete_details"] = {"reason": "max_output_tokens"}
        if error is not None:
            extra["error"] = ResponseError(
                code="rate_limit_exceeded" if status_of(error)[0] == 429 else "server_error",
                message=str(error) or type(error).__name__)
        return Response(id=self.id, object="response", created_at=self.created,
                        model=self.model, status=status, output=output,
                        parallel_tool_calls=p.get("parallel_tool_calls", True),
                        tool_choice=p.get("tool_choice", "auto"), tools=p.get("tools", []),
                        **extra)

    def finished(self, result: ChatResult) -> dict[str, Any]:
        """The whole response to a non-streamed request."""
        finish = finish_of(result)
        status: ItemStatus = "incomplete" if finish == "length" else "completed"
        reply = result.message
        output = []
        if reply.reasoning:
            output.append(_reasoning(new_id("rs_"), reply.reasoning, status))
        if reply.content or not reply.tool_calls:
            output.append(_message(new_id("msg_"), reply.content, status))
        output += [_call(new_id("fc_"), c.id, c.name, c.arguments_json(), "completed")
                   for c in reply.tool_calls]
        return dump(self.response(status, output, result))


# -- streaming -------------------------------------------------------------------------------------

@dataclass
class _Open:
    """The output item being streamed."""

    kind: str  # "message", "reasoning" or "call"
    id: str
    index: int
    text: str = ""
    call_id: str = ""
    name: str = ""


@dataclass
class _EventStream:
    """Turns engine chunks into the Responses API's events, numbered in order."""

    reply: _Reply
    sequence: int = 0
    output: list[Any] = field(default_factory=list)
    open: _Open | None = None

    def event(self, kind: type, **fields: Any) -> bytes:
        model = kind(sequence_number=self.sequence, **fields)
        self.sequence += 1
        name: str = model.type
        return b"event: " + name.encode() + b"\n" + sse(dump(model))

    def start(self) -> list[bytes]:
        from openai.types.responses import ResponseCreatedEvent, ResponseInProgressEvent

        snapshot = self.reply.response("in_progress", [])
        return [self.event(ResponseCreatedEvent, type="response.created", response=snapshot),
                self.event(ResponseInProgressEvent, type="response.in_progress",
                           response=snapshot)]

    def _begin(self, kind: str, piece: CallPiece | None = None) -> list[bytes]:
        from openai.types.responses import (
            ResponseContentPartAddedEvent,
            ResponseOutputItemAddedEvent,
        )

        events = self._close("completed")
        prefix = {"message": "msg_", "reasoning": "rs_", "call": "fc_"}[kind]
        item = self.open = _Open(kind, new_id(prefix), len(self.output))
        if piece is not None:
            item.call_id, item.name = piece.id or "", piece.name or ""
        added = (_message(item.id, "", "in_progress") if kind == "message" else
                 _reasoning(item.id, "", "in_progress") if kind == "reasoning" else
                 _call(item.id, item.call_id, item.name, "", "in_progress"))
        events.append(self.event(ResponseOutputItemAddedEvent, type="response.output_item.added",
                                 output_index=item.index, item=added))
        if kind == "message":
            events.append(self.event(ResponseContentPartAddedEvent,
                                     type="response.content_part.added", item_id=item.id,
                                     output_index=item.index, content_index=0,
                                     part=_text_part("")))
        return events

    def feed(self, chunk: ChatChunk, calls: ToolCallPieces) -> list[bytes]:
        from openai.types.responses import (
            ResponseFunctionCallArgumentsDeltaEvent,
            ResponseReasoningTextDeltaEvent,
            ResponseTextDeltaEvent,
        )

        events: list[bytes] = []
        for kind, text in (("reasoning", chunk.reasoning), ("message", chunk.content)):
            if not text:
                continue
            if self.open is None or self.open.kind != kind:
                events += self._begin(kind)
            item = self.open
            assert item is not None
            item.text += text
            if kind == "message":
                events.append(self.event(ResponseTextDeltaEvent, type="response.output_text.delta",
                                         item_id=item.id, output_index=item.index,
                                         content_index=0, delta=text, logprobs=[]))
            else:
                events.append(self.event(ResponseReasoningTextDeltaEvent,
                                         type="response.reasoning_text.delta", item_id=item.id,
                                         output_index=item.index, content_index=0, delta=text))
        for piece in calls.feed(chunk.tool_calls):
            if piece.id is not None:
                events += self._begin("call", piece)
            item = self.open
            if piece.arguments and item is not None and item.kind == "call":
                item.text += piece.arguments
                events.append(self.event(ResponseFunctionCallArgumentsDeltaEvent,
                                         type="response.function_call_arguments.delta",
                                         item_id=item.id, output_index=item.index,
                                         delta=piece.arguments))
        return events

    def _close(self, status: ItemStatus) -> list[bytes]:
        from openai.types.responses import (
            ResponseContentPartDoneEvent,
            ResponseFunctionCallArgumentsDoneEvent,
            ResponseOutputItemDoneEvent,
            ResponseReasoningTextDoneEvent,
            ResponseTextDoneEvent,
        )

        item, self.open = self.open, None
        if item is None:
            return []
        events = []
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "message":
            done = _message(item.id, item.text, status)
            events += [self.event(ResponseTextDoneEvent, type="response.output_text.done",
                                  content_index=0, text=item.text, logprobs=[], **where),
                       self.event(ResponseContentPartDoneEvent, type="response.content_part.done",
                                  content_index=0, part=_text_part(item.text), **where)]
        elif item.kind == "reasoning":
            done = _reasoning(item.id, item.text, status)
            events.append(self.event(ResponseReasoningTextDoneEvent,
                                     type="response.reasoning_text.done", content_index=0,
                                     text=item.text, **where))
        else:
            done = _call(item.id, item.call_id, item.name, item.text, "completed")
            events.append(self.event(ResponseFunctionCallArgumentsDoneEvent,
                                     type="response.function_call_arguments.done",
                                     arguments=item.text, name=item.name, **where))
        self.output.append(done)
        events.append(self.event(ResponseOutputItemDoneEvent, type="response.output_item.done",
                                 output_index=item.index, item=done))
        return events

    def finish(self, result: ChatResult) -> list[bytes]:
        from openai.types.responses import ResponseCompletedEvent, ResponseIncompleteEvent

        complete = finish_of(result) != "length"
        status: ItemStatus = "completed" if complete else "incomplete"
        # an empty reply is still one (empty) message
        events = self._begin("message") if not self.output and self.open is None else []
        events += self._close(status)
        final = self.reply.response(status, self.output, result)
        if complete:
            events.append(self.event(ResponseCompletedEvent, type="response.completed",
                                     response=final))
        else:
            events.append(self.event(ResponseIncompleteEvent, type="response.incomplete",
                                     response=final))
        return events

    def fail(self, error: BaseException) -> list[bytes]:
        from openai.types.responses import ResponseErrorEvent, ResponseFailedEvent

        _status, code, _kind = status_of(error)
        return [self.event(ResponseErrorEvent, type="error", code=code, param=None,
                           message=str(error) or type(error).__name__),
                self.event(ResponseFailedEvent, type="response.failed",
                           response=self.reply.response("failed", self.output, error=error))]


async def _events(first: ChatChunk | ChatResult, turn: Turn,
                  reply: _Reply) -> AsyncIterator[bytes]:
    stream = _EventStream(reply)
    async with contextlib.aclosing(turn):
        try:
            for event in stream.start():
                yield event
            calls = ToolCallPieces()
            item = first
            while not isinstance(item, ChatResult):
                for event in stream.feed(item, calls):
                    yield event
                item = await anext(turn)
            for event in stream.finish(item):
                yield event
        except Exception as exc:
            log_failure(exc)
            for event in stream.fail(exc):
                yield event


@router.post("/v1/responses")
async def create_response(request: Request) -> Response:
    """OpenAI's Responses API (``stream`` true: the typed event sequence as SSE)."""
    arrived = time.monotonic()
    call = ResponsesCall.read(await read_json(request))
    served, turn = start_turn(request, call.model, call.turn, arrived)
    reply = _Reply(new_id("resp_"), int(time.time()), served.id, call.params)
    if not call.stream:
        result = await until_disconnect(request, turn_result(turn))
        return JSONResponse(reply.finished(result))
    first = await first_item(request, turn)
    return sse_response(_events(first, turn, reply))
