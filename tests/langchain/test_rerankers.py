"""RKLLMReranker: documents ordered by the model's P("yes"), cut to top_n, and a
ContextualCompressionRetriever that reranks what a retriever found."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from langchain_rkllm import RKLLMReranker
from rkllm_core.errors import UnsupportedFeatureError

# a toy reranker: answers "y" (relevant) or "n" as single bytes, whose token ids are their codes
MODEL = ('RKLLM-SCRIPTED 1\nvocab_size = 1000\n'
         'when contains "paris" reply "y"\ndefault reply "n"\n')
DOCS = [Document("Bananas are yellow.", metadata={"source": "fruit"}),
        Document("Paris is the capital of France.", metadata={"source": "geo"}),
        Document("The Seine flows through Paris.", metadata={"source": "river"})]


@pytest.fixture
def reranker(make_file: Any) -> RKLLMReranker:
    return RKLLMReranker(model_path=str(make_file("reranker.scripted", MODEL)), library="host",
                         max_context_len=512, yes_token_id=ord("y"), no_token_id=ord("n"))


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


def test_without_token_ids_the_error_says_what_to_pass(make_file: Any) -> None:
    plain = RKLLMReranker(model_path=str(make_file("r.scripted", MODEL)), library="host",
                          max_context_len=512)
    with pytest.raises(UnsupportedFeatureError, match="yes_token_id"):
        plain.compress_documents(DOCS, "capital")
