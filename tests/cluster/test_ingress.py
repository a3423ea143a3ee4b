"""The ingress (``rkllm serve``'s app over a :class:`ClusterRegistry`) with one board in this
process, without Ray: what the routes get from a board — the replica header, cached tokens,
streams, embeddings — and a board's errors in each protocol's shape."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rkllm_core.cluster.ingress import ClusterRegistry, LocalBoards
from rkllm_core.cluster.replica import Board
from rkllm_core.server import ServerConfig, create_app
from tests.cluster.conftest import scripted

MODEL = 'when contains "name" reply "You are Ada."\ndefault reply "Noted."\n'


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    config = ServerConfig(models=[scripted(tmp_path, MODEL)])
    board = Board(config.models, slots=2, name="b1")
    registry = ClusterRegistry(config.models, LocalBoards(board))
    asyncio.run(registry.describe())
    try:
        with TestClient(create_app(config, registry=registry)) as test_client:
            yield test_client
    finally:
        board.close()


def test_turns_name_their_slot_and_a_later_turn_reports_cached_tokens(
        client: TestClient) -> None:
    messages = [{"role": "user", "content": "I am Ada."}]
    first = client.post("/v1/chat/completions", json={"model": "assistant",
                                                      "messages": messages})
    other = client.post("/v1/chat/completions", json={
        "model": "assistant", "messages": [{"role": "user", "content": "Another talk."}]})
    messages += [first.json()["choices"][0]["message"],
                 {"role": "user", "content": "What is my name?"}]
    second = client.post("/v1/chat/completions", json={"model": "assistant",
                                                       "messages": messages})
    assert first.headers["x-rkllm-replica"] == second.headers["x-rkllm-replica"] == "b1/slot-0"
    assert other.headers["x-rkllm-replica"] == "b1/slot-1"
    assert second.json()["choices"][0]["message"]["content"] == "You are Ada."
    assert second.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


def test_a_streamed_turn_carries_the_header_and_ends_with_done(client: TestClient) -> None:
    with client.stream("POST", "/v1/chat/completions", json={
            "model": "assistant", "stream": True,
            "messages": [{"role": "user", "content": "Hi"}]}) as response:
        assert response.headers["x-rkllm-replica"].startswith("b1/slot-")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                   for line in lines[:-1] if json.loads(line[6:])["choices"])
    assert text == "Noted."
    ollama = client.post("/api/chat", json={"model": "assistant", "stream": False,
                                            "messages": [{"role": "user", "content": "Hi"}]})
    assert ollama.headers["x-rkllm-replica"].startswith("b1/slot-")
    assert ollama.json()["message"]["content"] == "Noted."


def test_a_boards_error_keeps_its_status_in_each_protocols_shape(client: TestClient) -> None:
    ends_with_reply = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    openai = client.post("/v1/chat/completions", json={"model": "assistant",
                                                        "messages": ends_with_reply})
    assert openai.status_code == 400
    assert "assistant turn" in openai.json()["error"]["message"]
    ollama = client.post("/api/chat", json={"model": "assistant", "stream": False,
                                            "messages": ends_with_reply})
    assert ollama.status_code == 400 and "assistant turn" in ollama.json()["error"]


def test_embeddings_are_served_and_raw_completions_refused_with_the_way_out(
        client: TestClient) -> None:
    vectors = client.post("/v1/embeddings", json={"model": "assistant", "input": ["a", "b"]})
    assert vectors.status_code == 200 and len(vectors.json()["data"]) == 2
    shown = client.post("/api/show", json={"model": "assistant"})
    assert shown.status_code == 200 and "completion" in shown.json()["capabilities"]
    refused = client.post("/v1/completions", json={"model": "assistant", "prompt": [1, 2]})
    assert refused.status_code == 400 and "single `rkllm serve`" in refused.text
