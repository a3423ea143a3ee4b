"""``RKLLM``: one loaded model, the class most users touch.

An RKLLM owns a :class:`~rkllm_core.worker.RunWorker`: every native call that touches the model
(runs and settings alike) executes on that one worker thread, in FIFO order, so threads and
asyncio tasks can share a model. Its parts live beside it, one responsibility per module:

- :mod:`rkllm_core.results`: what a run gives back (``GenerationResult``, ``StreamChunk``,
  ``PerfStats``), ``ImageInput`` and ``RuntimeInfo``;
- :mod:`rkllm_core.validation`: checks of what callers pass;
- :mod:`rkllm_core.worker`: the worker thread, its run queue and the runtime's result callback;
- :mod:`rkllm_core.streams`: ``TextStream`` and ``AsyncTextStream``, which consume a run;
- :mod:`rkllm_core.inputs`: ``RunBuilder``, which turns a run's arguments into the runtime's
  structs as the loaded release's capabilities allow;
- :mod:`rkllm_core.embeddings`: hidden states, embeddings, logits and reranking;
- :mod:`rkllm_core.model_state`: KV cache, LoRA, prompt cache, chat template, function tools
  and cross attention.

This module holds construction, lifecycle and generation, and re-exports the names long
imported from it (``from rkllm_core.model import GenerationResult`` still works).

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
import logging
import math
import os
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pydantic import ValidationError

from rkllm_core.abi import Capabilities
from rkllm_core.backend import RunSetup
from rkllm_core.embeddings import RERANK_INSTRUCTION, RERANK_SYSTEM, _EmbeddingMethods
from rkllm_core.errors import InvalidParameterError, ModelClosedError
from rkllm_core.inputs import RunBuilder
from rkllm_core.library import RuntimeLibrary, load_library
from rkllm_core.model_state import _ModelStateMethods
from rkllm_core.params import ExtendParams, ModelParams, SamplingParams
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
from rkllm_core.validation import _is_number, check_text, check_timeout
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


class RKLLM(_EmbeddingMethods, _ModelStateMethods):
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
        self._cross_attn_keep = []
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
