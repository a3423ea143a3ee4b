"""``ChatRKLLM``: a LangChain chat model on a Rockchip NPU (or the host runtime)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import JsonOutputKeyToolsParser, JsonOutputParser
from langchain_core.output_parsers.openai_tools import PydanticToolsParser
from langchain_core.output_parsers.pydantic import PydanticOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableLambda, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, Field, PrivateAttr

from langchain_rkllm._convert import (
    StreamAssembler,
    message_as_chunk,
    to_ai_message,
    to_chat_messages,
    to_chunk,
    to_tool_specs,
    tool_choice_name,
)
from langchain_rkllm._model import LoadedModel
from rkllm_core.chat.engine import ChatChunk, ChatEngine
from rkllm_core.chat.engine import ChatResult as TurnResult
from rkllm_core.chat.messages import ToolSpec
from rkllm_core.chat.structured import StructuredOutputError
from rkllm_core.errors import InvalidParameterError
from rkllm_core.settings import SamplingDefaults, load_backend, model_params, run_sampling

StructuredMethod = Literal["function_calling", "json_schema", "json_mode"]


class ChatRKLLM(LoadedModel, SamplingDefaults, BaseChatModel):
    r"""Chat with an RKLLM model on a Rockchip NPU, through ``librkllmrt.so``.

    Without a board the same class runs on rkllm-py's host runtime (``library="host"``): a GGUF
    model such as SmolLM2 on the CPU, or a *scripted* model (a text file of rules) for tests.
    Every example below runs on a scripted model, so it runs anywhere.

    Setup:
        .. code-block:: bash

            pip install "rkllm-py[langchain]"          # on the board
            pip install "rkllm-py[langchain,host]"     # on a PC: host runtime + SmolLM2

    Key init args — model:
        model_path (alias ``model``): str
            The ``.rkllm`` file (``.gguf`` or scripted on the host runtime). Objects naming the
            same file and settings share one loaded model (also with ``RKLLM`` and
            ``RKLLMEmbeddings``).
        library: str | None
            ``librkllmrt.so`` path, or ``"host"``; default ``RKLLM_LIBRARY_PATH``, then the
            system loader and the usual install locations.
        max_context_len: int | None
            Context size; at most what the model was converted with.
        client: rkllm_core.RKLLM | None
            An already loaded model to use instead of loading one.
        chat_mode: "native" | "tokens" | "raw" | None
            How conversations reach the model (see :mod:`rkllm_core.chat.engine`).

    Key init args — generation:
        max_tokens: int | None
            Most new tokens per reply.
        temperature, top_k, top_p, repeat_penalty, frequency_penalty, presence_penalty, mirostat
            Sampling (:class:`rkllm_core.settings.SamplingDefaults`); the load-time values,
            overridable per call from runtime 1.3.0.
        stop: list[str] | None
            Stop sequences, cut exactly on the stream (per call: ``stop=``).
        reasoning: bool | None
            ``enable_thinking`` for reasoning models (Qwen3...); the thinking goes to
            ``additional_kwargs["reasoning_content"]``, never into ``content``.

    Instantiate:
        On a board: ``ChatRKLLM(model="Qwen3-1.7B.rkllm", max_context_len=4096)``.
        Here, a scripted model:

        >>> import json, pathlib, tempfile
        >>> from langchain_rkllm import ChatRKLLM
        >>> call = {"name": "get_weather", "arguments": {"city": "Paris"}}
        >>> rules = [
        ...     ("contains 'weather' tools yes", f"<tool_call>{json.dumps(call)}</tool_call>"),
        ...     ("role tool", "It is sunny in Paris."),
        ...     ("contains 'joke'", '{"setup": "Why did the NPU nap?", "punchline": "Cache."}'),
        ...     ("contains 'puzzle' thinking yes", "Four."),
        ...     ("contains 'hello'", "Hello from the NPU!"),
        ... ]
        >>> text = "RKLLM-SCRIPTED 1\nthinking = yes\n" + "".join(
        ...     f"when {c.replace(chr(39), chr(34))} reply {json.dumps(r)}"
        ...     + (' think "Two plus two."' if "puzzle" in c else "") + "\n" for c, r in rules)
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "assistant.scripted"
        >>> _ = path.write_text(text + 'default reply "I am a scripted model."\n')
        >>> llm = ChatRKLLM(model=str(path), library="host", max_context_len=1024,
        ...                 max_tokens=64, top_k=1)

    Invoke:
        >>> messages = [("system", "You are terse."), ("human", "Hello there")]
        >>> llm.invoke(messages).content
        'Hello from the NPU!'

    Stream:
        >>> [chunk.content for chunk in llm.stream("Hello")]
        ['Hello', ' from', ' the', ' NPU', '!', '']

        The last chunk carries no text: it holds ``usage_metadata`` and ``response_metadata``
        (``chunk_position == "last"``).

    Async:
        >>> import asyncio
        >>> async def main() -> tuple[str, str]:
        ...     reply = await llm.ainvoke("Hello")
        ...     streamed = "".join([c.content async for c in llm.astream("Hello")])
        ...     return reply.content, streamed
        >>> asyncio.run(main())
        ('Hello from the NPU!', 'Hello from the NPU!')

        Async calls await the model's worker thread token by token; they never block the
        event loop.

    Tool calling:
        >>> def get_weather(city: str) -> str:
        ...     "The weather in a city."
        ...     return "sunny"
        >>> ai = llm.bind_tools([get_weather]).invoke("What is the weather in Paris?")
        >>> [(c["name"], c["args"]) for c in ai.tool_calls]
        [('get_weather', {'city': 'Paris'})]

        ``tool_choice`` may be ``"auto"``, ``"none"``, ``"any"`` / ``"required"`` or a tool
        name; a required or named call is asked for in the prompt and retried once when the
        model ignores it. While streaming, calls arrive as ``tool_call_chunks`` with argument
        deltas; calls that do not parse are kept in ``invalid_tool_calls``.

    Structured output:
        >>> from pydantic import BaseModel
        >>> class Joke(BaseModel):
        ...     setup: str
        ...     punchline: str
        >>> llm.with_structured_output(Joke, method="json_schema").invoke("Tell me a joke")
        Joke(setup='Why did the NPU nap?', punchline='Cache.')

        Methods: ``function_calling`` (default; a forced tool call), ``json_schema`` and
        ``json_mode``. Replies are validated against the whole JSON schema (nested models,
        lists, optionals, enums); one that does not validate gets one repair turn quoting the
        validator's messages, then raises ``OutputParserException`` with the model's text in
        ``llm_output``. ``include_raw=True`` returns ``{"raw", "parsed", "parsing_error"}``.

    Reasoning:
        >>> thinking = llm.invoke("A puzzle: 2 + 2?", reasoning=True)
        >>> thinking.content, thinking.additional_kwargs["reasoning_content"]
        ('Four.', 'Two plus two.')

    Usage metadata:
        >>> ai = llm.invoke("Hello")
        >>> sorted(ai.usage_metadata)
        ['input_tokens', 'output_tokens', 'total_tokens']
        >>> ai.usage_metadata["output_tokens"]
        5

    Response metadata:
        >>> meta = ai.response_metadata
        >>> meta["model_name"], meta["finish_reason"], meta["runtime_release"]
        ('assistant.scripted', 'stop', '1.3.0')
        >>> sorted(k for k in meta if k.startswith(("prefill", "decode", "tokens")))
        ['decode_ms', 'prefill_ms', 'prefill_tokens', 'tokens_per_second']

    The conversation's KV cache is reused across calls: when a call extends the previous
    conversation (a chat loop, an agent loop) only the new messages are prefilled, and
    ``response_metadata["kv_cache_reused"]`` says so.
    """

    max_tokens: int | None = Field(default=None, description="Most new tokens per reply.")
    stop: list[str] | None = Field(default=None, alias="stop_sequences",
                                   description="Stop sequences, cut exactly on the stream.")
    reasoning: bool | None = Field(
        default=None, description="Enable thinking (enable_thinking) on reasoning models.")
    streaming: bool = Field(
        default=False, description="Have invoke() stream internally (callbacks get tokens).")
    chat_mode: Literal["native", "tokens", "raw"] | None = Field(
        default=None, description="How conversations reach the model: native (the runtime's "
        "template), tokens (local template + tokenizer) or raw.")
    preset: str | None = Field(default=None, description="Chat template preset name "
                               "(tokens and raw modes).")
    tokenizer: str | None = Field(default=None, description="tokenizer.json or a Hugging Face "
                                  "folder (tokens mode).")
    timeout: float | None = Field(default=None, description="Seconds a call may wait plus run.")
    max_retries: int = Field(default=0, description="Accepted for LangChain's standard "
                             "interface; local runs are not retried.")

    _engine: ChatEngine | None = PrivateAttr(default=None)
    _override_engines: dict[str, ChatEngine] | None = PrivateAttr(default=None)

    def _on_connect(self) -> None:
        self._engine = ChatEngine(self.client, mode=self.chat_mode, preset=self.preset,
                                  tokenizer=self.tokenizer)
        self._override_engines = {}

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """Serialisable with ``langchain_core.load.dumpd`` (the loaded model is not)."""
        return True

    # -- LangChain plumbing ----------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "rkllm-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "chat_mode": self._chat.mode,
                "max_tokens": self.max_tokens, **model_params(self)}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        model = kwargs.get("model")
        params = LangSmithParams(ls_provider="rkllm", ls_model_type="chat",
                                 ls_model_name=str(model) if model else self._model_name)
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    @property
    def _chat(self) -> ChatEngine:
        assert self._engine is not None
        return self._engine

    def _engine_for(self, model: str | None) -> tuple[ChatEngine, str]:
        """The engine and model name of a call; ``model=`` per call picks another file."""
        if not model or model == self.model_path:
            return self._chat, self._model_name
        assert self._override_engines is not None
        engine = self._override_engines.get(model)
        if engine is None:
            engine = ChatEngine(load_backend(self, model_path=model), mode=self.chat_mode,
                                preset=self.preset, tokenizer=self.tokenizer)
            self._override_engines[model] = engine
        return engine, Path(model).name

    def _call_args(self, messages: list[BaseMessage], stop: list[str] | None,
                   kwargs: dict[str, Any]) -> dict[str, Any]:
        tools = to_tool_specs(kwargs.get("tools") or [])
        reasoning = kwargs.get("reasoning", self.reasoning)
        return dict(
            messages=to_chat_messages(messages), tools=tools,
            tool_choice=tool_choice_name(kwargs.get("tool_choice"), tools),
            enable_thinking=bool(reasoning),
            stop=list(stop if stop is not None else self.stop or []),
            max_new_tokens=kwargs.get("max_tokens", self.max_tokens),
            sampling=run_sampling(self, self._core, kwargs),
            timeout=kwargs.get("timeout", self.timeout))

    @staticmethod
    def _structured_args(args: dict[str, Any], response_format: Any) -> tuple[
            list[Any], dict[str, Any]]:
        method, schema, tool = _response_format(response_format, args["tools"])
        named = {} if tool is None else {"name": tool.name, "description": tool.description}
        return [args["messages"], schema], dict(
            method=method, **named, enable_thinking=args["enable_thinking"],
            max_new_tokens=args["max_new_tokens"], sampling=args["sampling"],
            timeout=args["timeout"])

    @staticmethod
    def _unstructured(exc: StructuredOutputError, model_name: str) -> AIMessage:
        # the reply goes on to with_structured_output's parser, which raises the error as an
        # OutputParserException (parsing_error with include_raw)
        return AIMessage(content=exc.raw, response_metadata={
            "model_name": model_name, "model_provider": "rkllm", "finish_reason": "stop",
            "structured_output_error": str(exc)})

    def _structured(self, engine: ChatEngine, args: dict[str, Any], response_format: Any,
                    model_name: str) -> AIMessage:
        positional, options = self._structured_args(args, response_format)
        try:
            _value, turn = engine.generate_structured(*positional, **options)
        except StructuredOutputError as exc:
            return self._unstructured(exc, model_name)
        return to_ai_message(turn, model_name)

    async def _astructured(self, engine: ChatEngine, args: dict[str, Any],
                           response_format: Any, model_name: str) -> AIMessage:
        # runs on the engine's async streams: a cancelled call aborts the run on the model
        positional, options = self._structured_args(args, response_format)
        try:
            _value, turn = await engine.agenerate_structured(*positional, **options)
        except StructuredOutputError as exc:
            return self._unstructured(exc, model_name)
        return to_ai_message(turn, model_name)

    @staticmethod
    def _result(message: AIMessage) -> ChatResult:
        finish = message.response_metadata.get("finish_reason")
        return ChatResult(generations=[ChatGeneration(
            message=message, generation_info={"finish_reason": finish})])

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        engine, name = self._engine_for(kwargs.get("model"))
        args = self._call_args(messages, stop, kwargs)
        if kwargs.get("response_format") is not None:
            return self._result(self._structured(engine, args, kwargs["response_format"], name))
        on_chunk: Callable[[ChatChunk], None] | None = None
        if run_manager is not None:
            manager = run_manager

            def on_chunk(chunk: ChatChunk) -> None:
                manager.on_llm_new_token(chunk.content,
                                         chunk=ChatGenerationChunk(message=to_chunk(chunk)))
        turn: TurnResult = engine.generate(**args, on_chunk=on_chunk)
        return self._result(to_ai_message(turn, name))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None,
                         **kwargs: Any) -> ChatResult:
        engine, name = self._engine_for(kwargs.get("model"))
        args = self._call_args(messages, stop, kwargs)
        if kwargs.get("response_format") is not None:
            return self._result(await self._astructured(engine, args,
                                                        kwargs["response_format"], name))

        async def on_chunk(chunk: ChatChunk) -> None:
            if run_manager is not None:
                await run_manager.on_llm_new_token(
                    chunk.content, chunk=ChatGenerationChunk(message=to_chunk(chunk)))
        turn = await engine.agenerate(**args, on_chunk=on_chunk)
        return self._result(to_ai_message(turn, name))

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        if kwargs.get("response_format") is not None:
            # a structured answer is validated (and maybe repaired) whole: one chunk
            result = self._generate(messages, stop, run_manager, **kwargs)
            whole = result.generations[0].message
            assert isinstance(whole, AIMessage)
            yield ChatGenerationChunk(message=message_as_chunk(whole))
            return
        engine, name = self._engine_for(kwargs.get("model"))
        stream = engine.stream(**self._call_args(messages, stop, kwargs))
        assembler = StreamAssembler()
        for chunk in stream:
            piece = assembler.chunk(chunk)
            if piece is None:
                continue
            generation = ChatGenerationChunk(message=piece)
            if run_manager is not None:
                run_manager.on_llm_new_token(piece.text, chunk=generation)
            yield generation
        turn = stream.result
        last = assembler.last(turn, name)
        generation = ChatGenerationChunk(message=last,
                                         generation_info={"finish_reason": turn.finish_reason})
        if run_manager is not None and last.content:
            run_manager.on_llm_new_token(last.text, chunk=generation)
        yield generation

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        if kwargs.get("response_format") is not None:
            result = await self._agenerate(messages, stop, run_manager, **kwargs)
            whole = result.generations[0].message
            assert isinstance(whole, AIMessage)
            yield ChatGenerationChunk(message=message_as_chunk(whole))
            return
        engine, name = self._engine_for(kwargs.get("model"))
        stream = engine.astream(**self._call_args(messages, stop, kwargs))
        assembler = StreamAssembler()
        async for chunk in stream:
            piece = assembler.chunk(chunk)
            if piece is None:
                continue
            generation = ChatGenerationChunk(message=piece)
            if run_manager is not None:
                await run_manager.on_llm_new_token(piece.text, chunk=generation)
            yield generation
        turn = stream.result
        last = assembler.last(turn, name)
        generation = ChatGenerationChunk(message=last,
                                         generation_info={"finish_reason": turn.finish_reason})
        if run_manager is not None and last.content:
            await run_manager.on_llm_new_token(last.text, chunk=generation)
        yield generation

    # -- tools and structured output -------------------------------------------------------

    def bind_tools(self, tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
                   *, tool_choice: dict[str, Any] | str | bool | None = None,
                   **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer ``tools`` to the model; ``tool_choice``: auto, none, any / required, a name.

        Tools may be LangChain tools, pydantic models, functions or OpenAI-style dicts.

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
        specs = to_tool_specs(formatted)
        if tool_choice is not None:
            name = tool_choice_name(tool_choice, specs)  # refuse a bad choice now, not at invoke
            if name not in ("auto", "none", "required") and name not in {s.name for s in specs}:
                raise InvalidParameterError(
                    f"tool_choice {name!r} names no bound tool; bound: "
                    f"{', '.join(s.name for s in specs) or '(none)'}")
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self, schema: dict[str, Any] | type | None = None, *,
        method: StructuredMethod = "function_calling", include_raw: bool = False,
        strict: bool | None = None, **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """A runnable that answers with ``schema`` (a pydantic class, TypedDict or JSON schema).

        ``strict`` is accepted for LangChain's interface; replies are always validated against
        the schema (with one repair turn), whatever its value. A reply still wrong after the
        repair raises ``OutputParserException`` (``llm_output`` is the model's text), with a
        dict schema too; with ``include_raw=True`` it is the ``parsing_error``.

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
        trace = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
        parser: Runnable[Any, Any]
        if method == "function_calling":
            if schema is None:
                raise InvalidParameterError("function_calling needs a schema")
            name = convert_to_openai_tool(schema)["function"]["name"]
            # the call's arguments are validated against the tool's schema and repaired once
            llm = self.bind_tools([schema], tool_choice=name, ls_structured_output_format=trace,
                                  response_format={"type": "tool_call", "name": name})
            parser = (PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
                      if is_pydantic else
                      JsonOutputKeyToolsParser(key_name=name, first_tool_only=True))
        elif method in ("json_schema", "json_mode"):
            if method == "json_schema" and schema is None:
                raise InvalidParameterError("json_schema needs a schema")
            response_format: dict[str, Any] = {"type": "json_object"}
            if method == "json_schema":
                response_format = {"type": "json_schema", "schema": schema if isinstance(
                    schema, dict) else convert_to_json_schema(schema)}  # type: ignore[arg-type]
            llm = self.bind(response_format=response_format,
                            ls_structured_output_format=trace if schema is not None else None)
            parser = (PydanticOutputParser(pydantic_object=schema)  # type: ignore[arg-type]
                      if is_pydantic else JsonOutputParser())
        else:
            raise InvalidParameterError(
                f"method must be function_calling, json_schema or json_mode, not {method!r}")
        parser = _REFUSE_INVALID_REPLY | parser
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser,
                                            parsing_error=lambda _: None)
        fallback = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([fallback],
                                                            exception_key="parsing_error")


