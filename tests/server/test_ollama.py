"""The Ollama routes (issue 15), driven by the official ``ollama`` client and raw bytes: a real
server on 127.0.0.1 over scripted models (list, show, ps, chat, tools, thinking, structured
output, options, generate, raw prompts, embeddings, errors in Ollama's shape)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from rkllm_core.server import ModelConfig, ServerConfig
from rkllm_core.server import serving as running

CHAT = "Qwen3-0.6B_W8A8_RK3588"
CALL = ('<tool_call>\\n{\\"name\\": \\"get_weather\\", \\"arguments\\": '
        '{\\"city\\": \\"Paris\\"}}\\n</tool_call>')
SCRIPT = f"""RKLLM-SCRIPTED 1
max_context_limit = 4096
hidden_size = 16
thinking = yes
when contains "think about it" reply "Done thinking." think "Let me consider."
when contains "weather" tools yes reply "Let me look.\\n{CALL}"
when role tool reply "It is sunny in Paris."
when contains "json please" reply "{{\\"city\\": \\"Paris\\", \\"days\\": 3}}"
when contains "long story" reply "Once upon a time there was a small board with a big NPU."
when contains "stop test" reply "Hello there. User: this should not be seen"
when startswith "raw-prompt" reply "as written"
default reply "Hi there."
"""
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


def _model(tmp_path: Path, name: str, text: str = SCRIPT, **settings: Any) -> ModelConfig:
    path = tmp_path / f"{name}.scripted"
    path.write_text(text)
    return ModelConfig(path=str(path), library="host", params={"max_context_len": 2048},
                       **settings)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for the module: the chat model, the same script in raw mode (a preset the
    server renders), an embedding model and a model whose runs fail after 3 tokens."""
    tmp = tmp_path_factory.mktemp("ollama")
    models = [_model(tmp, CHAT), _model(tmp, "rendered", preset="chatml", mode="raw"),
              _model(tmp, "bge-small", role="embedding"),
              _model(tmp, "flaky", 'RKLLM-SCRIPTED 1\nerror_after_tokens = 3\n'
                     'default reply "one two three four five six"\n')]
    with running(ServerConfig(models=models)) as base:
        yield base


@pytest.fixture
def client(url: str) -> ollama.Client:
    return ollama.Client(host=url, timeout=60)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# -- models ------------------------------------------------------------------------------------

def test_list_names_every_model_with_its_file_and_details(client: ollama.Client, url: str,
                                                          ) -> None:
    listed = {m.model: m for m in client.list().models}
    assert set(listed) == {f"{CHAT}:latest", "rendered:latest", "bge-small:latest",
                           "flaky:latest"}
    qwen = listed[f"{CHAT}:latest"]
    assert qwen.details is not None
    assert (qwen.details.format, qwen.details.family, qwen.details.parameter_size,
            qwen.details.quantization_level) == ("rkllm", "qwen3", "0.6B", "W8A8")
    assert qwen.size == len(SCRIPT.encode())
    assert qwen.digest is not None and len(qwen.digest) == 64
    assert qwen.modified_at is not None and qwen.modified_at <= datetime.now(timezone.utc)
    raw = httpx.get(f"{url}/api/tags").json()["models"]
    assert {m["name"] for m in raw} == set(listed)  # Open WebUI reads `name`


def test_show_gives_context_template_and_capabilities(client: ollama.Client, url: str) -> None:
    shown = client.show(f"{CHAT}:latest")
    assert shown.modelinfo is not None
    assert shown.modelinfo["qwen3.context_length"] == 2048
    assert shown.modelinfo["general.architecture"] == "qwen3"
    assert shown.capabilities == ["completion", "tools", "thinking"]
    assert shown.template is not None and "baked into the .rkllm file" in shown.template
    assert "num_ctx 2048" in (shown.parameters or "")
    rendered = client.show("rendered")
    assert rendered.template is not None and "im_start" in rendered.template
    assert client.show("bge-small").capabilities == ["embedding"]
    by_name = httpx.post(f"{url}/api/show", json={"name": CHAT})  # the older field
    assert by_name.status_code == 200 and by_name.json()["capabilities"][0] == "completion"


def test_ps_lists_the_loaded_models_that_stay_loaded(client: ollama.Client) -> None:
    loaded = {m.name: m for m in client.ps().models}
    qwen = loaded[f"{CHAT}:latest"]
    assert qwen.context_length == 2048 and qwen.size_vram == 0  # the host runtime: the CPU
    assert qwen.expires_at is not None and qwen.expires_at.year > datetime.now().year + 50


