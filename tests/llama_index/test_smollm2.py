"""A real end-to-end run: SmolLM2-135M-Instruct on the host runtime's GGUF engine answers from
documents through a VectorStoreIndex query engine, embedding with the same loaded model."""

from __future__ import annotations

import pytest
from llama_index.core import Document, VectorStoreIndex

from llama_index_rkllm import RKLLM, RKLLMEmbedding

pytestmark = pytest.mark.gguf


def test_smollm2_query_engine_answers_from_the_documents() -> None:
    pytest.importorskip("llama_cpp")
    from rkllm_core.host.models import smollm2_path

    llm = RKLLM(model_path=str(smollm2_path()), library="host", max_context_len=2048,
                max_tokens=48, top_k=1)
    embed = RKLLMEmbedding(client=llm.client)
    documents = [
        "The Rock 5B is a single-board computer with 16 GB of RAM.",
        "Bananas are yellow fruit that grow in the tropics.",
        "The Eiffel Tower is a landmark in Paris, France.",
    ]
    index = VectorStoreIndex.from_documents([Document(text=t) for t in documents],
                                            embed_model=embed)
    engine = index.as_query_engine(llm=llm, similarity_top_k=1)
    response = engine.query("How much RAM does the Rock 5B have?")
    assert response.source_nodes[0].node.get_content() == documents[0]
    assert "16" in str(response)
