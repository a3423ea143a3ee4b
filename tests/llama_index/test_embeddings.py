"""RKLLMEmbedding over the core's last-hidden-layer embeddings, on the scripted engine."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest

from llama_index_rkllm import RKLLMEmbedding


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
