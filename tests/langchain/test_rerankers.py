"""RKLLMReranker: documents ordered by the model's P("yes"), cut to top_n, and a
ContextualCompressionRetriever that reranks what a retriever found; the ids of "yes" and "no"
found without the user (the GGUF's vocabulary, a tokenizer.json, a known conversion's file
name); a cancelled async compression that aborts the model's run."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from langchain_rkllm import RKLLMReranker
from rkllm_core.errors import UnsupportedFeatureError
from rkllm_core.host.build import find_llama_cpp
from tests.core.test_async_embed_rerank import (
    expect_cancellation_frees_the_model,
    long_text,
    slow_model,
)

# a toy reranker: answers "y" (relevant) or "n" as single bytes, whose token ids are their codes
MODEL = ('RKLLM-SCRIPTED 1\nvocab_size = 1000\n'
         'when contains "paris" reply "y"\ndefault reply "n"\n')
DOCS = [Document("Bananas are yellow.", metadata={"source": "fruit"}),
        Document("Paris is the capital of France.", metadata={"source": "geo"}),
        Document("The Seine flows through Paris.", metadata={"source": "river"})]


@pytest.fixture
def reranker(make_file: Any, place: Any) -> RKLLMReranker:
    return RKLLMReranker(**place(model_path=str(make_file("reranker.scripted", MODEL)),
                                 library="host", max_context_len=512),
                         yes_token_id=ord("y"), no_token_id=ord("n"))


def test_documents_come_back_best_first_with_their_scores(reranker: RKLLMReranker) -> None:
    ranked = reranker.compress_documents(DOCS, "Which city is the capital?")
    assert [d.metadata["source"] for d in ranked][2] == "fruit"
    scores = [d.metadata["relevance_score"] for d in ranked]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > 0.99 and scores[2] < 0.01
    assert DOCS[0].metadata == {"source": "fruit"}  # the inputs are not changed


def test_top_n_and_score_threshold_cut_the_list(reranker: RKLLMReranker) -> None:
    one = reranker.model_copy(update={"top_n": 1})
    assert len(one.compress_documents(DOCS, "Which city is the capital?")) == 1
    kept = reranker.model_copy(update={"top_n": None, "score_threshold": 0.5})
    found = kept.compress_documents(DOCS, "Which city is the capital?")
    assert {d.metadata["source"] for d in found} == {"geo", "river"}
    assert reranker.compress_documents([], "anything") == []


def test_scores_are_the_core_rerank(reranker: RKLLMReranker) -> None:
    texts = [d.page_content for d in DOCS]
    assert reranker.rerank("Which city?", texts) == pytest.approx(reranker.client.rerank(
        "Which city?", texts, yes_token_id=ord("y"), no_token_id=ord("n")))


def test_async_compression(reranker: RKLLMReranker) -> None:
    ranked = asyncio.run(reranker.acompress_documents(DOCS, "Which city is the capital?"))
    assert [d.metadata["source"] for d in ranked][-1] == "fruit"


def test_a_contextual_compression_retriever_reranks_on_the_model(
        reranker: RKLLMReranker) -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever

    class Everything(BaseRetriever):
        def _get_relevant_documents(self, query: str, *,
                                    run_manager: CallbackManagerForRetrieverRun
                                    ) -> list[Document]:
            return list(DOCS)

    retriever = ContextualCompressionRetriever(
        base_compressor=reranker.model_copy(update={"top_n": 2}), base_retriever=Everything())
    found = retriever.invoke("Which city is the capital?")
    assert {d.metadata["source"] for d in found} == {"geo", "river"}
    assert all(d.metadata["relevance_score"] > 0.5 for d in found)


def test_without_a_way_to_the_token_ids_the_error_names_every_way(make_file: Any) -> None:
    plain = RKLLMReranker(model_path=str(make_file("r.scripted", MODEL)), library="host",
                          max_context_len=512)
    with pytest.raises(UnsupportedFeatureError) as error:
        plain.compress_documents(DOCS, "capital")
    message = str(error.value)
    assert "r.scripted" in message
    assert "yes_token_id=" in message and "no_token_id=" in message
    assert "tokenizer=" in message and "Qwen3-Reranker" in message


def test_a_tokenizer_json_gives_the_token_ids(make_file: Any, tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models

    # a vocabulary in which "yes" and "no" are the toy model's "y" and "n"
    vocabulary = {"[UNK]": 0, "no": ord("n"), "yes": ord("y")}
    Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]")).save(str(tmp_path / "tok.json"))
    reranker = RKLLMReranker(model_path=str(make_file("r.scripted", MODEL)), library="host",
                             max_context_len=512, tokenizer=str(tmp_path / "tok.json"))
    ranked = reranker.compress_documents(DOCS, "Which city is the capital?")
    assert ranked[0].metadata["relevance_score"] > 0.99
    assert ranked[-1].metadata["source"] == "fruit"


def test_a_known_reranker_conversion_is_recognised_by_its_file_name(make_file: Any) -> None:
    path = make_file("Qwen3-Reranker-0.6B-rk3588-w8a8.scripted", MODEL.replace(
        "vocab_size = 1000", "vocab_size = 32000"))
    reranker = RKLLMReranker(model_path=str(path), library="host", max_context_len=512,
                             top_n=None)
    texts = [d.page_content for d in DOCS]
    assert reranker.rerank("capital?", texts) == pytest.approx(
        reranker.client.rerank("capital?", texts, yes_token_id=9693, no_token_id=2152))


@pytest.mark.gguf
@pytest.mark.skipif(find_llama_cpp() is None and not os.environ.get("CI"),
                    reason="needs the host extra (llama-cpp-python); CI always runs these")
def test_a_gguf_model_reranks_with_the_ids_of_its_own_vocabulary() -> None:
    from rkllm_core.chat.tokenizer import ChatTokenizer
    from rkllm_core.host.models import smollm2_path

    reranker = RKLLMReranker(model_path=str(smollm2_path()), library="host",
                             max_context_len=1024, top_n=None)
    docs = [Document("Bananas are yellow fruit.", metadata={"source": "fruit"}),
            Document("Paris is the capital of France.", metadata={"source": "geo"})]
    ranked = reranker.compress_documents(docs, "What is the capital of France?")
    assert [d.metadata["source"] for d in ranked] == ["geo", "fruit"]
    # the scores are P("yes") against P("no") for the tokens spelt "yes" and "no"
    vocabulary = ChatTokenizer.from_gguf(smollm2_path())
    yes, no = vocabulary.token_id("yes"), vocabulary.token_id("no")
    assert yes is not None and no is not None
    assert vocabulary.decode([yes]) == "yes" and vocabulary.decode([no]) == "no"
    assert [d.metadata["relevance_score"] for d in ranked] == pytest.approx(
        reranker.client.rerank("What is the capital of France?", [d.page_content for d in ranked],
                               yes_token_id=yes, no_token_id=no))


def test_a_cancelled_async_compression_aborts_the_run_and_frees_the_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    model = slow_model(tmp_path, monkeypatch)
    reranker = RKLLMReranker(client=model, yes_token_id=ord("y"), no_token_id=ord("n"))
    docs = [Document(long_text(i)) for i in range(3)]
    expect_cancellation_frees_the_model(
        model, lambda: reranker.acompress_documents(docs, "Which city?"), len(docs), capfd)
    assert len(reranker.compress_documents(DOCS[:1], "capital")) == 1
    model.close()