# -- chat ----------------------------------------------------------------------------------------

def test_chat_streams_deltas_and_ends_with_done_and_timings(client: ollama.Client) -> None:
    parts = list(client.chat(CHAT, messages=ask("Hello"), stream=True))
    *deltas, last = parts
    assert deltas and all(not p.done for p in deltas)
    assert "".join(p.message.content or "" for p in parts) == "Hi there."
    assert last.done and last.done_reason == "stop" and last.message.content == ""
    assert (last.eval_count or 0) > 0 and last.prompt_eval_count and last.prompt_eval_count > 0
    assert last.total_duration and last.total_duration > 0
    assert last.eval_duration is not None and last.prompt_eval_duration is not None
    assert last.load_duration == 0


def test_chat_not_streamed_and_with_the_async_client(client: ollama.Client, url: str) -> None:
    whole = client.chat(f"{CHAT}:latest", messages=ask("Hello"))
    assert whole.message.role == "assistant" and whole.message.content == "Hi there."
    assert whole.done and whole.done_reason == "stop" and (whole.eval_count or 0) > 0

    async def both() -> tuple[str, str]:
        aclient = ollama.AsyncClient(host=url, timeout=60)
        streamed = [p.message.content or "" async for p in
                    await aclient.chat(CHAT, messages=ask("Hello"), stream=True)]
        once = await aclient.chat(CHAT, messages=ask("Hello"))
        return "".join(streamed), once.message.content or ""

    assert asyncio.run(both()) == ("Hi there.", "Hi there.")


def test_tool_calls_have_object_arguments_and_a_result_round_trips(client: ollama.Client,
                                                                    ) -> None:
    history: list[Any] = ask("What is the weather in Paris?")
    parts = list(client.chat(CHAT, messages=history, tools=[WEATHER], stream=True))
    with_calls = [p for p in parts if p.message.tool_calls]
    assert len(with_calls) == 1  # the call arrives whole, in one line
    [call] = with_calls[0].message.tool_calls or []
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    assert "".join(p.message.content or "" for p in parts) == "Let me look."
    assert parts[-1].done_reason == "stop"

    turn = client.chat(CHAT, messages=history, tools=[WEATHER])
    assert [c.function.arguments for c in turn.message.tool_calls or []] == [{"city": "Paris"}]
    history += [turn.message,
                {"role": "tool", "content": "sunny, 21 C", "tool_name": "get_weather"}]
    answer = client.chat(CHAT, messages=history, tools=[WEATHER])
    assert answer.message.content == "It is sunny in Paris." and not answer.message.tool_calls


def test_think_returns_the_reasoning_in_thinking(client: ollama.Client) -> None:
    on = client.chat(CHAT, messages=ask("Please think about it."), think=True)
    assert (on.message.thinking, on.message.content) == ("Let me consider.", "Done thinking.")
    streamed = list(client.chat(CHAT, messages=ask("Please think about it."), think="high",
                                stream=True))
    assert "".join(p.message.thinking or "" for p in streamed) == "Let me consider."
    assert "".join(p.message.content or "" for p in streamed) == "Done thinking."
    off = client.chat(CHAT, messages=ask("Please think about it."), think=False)
    assert off.message.thinking is None and off.message.content == "Done thinking."


def test_format_takes_a_json_schema_or_json(client: ollama.Client) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "days": {"type": "integer"}},
              "required": ["city", "days"]}
    turn = client.chat(CHAT, messages=ask("json please"), format=schema)
    assert json.loads(turn.message.content or "") == {"city": "Paris", "days": 3}
    streamed = list(client.chat(CHAT, messages=ask("json please"), format="json", stream=True))
    assert json.loads("".join(p.message.content or "" for p in streamed))["city"] == "Paris"
    assert streamed[-1].done


def test_options_num_predict_ends_with_length_and_stop_cuts(client: ollama.Client) -> None:
    short = client.chat(CHAT, messages=ask("Tell me a long story"),
                        options={"num_predict": 4, "temperature": 0.0, "seed": 7,
                                 "num_ctx": 99999})
    assert short.done_reason == "length" and short.eval_count == 4
    unlimited = client.chat(CHAT, messages=ask("Tell me a long story"),
                            options={"num_predict": -1})
    assert unlimited.done_reason == "stop" and (unlimited.message.content or "").endswith("NPU.")
    cut = client.chat(CHAT, messages=ask("stop test"), options={"stop": ["User:"]})
    assert cut.message.content == "Hello there. " and cut.done_reason == "stop"


