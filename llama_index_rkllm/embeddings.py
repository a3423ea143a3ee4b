"""``RKLLMEmbedding``: LlamaIndex embeddings from an RKLLM model's last hidden layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field

from rkllm_core.settings import ModelSettings


class RKLLMEmbedding(ModelSettings, BaseEmbedding):
    """Text and query embeddings over :meth:`rkllm_core.RKLLM.embed` (last-hidden-layer mode).

    Each text is one run on the model (pooled over its tokens and L2-normalised by default);
    ``embed_batch_size`` texts go to the model per call. ``query_instruction`` /
    ``text_instruction`` format the input as ``"Instruct: {instruction}\\nQuery: {text}"``
    (Qwen3-Embedding style). Async methods await the model's runs without blocking the event
    loop (:meth:`rkllm_core.RKLLM.aembed`); cancelling one aborts the text being embedded and
    runs none of the rest, so the model is free for the next caller at once. Objects naming
    the same file and settings share one loaded model with :class:`~llama_index_rkllm.RKLLM`;
    embedding clears the model's KV cache, so a conversation on a shared model is replayed on
    its next turn.

    Example (host runtime, scripted model):
        >>> import tempfile, pathlib
        >>> from llama_index_rkllm import RKLLMEmbedding
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\nhidden_size = 16\\n')
        >>> embed = RKLLMEmbedding(model_path=str(path), library="host", max_context_len=512)
        >>> vector = embed.get_query_embedding("a cat on a mat")
        >>> len(vector), round(sum(v * v for v in vector), 3)
        (16, 1.0)
        >>> len(embed.get_text_embedding_batch(["a cat", "a dog", "a bird"]))
        3
        >>> import asyncio
        >>> asyncio.run(embed.aget_query_embedding("a cat on a mat")) == vector
        True
    """

    pooling: Literal["mean", "last"] = Field(
        default="mean", description="Mean over the tokens, or the last token (for models "
        "trained for last-token pooling, such as Qwen3-Embedding).")
    normalize: bool = Field(default=True, description="L2-normalise each vector.")
    query_instruction: str | None = Field(default=None, description="Instruction for queries.")
    text_instruction: str | None = Field(default=None, description="Instruction for documents.")
    timeout: float | None = Field(default=None, description="Seconds one text may take.")

    def _on_connect(self) -> None:
        if self.model_name == "unknown":
            self.model_name = Path(self.model_path or "rkllm").name

    @classmethod
    def class_name(cls) -> str:
        return "RKLLMEmbedding"

    def _embed_args(self, instruction: str | None) -> dict[str, Any]:
        return {"pooling": self.pooling, "normalize": self.normalize,
                "instruction": instruction, "timeout": self.timeout}

    def _embed(self, texts: list[str], instruction: str | None) -> list[Embedding]:
        return _as_lists(self.client.embed(texts, **self._embed_args(instruction)))

    async def _aembed(self, texts: list[str], instruction: str | None) -> list[Embedding]:
        return _as_lists(await self.client.aembed(texts, **self._embed_args(instruction)))

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embed([query], self.query_instruction)[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embed([text], self.text_instruction)[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._embed(texts, self.text_instruction)

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await self._aembed([query], self.query_instruction))[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self._aembed([text], self.text_instruction))[0]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await self._aembed(texts, self.text_instruction)


def _as_lists(vectors: Any) -> list[Embedding]:
    return [[float(x) for x in row] for row in vectors]
