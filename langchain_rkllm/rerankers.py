"""``RKLLMReranker``: rerank retrieved documents with an RKLLM model (P("yes") per document)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from langchain_core.callbacks import Callbacks
from langchain_core.documents import Document
from langchain_core.documents.compressor import BaseDocumentCompressor
from pydantic import Field

from langchain_rkllm._model import LoadedModel


class RKLLMReranker(LoadedModel, BaseDocumentCompressor):
    r"""A document compressor that reranks on the NPU with :meth:`rkllm_core.RKLLM.rerank`.

    Each document is scored by the probability that the model answers "yes" to "does this
    document meet the query?" (the Qwen3-Reranker prompt), read from the next-token logits
    (runtime 1.2.0+). The runtime has no tokenizer API, so the ids of "yes" and "no" are given
    as ``yes_token_id`` / ``no_token_id``, or come from a ``tokenizer=`` of an ``rkllm_core.RKLLM``
    passed as ``client=``. Wrap a retriever in a ``ContextualCompressionRetriever`` to rerank
    what it finds.

    Key init args:
        model_path (alias ``model``), library, max_context_len, client
            The model, as for ``ChatRKLLM``.
        top_n: int | None
            How many documents to keep (None keeps all, best first).
        instruction: str | None
            The judgement instruction (default: Qwen3-Reranker's web-search one).
        yes_token_id, no_token_id: int | None
            Token ids of "yes" and "no" in the model's vocabulary.
        score_threshold: float | None
            Drop documents scoring below this.

    Example:
        >>> import pathlib, tempfile
        >>> from langchain_core.documents import Document
        >>> from langchain_rkllm import RKLLMReranker
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "reranker.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\nvocab_size = 1000\n'
        ...                     'when contains "paris" reply "y"\ndefault reply "n"\n')
        >>> # this toy model answers "y" or "n": single bytes, whose token ids are their codes
        >>> reranker = RKLLMReranker(model=str(path), library="host", max_context_len=512,
        ...                          yes_token_id=ord("y"), no_token_id=ord("n"), top_n=1)
        >>> docs = [Document("Bananas are yellow."), Document("Paris is the capital.")]
        >>> best = reranker.compress_documents(docs, "What is the capital of France?")
        >>> best[0].page_content, round(best[0].metadata["relevance_score"])
        ('Paris is the capital.', 1)
    """

    top_n: int | None = Field(default=3, ge=1, description="Documents to keep (None: all).")
    instruction: str | None = Field(default=None, description="The judgement instruction.")
    yes_token_id: int | None = Field(default=None, description="Token id of 'yes'.")
    no_token_id: int | None = Field(default=None, description="Token id of 'no'.")
    score_threshold: float | None = Field(
        default=None, description="Drop documents scoring below this (0-1).")
    timeout: float | None = Field(default=None, description="Seconds per document.")

    def rerank(self, query: str, texts: Sequence[str]) -> list[float]:
        """The relevance (0-1) of each text to ``query``, in the given order."""
        return self._core.rerank(query, list(texts), instruction=self.instruction,
                                 yes_token_id=self.yes_token_id, no_token_id=self.no_token_id,
                                 timeout=self.timeout)

    def _select(self, documents: Sequence[Document], scores: list[float]) -> list[Document]:
        ranked = sorted(zip(documents, scores, strict=True), key=lambda p: p[1], reverse=True)
        if self.score_threshold is not None:
            ranked = [p for p in ranked if p[1] >= self.score_threshold]
        if self.top_n is not None:
            ranked = ranked[:self.top_n]
        return [Document(page_content=d.page_content, id=d.id,
                         metadata={**d.metadata, "relevance_score": s}) for d, s in ranked]

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        """The documents best first, with ``metadata["relevance_score"]``, cut to ``top_n``."""
        if not documents:
            return []
        return self._select(documents, self.rerank(query, [d.page_content for d in documents]))

    async def acompress_documents(self, documents: Sequence[Document], query: str,
                                  callbacks: Callbacks | None = None) -> Sequence[Document]:
        """Async :meth:`compress_documents`, off the event loop."""
        if not documents:
            return []
        scores = await asyncio.to_thread(self.rerank, query, [d.page_content for d in documents])
        return self._select(documents, scores)