def _response_format(response_format: Any, tools: Sequence[ToolSpec]) -> tuple[
        StructuredMethod, dict[str, Any] | None, ToolSpec | None]:
    """``response_format`` (OpenAI-style dict, JSON schema or class) to (method, schema, the
    tool to call); ``{"type": "tool_call", "name": ...}`` asks for a call to a bound tool."""
    if isinstance(response_format, dict) and response_format.get("type") == "tool_call":
        name = response_format.get("name")
        tool = next((t for t in tools if t.name == name), None)
        if tool is None:
            raise InvalidParameterError(
                f"response_format asks for a call to {name!r}, which is not a bound tool; use "
                "with_structured_output(schema, method='function_calling')")
        return "function_calling", dict(tool.parameters), tool
    if isinstance(response_format, dict) and response_format.get("type") == "json_object":
        return "json_mode", None, None
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        schema = response_format.get("schema") or response_format.get("json_schema", {}).get(
            "schema")
        return "json_schema", schema, None
    if isinstance(response_format, dict):
        return "json_schema", response_format, None
    return "json_schema", convert_to_json_schema(response_format), None


def _refuse_invalid_reply(message: AIMessage) -> AIMessage:
    """Pass a structured reply on to the parser, or raise what kept it from validating: a
    parser alone would let a wrong dict through, or read a failed tool call as None."""
    error = message.response_metadata.get("structured_output_error")
    if error is not None:
        raise OutputParserException(f"{error}\nThe model's reply: {message.content}",
                                    llm_output=str(message.content))
    return message


async def _arefuse_invalid_reply(message: AIMessage) -> AIMessage:
    return _refuse_invalid_reply(message)


_REFUSE_INVALID_REPLY: Runnable[AIMessage, AIMessage] = RunnableLambda(
    _refuse_invalid_reply, afunc=_arefuse_invalid_reply, name="refuse_invalid_reply")
