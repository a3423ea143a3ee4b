"""``/v1/models`` and ``/v1/chat/completions`` driven by the official ``openai`` client (and raw
httpx where the bytes matter), on scripted models of the host runtime."""

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

WEATHER_TOOL: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


def user(text: str) -> Any:
    return {"role": "user", "content": text}


def test_models_are_listed_and_retrieved(tmp_path: Path, serve_models: Serve) -> None:
    config = ServerConfig(models=[scripted(tmp_path), scripted(tmp_path, "other")])
    with serve_models(config) as url:
        api = client(url)
        assert sorted(m.id for m in api.models.list()) == ["assistant", "other"]
        assert api.models.retrieve("other").owned_by == "rkllm-py"
        with pytest.raises(openai.NotFoundError):
            api.models.retrieve("nope")


def test_a_whole_answer_has_content_finish_reason_and_usage(tmp_path: Path,
                                                           serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        done = client(url).chat.completions.create(
            model="assistant", messages=[{"role": "system", "content": "Be terse."},
                                         user("Hello")])
    choice = done.choices[0]
    assert choice.message.content == "I am a scripted model."
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert done.object == "chat.completion" and done.model == "assistant"
    usage = done.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_a_stream_ends_with_finish_reason_then_usage(tmp_path: Path,
                                                     serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        chunks = list(client(url).chat.completions.create(
            model="assistant", messages=[user("Tell me a long story")], stream=True,
            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Once upon a time") and len(chunks) > 5
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens >= len(chunks) - 4
    assert len({c.id for c in chunks}) == 1


def test_the_second_turn_of_a_conversation_reports_cached_tokens(
        tmp_path: Path, serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        api = client(url)
        history: list[Any] = [user("Hi, my name is Alice")]
        first = api.chat.completions.create(model="assistant", messages=history)
        history += [{"role": "assistant", "content": first.choices[0].message.content},
                    user("What is my name?")]
        second = api.chat.completions.create(model="assistant", messages=history)
    assert second.choices[0].message.content == "Your name is Alice."
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    details = second.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    assert first.usage.total_tokens <= details.cached_tokens < second.usage.prompt_tokens


def test_the_stream_helper_assembles_a_streamed_tool_call(tmp_path: Path,
                                                          serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url, \
            client(url).chat.completions.stream(
                model="assistant", messages=[user("What is the weather in Paris?")],
                tools=[WEATHER_TOOL]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].id.startswith("call_") and calls[0].type == "function"
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert "tool_calls.function.arguments.delta" in kinds
    assert "tool_calls.function.arguments.done" in kinds


def test_streamed_tool_call_deltas_carry_index_id_and_name_once(tmp_path: Path,
                                                                serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        chunks = list(client(url).chat.completions.create(
            model="assistant", messages=[user("Weather in Paris?")], tools=[WEATHER_TOOL],
            stream=True))
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas and all(d.index == 0 for d in deltas)
    assert deltas[0].id and deltas[0].type == "function" and deltas[0].function
    assert deltas[0].function.name == "get_weather"
    assert all(d.id is None and d.type is None for d in deltas[1:])
    assert all(d.function is None or d.function.name is None for d in deltas[1:])


def test_a_tool_result_round_trip_answers_from_the_result(tmp_path: Path,
                                                          serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        api = client(url)
        history: list[Any] = [user("What is the weather in Paris?")]
        asked = api.chat.completions.create(model="assistant", messages=history,
                                            tools=[WEATHER_TOOL], tool_choice="auto")
        message = asked.choices[0].message
        assert message.tool_calls is not None
        call = message.tool_calls[0]
        history += [message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 C"}]
        answered = api.chat.completions.create(model="assistant", messages=history,
                                               tools=[WEATHER_TOOL])
    assert answered.choices[0].message.content == "It is sunny in Paris."
    assert answered.choices[0].finish_reason == "stop"


class City(BaseModel):
    city: str
    population: int


def test_structured_output_parses_into_a_pydantic_model(tmp_path: Path,
                                                        serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        api = client(url)
        parsed = api.chat.completions.parse(model="assistant", messages=[user("json please")],
                                            response_format=City)
        any_json = api.chat.completions.create(
            model="assistant", messages=[user("json please")],
            response_format={"type": "json_object"})
    assert parsed.choices[0].message.parsed == City(city="Paris", population=2100000)
    content = any_json.choices[0].message.content
    assert content is not None and json.loads(content)["city"] == "Paris"


def test_reasoning_comes_back_as_reasoning_content_when_asked(tmp_path: Path,
                                                              serve_models: Serve) -> None:
    ask = [user("Think about France: what is its capital?")]
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        api = client(url)
        thought = api.chat.completions.create(model="assistant", messages=ask,
                                              reasoning_effort="medium")
        streamed = list(api.chat.completions.create(
            model="assistant", messages=ask, stream=True,
            extra_body={"chat_template_kwargs": {"enable_thinking": True}}))
        plain = api.chat.completions.create(model="assistant", messages=ask)
    message = thought.choices[0].message
    assert message.content == "Paris is the capital."
    assert (message.model_extra or {}).get("reasoning_content") == "The user asks about France."
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content", "")
                        for c in streamed if c.choices)
    assert reasoning == "The user asks about France."
    assert "reasoning_content" not in (plain.choices[0].message.model_extra or {})


def test_stop_cuts_the_reply_and_max_tokens_ends_it_with_length(
        tmp_path: Path, serve_models: Serve) -> None:
    story = [user("Tell me a long story")]
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        api = client(url)
        stopped = api.chat.completions.create(model="assistant", messages=story,
                                              stop=[" time", "NPU"])
        short = api.chat.completions.create(model="assistant", messages=story, max_tokens=3)
        newer = api.chat.completions.create(model="assistant", messages=story,
                                            max_completion_tokens=2)
    assert stopped.choices[0].message.content == "Once upon a"
    assert stopped.choices[0].finish_reason == "stop"
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None and short.usage.completion_tokens == 3
    assert newer.usage is not None and newer.usage.completion_tokens == 2


def test_sse_framing_is_data_lines_blank_separated_ending_with_done(
        tmp_path: Path, serve_models: Serve) -> None:
    body = {"model": "assistant", "messages": [user("Hello")], "stream": True}
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url, \
            httpx.stream("POST", f"{url}/v1/chat/completions", json=body,
                         timeout=60) as response:
        raw = b"".join(response.iter_bytes())
        kind = response.headers["content-type"]
    assert kind.startswith("text/event-stream")
    assert raw.endswith(b"data: [DONE]\n\n") and raw.count(b"data: [DONE]") == 1
    events = raw.split(b"\n\n")[:-1]
    assert all(e.startswith(b"data: ") and b"\n" not in e for e in events)
    assert not any(line.startswith(b":") for line in raw.splitlines())
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == \
        "I am a scripted model."


def test_unknown_fields_are_ignored(tmp_path: Path, serve_models: Serve) -> None:
    body = {"model": "assistant", "messages": [{"role": "user", "content": "Hello",
                                                "x_custom": 1}],
            "x_vendor_option": {"a": 1}, "seed": 7, "user": "u1", "metadata": {"k": "v"},
            "parallel_tool_calls": False, "top_k": 1, "repeat_penalty": 1.1}
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        got = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert got.status_code == 200
    assert got.json()["choices"][0]["message"]["content"] == "I am a scripted model."


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"model": "assistant"}, 400, "messages"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "Hi"}],
      "temperature": -1}, 400, "temperature"),
    ({"model": "assistant", "messages": [{"role": "usr", "content": "Hi"}]}, 400, "role"),
    ({"model": "assistant", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/cat.png"}}]}]}, 400, "text only"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "Hi"}],
      "tool_choice": {"type": "function", "function": {"name": "nope"}},
      "tools": [WEATHER_TOOL]}, 400, "nope"),
    ({"model": "assistant", "messages": [{"role": "user", "content": "Hi"}],
      "functions": [{"name": "f"}]}, 400, "tools"),
    ({"model": "nope", "messages": [{"role": "user", "content": "Hi"}]}, 404, "assistant"),
])
def test_a_bad_request_is_an_openai_error(tmp_path: Path, serve_models: Serve, body: Any,
                                          status: int, words: str) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        raw = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        with pytest.raises(openai.APIStatusError) as caught:  # the client's own error classes
            client(url).post("/chat/completions", body=body, cast_to=object)
    assert raw.status_code == status
    error = raw.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and words in error["message"]
    assert caught.value.status_code == status
    expected = openai.NotFoundError if status == 404 else openai.BadRequestError
    assert isinstance(caught.value, expected)


def test_a_failure_mid_stream_is_one_error_event_the_client_raises(
        tmp_path: Path, serve_models: Serve) -> None:
    broken = scripted(tmp_path, "broken", 'RKLLM-SCRIPTED 1\nerror_after_tokens = 2\n'
                      'default reply "one two three four five six"\n')
    body = {"model": "broken", "messages": [user("Hi")], "stream": True}
    with serve_models(ServerConfig(models=[broken])) as url:
        raw = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).content
        with pytest.raises(openai.APIError) as caught:
            for _ in client(url).chat.completions.create(**body):
                pass
    assert b"[DONE]" not in raw
    last = json.loads(raw.split(b"\n\n")[-2][6:])
    assert set(last) == {"error"} and last["error"]["type"] == "server_error"
    assert caught.value.message == last["error"]["message"]


def test_a_run_that_times_out_mid_stream_ends_with_an_error_not_stop(
        tmp_path: Path, serve_models: Serve) -> None:
    slow = scripted(tmp_path, "slow", 'RKLLM-SCRIPTED 1\nslow_token = 3 5000\n'
                    'default reply "one two three four five six"\n')
    config = ServerConfig(models=[slow], request_timeout=1.0)
    with serve_models(config) as url:
        raw = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "slow", "messages": [user("Hi")], "stream": True}).content
        whole = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "slow", "messages": [user("Hi")]})
    events = [json.loads(e[6:]) for e in raw.split(b"\n\n")[:-1]]
    assert "error" in events[-1] and events[-1]["error"]["code"] == "timeout"
    assert not any(c.get("choices") and c["choices"][0].get("finish_reason") for c in events[:-1])
    assert whole.status_code == 504 and whole.json()["error"]["code"] == "timeout"
