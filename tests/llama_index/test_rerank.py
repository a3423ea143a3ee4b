"""RKLLMRerank: nodes reordered by the model's P("yes"), sync and async alike; the ids of "yes"
and "no" found without the user (the GGUF's vocabulary, a tokenizer.json, a known conversion's
file name) or an error naming each way; a cancelled async rerank that aborts the model's run."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from llama_index_rkllm import RKLLMRerank
from rkllm_core.errors import InvalidParameterError, UnsupportedFeatureError
from rkllm_core.host.build import find_llama_cpp
from tests.core.test_async_embed_rerank import (
    expect_cancellation_frees_the_model,
    long_text,
    slow_model,
)

# a toy reranker: answers "y" (relevant) or "n" as single bytes, whose token ids are their codes
JUDGE = 'RKLLM-SCRIPTED 1\nwhen contains "paris" reply "y"\ndefault reply "n"\n'
TEXTS = ["Bananas are yellow.", "Paris is the capital of France.", "The Seine flows in Paris."]
QUERY = QueryBundle("Which city is the capital?")


def nodes(texts: list[str] = TEXTS) -> list[NodeWithScore]:
    return [NodeWithScore(node=TextNode(text=t), score=0.5) for t in texts]


def judge_file(folder: Path, name: str = "judge.scripted") -> str:
    path = folder / name
    path.write_text(JUDGE)
    return str(path)


@pytest.fixture
def rerank(tmp_path: Path, place: Any) -> RKLLMRerank:
    return RKLLMRerank(**place(model_path=judge_file(tmp_path), library="host",
                               max_context_len=512),
                       yes_token_id=ord("y"), no_token_id=ord("n"), top_n=2,
                       keep_retrieval_score=True)


def test_the_best_nodes_come_first_sync_and_async_alike(rerank: RKLLMRerank) -> None:
    ranked = rerank.postprocess_nodes(nodes(), QUERY)
    assert {n.node.get_content() for n in ranked} == set(TEXTS[1:])
    assert all(n.score is not None and n.score > 0.99 for n in ranked)
    assert ranked[0].node.metadata["retrieval_score"] == 0.5
    async_ranked = asyncio.run(rerank.apostprocess_nodes(nodes(), QUERY))
    assert [(n.node.get_content(), n.score) for n in async_ranked] == \
        [(n.node.get_content(), n.score) for n in ranked]
    assert asyncio.run(rerank.apostprocess_nodes([], QUERY)) == []
    with pytest.raises(InvalidParameterError, match="QueryBundle"):
        asyncio.run(rerank.apostprocess_nodes(nodes()))


def test_without_a_way_to_the_token_ids_the_error_names_every_way(tmp_path: Path) -> None:
    plain = RKLLMRerank(model_path=judge_file(tmp_path), library="host", max_context_len=512)
    with pytest.raises(UnsupportedFeatureError) as error:
        plain.postprocess_nodes(nodes(), QUERY)
    message = str(error.value)
    assert "yes_token_id=" in message and "no_token_id=" in message
    assert "tokenizer=" in message and "Qwen3-Reranker" in message


def test_a_tokenizer_json_gives_the_token_ids(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models

    # a vocabulary in which "yes" and "no" are the toy model's "y" and "n"
    vocabulary = {"[UNK]": 0, "no": ord("n"), "yes": ord("y")}
    Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]")).save(str(tmp_path / "tok.json"))
    reranker = RKLLMRerank(model_path=judge_file(tmp_path), library="host", max_context_len=512,
                           tokenizer=str(tmp_path / "tok.json"), top_n=3)
    ranked = reranker.postprocess_nodes(nodes(), QUERY)
    assert ranked[-1].node.get_content() == TEXTS[0]
    assert ranked[0].score is not None and ranked[0].score > 0.99


def test_a_known_reranker_conversion_is_recognised_by_its_file_name(tmp_path: Path) -> None:
    reranker = RKLLMRerank(model_path=judge_file(tmp_path, "qwen3-reranker-4b.scripted"),
                           library="host", max_context_len=512, top_n=3)
    scores = [n.score for n in reranker.postprocess_nodes(nodes(), QUERY)]
    expected = reranker.client.rerank(QUERY.query_str, TEXTS, yes_token_id=9693,
                                      no_token_id=2152)
    assert sorted(scores) == pytest.approx(sorted(expected))


@pytest.mark.gguf
@pytest.mark.skipif(find_llama_cpp() is None and not os.environ.get("CI"),
                    reason="needs the host extra (llama-cpp-python); CI always runs these")
def test_a_gguf_model_reranks_without_token_ids() -> None:
    from rkllm_core.host.models import smollm2_path

    reranker = RKLLMRerank(model_path=str(smollm2_path()), library="host",
                           max_context_len=1024, top_n=2)
    ranked = asyncio.run(reranker.apostprocess_nodes(
        nodes(["Bananas are yellow fruit.", "Paris is the capital of France."]),
        QueryBundle("What is the capital of France?")))
    assert ranked[0].node.get_content() == "Paris is the capital of France."
    assert all(n.score is not None and 0 < n.score < 1 for n in ranked)


def test_a_cancelled_async_rerank_aborts_the_run_and_frees_the_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    model = slow_model(tmp_path, monkeypatch)
    reranker = RKLLMRerank(client=model, yes_token_id=ord("y"), no_token_id=ord("n"))
    long = nodes([long_text(i) for i in range(3)])
    expect_cancellation_frees_the_model(
        model, lambda: reranker.apostprocess_nodes(long, QUERY), len(long), capfd)
    assert len(reranker.postprocess_nodes(nodes(TEXTS[:1]), QUERY)) == 1
    model.close()
