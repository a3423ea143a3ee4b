"""``/v1/completions``, ``/v1/embeddings`` and ``/v1/rerank`` driven by the official ``openai``
client (raw httpx for reranking, which the client does not have), on scripted models."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from rkllm_core.server import ServerConfig
from tests.server.openai_models import RERANKER, client, scripted

Serve = Callable[[ServerConfig], AbstractContextManager[str]]


def test_a_completion_continues_the_prompt_as_written(tmp_path: Path,
                                                      serve_models: Serve) -> None:
    raw = scripted(tmp_path, mode="raw", preset="chatml")
    with serve_models(ServerConfig(models=[raw])) as url:
        api = client(url)
        done = api.completions.create(model="assistant", prompt="echo Once upon")
        chunks = list(api.completions.create(model="assistant", prompt="echo Once upon",
                                             stream=True,
                                             stream_options={"include_usage": True}))
        echoed = api.completions.create(model="assistant", prompt="echo twice", echo=True)
    # the scripted model echoes its input: no chat template around the prompt
    assert done.choices[0].text == "You said: echo Once upon"
    assert done.choices[0].finish_reason == "stop" and done.object == "text_completion"
    assert done.usage is not None and done.usage.prompt_tokens == 3
    assert "".join(c.choices[0].text for c in chunks if c.choices) == done.choices[0].text
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == done.usage
    assert echoed.choices[0].text == "echo twiceYou said: echo twice"


def test_a_completion_takes_token_ids_and_limits(tmp_path: Path, serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        api = client(url)
        tokens = api.completions.create(model="assistant", prompt=[17, 42, 99])
        short = api.completions.create(model="assistant", prompt=[17, 42, 99], max_tokens=2)
        stopped = api.completions.create(model="assistant", prompt=[17, 42], stop=" input")
    assert tokens.choices[0].text == "Token input received."
    assert tokens.usage is not None and tokens.usage.prompt_tokens == 3
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None and short.usage.completion_tokens == 2
    assert stopped.choices[0].text == "Token"


def test_a_text_completion_on_a_native_model_without_tokenizer_says_how_to_serve_it(
        tmp_path: Path, serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url, \
            pytest.raises(openai.BadRequestError) as caught:
        client(url).completions.create(model="assistant", prompt="Once upon")
    assert "tokenizer" in caught.value.message and "token ids" in caught.value.message


def test_a_chat_turn_after_a_completion_still_answers_with_its_template(
        tmp_path: Path, serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        api = client(url)
        api.completions.create(model="assistant", prompt=[1, 2])
        chat = api.chat.completions.create(model="assistant", messages=[
            {"role": "user", "content": "Hi, my name is Alice"}])
    assert chat.choices[0].message.content == "Nice to meet you."


def test_embeddings_come_as_floats_or_base64(tmp_path: Path, serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        api = client(url)
        decoded = api.embeddings.create(model="assistant", input=["a cat", "a dog"])
        floats = api.embeddings.create(model="assistant", input="a cat",
                                       encoding_format="float")
        raw = httpx.post(f"{url}/v1/embeddings", timeout=60, json={
            "model": "assistant", "input": "a cat", "encoding_format": "base64"}).json()
    assert [e.index for e in decoded.data] == [0, 1]
    assert all(len(e.embedding) == 8 for e in decoded.data)
    assert decoded.model == "assistant" and decoded.object == "list"
    assert np.allclose(floats.data[0].embedding, decoded.data[0].embedding, atol=1e-6)
    assert np.linalg.norm(floats.data[0].embedding) == pytest.approx(1.0, abs=1e-5)
    vector = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(vector, floats.data[0].embedding, atol=1e-6)


def test_an_embedding_model_serves_embeddings_only(tmp_path: Path,
                                                   serve_models: Serve) -> None:
    config = ServerConfig(models=[scripted(tmp_path, "bge", role="embedding"),
                                  scripted(tmp_path, "chat")])
    with serve_models(config) as url:
        api = client(url)
        vectors = api.embeddings.create(model="bge", input="a cat")
        with pytest.raises(openai.BadRequestError) as refused:
            api.chat.completions.create(model="bge", messages=[
                {"role": "user", "content": "Hi"}])
        with pytest.raises(openai.BadRequestError) as tokens:
            api.embeddings.create(model="bge", input=[[1, 2, 3]])
    assert len(vectors.data[0].embedding) == 8
    assert "embedding model" in refused.value.message and "chat" in refused.value.message
    assert "token ids" in tokens.value.message


def test_rerank_sorts_documents_by_relevance(tmp_path: Path, serve_models: Serve) -> None:
    reranker = scripted(tmp_path, "reranker", RERANKER, role="rerank",
                        yes_token_id=ord("y"), no_token_id=ord("n"))
    documents = ["Bananas are yellow.", "Paris is the capital of France.", "Cats purr."]
    with serve_models(ServerConfig(models=[reranker])) as url:
        ranked = httpx.post(f"{url}/v1/rerank", timeout=60, json={
            "model": "reranker", "query": "What is the capital of France?",
            "documents": documents, "top_n": 2, "return_documents": True}).json()
        llama_style = httpx.post(f"{url}/rerank", timeout=60, json={
            "query": "capital?", "documents": [{"text": d} for d in documents]}).json()
    results = ranked["results"]
    assert results[0]["index"] == 1 and len(results) == 2
    assert results[0]["relevance_score"] > 0.9 > results[1]["relevance_score"]
    assert results[0]["document"] == {"text": documents[1]}
    assert len(llama_style["results"]) == 3 and llama_style["model"] == "reranker"
    scores = [r["relevance_score"] for r in llama_style["results"]]
    assert scores == sorted(scores, reverse=True)


def test_rerank_needs_a_rerank_model(tmp_path: Path, serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        got = httpx.post(f"{url}/v1/rerank", timeout=60, json={
            "model": "assistant", "query": "q", "documents": ["d"]})
        missing = httpx.post(f"{url}/v1/rerank", timeout=60, json={"model": "assistant"})
    assert got.status_code == 400 and "rerank" in got.json()["error"]["message"]
    assert missing.status_code == 400
    assert set(json.loads(missing.content)["error"]) == {"message", "type", "param", "code"}
