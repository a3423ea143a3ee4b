"""RKLLMEmbedding over the core's last-hidden-layer embeddings, on the scripted engine; a
cancelled async embedding aborts the model's run and lets the next caller in at once."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest

from llama_index_rkllm import RKLLMEmbedding
from tests.core.test_async_embed_rerank import (
    expect_cancellation_frees_the_model,
    long_text,
    slow_model,
)


def test_query_and_text_instructions_format_the_input(model_file: Path) -> None:
    embed = RKLLMEmbedding(model_path=str(model_file), library="host", max_context_len=1024,
                           query_instruction="Find the board", text_instruction=None)
    client = embed.client
    query = embed.get_query_embedding("how much RAM")
    expected = client.embed(["how much RAM"], instruction="Find the board")[0]
    assert np.allclose(query, expected)
    assert not np.allclose(query, client.embed(["how much RAM"])[0])
    assert np.allclose(embed.get_text_embedding("how much RAM"),
                       client.embed(["how much RAM"])[0])
    assert math.isclose(sum(v * v for v in query), 1.0, rel_tol=1e-5)


def test_batches_give_the_same_vectors_as_single_texts(model_file: Path) -> None:
    embed = RKLLMEmbedding(model_path=str(model_file), library="host", max_context_len=1024,
                           embed_batch_size=2)
    texts = ["a cat", "a dog", "the Rock 5B", "bananas", "a cat on a mat"]
    batch = embed.get_text_embedding_batch(texts)
    singles = [embed.get_text_embedding(t) for t in texts]
    assert np.allclose(batch, singles)
    assert np.allclose(asyncio.run(embed.aget_text_embedding_batch(texts)), singles)
    assert np.allclose(asyncio.run(embed.aget_query_embedding("a cat")), singles[0])
    # texts sharing words are closer than unrelated ones
    assert np.dot(batch[0], batch[4]) > np.dot(batch[0], batch[3])


def test_last_token_pooling_and_unnormalised_vectors(model_file: Path) -> None:
    embed = RKLLMEmbedding(model_path=str(model_file), library="host", max_context_len=1024,
                           pooling="last", normalize=False)
    assert np.allclose(embed.get_text_embedding("a cat"),
                       embed.client.embed(["a cat"], pooling="last", normalize=False)[0])


def test_a_model_is_required() -> None:
    # pydantic reports the validator's InvalidParameterError (a ValueError) with its message
    with pytest.raises(ValueError, match="needs model_path"):
        RKLLMEmbedding()


@pytest.mark.parametrize("method", ["aget_text_embedding_batch", "aget_query_embedding"])
def test_a_cancelled_async_embedding_aborts_the_run_and_frees_the_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
        method: str) -> None:
    model = slow_model(tmp_path, monkeypatch)
    embed = RKLLMEmbedding(client=model)
    texts = [long_text(i) for i in range(3)]
    if method == "aget_text_embedding_batch":  # one _aget_text_embeddings call
        expect_cancellation_frees_the_model(
            model, lambda: embed.aget_text_embedding_batch(texts), len(texts), capfd)
    else:
        expect_cancellation_frees_the_model(
            model, lambda: embed.aget_query_embedding(texts[0]), 1, capfd)
    assert len(embed.get_query_embedding("still usable")) == 32
    model.close()


def test_one_async_text_is_the_text_embedding(model_file: Path) -> None:
    embed = RKLLMEmbedding(model_path=str(model_file), library="host", max_context_len=1024,
                           text_instruction="Index it")
    assert np.allclose(asyncio.run(embed.aget_text_embedding("a cat")),
                       embed.get_text_embedding("a cat"))
