"""What every chat route shares (rkllm_core.server.turns, wire): a required tool gets the
engine's retry, a model that cannot produce the schema is the server's failure, not the
client's, and ids that cannot share a loaded model are refused at start."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import openai
import pytest

from rkllm_core.errors import InvalidParameterError
from rkllm_core.server import ModelConfig, ServerConfig
from rkllm_core.server.registry import ModelRegistry

Serve = Callable[[ServerConfig], AbstractContextManager[str]]

CALL = ('<tool_call>\\n{\\"name\\": \\"get_weather\\", \\"arguments\\": '
        '{\\"city\\": \\"Paris\\"}}\\n</tool_call>')
#: answers in words first; only the engine's retry ("... now, in the format described") gets a call
STUBBORN = ('RKLLM-SCRIPTED 1\n'
            f'when contains "now, in the format described" tools yes reply "{CALL}"\n'
            'when contains "json" reply "no json here"\n'
            'default reply "It is probably sunny."\n')
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


@pytest.fixture
def stubborn(tmp_path: Path) -> ServerConfig:
    path = tmp_path / "stubborn.scripted"
    path.write_text(STUBBORN)
    return ServerConfig(models=[ModelConfig(path=str(path), library="host",
                                            params={"max_context_len": 1024})])


def test_a_required_tool_gets_the_engines_retry_streamed_or_not(stubborn: ServerConfig,
                                                                serve_models: Serve) -> None:
    with serve_models(stubborn) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        ask = [{"role": "user", "content": "Weather in Paris?"}]
        auto = client.chat.completions.create(model="stubborn", messages=ask, tools=[WEATHER])
        assert auto.choices[0].message.tool_calls is None  # the model's own choice: words
        whole = client.chat.completions.create(model="stubborn", messages=ask, tools=[WEATHER],
                                               tool_choice="required")
        call = whole.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
        assert whole.choices[0].finish_reason == "tool_calls"
        with client.chat.completions.stream(
                model="stubborn", messages=ask, tools=[WEATHER],  # type: ignore[list-item]
                tool_choice={"type": "function", "function": {"name": "get_weather"}}) as s:
            final = s.get_final_completion()
        assert final.choices[0].message.tool_calls[0].function.name == "get_weather"  # type: ignore[index]


def test_a_model_that_cannot_produce_the_schema_is_a_server_error(stubborn: ServerConfig,
                                                                  serve_models: Serve) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"]}
    with serve_models(stubborn) as url:
        got = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "stubborn", "messages": [{"role": "user", "content": "json please"}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "place", "schema": schema}}})
        assert got.status_code == 500  # the request was fine; the model's reply was not
        error = got.json()["error"]
        assert error["code"] == "invalid_model_output" and "JSON" in error["message"]
        bad = httpx.post(f"{url}/api/chat", json={"model": "stubborn", "messages": "nope"})
        assert bad.status_code == 400 and "messages" in bad.json()["error"]


def test_raw_and_native_ids_of_one_loaded_model_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.scripted"
    path.write_text("RKLLM-SCRIPTED 1\n")
    native = ModelConfig(path=str(path), library="host")
    raw = native.model_copy(update={"id": "m-raw", "mode": "raw", "preset": "chatml"})
    with pytest.raises(InvalidParameterError, match="raw mode switches"):
        ModelRegistry([native, raw])
    apart = raw.model_copy(update={"params": {"max_context_len": 1024}})
    ModelRegistry([native, apart]).close()  # different settings: two loaded models


@pytest.mark.parametrize("text", [" word", 'quo"te\n\\ Grüße 日本 🙂 \u0001\u2028', ""])
def test_the_per_token_templates_write_what_the_protocol_types_write(text: str) -> None:
    from ollama._types import ChatResponse, GenerateResponse, Message
    from openai.types.chat.chat_completion_chunk import ChoiceDelta

    from rkllm_core.server.openai_chat import _Reply
    from rkllm_core.server.wire import Template, ndjson

    reply = _Reply("chatcmpl-1", 1700000000, "m")
    assert reply.text_chunk("content", text) == reply.chunk(ChoiceDelta(content=text))
    assert reply.text_chunk("reasoning_content", text) == \
        reply.chunk(ChoiceDelta.model_validate({"reasoning_content": text}))
    at = "2026-11-30T16:00:00.000000Z"
    chat = Template(lambda v: ndjson(ChatResponse(
        model="m", created_at=v["at"], done=False,
        message=Message(role="assistant", content=v["text"]))), ["at", "text"])
    assert chat.fill(at=at, text=text) == ndjson(ChatResponse(
        model="m", created_at=at, done=False, message=Message(role="assistant", content=text)))
    generate = Template(lambda v: ndjson(GenerateResponse(
        model="m", created_at=v["at"], response=v["text"], done=False)), ["at", "text"])
    assert generate.fill(at=at, text=text) == ndjson(GenerateResponse(
        model="m", created_at=at, response=text, done=False))
