"""RKLLMEmbeddings: LangChain's standard unit suite on the scripted engine, the integration
suite on SmolLM2-135M (gguf engine), and our own checks of pooling, normalisation,
instructions, batching with a progress bar, async calls that leave the loop free, and a
cancelled async call that aborts the model's run and lets the next caller in at once."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from langchain_rkllm import RKLLMEmbeddings
from tests.core.test_async_embed_rerank import (
    expect_cancellation_frees_the_model,
    long_text,
    slow_model,
)

TEXTS = ["the cat sat on the mat", "a cat on a mat", "quarterly revenue grew",
         "revenue grew this quarter", "the dog barked"]


@cache
def _scripted_embedder() -> str:
    path = Path(tempfile.mkdtemp(prefix="rkllm-lc-emb-")) / "embedder.scripted"
    path.write_text("RKLLM-SCRIPTED 1\nhidden_size = 48\n")
    return str(path)


def _smollm2() -> str:
    from rkllm_core.host.models import smollm2_path

    try:
        return str(smollm2_path())
    except Exception as exc:  # the host extra is not installed
        pytest.skip(f"SmolLM2 is not available: {exc}")


class TestRKLLMEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[RKLLMEmbeddings]:
        return RKLLMEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model_path": _scripted_embedder(), "library": "host", "max_context_len": 512}


@pytest.mark.gguf
class TestRKLLMEmbeddingsOnSmolLM2(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[RKLLMEmbeddings]:
        return RKLLMEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model_path": _smollm2(), "library": "host", "max_context_len": 512}


@pytest.fixture
def embeddings(place: Any) -> RKLLMEmbeddings:
    return RKLLMEmbeddings(**place(model_path=_scripted_embedder(), library="host",
                                   max_context_len=512))


def same(a: Any, b: Any) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (_norm(a) * _norm(b))


def test_vectors_are_normalised_and_deterministic(
        embeddings: RKLLMEmbeddings) -> None:
    vectors = embeddings.embed_documents(TEXTS)
    assert len(vectors) == 5 and {len(v) for v in vectors} == {48}
    assert all(abs(_norm(v) - 1.0) < 1e-5 for v in vectors)
    assert _cos(vectors[0], embeddings.embed_documents([TEXTS[0]])[0]) == pytest.approx(1.0)
    assert max(_cos(vectors[0], v) for v in vectors[1:]) < 0.999


def test_documents_and_queries_match_the_core_embed(embeddings: RKLLMEmbeddings) -> None:
    core = embeddings.client.embed(TEXTS[:2])
    same(embeddings.embed_documents(TEXTS[:2]), core)
    same(embeddings.embed_query(TEXTS[0]), core[0])


def test_normalize_off_and_last_token_pooling(embeddings: RKLLMEmbeddings) -> None:
    raw = RKLLMEmbeddings(client=embeddings.client, normalize=False)
    assert abs(_norm(raw.embed_query("the cat sat")) - 1.0) > 1e-3
    last = RKLLMEmbeddings(client=embeddings.client, pooling="last")
    expected = embeddings.client.embed(["the cat sat"], pooling="last")[0]
    same(last.embed_query("the cat sat"), expected)
    assert not np.allclose(last.embed_query("the cat sat"), embeddings.embed_query("the cat sat"))


def test_the_query_instruction_goes_before_queries_only(embeddings: RKLLMEmbeddings) -> None:
    instructed = RKLLMEmbeddings(client=embeddings.client,
                                 query_instruction="Find passages about pets")
    expected = embeddings.client.embed(["cat"], instruction="Find passages about pets")[0]
    same(instructed.embed_query("cat"), expected)
    assert not np.allclose(instructed.embed_query("cat"), embeddings.embed_query("cat"))
    same(instructed.embed_documents(["cat"]), embeddings.embed_documents(["cat"]))


def test_batches_show_a_progress_bar_only_when_asked(embeddings: RKLLMEmbeddings,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    quiet = RKLLMEmbeddings(client=embeddings.client, batch_size=2)
    same(quiet.embed_documents(TEXTS), embeddings.embed_documents(TEXTS))
    assert "Embedding" not in capsys.readouterr().err
    loud = RKLLMEmbeddings(client=embeddings.client, batch_size=2, show_progress=True)
    assert len(loud.embed_documents(TEXTS)) == 5
    err = capsys.readouterr().err
    assert "Embedding" in err and "5/5" in err


def test_tqdm_is_imported_only_for_a_progress_bar() -> None:
    code = ("import sys, langchain_rkllm; from langchain_rkllm import RKLLMEmbeddings; "
            "print('tqdm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_async_embedding_leaves_the_event_loop_free(make_file: Any) -> None:
    path = make_file("slow.scripted",
                     "RKLLM-SCRIPTED 1\nhidden_size = 16\nprefill_tokens_per_second = 200\n")
    slow = RKLLMEmbeddings(model_path=str(path), library="host", max_context_len=512,
                           batch_size=2)

    async def main() -> tuple[int, list[list[float]], list[float]]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        docs = await slow.aembed_documents(TEXTS)
        query = await slow.aembed_query("the cat")
        task.cancel()
        return ticks, docs, query

    ticks, docs, query = asyncio.run(main())
    same(docs, slow.embed_documents(TEXTS))
    same(query, slow.embed_query("the cat"))
    assert ticks > 10  # each text takes tens of milliseconds to prefill; the loop kept going


@pytest.mark.parametrize("method", ["aembed_documents", "aembed_query"])
def test_a_cancelled_async_embedding_aborts_the_run_and_frees_the_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
        method: str) -> None:
    model = slow_model(tmp_path, monkeypatch)
    embeddings = RKLLMEmbeddings(client=model)
    texts = [long_text(i) for i in range(3)]
    if method == "aembed_documents":
        expect_cancellation_frees_the_model(
            model, lambda: embeddings.aembed_documents(texts), len(texts), capfd)
    else:
        expect_cancellation_frees_the_model(
            model, lambda: embeddings.aembed_query(texts[0]), 1, capfd)
    assert len(embeddings.embed_query("still usable")) == 32
    model.close()
