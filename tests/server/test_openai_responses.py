"""``/v1/responses`` (the Responses API) driven by the official ``openai`` client, on scripted
models of the host runtime."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from rkllm_core.server import ServerConfig
from tests.server.openai_models import client, scripted

Serve = Callable[[ServerConfig], AbstractContextManager[str]]

WEATHER_TOOL: Any = {"type": "function", "name": "get_weather",
                     "description": "The weather in a city",
                     "parameters": {"type": "object",
                                    "properties": {"city": {"type": "string"}},
                                    "required": ["city"]}}


def test_a_plain_response_has_output_text_and_usage(tmp_path: Path,
                                                    serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        response = client(url).responses.create(model="assistant", input="Hello",
                                                 instructions="Be terse.")
    assert response.status == "completed" and response.object == "response"
    assert response.output_text == "I am a scripted model."
    assert response.instructions == "Be terse."
    assert response.usage is not None and response.usage.input_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + \
        response.usage.output_tokens


def test_the_stream_helper_gathers_text_deltas_into_the_final_response(
        tmp_path: Path, serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url, \
            client(url).responses.stream(model="assistant",
                                         input="Tell me a long story") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert len(deltas) > 5 and "".join(deltas) == final.output_text
    assert final.output_text.startswith("Once upon a time") and final.status == "completed"


def test_streamed_events_come_in_protocol_order(tmp_path: Path, serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        events = list(client(url).responses.create(model="assistant", input="Hello",
                                                   stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "I am a scripted model."


def test_sse_events_name_their_type(tmp_path: Path, serve_models: Serve) -> None:
    body = {"model": "assistant", "input": "Hello", "stream": True}
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        raw = httpx.post(f"{url}/v1/responses", json=body, timeout=60).content
    events = raw.split(b"\n\n")[:-1]
    for event in events:
        name, data = event.split(b"\n")
        assert name.startswith(b"event: ") and data.startswith(b"data: ")
        assert json.loads(data[6:])["type"] == name[7:].decode()
    assert b"[DONE]" not in raw


def test_a_function_call_and_its_output_round_trip(tmp_path: Path,
                                                   serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        api = client(url)
        asked = api.responses.create(model="assistant", input="What is the weather in Paris?",
                                     tools=[WEATHER_TOOL])
        calls = [item for item in asked.output if item.type == "function_call"]
        assert len(calls) == 1 and calls[0].name == "get_weather"
        assert json.loads(calls[0].arguments) == {"city": "Paris"}
        history: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"},
                              *[item.model_dump(exclude_none=True) for item in asked.output],
                              {"type": "function_call_output", "call_id": calls[0].call_id,
                               "output": "sunny, 24 C"}]
        answered = api.responses.create(model="assistant", input=history,
                                        tools=[WEATHER_TOOL])
    assert asked.output_text == "Let me check."
    assert answered.output_text == "It is sunny in Paris."


def test_a_streamed_function_call_has_its_argument_events(tmp_path: Path,
                                                          serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url, \
            client(url).responses.stream(model="assistant", input="Weather in Paris?",
                                         tools=[WEATHER_TOOL]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.name == "get_weather" and json.loads(done.arguments) == {"city": "Paris"}
    calls = [item for item in final.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather"]
    assert json.loads(calls[0].arguments) == {"city": "Paris"}


class City(BaseModel):
    city: str
    population: int


def test_text_format_json_schema_parses(tmp_path: Path, serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        parsed = client(url).responses.parse(model="assistant", input="json please",
                                             text_format=City)
    assert parsed.output_parsed == City(city="Paris", population=2100000)


def test_reasoning_is_a_reasoning_item(tmp_path: Path, serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        response = client(url).responses.create(
            model="assistant", input="Think about France: its capital?",
            reasoning={"effort": "low"})
    kinds = [item.type for item in response.output]
    assert kinds == ["reasoning", "message"]
    reasoning = response.output[0]
    assert reasoning.type == "reasoning" and reasoning.content is not None
    assert reasoning.content[0].text == "The user asks about France."
    assert response.output_text == "Paris is the capital."


def test_max_output_tokens_makes_an_incomplete_response(tmp_path: Path,
                                                        serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        api = client(url)
        cut = api.responses.create(model="assistant", input="Tell me a long story",
                                   max_output_tokens=3)
        events = list(api.responses.create(model="assistant", input="Tell me a long story",
                                           max_output_tokens=3, stream=True))
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert events[-1].type == "response.incomplete"


@pytest.mark.parametrize(("body", "words"), [
    ({"model": "assistant"}, "input"),
    ({"model": "assistant", "input": "Hi", "previous_response_id": "resp_1"}, "stores no"),
    ({"model": "assistant", "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "http://x/cat.png", "detail": "auto"}]}]},
     "text only"),
    ({"model": "assistant", "input": "Hi", "tools": [{"type": "web_search"}]}, "web_search"),
    ({"model": "assistant", "input": "Hi", "temperature": -1}, "temperature"),
])
def test_a_bad_request_is_an_openai_error(tmp_path: Path, serve_models: Serve, body: Any,
                                          words: str) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url, \
            pytest.raises(openai.BadRequestError) as caught:
        client(url).post("/responses", body=body, cast_to=object)
    assert words in caught.value.message


def test_a_failure_mid_stream_ends_with_error_and_failed_events(
        tmp_path: Path, serve_models: Serve) -> None:
    broken = scripted(tmp_path, "broken", 'RKLLM-SCRIPTED 1\nerror_after_tokens = 2\n'
                      'default reply "one two three four five six"\n')
    with serve_models(ServerConfig(models=[broken])) as url:
        events = list(client(url).responses.create(model="broken", input="Hi", stream=True))
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    failed = events[-1]
    assert failed.type == "response.failed" and failed.response.status == "failed"
    assert failed.response.error is not None and failed.response.error.code == "server_error"
