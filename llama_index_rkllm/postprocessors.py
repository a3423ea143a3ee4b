"""``RKLLMRerank``: reorder retrieved nodes by an RKLLM reranker's yes/no relevance score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llama_index.core.bridge.pydantic import Field
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from rkllm_core.errors import InvalidParameterError
from rkllm_core.settings import ModelSettings


class RKLLMRerank(ModelSettings, BaseNodePostprocessor):
    """A node postprocessor over :meth:`rkllm_core.RKLLM.rerank` for ``node_postprocessors``.

    Each node's score becomes P("yes") of the model's yes/no judgement of the node for the
    query (the Qwen3-Reranker prompt); the ``top_n`` best are kept, best first.
    ``apostprocess_nodes`` awaits the model without blocking the event loop
    (:meth:`rkllm_core.RKLLM.arerank`); cancelling it aborts the node being scored and scores
    none of the rest.

    The runtime has no tokenizer API, so the ids of "yes" and "no" are found the first way
    that applies (:func:`rkllm_core.rerank_tokens.rerank_token_ids`): ``yes_token_id`` /
    ``no_token_id``; ``tokenizer`` (the model's ``tokenizer.json`` or Hugging Face folder); the
    ``tokenizer`` the core model was created with; the vocabulary inside a ``.gguf`` model
    (host runtime); a known reranker conversion recognised by its file name
    (``Qwen3-Reranker-0.6B-w8a8.rkllm``). The error names these ways when none applies.

    Example (host runtime, scripted model):
        >>> import tempfile, pathlib
        >>> from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
        >>> from llama_index_rkllm import RKLLMRerank
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "reranker.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\nwhen contains "paris" reply "y"\\n'
        ...                     'default reply "n"\\n')
        >>> # this toy model answers single bytes, whose token ids are their codes
        >>> rerank = RKLLMRerank(model_path=str(path), library="host", max_context_len=512,
        ...                      yes_token_id=ord("y"), no_token_id=ord("n"), top_n=1)
        >>> nodes = [NodeWithScore(node=TextNode(text="Bananas are yellow.")),
        ...          NodeWithScore(node=TextNode(text="Paris is the capital."))]
        >>> best = rerank.postprocess_nodes(nodes, QueryBundle("Capital of France?"))
        >>> best[0].node.get_content(), round(best[0].score, 2)
        ('Paris is the capital.', 1.0)
        >>> import asyncio
        >>> best = asyncio.run(rerank.apostprocess_nodes(nodes, QueryBundle("Which capital?")))
        >>> best[0].node.get_content()
        'Paris is the capital.'
    """

    top_n: int = Field(default=3, ge=1, description="How many nodes to keep, best first.")
    instruction: str | None = Field(default=None, description="The judgement's instruction "
                                    "(default: whether the document meets the query).")
    yes_token_id: int | None = Field(default=None, description='Token id of "yes".')
    no_token_id: int | None = Field(default=None, description='Token id of "no".')
    tokenizer: str | None = Field(default=None, description='tokenizer.json or a Hugging Face '
                                  'folder of the model, to find the ids of "yes" and "no".')
    keep_retrieval_score: bool = Field(
        default=False, description="Keep the retriever's score in metadata['retrieval_score'].")
    timeout: float | None = Field(default=None, description="Seconds one document may take.")

    @classmethod
    def class_name(cls) -> str:
        return "RKLLMRerank"

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        query, texts = self._inputs(nodes, query_bundle)
        if not texts:
            return []
        with self._event(nodes, query) as event:
            ranked = self._ranked(nodes, self.client.rerank(query, texts, **self._rerank_args()))
            event.on_end(payload={EventPayload.NODES: ranked})
        return ranked

    async def _apostprocess_nodes(self, nodes: list[NodeWithScore],
                                  query_bundle: QueryBundle | None = None
                                  ) -> list[NodeWithScore]:
        query, texts = self._inputs(nodes, query_bundle)
        if not texts:
            return []
        with self._event(nodes, query) as event:
            ranked = self._ranked(nodes, await self.client.arerank(query, texts,
                                                                    **self._rerank_args()))
            event.on_end(payload={EventPayload.NODES: ranked})
        return ranked

    def _inputs(self, nodes: list[NodeWithScore],
                query_bundle: QueryBundle | None) -> tuple[str, list[str]]:
        if query_bundle is None:
            raise InvalidParameterError("RKLLMRerank needs the query: pass a QueryBundle")
        return query_bundle.query_str, [n.node.get_content(metadata_mode=MetadataMode.EMBED)
                                        for n in nodes]

    def _rerank_args(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "yes_token_id": self.yes_token_id,
                "no_token_id": self.no_token_id, "tokenizer": self.tokenizer,
                "timeout": self.timeout}

    def _event(self, nodes: list[NodeWithScore], query: str) -> Any:
        """The RERANKING callback event around one reranking."""
        return self.callback_manager.event(CBEventType.RERANKING, payload={
            EventPayload.NODES: nodes, EventPayload.QUERY_STR: query,
            EventPayload.MODEL_NAME: Path(self.model_path or "rkllm").name,
            EventPayload.TOP_K: self.top_n})

    def _ranked(self, nodes: list[NodeWithScore], scores: list[float]) -> list[NodeWithScore]:
        for node, score in zip(nodes, scores, strict=True):
            if self.keep_retrieval_score:
                node.node.metadata["retrieval_score"] = node.score
            node.score = score
        return sorted(nodes, key=lambda n: -(n.score or 0.0))[:self.top_n]
