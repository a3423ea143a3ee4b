"""``RKLLMEmbeddings``: LangChain embeddings from an RKLLM model's last hidden layer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from langchain_core.embeddings import Embeddings
from pydantic import Field

from langchain_rkllm._model import LoadedModel


class RKLLMEmbeddings(LoadedModel, Embeddings):
    r"""Text embeddings on the NPU: the runtime's last-hidden-layer mode, pooled per text.

    Each text is one run of the model in hidden-state mode (the KV cache is cleared before
    each, so texts never see each other); the token vectors are pooled (``mean`` or ``last``)
    and, by default, L2-normalised. Decoder embedding models (Qwen3-Embedding...) want an
    instruction in front of queries: set ``query_instruction``.

    Setup:
        .. code-block:: bash

            pip install "rkllm-py[langchain]"          # on the board
            pip install "rkllm-py[langchain,host]"     # on a PC: host runtime + SmolLM2

    Key init args:
        model_path (alias ``model``): str
            The ``.rkllm`` file (``.gguf`` or scripted on the host runtime); shared with every
            ``ChatRKLLM`` / ``RKLLM`` naming the same file and settings.
        library: str | None
            ``librkllmrt.so`` path or ``"host"``.
        pooling: "mean" | "last"
            How token vectors become one vector (``last`` for last-token models).
        normalize: bool
            L2-normalise the vectors (default True).
        query_instruction: str | None
            ``embed_query`` sends ``"Instruct: {query_instruction}\nQuery: {text}"``.
        batch_size: int
            Texts per call into the model (a progress-bar step).
        show_progress: bool
            A tqdm progress bar over the documents (off by default; needs ``tqdm``).
        client: rkllm_core.RKLLM | None
            An already loaded model.

    Instantiate:
        >>> import pathlib, tempfile
        >>> from langchain_rkllm import RKLLMEmbeddings
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "embedder.scripted"
        >>> _ = path.write_text("RKLLM-SCRIPTED 1\nhidden_size = 32\n")
        >>> embeddings = RKLLMEmbeddings(model=str(path), library="host", max_context_len=512)

    Embed:
        >>> docs = embeddings.embed_documents(["the cat sat on the mat", "a cat on a mat",
        ...                                    "quarterly revenue grew"])
        >>> len(docs), len(docs[0])
        (3, 32)
        >>> query = embeddings.embed_query("cat on the mat")
        >>> scores = [sum(q * d for q, d in zip(query, doc)) for doc in docs]
        >>> scores.index(max(scores)) in (0, 1)
        True

    Async:
        >>> import asyncio
        >>> len(asyncio.run(embeddings.aembed_documents(["a", "b"])))
        2
        >>> asyncio.run(embeddings.aembed_query("cat on the mat")) == query
        True

        The async methods await the model's runs without blocking the event loop (they use
        :meth:`rkllm_core.RKLLM.aembed`); cancelling the task aborts the text being embedded
        and runs none of the rest, so the model is free for the next caller at once.
    """

    pooling: Literal["mean", "last"] = Field(
        default="mean", description="Pool token vectors by their mean or take the last one.")
    normalize: bool = Field(default=True, description="L2-normalise each vector.")
    query_instruction: str | None = Field(
        default=None, description="Instruction put before queries (decoder embedding models).")
    document_instruction: str | None = Field(
        default=None, description="Instruction put before documents (rarely needed).")
    batch_size: int = Field(default=32, ge=1, description="Texts per call into the model.")
    show_progress: bool = Field(default=False, description="Show a tqdm progress bar.")
    timeout: float | None = Field(
        default=None, description="Seconds each text may take (waiting plus running).")

    def _batches(self, texts: list[str]) -> Iterator[list[str]]:
        for start in range(0, len(texts), self.batch_size):
            yield texts[start:start + self.batch_size]

    def _progress(self, total: int) -> Any:
        if not self.show_progress:
            return _NoProgress()
        try:
            from tqdm.auto import tqdm  # type: ignore[import-untyped]
        except ImportError as exc:
            raise ImportError("show_progress=True needs tqdm: pip install tqdm") from exc
        return tqdm(total=total, desc="Embedding", unit="text")

    def _embed_args(self, instruction: str | None) -> dict[str, Any]:
        return {"pooling": self.pooling, "normalize": self.normalize,
                "instruction": instruction, "timeout": self.timeout}

    def _embed(self, texts: list[str], instruction: str | None) -> list[list[float]]:
        return _as_lists(self._core.embed(texts, **self._embed_args(instruction)))

    async def _aembed(self, texts: list[str], instruction: str | None) -> list[list[float]]:
        return _as_lists(await self._core.aembed(texts, **self._embed_args(instruction)))

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, computed ``batch_size`` texts at a time."""
        out: list[list[float]] = []
        with self._progress(len(texts)) as bar:
            for batch in self._batches(list(texts)):
                out.extend(self._embed(batch, self.document_instruction))
                bar.update(len(batch))
        return out

    def embed_query(self, text: str) -> list[float]:
        """The vector of a query, with ``query_instruction`` in front when set."""
        return self._embed([text], self.query_instruction)[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async :meth:`embed_documents`; cancelling it aborts the model's run in flight."""
        out: list[list[float]] = []
        with self._progress(len(texts)) as bar:
            for batch in self._batches(list(texts)):
                out.extend(await self._aembed(batch, self.document_instruction))
                bar.update(len(batch))
        return out

    async def aembed_query(self, text: str) -> list[float]:
        """Async :meth:`embed_query`; cancelling it aborts the model's run."""
        return (await self._aembed([text], self.query_instruction))[0]


def _as_lists(vectors: Any) -> list[list[float]]:
    return [[float(x) for x in row] for row in vectors]


class _NoProgress:
    """Stands in for a tqdm bar when none is shown."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None
