"""``RKLLM``: a LangChain text-completion LLM over an RKLLM model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM, LangSmithParams
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import Field

from langchain_rkllm._model import LoadedModel
from rkllm_core.model import GenerationResult
from rkllm_core.settings import SamplingDefaults, model_params, run_sampling


def _generation_info(result: GenerationResult) -> dict[str, Any]:
    """Finish reason, tokens and timings of one completion."""
    perf = result.perf
    return {"finish_reason": result.finish_reason,
            "prompt_tokens": perf.prefill_tokens, "completion_tokens": perf.decode_tokens,
            "prefill_ms": perf.prefill_ms, "decode_ms": perf.decode_ms,
            "tokens_per_second": perf.tokens_per_second}


def _token_usage(infos: list[dict[str, Any]]) -> dict[str, int]:
    prompt = sum(i.get("prompt_tokens") or 0 for i in infos)
    completion = sum(i.get("completion_tokens") or 0 for i in infos)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


class RKLLM(LoadedModel, SamplingDefaults, BaseLLM):
    r"""Plain completions from an RKLLM model: text in, text out, streamed token by token.

    Each prompt is an independent run (no conversation is kept); the runtime applies the chat
    template baked into the model to it. For conversations, tools and structured output use
    :class:`~langchain_rkllm.ChatRKLLM`, which shares the same loaded model.

    Setup:
        .. code-block:: bash

            pip install "rkllm-py[langchain]"          # on the board
            pip install "rkllm-py[langchain,host]"     # on a PC: host runtime + SmolLM2

    Key init args:
        model_path (alias ``model``): str
            The ``.rkllm`` file (``.gguf`` or scripted on the host runtime); shared with every
            ``ChatRKLLM`` / ``RKLLMEmbeddings`` naming the same file and settings.
        library: str | None
            ``librkllmrt.so`` path or ``"host"``.
        max_context_len, max_tokens, temperature, top_k, top_p, repeat_penalty, mirostat...
            Context size, reply length and sampling (:mod:`rkllm_core.settings`).
        stop: list[str] | None
            Stop sequences, cut exactly on the stream.
        client: rkllm_core.RKLLM | None
            An already loaded model.

    Instantiate:
        >>> import pathlib, tempfile
        >>> from langchain_rkllm import RKLLM
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "writer.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\n'
        ...     'default reply "Once upon a time there was a small board. The end."\n')
        >>> llm = RKLLM(model=str(path), library="host", max_context_len=512, max_tokens=64)

    Invoke:
        >>> llm.invoke("Tell me a story")
        'Once upon a time there was a small board. The end.'
        >>> llm.invoke("Tell me a story", stop=[" there"])
        'Once upon a time'

    Stream:
        >>> [token for token in llm.stream("Tell me a story")][:4]
        ['Once', ' upon', ' a', ' time']

    Async:
        >>> import asyncio
        >>> async def main() -> str:
        ...     return "".join([t async for t in llm.astream("Tell me a story", max_tokens=4)])
        >>> asyncio.run(main())
        'Once upon a time'

    Usage and response metadata:
        >>> result = llm.generate(["Tell me a story"])
        >>> result.llm_output["token_usage"]["completion_tokens"]
        13
        >>> result.generations[0][0].generation_info["finish_reason"]
        'stop'
    """

    max_tokens: int | None = Field(default=None, description="Most new tokens per completion.")
    stop: list[str] | None = Field(default=None, alias="stop_sequences",
                                   description="Stop sequences, cut exactly on the stream.")
    timeout: float | None = Field(default=None, description="Seconds a call may wait plus run.")

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """Serialisable with ``langchain_core.load.dumpd`` (the loaded model is not)."""
        return True

    @property
    def _llm_type(self) -> str:
        return "rkllm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "max_tokens": self.max_tokens,
                **model_params(self)}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider="rkllm", ls_model_type="llm",
                                 ls_model_name=self._model_name)
        if self.temperature is not None:
            params["ls_temperature"] = self.temperature
        if self.max_tokens is not None:
            params["ls_max_tokens"] = self.max_tokens
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def _run_args(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        return dict(stop=list(stop if stop is not None else self.stop or []) or None,
                    max_new_tokens=kwargs.get("max_tokens", self.max_tokens),
                    sampling=run_sampling(self, self._core, kwargs),
                    timeout=kwargs.get("timeout", self.timeout))

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[GenerationChunk]:
        stream = self._core.stream(prompt, **self._run_args(stop, kwargs))
        for piece in stream:
            if not piece.text:
                continue
            chunk = GenerationChunk(text=piece.text)
            if run_manager is not None:
                run_manager.on_llm_new_token(piece.text, chunk=chunk)
            yield chunk
        yield GenerationChunk(text="", generation_info=_generation_info(stream.result))

    async def _astream(self, prompt: str, stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[GenerationChunk]:
        stream = self._core.astream(prompt, **self._run_args(stop, kwargs))
        async for piece in stream:
            if not piece.text:
                continue
            chunk = GenerationChunk(text=piece.text)
            if run_manager is not None:
                await run_manager.on_llm_new_token(piece.text, chunk=chunk)
            yield chunk
        yield GenerationChunk(text="", generation_info=_generation_info(stream.result))

    def _generate(self, prompts: list[str], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> LLMResult:
        generations: list[list[Generation]] = []
        for prompt in prompts:
            final: GenerationChunk | None = None
            for chunk in self._stream(prompt, stop, run_manager, **kwargs):
                final = chunk if final is None else final + chunk
            assert final is not None
            generations.append([Generation(text=final.text,
                                           generation_info=final.generation_info)])
        return self._llm_result(generations)

    async def _agenerate(self, prompts: list[str], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None,
                         **kwargs: Any) -> LLMResult:
        generations: list[list[Generation]] = []
        for prompt in prompts:
            final: GenerationChunk | None = None
            async for chunk in self._astream(prompt, stop, run_manager, **kwargs):
                final = chunk if final is None else final + chunk
            assert final is not None
            generations.append([Generation(text=final.text,
                                           generation_info=final.generation_info)])
        return self._llm_result(generations)

    def _llm_result(self, generations: list[list[Generation]]) -> LLMResult:
        infos = [g[0].generation_info or {} for g in generations]
        return LLMResult(generations=generations, llm_output={
            "token_usage": _token_usage(infos), "model_name": self._model_name})