def test_an_empty_conversation_is_the_load_call(client: ollama.Client) -> None:
    loaded = client.chat(CHAT, messages=[])
    assert loaded.done and loaded.done_reason == "load"
    assert client.generate(CHAT).done_reason == "load"


# -- generate ------------------------------------------------------------------------------------

def test_generate_streamed_and_whole_with_system_and_think(client: ollama.Client) -> None:
    parts = list(client.generate(CHAT, "Hello", system="Be kind.", stream=True))
    assert "".join(p.response or "" for p in parts) == "Hi there."
    assert parts[-1].done and parts[-1].done_reason == "stop" and (parts[-1].eval_count or 0) > 0
    whole = client.generate(CHAT, "Please think about it.", think=True,
                            context=[1, 2, 3])  # accepted; the KV cache is not handed back
    assert (whole.thinking, whole.response) == ("Let me consider.", "Done thinking.")
    assert not whole.context
    short = client.generate(CHAT, "a long story", options={"num_predict": 3})
    assert short.done_reason == "length" and short.eval_count == 3


def test_raw_generate_sends_the_prompt_as_written(client: ollama.Client) -> None:
    raw = client.generate("rendered", "raw-prompt: hello", raw=True)
    assert raw.response == "as written" and raw.done_reason == "stop"
    templated = client.generate("rendered", "raw-prompt: hello")
    assert templated.response == "Hi there."  # through the chat template
    assert 0 < (raw.prompt_eval_count or 0) < (templated.prompt_eval_count or 0)
    streamed = list(client.generate("rendered", "raw-prompt: again", raw=True, stream=True))
    assert "".join(p.response or "" for p in streamed) == "as written" and streamed[-1].done
    # the chat after a raw prompt replays its conversation on the model's own template
    assert client.chat("rendered", messages=ask("Hello")).message.content == "Hi there."
    with pytest.raises(ollama.ResponseError) as native:
        client.generate(CHAT, "raw-prompt: hello", raw=True)
    assert native.value.status_code == 400 and "native mode" in native.value.error


def test_generate_refuses_what_it_cannot_do(client: ollama.Client, url: str) -> None:
    for body, word in (({"suffix": "}"}, "suffix"), ({"images": ["aGk="]}, "text models only"),
                       ({"template": "{{ .Prompt }}"}, "template")):
        got = httpx.post(f"{url}/api/generate",
                         json={"model": CHAT, "prompt": "Hello", "stream": False, **body})
        assert got.status_code == 400 and word in got.json()["error"], body


# -- embeddings ----------------------------------------------------------------------------------

def test_embed_gives_normalised_vectors_and_checks_dimensions(client: ollama.Client) -> None:
    got = client.embed("bge-small", ["a cat", "a dog", "quarterly revenue"])
    assert len(got.embeddings) == 3 and all(len(v) == 16 for v in got.embeddings)
    assert all(math.isclose(math.hypot(*v), 1.0, rel_tol=1e-4) for v in got.embeddings)
    one = client.embed(f"{CHAT}:latest", "a cat", dimensions=16)  # chat models embed too
    assert len(one.embeddings) == 1
    with pytest.raises(ollama.ResponseError) as wrong:
        client.embed("bge-small", "a cat", dimensions=8)
    assert wrong.value.status_code == 400 and "16" in wrong.value.error


def test_legacy_embeddings_gives_one_vector(client: ollama.Client) -> None:
    vector = client.embeddings("bge-small", "a cat").embedding
    assert len(vector) == 16
    same = client.embed("bge-small", "a cat").embeddings[0]
    norm = math.hypot(*vector)
    assert all(math.isclose(a / norm, b, abs_tol=1e-5) for a, b in zip(vector, same,
                                                                        strict=True))
    assert client.embeddings("bge-small", "").embedding == []


# -- the wire ------------------------------------------------------------------------------------

