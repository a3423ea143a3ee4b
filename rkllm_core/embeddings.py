"""RKLLM's hidden states, sentence embeddings, logits and reranking (``_EmbeddingMethods``).

These calls read arrays the runtime hands to the result callback instead of text: a hidden-state
or logits run copies them out (:mod:`rkllm_core.worker`), and the methods here turn them into
vectors and scores. ``embed`` and ``rerank`` are calls of several independent runs, each on a
cleared KV cache, queued together so no other caller's run slips in between.
:class:`~rkllm_core.model.RKLLM` inherits these methods.

Example:
    >>> import tempfile, pathlib
    >>> from rkllm_core import RKLLM
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
    >>> _ = path.write_text("RKLLM-SCRIPTED 1\\nhidden_size = 8\\nvocab_size = 600\\n")
    >>> with RKLLM(path, library="host", max_context_len=512) as llm:
    ...     llm.embed(["a cat", "a dog"]).shape, llm.logits("Hi").shape
    ((2, 8), (1, 600))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from rkllm_core.errors import InvalidParameterError, RKLLMError, RunError
from rkllm_core.library import RuntimeLibrary
from rkllm_core.params import ModelParams
from rkllm_core.rerank_tokens import arerank_token_ids, rerank_token_ids
from rkllm_core.results import GenerationResult
from rkllm_core.streams import aconsume, consume
from rkllm_core.validation import check_text, check_timeout, require_capability
from rkllm_core.worker import RunWorker, _Run

if TYPE_CHECKING:
    from rkllm_core.inputs import RunBuilder

_T = TypeVar("_T")

#: Qwen3-Reranker's judgement prompt; the score is P("yes") for the first answer token.
RERANK_SYSTEM = (
    'Judge whether the Document meets the requirements based on the Query and the Instruct '
    'provided. Note that the answer can only be "yes" or "no".'
)
RERANK_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


class _EmbeddingMethods:
    """The hidden-state, embedding, logits and rerank calls of
    :class:`~rkllm_core.model.RKLLM`, which sets the attributes declared here."""

    lib: RuntimeLibrary
    params: ModelParams
    tokenizer: Callable[[str], Sequence[int]] | None
    _builder: RunBuilder

    if TYPE_CHECKING:
        @property
        def _live(self) -> RunWorker: ...

        def _collect(self, run: _Run, timeout: float | None, what: str) -> GenerationResult: ...

    # -- hidden states, embeddings, logits, reranking ----------------------------------------

    def hidden_states(
        self,
        prompt: str | None = None,
        *,
        tokens: Sequence[int] | None = None,
        embeddings: np.ndarray | None = None,
        keep_history: bool = False,
        timeout: float | None = None,
    ) -> np.ndarray:
        """The last hidden layer for the input's prefilled tokens, float32 ``(n_tokens, dim)``.

        The array is copied inside the callback (the runtime frees its buffer right after).
        With a text prompt the chat template's tokens are included.

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\nhidden_size = 16\\n')
            >>> with RKLLM(path, library="host", max_context_len=512) as llm:
            ...     llm.hidden_states(tokens=[300, 301, 302]).shape
            (3, 16)
        """
        run = self._builder.build("hidden", prompt=prompt, role="user", enable_thinking=False,
                                  tokens=tokens, embeddings=embeddings, image=None,
                                  keep_history=keep_history, max_new_tokens=None, sampling=None,
                                  lora=None, save_prompt_cache=None, stop=None, on_token=None)
        arrays = self._arrays(run, timeout, "hidden_states()")
        if not arrays:
            raise RunError("the runtime returned no hidden states for this input")
        return np.concatenate(arrays, axis=0)

    def embed(
        self,
        texts: str | Sequence[str],
        *,
        pooling: Literal["mean", "last"] = "mean",
        normalize: bool = True,
        instruction: str | None = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        """Sentence embeddings from the last hidden layer: ``(len(texts), dim)`` float32.

        Each text is an independent run; on runtime 1.2.0+ the KV cache is cleared before each
        one (so runs do not see each other: rknn-llm #278), which also drops any conversation
        kept with ``keep_history``. The runs are queued together; if one fails or is aborted,
        the rest never start. ``instruction`` prefixes each text as
        ``"Instruct: {instruction}\\nQuery: {text}"`` (Qwen3-Embedding style). ``timeout`` is
        per text. :meth:`aembed` is the asyncio twin.

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\nhidden_size = 16\\n')
            >>> with RKLLM(path, library="host", max_context_len=512) as llm:
            ...     vectors = llm.embed(["a cat", "a dog"])
            >>> vectors.shape
            (2, 16)
        """
        runs, read = self._embed_plan(texts, pooling, normalize, instruction)
        return _stacked(self._run_all(runs, read, timeout, "embed()"))

    async def aembed(
        self,
        texts: str | Sequence[str],
        *,
        pooling: Literal["mean", "last"] = "mean",
        normalize: bool = True,
        instruction: str | None = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        """Async :meth:`embed` (same arguments and result); never blocks the event loop.

        Each text's run is awaited on its channel. Cancelling the awaiting task
        (``asyncio.wait_for``, a client that went away) aborts the run in flight and drops the
        texts not yet started, so the next caller's run starts as soon as the runtime has
        stopped (within the model's ``abort_grace``).

        Example:
            >>> import asyncio, tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\nhidden_size = 16\\n')
            >>> async def main() -> tuple[int, ...]:
            ...     with RKLLM(path, library="host", max_context_len=512) as llm:
            ...         return (await llm.aembed(["a cat", "a dog", "a bird"])).shape
            >>> asyncio.run(main())
            (3, 16)
        """
        runs, read = self._embed_plan(texts, pooling, normalize, instruction)
        return _stacked(await self._arun_all(runs, read, timeout, "aembed()"))

    def _embed_plan(self, texts: str | Sequence[str], pooling: str, normalize: bool,
                    instruction: str | None
                    ) -> tuple[list[_Run], Callable[[list[np.ndarray]], np.ndarray]]:
        """A hidden-state run per text, and how one run's states become its vector."""
        if pooling not in ("mean", "last"):
            raise InvalidParameterError(f"pooling must be 'mean' or 'last', got {pooling!r}")
        items = [texts] if isinstance(texts, str) else list(texts)
        for i, text in enumerate(items):
            check_text(text, f"texts[{i}]")
        if instruction:
            items = [f"Instruct: {instruction}\nQuery: {text}" for text in items]

        def read(arrays: list[np.ndarray]) -> np.ndarray:
            if not arrays:
                raise RunError("the runtime returned no hidden states for this input")
            states = np.concatenate(arrays, axis=0)
            vector: np.ndarray = states.mean(axis=0) if pooling == "mean" else states[-1]
            if normalize:
                norm = float(np.linalg.norm(vector))
                vector = vector / norm if norm > 0 else vector
            return vector.astype(np.float32)

        return self._independent_runs("hidden", items), read

    def _fresh_cache_hooks(self) -> list[Callable[[Any], None]]:
        if not self.lib.family.capabilities.kv_cache_clear:
            return []
        lib = self.lib

        def clear(handle: Any) -> None:
            if lib.clear_kv_cache(handle, False) != 0:
                raise RKLLMError("rkllm_clear_kv_cache failed before an independent run")

        return [clear]

    def logits(
        self,
        prompt: str | None = None,
        *,
        tokens: Sequence[int] | None = None,
        keep_history: bool = False,
        timeout: float | None = None,
    ) -> np.ndarray:
        """Logits after the input, float32 ``(num_tokens, vocab_size)`` as the runtime gives
        them (row -1 is the next-token distribution). Runtime 1.2.0+.

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\nvocab_size = 1000\\n')
            >>> with RKLLM(path, library="host", max_context_len=512) as llm:
            ...     llm.logits("Hello").shape
            (1, 1000)
        """
        run = self._builder.build("logits", prompt=prompt, role="user", enable_thinking=False,
                                  tokens=tokens, embeddings=None, image=None,
                                  keep_history=keep_history, max_new_tokens=None, sampling=None,
                                  lora=None, save_prompt_cache=None, stop=None, on_token=None)
        arrays = self._arrays(run, timeout, "logits()")
        if not arrays:
            raise RunError("the runtime returned no logits for this input")
        return np.concatenate(arrays, axis=0)

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        yes_token_id: int | None = None,
        no_token_id: int | None = None,
        tokenizer: Any = None,
        timeout: float | None = None,
    ) -> list[float]:
        """Relevance of each document to ``query``: P("yes") of a yes/no judgement, 0-1.

        The model (ideally a reranker such as Qwen3-Reranker) is asked whether the document
        meets the query; the score is ``softmax(logit_yes, logit_no)[0]`` of the next token.
        Each document is one run on a cleared KV cache, queued together as in :meth:`embed`;
        ``timeout`` is per document. Needs logits (runtime 1.2.0+). :meth:`arerank` is the
        asyncio twin.

        The runtime has no tokenizer API, so the ids of "yes" and "no" come from
        ``yes_token_id`` / ``no_token_id``, else ``tokenizer`` (a ``tokenizer.json``, a Hugging
        Face folder, a ``.gguf`` file or a ``str -> ids`` function), else the ``tokenizer``
        given to RKLLM, else the GGUF's own vocabulary (host runtime), else the file name of a
        known reranker conversion (:data:`rkllm_core.rerank_tokens.KNOWN_VOCABULARIES`);
        UnsupportedFeatureError names these ways when none applies.

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\nvocab_size = 1000\\n'
            ...                     'when contains "paris" reply "y"\\ndefault reply "n"\\n')
            >>> # this toy model answers "y" or "n", single bytes whose token ids are their codes
            >>> with RKLLM(path, library="host", max_context_len=512) as llm:
            ...     scores = llm.rerank("capital of France?", ["Paris it is", "Bananas"],
            ...                         yes_token_id=ord("y"), no_token_id=ord("n"))
            >>> [round(s) for s in scores]
            [1, 0]
        """
        sources = self._rerank_id_sources(documents, yes_token_id, no_token_id, tokenizer)
        runs, read = self._rerank_plan(query, documents, instruction,
                                       rerank_token_ids(**sources))
        return self._run_all(runs, read, timeout, "rerank()")

    async def arerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        yes_token_id: int | None = None,
        no_token_id: int | None = None,
        tokenizer: Any = None,
        timeout: float | None = None,
    ) -> list[float]:
        """Async :meth:`rerank` (same arguments and result); never blocks the event loop.

        Cancelling the awaiting task aborts the document's run in flight and drops the
        documents not yet started, so the next caller's run starts as soon as the runtime has
        stopped (within the model's ``abort_grace``).

        Example:
            >>> import asyncio, tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\nvocab_size = 1000\\n'
            ...                     'when contains "paris" reply "y"\\ndefault reply "n"\\n')
            >>> async def main() -> list[float]:
            ...     with RKLLM(path, library="host", max_context_len=512) as llm:
            ...         return await llm.arerank("capital of France?", ["Bananas", "Paris"],
            ...                                  yes_token_id=ord("y"), no_token_id=ord("n"))
            >>> [round(s) for s in asyncio.run(main())]
            [0, 1]
        """
        sources = self._rerank_id_sources(documents, yes_token_id, no_token_id, tokenizer)
        runs, read = self._rerank_plan(query, documents, instruction,
                                       await arerank_token_ids(**sources))
        return await self._arun_all(runs, read, timeout, "arerank()")

    def _rerank_id_sources(self, documents: Sequence[str], yes_token_id: int | None,
                           no_token_id: int | None, tokenizer: Any) -> dict[str, Any]:
        """Checks what rerank can check at once, then where the yes/no ids come from."""
        require_capability(self.lib, "logits", "rerank() (it reads logits)")
        if isinstance(documents, str) or not isinstance(documents, Sequence):
            raise InvalidParameterError("documents must be a list of strings")
        return {"model_path": self.params.model_path, "yes_token_id": yes_token_id,
                "no_token_id": no_token_id,
                "tokenizer": tokenizer if tokenizer is not None else self.tokenizer}

    def _rerank_plan(self, query: str, documents: Sequence[str], instruction: str | None,
                     ids: tuple[int, int]
                     ) -> tuple[list[_Run], Callable[[list[np.ndarray]], float]]:
        """A logits run per document, and how one run's logits become its score."""
        yes, no = ids
        prompts = [f"{RERANK_SYSTEM}\n<Instruct>: {instruction or RERANK_INSTRUCTION}\n"
                   f"<Query>: {query}\n<Document>: {document}" for document in documents]

        def read(arrays: list[np.ndarray]) -> float:
            if not arrays:
                raise RunError("the runtime returned no logits for this input")
            row = arrays[-1][-1]
            if not (0 <= yes < row.shape[0] and 0 <= no < row.shape[0]):
                raise InvalidParameterError(
                    f"yes/no token ids ({yes}, {no}) are outside the vocabulary ({row.shape[0]})")
            diff = float(row[no]) - float(row[yes])
            return 1.0 / (1.0 + math.exp(min(diff, 700.0)))

        return self._independent_runs("logits", prompts), read

    def _arrays(self, run: _Run, timeout: float | None, what: str) -> list[np.ndarray]:
        return self._run_arrays(run, self._collect(run, timeout, what), what)

    def _run_arrays(self, run: _Run, result: GenerationResult, what: str) -> list[np.ndarray]:
        """The arrays a finished hidden-state or logits run copied out of its callbacks."""
        if result.finish_reason == "abort":
            raise RKLLMError(f"{what} was aborted before the runtime returned its output")
        if run.kind == "hidden" and run.arrays and run.arrays[0].ndim == 2:
            self._builder.hidden_size = int(run.arrays[0].shape[1])
        return run.arrays

    # embed and rerank are calls of several runs, built once (_independent_runs plus a `read`
    # of each run's arrays) and executed by a sync or an async driver. The runs are queued
    # together, so the call is not interleaved with others; when the call ends early
    # (cancelled, timed out, failed) the runs not yet started never start.

    def _independent_runs(self, kind: Literal["hidden", "logits"],
                          prompts: Sequence[str]) -> list[_Run]:
        """One run per prompt, each on a cleared KV cache (rknn-llm #278), each starting only
        if the one before it ended normally."""
        runs: list[_Run] = []
        for prompt in prompts:
            run = self._builder.build(kind, prompt=prompt, role="user", enable_thinking=False,
                                      tokens=None, embeddings=None, image=None,
                                      keep_history=False, max_new_tokens=None, sampling=None,
                                      lora=None, save_prompt_cache=None, stop=None,
                                      on_token=None)
            # the check runs on the worker right before the run: an abort of the previous run
            # is already recorded then, so no later run of the call can slip in after it
            run.before = [*([_unless_ended_early(runs[-1])] if runs else []),
                          *self._fresh_cache_hooks()]
            runs.append(run)
        return runs

    def _run_all(self, runs: list[_Run], read: Callable[[list[np.ndarray]], _T],
                 timeout: float | None, what: str) -> list[_T]:
        check_timeout(timeout)
        worker = self._live
        try:
            for run in runs:
                worker.submit(run, what)
            return [read(self._run_arrays(run, consume(worker, run, timeout, owner=self), what))
                    for run in runs]
        finally:
            _drop_unfinished(worker, runs)

    async def _arun_all(self, runs: list[_Run], read: Callable[[list[np.ndarray]], _T],
                        timeout: float | None, what: str) -> list[_T]:
        check_timeout(timeout)
        worker = self._live
        try:
            for run in runs:
                worker.submit(run, what)
            return [read(self._run_arrays(
                        run, await aconsume(worker, run, timeout, owner=self), what))
                    for run in runs]
        finally:
            _drop_unfinished(worker, runs)


def _unless_ended_early(previous: _Run) -> Callable[[Any], None]:
    """A ``before`` hook: refuse to start when ``previous`` (the run queued just before, of
    the same call) was aborted or failed."""

    def check(handle: Any) -> None:
        if previous.abort_reason is not None or previous.error is not None \
                or previous.runtime_error or previous.return_code != 0:
            raise RKLLMError("not started: an earlier run of the same call ended early")

    return check


def _drop_unfinished(worker: RunWorker, runs: list[_Run]) -> None:
    """Take a call's runs that have not started off the queue (the last first, so none of
    them starts meanwhile), then abort the one in flight."""
    for run in reversed(runs):
        if run.state in ("queued", "running"):
            worker.abort_run(run, "abort")


def _stacked(rows: list[np.ndarray]) -> np.ndarray:
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)

