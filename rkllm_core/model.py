"""``RKLLM``: one loaded model, the class most users touch.

An RKLLM owns a :class:`~rkllm_core.worker.RunWorker`: every native call that touches the model
(runs and settings alike) executes on that one worker thread, in FIFO order, so threads and
asyncio tasks can share a model. Results flow from the runtime's callback to a
:class:`~rkllm_core.streams.TextStream` or :class:`~rkllm_core.streams.AsyncTextStream`.
Run results live in :mod:`rkllm_core.results`, argument checks in :mod:`rkllm_core.validation`,
and :class:`~rkllm_core.inputs.RunBuilder` turns a run's arguments into the runtime's structs;
this module re-exports the names long imported from it.

Example:
    >>> import tempfile, pathlib
    >>> from rkllm_core import RKLLM
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "hello.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hello there!"\\n')
    >>> with RKLLM(path, library="host", max_context_len=512) as llm:
    ...     result = llm.generate("Hi")
    >>> result.text, result.finish_reason
    ('Hello there!', 'stop')
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import ValidationError

from rkllm_core.abi import Capabilities
from rkllm_core.backend import (
    ClearKVCache,
    ReadKVCacheSize,
    RunSetup,
    SetChatTemplate,
    SetFunctionTools,
)
from rkllm_core.errors import (
    InvalidParameterError,
    ModelClosedError,
    RKLLMError,
    RunError,
)
from rkllm_core.inputs import RunBuilder
from rkllm_core.library import RuntimeLibrary, load_library
from rkllm_core.params import ExtendParams, ModelParams, SamplingParams
from rkllm_core.rerank_tokens import arerank_token_ids, rerank_token_ids
from rkllm_core.results import (
    FinishReason,
    GenerationResult,
    ImageInput,
    PerfStats,
    RuntimeInfo,
    StreamChunk,
    parse_init_log,
)
from rkllm_core.streaming import Channel
from rkllm_core.streams import AsyncTextStream, TextStream, aconsume, consume
from rkllm_core.validation import (
    _is_number,
    _readable_file,
    check_return_code,
    check_text,
    check_timeout,
    require_capability,
)
from rkllm_core.worker import ABORT_GRACE, RunWorker, _Done, _Failure, _Run

# the names other modules have long imported from here, wherever they now live
__all__ = [
    "ABORT_GRACE",
    "RERANK_INSTRUCTION",
    "RERANK_SYSTEM",
    "RKLLM",
    "AsyncTextStream",
    "FinishReason",
    "GenerationResult",
    "ImageInput",
    "PerfStats",
    "RuntimeInfo",
    "StreamChunk",
    "TextStream",
    "Tokenizer",
    "check_text",
    "check_timeout",
    "parse_init_log",
]

logger = logging.getLogger("rkllm_core")

Tokenizer = Callable[[str], Sequence[int]]
_T = TypeVar("_T")


#: Qwen3-Reranker's judgement prompt; the score is P("yes") for the first answer token.
RERANK_SYSTEM = (
    'Judge whether the Document meets the requirements based on the Query and the Instruct '
    'provided. Note that the answer can only be "yes" or "no".'
)
RERANK_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


# ---------------------------------------------------------------------------------------------
# The public class


class RKLLM:
    """A loaded RKLLM model: generation, streaming, async, embeddings, logits, KV cache.

    Setup:
        On a Rockchip board, ``librkllmrt.so`` is found on the usual paths (or pass
        ``library=``). Anywhere else, ``library="host"`` builds rkllm-py's host runtime, which
        runs scripted and GGUF models with the same API.

    Key init args:
        model_path: the model file. library: ``None`` (search), a path, ``"host"`` or a
        :class:`~rkllm_core.library.RuntimeLibrary`. runtime_version: the runtime release when
        detection should not decide. params: a :class:`ModelParams`; extend: an
        :class:`ExtendParams`; ``**param_overrides``: any ModelParams field
        (``max_context_len=2048, temperature=0.2``). tokenizer: optional
        ``str -> token ids`` (used by :meth:`rerank`; on 1.3.0 also registered as the
        tokenizer callback for models exported without one). abort_grace: seconds a run may
        take to end after ``rkllm_abort`` before the model counts as wedged
        (:class:`~rkllm_core.errors.ModelWedgedError`; default 10).

    Threads and tasks share one model: runs execute one at a time, first come first served,
    on a worker thread this object owns. ``close()`` (or leaving the ``with`` block, or
    interpreter exit) aborts a run in flight, waits for it and frees the model.

    Example:
        >>> import tempfile, pathlib
        >>> from rkllm_core import RKLLM
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\nwhen contains "france" reply "Paris."\\n'
        ...                     'default reply "Hello!"\\n')
        >>> llm = RKLLM(path, library="host", runtime_version="1.2.3", max_context_len=512)
        >>> llm.generate("The capital of France?").text
        'Paris.'
        >>> [c.text for c in llm.stream("hi")]
        ['Hello', '!']
        >>> llm.runtime_info.release
        '1.2.3'
        >>> llm.close()
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        library: str | os.PathLike[str] | RuntimeLibrary | None = None,
        runtime_version: str | None = None,
        params: ModelParams | None = None,
        extend: ExtendParams | None = None,
        tokenizer: Tokenizer | None = None,
        abort_grace: float = ABORT_GRACE,
        **param_overrides: Any,
    ) -> None:
        self._worker: RunWorker | None = None
        if not _is_number(abort_grace) or not 0 < abort_grace < math.inf:
            raise InvalidParameterError(
                f"abort_grace must be a positive number of seconds, got {abort_grace!r}")
        if params is None and model_path is None:
            raise InvalidParameterError("pass the model file: RKLLM('model.rkllm', ...)")
        values: dict[str, Any] = params.model_dump() if params is not None else {}
        values.update(param_overrides)
        if model_path is not None:
            values["model_path"] = model_path
        try:
            self.params = ModelParams.model_validate(values)
        except ValidationError as exc:
            raise InvalidParameterError(f"invalid model parameters: {exc}") from exc
        self.extend = extend or ExtendParams()
        if isinstance(library, RuntimeLibrary):
            self.lib = library
        else:
            self.lib = load_library(library, runtime_version=runtime_version)
        self.n_batch = int(self.extend.n_batch)
        self._builder = RunBuilder(self.lib, self.params, self.n_batch)
        param = self.lib.create_default_param()
        self.params.fill_native(param, self.lib.release, self.extend)
        self.tokenizer = tokenizer
        tokenizer_callback = None
        if tokenizer is not None and self.lib.family.capabilities.init_callbacks:
            tokenizer_callback = _tokenizer_callback(self.lib, tokenizer)
        self._worker = RunWorker(self.lib, param, tokenizer_callback, float(abort_grace))
        self._info = parse_init_log(self._worker.native.init_log)
        self._cross_attn_keep: list[Any] = []
        self._finalizer = weakref.finalize(self, self._worker.close)
        logger.info("loaded %s on runtime %s", self.params.model_path, self.lib.release)

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Abort any run in flight, wait for it, and free the model. Idempotent.

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\n')
            >>> llm = RKLLM(path, library="host", max_context_len=512)
            >>> llm.close(); llm.close(); llm.closed
            True
        """
        if self._worker is not None:
            self._finalizer()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run.

        Example: see :meth:`close`.
        """
        return self._worker is None or self._worker.closed

    def __enter__(self) -> RKLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"RKLLM({str(self.params.model_path)!r}, runtime={self.lib.release}, {state})"

    @property
    def _live(self) -> RunWorker:
        if self._worker is None or self._worker.closed:
            raise ModelClosedError("the model is closed: create a new RKLLM to use it again")
        return self._worker

    @property
    def is_running(self) -> bool:
        """True while a run of this model is executing (queued runs do not count).

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> # this model stops sending tokens after the first one, until aborted
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\nhang_after_tokens = 1\\n'
            ...                     'default reply "a b c"\\n')
            >>> with RKLLM(path, library="host", max_context_len=512) as llm:
            ...     stream = llm.stream("go")
            ...     _ = next(stream)
            ...     running = llm.is_running
            ...     stream.close()
            ...     running, llm.is_running
            (True, False)
        """
        return self._worker is not None and self._worker.current is not None

    def abort(self) -> bool:
        """Abort the run executing now (queued runs still run); False if none was.

        Its consumer sees ``finish_reason == "abort"``. Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\n')
            >>> with RKLLM(path, library="host", max_context_len=512) as llm:
            ...     llm.abort()
            False
        """
        return self._worker is not None and self._worker.abort_current()

    @property
    def capabilities(self) -> Capabilities:
        """What the loaded runtime release can do (per-run sampling, history, tools, ...).

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text("RKLLM-SCRIPTED 1\\n")
            >>> with RKLLM(path, library="host", runtime_version="1.2.3",
            ...            max_context_len=512) as llm:
            ...     llm.capabilities.function_tools, llm.capabilities.per_run_sampling
            (True, False)
        """
        return self.lib.family.capabilities

    @property
    def runtime_info(self) -> RuntimeInfo:
        """Library path, family, release, how it was detected, and what the init log said.

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\n')
            >>> with RKLLM(path, library="host", runtime_version="1.2.0",
            ...            max_context_len=512) as llm:
            ...     info = llm.runtime_info
            >>> info.family, info.platform, info.model_platform, info.driver_version
            ('1.2.0', 'HOST', 'RK3588', 'none (host runtime)')
        """
        d = self.lib.detection
        return RuntimeInfo(
            library_path=str(self.lib.path), family=d.family, release=d.release,
            detection_method=d.method, is_host_runtime=self.lib.is_host_runtime, **self._info)

    # -- generation -------------------------------------------------------------------------

    def stream(
        self,
        prompt: str | None = None,
        *,
        role: str = "user",
        enable_thinking: bool = False,
        tokens: Sequence[int] | None = None,
        embeddings: np.ndarray | None = None,
        image: ImageInput | None = None,
        keep_history: bool = False,
        max_new_tokens: int | None = None,
        sampling: SamplingParams | None = None,
        lora: str | None = None,
        save_prompt_cache: str | os.PathLike[str] | None = None,
        stop: Sequence[str] | None = None,
        on_token: Callable[[StreamChunk], object] | None = None,
        setup: Sequence[RunSetup] = (),
        before: Sequence[Callable[[Any], None]] = (),
        timeout: float | None = None,
    ) -> TextStream:
        """Start a run and return a :class:`TextStream` of its chunks.

        Takes the same arguments as :meth:`generate`. The run is queued at once; iterate the
        stream to receive chunks as the runtime produces them. ``on_token`` sees each chunk on
        the worker thread before the stream does (inside the runtime's callback).

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "a b c d e f"\\n')
            >>> with RKLLM(path, library="host", max_context_len=512) as llm:
            ...     for chunk in llm.stream("go"):
            ...         if chunk.text == " c":
            ...             break                      # aborts the run
            ...     after = llm.generate("go").text    # the model is still usable
            >>> after
            'a b c d e f'
        """
        run = self._builder.build(
            "generate", prompt=prompt, role=role, enable_thinking=enable_thinking,
            tokens=tokens, embeddings=embeddings, image=image, keep_history=keep_history,
            max_new_tokens=max_new_tokens, sampling=sampling, lora=lora,
            save_prompt_cache=save_prompt_cache, stop=stop, on_token=on_token)
        run.before = [*self._builder.setup_hooks(run, setup), *before]
        check_timeout(timeout)
        worker = self._live
        worker.submit(run, "stream()")
        return TextStream(worker, run, timeout, owner=self)

    def generate_batch(
        self,
        prompts: Sequence[str],
        *,
        keep_history: bool = False,
        max_new_tokens: int | None = None,
        sampling: SamplingParams | None = None,
        timeout: float | None = None,
    ) -> list[GenerationResult]:
        """Answer several prompts in one run, on a model loaded with ``n_batch > 1`` (1.2.1+).

        The runtime decodes the inputs side by side (fewer than 8 is Rockchip's advice); the
        run ends when every input has finished. Fewer prompts than ``n_batch`` fill the free
        lanes with the last prompt, whose extra answers are dropped. Each result has its own
        text, tokens and perf stats. Per-run ``max_new_tokens`` needs 1.3.0 here (older
        runtimes cannot stop one input early); stop strings and streaming are not offered for
        batches.

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM, ExtendParams
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\nwhen contains "france" reply "Paris."\\n'
            ...                     'default reply "Hello there!"\\n')
            >>> with RKLLM(path, library="host", max_context_len=512,
            ...            extend=ExtendParams(n_batch=2)) as llm:
            ...     answers = llm.generate_batch(["Hi", "Capital of France?"])
            >>> [a.text for a in answers]
            ['Hello there!', 'Paris.']
        """
        run, lanes = self._builder.build_batch(prompts, keep_history=keep_history,
                                               max_new_tokens=max_new_tokens, sampling=sampling)
        self._collect(run, timeout, "generate_batch()")
        results: list[GenerationResult] = []
        for lane in lanes:
            while (item := lane.channel.get(0)) is not Channel.END:
                if isinstance(item, _Failure):
                    raise item.error
                if isinstance(item, _Done):
                    results.append(item.result)
        return results

    def generate(
        self,
        prompt: str | None = None,
        *,
        role: str = "user",
        enable_thinking: bool = False,
        tokens: Sequence[int] | None = None,
        embeddings: np.ndarray | None = None,
        image: ImageInput | None = None,
        keep_history: bool = False,
        max_new_tokens: int | None = None,
        sampling: SamplingParams | None = None,
        lora: str | None = None,
        save_prompt_cache: str | os.PathLike[str] | None = None,
        stop: Sequence[str] | None = None,
        on_token: Callable[[StreamChunk], object] | None = None,
        setup: Sequence[RunSetup] = (),
        before: Sequence[Callable[[Any], None]] = (),
        timeout: float | None = None,
    ) -> GenerationResult:
        """Run the model to the end and return a :class:`GenerationResult`.

        Args:
            prompt: text (the model's chat template is applied), or instead ``tokens`` (ids) or
                ``embeddings`` (float32 ``(n_tokens, hidden)``), which are never templated.
            role: ``"user"`` or ``"tool"`` (function results), runtime 1.2.1+.
            enable_thinking: Qwen3-style thinking through the automatic template, 1.2.1+.
            image: an :class:`ImageInput` for a multimodal prompt with ``<image>`` tags.
            keep_history: keep this turn in the KV cache for the next run (1.2.0+).
            max_new_tokens: limit for this run. Native on 1.3.0; on older runtimes the run is
                aborted after that many tokens (finish_reason ``"length"``).
            sampling: :class:`SamplingParams` for this run (1.3.0; older runtimes raise unless
                they equal the model's).
            lora: name of an adapter loaded with :meth:`load_lora`.
            save_prompt_cache: write this run's prompt cache to that file.
            stop: strings that end the reply; the text is cut before the first one found
                and the run is aborted (finish_reason ``"stop"``).
            on_token: called with each :class:`StreamChunk` on the worker thread, inside the
                runtime's callback; if it raises, the run is aborted and the exception is
                re-raised here.
            setup: what to do on the runtime right before this run, with nothing in between,
                as data (:mod:`rkllm_core.backend`: set tools or the template, clear or cut the
                KV cache, read its size into ``kv_cache_size_before``); for layers such as
                :mod:`rkllm_core.chat`. If one fails, the run does not start and the error is
                raised here.
            before: callables run with the native handle on the worker thread after
                ``setup``, right before this run (e.g. ``lib.clear_kv_cache(handle, False)``).
                If one raises, the run does not start and the exception is raised here.
            timeout: seconds for waiting plus running; RunTimeoutError after it (a run that
                had started is aborted first).

        Raises:
            RunError: the runtime reported ``RKLLM_RUN_ERROR``; ``partial_text`` holds what
                was generated before.

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi! User: more"\\n')
            >>> with RKLLM(path, library="host", max_context_len=512) as llm:
            ...     llm.generate("hello", stop=[" User:"]).text
            'Hi!'
        """
        run = self._builder.build(
            "generate", prompt=prompt, role=role, enable_thinking=enable_thinking,
            tokens=tokens, embeddings=embeddings, image=image, keep_history=keep_history,
            max_new_tokens=max_new_tokens, sampling=sampling, lora=lora,
            save_prompt_cache=save_prompt_cache, stop=stop, on_token=on_token)
        run.before = [*self._builder.setup_hooks(run, setup), *before]
        return self._collect(run, timeout, "generate()")

    def astream(
        self,
        prompt: str | None = None,
        *,
        role: str = "user",
        enable_thinking: bool = False,
        tokens: Sequence[int] | None = None,
        embeddings: np.ndarray | None = None,
        image: ImageInput | None = None,
        keep_history: bool = False,
        max_new_tokens: int | None = None,
        sampling: SamplingParams | None = None,
        lora: str | None = None,
        save_prompt_cache: str | os.PathLike[str] | None = None,
        stop: Sequence[str] | None = None,
        setup: Sequence[RunSetup] = (),
        before: Sequence[Callable[[Any], None]] = (),
        timeout: float | None = None,
    ) -> AsyncTextStream:
        """Async :meth:`stream`: ``async for chunk in llm.astream(...)``.

        Returns an :class:`AsyncTextStream` (its ``result`` is set once iterated to the end).
        Cancelling the consuming task, ``break`` or ``aclose()`` abort the run; the model stays
        usable.

        Example:
            >>> import asyncio, tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "x y"\\n')
            >>> async def main() -> tuple[list[str], str]:
            ...     with RKLLM(path, library="host", max_context_len=512) as llm:
            ...         stream = llm.astream("go")
            ...         texts = [chunk.text async for chunk in stream]
            ...         return texts, stream.result.finish_reason
            >>> asyncio.run(main())
            (['x', ' y'], 'stop')
        """
        run = self._builder.build(
            "generate", prompt=prompt, role=role, enable_thinking=enable_thinking,
            tokens=tokens, embeddings=embeddings, image=image, keep_history=keep_history,
            max_new_tokens=max_new_tokens, sampling=sampling, lora=lora,
            save_prompt_cache=save_prompt_cache, stop=stop, on_token=None)
        run.before = [*self._builder.setup_hooks(run, setup), *before]
        check_timeout(timeout)
        worker = self._live
        worker.submit(run, "astream()")
        return AsyncTextStream(worker, run, timeout, owner=self)

    async def agenerate(
        self,
        prompt: str | None = None,
        *,
        role: str = "user",
        enable_thinking: bool = False,
        tokens: Sequence[int] | None = None,
        embeddings: np.ndarray | None = None,
        image: ImageInput | None = None,
        keep_history: bool = False,
        max_new_tokens: int | None = None,
        sampling: SamplingParams | None = None,
        lora: str | None = None,
        save_prompt_cache: str | os.PathLike[str] | None = None,
        stop: Sequence[str] | None = None,
        on_token: Callable[[StreamChunk], object] | None = None,
        setup: Sequence[RunSetup] = (),
        before: Sequence[Callable[[Any], None]] = (),
        timeout: float | None = None,
    ) -> GenerationResult:
        """Async :meth:`generate` (same arguments); never blocks the event loop.

        Cancelling the awaiting task aborts the run; the model stays usable.

        Example:
            >>> import asyncio, tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hello!"\\n')
            >>> async def main() -> str:
            ...     with RKLLM(path, library="host", max_context_len=512) as llm:
            ...         return (await llm.agenerate("Hi")).text
            >>> asyncio.run(main())
            'Hello!'
        """
        run = self._builder.build(
            "generate", prompt=prompt, role=role, enable_thinking=enable_thinking,
            tokens=tokens, embeddings=embeddings, image=image, keep_history=keep_history,
            max_new_tokens=max_new_tokens, sampling=sampling, lora=lora,
            save_prompt_cache=save_prompt_cache, stop=stop, on_token=on_token)
        run.before = [*self._builder.setup_hooks(run, setup), *before]
        check_timeout(timeout)
        worker = self._live
        worker.submit(run, "agenerate()")
        return await aconsume(worker, run, timeout, owner=self)

    def _collect(self, run: _Run, timeout: float | None, what: str) -> GenerationResult:
        check_timeout(timeout)
        worker = self._live
        worker.submit(run, what)
        return consume(worker, run, timeout, owner=self)

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

    # -- LoRA, prompt cache, KV cache, templates, tools, cross attention ---------------------

    def load_lora(self, path: str | os.PathLike[str], name: str, scale: float = 1.0) -> None:
        """Load a LoRA adapter; select it per run with ``generate(..., lora=name)``.

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> d = pathlib.Path(tempfile.mkdtemp())
            >>> _ = (d / "m.scripted").write_text(
            ...     'RKLLM-SCRIPTED 1\\nwhen lora pirate reply "Arr!"\\ndefault reply "Hello."\\n')
            >>> _ = (d / "pirate.gguf").write_bytes(b"adapter")
            >>> with RKLLM(d / "m.scripted", library="host", max_context_len=512) as llm:
            ...     llm.load_lora(d / "pirate.gguf", "pirate")
            ...     llm.generate("Hi", lora="pirate").text
            'Arr!'
        """
        _readable_file(path, "LoRA adapter")
        check_text(name, "LoRA name")
        if not _is_number(scale) or not math.isfinite(scale):
            raise InvalidParameterError(f"LoRA scale must be a finite number, got {scale!r}")
        adapter = self.lib.family.struct("RKLLMLoraAdapter")(
            os.fsencode(path), name.encode(), scale)
        code = self._live.call(lambda h: self.lib.load_lora(h, ctypes.byref(adapter)),
                               "load_lora()")
        check_return_code(
            code, f"rkllm_load_lora({path})",
            "the adapter must be a LoRA exported for this model (.rkllm or GGUF LoRA)")

    def load_prompt_cache(self, path: str | os.PathLike[str]) -> None:
        """Load a prompt cache saved by ``generate(..., save_prompt_cache=path)``.

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> d = pathlib.Path(tempfile.mkdtemp())
            >>> _ = (d / "m.scripted").write_text('RKLLM-SCRIPTED 1\\n')
            >>> with RKLLM(d / "m.scripted", library="host", runtime_version="1.3.0",
            ...            max_context_len=512) as llm:
            ...     _ = llm.generate("Hello", save_prompt_cache=d / "cache.bin")
            ...     llm.load_prompt_cache(d / "cache.bin")
            ...     llm.release_prompt_cache()
        """
        _readable_file(path, "prompt cache")
        raw = os.fsencode(path)
        code = self._live.call(lambda h: self.lib.load_prompt_cache(h, raw),
                               "load_prompt_cache()")
        check_return_code(code, f"rkllm_load_prompt_cache({path})",
                          "the file must be a prompt cache saved by this model and runtime")

    def release_prompt_cache(self) -> None:
        """Drop the loaded prompt cache (do this before loading another one).

        Example: see :meth:`load_prompt_cache`.
        """
        code = self._live.call(self.lib.release_prompt_cache, "release_prompt_cache()")
        check_return_code(code, "rkllm_release_prompt_cache", "no prompt cache was loaded")

    def clear_kv_cache(self, keep_system_prompt: bool = False,
                       ranges: Sequence[tuple[int, int]] | tuple[int, int] | None = None) -> None:
        """Clear the KV cache (1.2.0+), keeping the system prompt if asked, or only the
        ``[start, end)`` position ``ranges`` (1.2.1+; one range per batch).

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\n')
            >>> with RKLLM(path, library="host", max_context_len=512) as llm:
            ...     _ = llm.generate("Hello", keep_history=True)
            ...     llm.clear_kv_cache()
            ...     llm.kv_cache_size
            0
        """
        if ranges is None:
            op = ClearKVCache(keep_system_prompt)
        else:
            pairs = [ranges] if isinstance(ranges, tuple) else list(ranges)
            if len(pairs) != 1 or len(pairs[0]) != 2:
                raise InvalidParameterError(
                    "ranges must be one (start, end) pair with 0 <= start < end")
            op = ClearKVCache(keep_system_prompt, pairs[0][0], pairs[0][1])
        self._live.call(self._builder.setup_call(op), "clear_kv_cache()")

    @property
    def kv_cache_size(self) -> int:
        """Positions currently in the KV cache (runtime 1.2.1+).

        Example: see :meth:`clear_kv_cache`.
        """
        size: int = self._live.call(self._builder.setup_call(ReadKVCacheSize()), "kv_cache_size")
        return size

    def set_chat_template(self, system: str, prefix: str, postfix: str) -> None:
        """Replace the model's chat template (1.2.0+). Clears the KV cache and switches off
        ``enable_thinking`` and tool handling; ``("", "", "")`` sends prompts raw.

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\n')
            >>> with RKLLM(path, library="host", max_context_len=512) as llm:
            ...     llm.set_chat_template("", "", "")
        """
        self._live.call(self._builder.setup_call(SetChatTemplate(system, prefix, postfix)),
                        "set_chat_template()")

    def set_function_tools(self, system: str, tools: Sequence[dict[str, Any]] | str,
                           tool_response_str: str = "tool_response") -> None:
        """Give the model's chat template a system prompt and tools (1.2.1+).

        ``tools`` is a list of OpenAI-style function dicts or their JSON. Needs the model's own
        template: do not combine with :meth:`set_chat_template`. Send tool results with
        ``generate(result_json, role="tool")``.

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\nwhen contains "weather" tools yes '
            ...                     'reply "<tool_call>get_weather</tool_call>"\\n')
            >>> tools = [{"type": "function", "function": {"name": "get_weather",
            ...           "parameters": {"type": "object", "properties": {}}}}]
            >>> with RKLLM(path, library="host", max_context_len=512) as llm:
            ...     llm.set_function_tools("You are helpful.", tools)
            ...     llm.generate("What is the weather?").text
            '<tool_call>get_weather</tool_call>'
        """
        if isinstance(tools, str):
            try:
                parsed = json.loads(tools)
            except json.JSONDecodeError as exc:
                raise InvalidParameterError(f"tools is not valid JSON: {exc}") from exc
        else:
            parsed = list(tools)
        if not isinstance(parsed, list) or not all(isinstance(t, dict) for t in parsed):
            raise InvalidParameterError("tools must be a JSON array of function objects")
        try:
            tools_json = json.dumps(parsed, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidParameterError(
                f"tools cannot be written as JSON ({exc}): use only dicts, lists, strings, "
                "numbers, booleans and None in the function schemas") from exc
        step = SetFunctionTools(system, tools_json, tool_response_str)
        self._live.call(self._builder.setup_call(step), "set_function_tools()")

    def set_cross_attn_params(self, encoder_k_cache: np.ndarray, encoder_v_cache: np.ndarray,
                              encoder_mask: np.ndarray, encoder_pos: np.ndarray) -> None:
        """Set encoder K/V caches for a cross-attention model (1.2.1+, ``use_cross_attn``).

        K is float32 ``[layers][tokens][kv_heads][head_dim]``, V
        ``[layers][kv_heads][head_dim][tokens]``, mask float32 ``[tokens]``, pos int32
        ``[tokens]``. The arrays are kept alive by this object until the next call.

        Example:
            >>> import numpy as np, tempfile, pathlib
            >>> from rkllm_core import RKLLM, ExtendParams
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\n')
            >>> with RKLLM(path, library="host", max_context_len=512,
            ...            extend=ExtendParams(use_cross_attn=True)) as llm:
            ...     kv = np.zeros((1, 2, 1, 4), dtype=np.float32)
            ...     llm.set_cross_attn_params(kv, kv, np.ones(2, np.float32), np.arange(2))
        """
        require_capability(self.lib, "cross_attention", "set_cross_attn_params()")
        k = np.ascontiguousarray(encoder_k_cache, dtype=np.float32)
        v = np.ascontiguousarray(encoder_v_cache, dtype=np.float32)
        mask = np.ascontiguousarray(encoder_mask, dtype=np.float32)
        pos = np.ascontiguousarray(encoder_pos, dtype=np.int32)
        n = int(pos.shape[0]) if pos.ndim == 1 else -1
        if n <= 0 or mask.shape != (n,) or k.size != v.size or k.size % n:
            raise InvalidParameterError(
                "encoder_pos and encoder_mask must be 1-D with one entry per encoder token, and "
                "the K and V caches the same size, a multiple of the token count")
        fp = ctypes.POINTER(ctypes.c_float)
        params = self.lib.family.struct("RKLLMCrossAttnParam")(
            k.ctypes.data_as(fp), v.ctypes.data_as(fp), mask.ctypes.data_as(fp),
            pos.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), n)
        code = self._live.call(lambda h: self.lib.set_cross_attn_params(h, ctypes.byref(params)),
                               "set_cross_attn_params()")
        check_return_code(code, "rkllm_set_cross_attn_params",
                          "the model must be loaded with ExtendParams(use_cross_attn=True)")
        self._cross_attn_keep = [k, v, mask, pos, params]  # the runtime may keep the pointers


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


def _tokenizer_callback(lib: RuntimeLibrary, tokenizer: Tokenizer) -> Any:
    """Wrap ``tokenizer`` as 1.3.0's ``LLMTokenizerCallback`` (never raises into C)."""

    def tokenize(userdata: Any, text: Any, length: int, out: Any, n_max: int) -> int:
        try:
            ids = list(tokenizer(ctypes.string_at(text, length).decode("utf-8", "replace")))
            for i, token in enumerate(ids[:n_max]):
                out[i] = int(token)
            return min(len(ids), n_max)
        except Exception:
            logger.exception("the tokenizer callback raised")
            return -1

    return lib.family.callbacks["LLMTokenizerCallback"](tokenize)