def test_ndjson_framing_is_one_object_per_line(url: str) -> None:
    body = {"model": CHAT, "messages": ask("Hello")}  # no `stream`: Ollama streams by default
    with httpx.stream("POST", f"{url}/api/chat", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        raw = response.read()
    assert raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    objects = [json.loads(line) for line in lines]
    assert all(isinstance(o, dict) for o in objects) and len(objects) >= 2
    assert all(o["done"] is False for o in objects[:-1]) and objects[-1]["done"] is True
    assert objects[-1]["message"] == {"role": "assistant", "content": ""}
    assert objects[0]["model"] == CHAT and objects[0]["created_at"].endswith("Z")


def test_unknown_fields_are_ignored_and_latest_is_accepted(url: str) -> None:
    body = {"model": f"{CHAT}:latest", "stream": False, "unknown": {"x": 1},
            "keep_alive": "5m", "options": {"num_thread": 4, "not_an_option": True},
            "messages": [{"role": "user", "content": "Hello", "extra": 1}]}
    got = httpx.post(f"{url}/api/chat", json=body, timeout=60)
    assert got.status_code == 200 and got.json()["message"]["content"] == "Hi there."
    assert got.json()["model"] == f"{CHAT}:latest"


def test_bad_requests_get_the_ollama_error_shape(client: ollama.Client, url: str) -> None:
    with pytest.raises(ollama.ResponseError) as unknown:
        client.chat("nope", messages=ask("Hello"))
    assert unknown.value.status_code == 404 and CHAT in unknown.value.error
    with pytest.raises(ollama.ResponseError) as images:
        client.chat(CHAT, messages=[{"role": "user", "content": "What is this?",
                                     "images": ["aGVsbG8="]}])
    assert images.value.status_code == 400 and "text models only" in images.value.error
    with pytest.raises(ollama.ResponseError) as options:
        client.chat(CHAT, messages=ask("Hello"), options={"temperature": "hot"})
    assert options.value.status_code == 400 and "options.temperature" in options.value.error
    with pytest.raises(ollama.ResponseError) as role:
        client.chat(CHAT, messages=[{"role": "robot", "content": "beep"}], stream=True).__next__()
    assert role.value.status_code == 400 and "robot" in role.value.error
    with pytest.raises(ollama.ResponseError) as wrong_role:
        client.chat("bge-small", messages=ask("Hello"))
    assert wrong_role.value.status_code == 400 and "embedding" in wrong_role.value.error
    for path, body in (("/api/chat", {"messages": ask("Hello")}), ("/api/chat", b"not json"),
                       ("/api/embed", {"model": "bge-small"})):
        got = (httpx.post(f"{url}{path}", content=body) if isinstance(body, bytes)
               else httpx.post(f"{url}{path}", json=body))
        assert got.status_code == 400 and isinstance(got.json()["error"], str), (path, body)


def test_a_failure_after_the_stream_started_ends_it_with_an_error_line(
        client: ollama.Client, url: str) -> None:
    pieces: list[str] = []
    with pytest.raises(ollama.ResponseError) as failed:
        for part in client.chat("flaky", messages=ask("Hello"), stream=True):
            pieces.append(part.message.content or "")
    assert "".join(pieces).startswith("one") and "RKLLM_RUN_ERROR" in failed.value.error
    with httpx.stream("POST", f"{url}/api/generate", json={"model": "flaky", "prompt": "Hi"},
                      timeout=60) as response:
        lines = [json.loads(line) for line in response.iter_lines()]
    assert response.status_code == 200 and list(lines[-1]) == ["error"]
    with pytest.raises(ollama.ResponseError) as whole:
        client.chat("flaky", messages=ask("Hello"))
    assert whole.value.status_code >= 500
    assert client.chat(CHAT, messages=ask("Hello")).message.content == "Hi there."


# -- model management ----------------------------------------------------------------------------

def test_pull_of_a_served_model_succeeds_and_management_is_refused(client: ollama.Client,
                                                                    ) -> None:
    assert client.pull(CHAT).status == "success"
    assert [p.status for p in client.pull(f"{CHAT}:latest", stream=True)] == ["success"]
    with pytest.raises(ollama.ResponseError) as pulled:
        client.pull("llama3.2")
    assert pulled.value.status_code == 400 and "local .rkllm files" in pulled.value.error
    refusals: list[Callable[[], object]] = [
        lambda: client.push(CHAT), lambda: client.create("mine", from_=CHAT),
        lambda: client.copy(CHAT, "mine"), lambda: client.delete(CHAT)]
    for refused in refusals:
        with pytest.raises(ollama.ResponseError) as error:
            refused()
        assert error.value.status_code == 400 and "rkllm serve" in error.value.error
