"""``RKLLMReranker``: rerank retrieved documents with an RKLLM model (P("yes") per document)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import Document
from langchain_core.documents.compressor import BaseDocumentCompressor
from pydantic import Field

from langchain_rkllm._model import LoadedModel


class RKLLMReranker(LoadedModel, BaseDocumentCompressor):
    r"""A document compressor that reranks on the NPU with :meth:`rkllm_core.RKLLM.rerank`.

    Each document is scored by the probability that the model answers "yes" to "does this
    document meet the query?" (the Qwen3-Reranker prompt), read from the next-token logits
    (runtime 1.2.0+). Wrap a retriever in a ``ContextualCompressionRetriever`` to rerank what
    it finds.

    The runtime has no tokenizer API, so the ids of "yes" and "no" are found the first way
    that applies (:func:`rkllm_core.rerank_tokens.rerank_token_ids`): ``yes_token_id`` /
    ``no_token_id``; ``tokenizer`` (the model's ``tokenizer.json`` or Hugging Face folder); the
    ``tokenizer`` of an ``rkllm_core.RKLLM`` passed as ``client=``; the vocabulary inside a
    ``.gguf`` model (host runtime); a known reranker conversion recognised by its file name
    (``Qwen3-Reranker-0.6B-w8a8.rkllm``). The error names these ways when none applies.

    ``acompress_documents`` awaits the model without blocking the event loop
    (:meth:`rkllm_core.RKLLM.arerank`): cancelling it aborts the document being scored and
    scores none of the rest.

    Key init args:
        model_path (alias ``model``), library, max_context_len, client
            The model, as for ``ChatRKLLM``.
        top_n: int | None
            How many documents to keep (None keeps all, best first).
        instruction: str | None
            The judgement instruction (default: Qwen3-Reranker's web-search one).
        yes_token_id, no_token_id: int | None
            Token ids of "yes" and "no" in the model's vocabulary.
        tokenizer: str | None
            The model's ``tokenizer.json`` or Hugging Face folder, to find those ids.
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
        >>> [round(s) for s in reranker.rerank("Capital of France?", ["Bananas", "Paris"])]
        [0, 1]

    Async:
        >>> import asyncio
        >>> best = asyncio.run(reranker.acompress_documents(docs, "The capital of France?"))
        >>> best[0].page_content
        'Paris is the capital.'
        >>> [round(s) for s in asyncio.run(reranker.arerank("Capital?", ["Paris", "Rome"]))]
        [1, 0]
    """

    top_n: int | None = Field(default=3, ge=1, description="Documents to keep (None: all).")
    instruction: str | None = Field(default=None, description="The judgement instruction.")
    yes_token_id: int | None = Field(default=None, description="Token id of 'yes'.")
    no_token_id: int | None = Field(default=None, description="Token id of 'no'.")
    tokenizer: str | None = Field(
        default=None, description="tokenizer.json or a Hugging Face folder of the model, to "
        "find the ids of 'yes' and 'no'.")
    score_threshold: float | None = Field(
        default=None, description="Drop documents scoring below this (0-1).")
    timeout: float | None = Field(default=None, description="Seconds per document.")

    def rerank(self, query: str, texts: Sequence[str]) -> list[float]:
        """The relevance (0-1) of each text to ``query``, in the given order."""
        return self._core.rerank(query, list(texts), **self._rerank_args())

    async def arerank(self, query: str, texts: Sequence[str]) -> list[float]:
        """Async :meth:`rerank`; cancelling it aborts the model's run in flight."""
        return await self._core.arerank(query, list(texts), **self._rerank_args())

    def _rerank_args(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "yes_token_id": self.yes_token_id,
                "no_token_id": self.no_token_id, "tokenizer": self.tokenizer,
                "timeout": self.timeout}

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
        """Async :meth:`compress_documents`; the event loop stays free while the model runs."""
        if not documents:
            return []
        return self._select(documents,
                            await self.arerank(query, [d.page_content for d in documents]))
