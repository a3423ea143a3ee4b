"""``RKLLM``: a LlamaIndex function-calling LLM on a Rockchip NPU (or the host runtime)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import llama_index.core.instrumentation as instrument
from llama_index.core.base.llms.generic_utils import (
    messages_to_prompt as generic_messages_to_prompt,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation.events.llm import (
    LLMChatEndEvent,
    LLMChatStartEvent,
    LLMStructuredPredictEndEvent,
    LLMStructuredPredictStartEvent,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.prompts import PromptTemplate
from llama_index.core.types import Model, PydanticProgramMode

from llama_index_rkllm._convert import (
    StreamAccumulator,
    raw_response,
    to_chat_messages,
    to_chat_response,
    to_tool_specs,
    tool_choice_name,
    tool_selections,
    usage,
)
from rkllm_core.chat.engine import ChatEngine, ChatResult
from rkllm_core.chat.messages import ChatMessage as CoreMessage
from rkllm_core.chat.messages import ToolSpec
from rkllm_core.settings import ModelSettings, SamplingDefaults, run_sampling

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Generator

    from llama_index.core.program.utils import FlexibleModel
    from llama_index.core.tools.types import BaseTool

dispatcher = instrument.get_dispatcher(__name__)  # type: ignore[attr-defined]


class RKLLM(ModelSettings, SamplingDefaults, FunctionCallingLLM):
    """A LlamaIndex LLM on a ``.rkllm`` model, with native tool calling for agents.

    Without a board, the same class runs on rkllm-py's host runtime (``library="host"``), with a
    GGUF model such as SmolLM2 on the CPU, or a scripted model for tests. Conversations reuse the
    runtime's KV cache: a chat engine or agent loop that extends the previous conversation
    prefills only the new messages.

    Setup:
        .. code-block:: bash

            pip install "rkllm-py[llamaindex]"          # on the board
            pip install "rkllm-py[llamaindex,host]"     # on a PC: host runtime + SmolLM2

    Key init args:
        model_path: the ``.rkllm`` file (``.gguf`` or scripted on the host runtime).
        client: an already loaded :class:`rkllm_core.RKLLM`, instead of ``model_path``.
        library: ``librkllmrt.so`` path or ``"host"``. max_context_len: context size.
        max_tokens: most new tokens per reply. temperature, top_k, top_p, repeat_penalty,
        mirostat...: sampling (:class:`rkllm_core.settings.SamplingDefaults`). stop: stop
        sequences. reasoning: ``enable_thinking`` for reasoning models.
        chat_mode / preset / tokenizer: how conversations reach the model
        (:mod:`rkllm_core.chat.engine`). structured_output_method: ``function_calling`` or
        ``json_schema`` for :meth:`structured_predict`.

    Objects that name the same file and settings share one loaded model
    (:func:`rkllm_core.shared.shared_model`), also with ``RKLLMEmbedding`` and LangChain's
    ``ChatRKLLM``.

    Tool calls come back as :class:`ToolCallBlock` s (mirrored in
    ``additional_kwargs["tool_calls"]``), reasoning as a :class:`ThinkingBlock` (and
    ``additional_kwargs["thinking_delta"]`` while streaming), token usage in ``raw["usage"]``
    and ``additional_kwargs``.

    Example (host runtime, scripted model):
        >>> import tempfile, pathlib
        >>> from llama_index.core.llms import ChatMessage
        >>> from llama_index_rkllm import RKLLM
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\nwhen contains "france" reply "Paris."\\n'
        ...                     'default reply "Hello from the NPU!"\\n')
        >>> llm = RKLLM(model_path=str(path), library="host", max_context_len=512)
        >>> llm.complete("Capital of France?").text
        'Paris.'
        >>> response = llm.chat([ChatMessage(role="user", content="Hi")])
        >>> response.message.content, response.raw["usage"]["completion_tokens"]
        ('Hello from the NPU!', 5)
        >>> [r.delta for r in llm.stream_chat([ChatMessage(role="user", content="Hi")])]
        ['Hello', ' from', ' the', ' NPU', '!', '']
        >>> llm.metadata.context_window, llm.metadata.is_function_calling_model
        (512, True)
        >>> [r.delta for r in llm.stream_complete("Hi")][:2]
        ['Hello', ' from']
        >>> llm.engine.mode  # the shared chat engine every call goes through
        'native'

    Async (each call never blocks the event loop; cancelling it aborts the run):
        >>> import asyncio
        >>> async def main() -> tuple[str, str, str, str]:
        ...     chat = await llm.achat([ChatMessage(role="user", content="Hi")])
        ...     done = await llm.acomplete("Capital of France?")
        ...     chunks = [r.delta async for r in await llm.astream_chat(
        ...         [ChatMessage(role="user", content="Hi")])]
        ...     pieces = [r.delta async for r in await llm.astream_complete("Hi")]
        ...     return chat.message.content, done.text, "".join(chunks), "".join(pieces)
        >>> asyncio.run(main())
        ('Hello from the NPU!', 'Paris.', 'Hello from the NPU!', 'Hello from the NPU!')
    """

    max_tokens: int | None = Field(default=None, description="Most new tokens per reply.")
    stop: list[str] | None = Field(default=None, description="Stop sequences, applied exactly "
                                   "on the stream.")
    reasoning: bool = Field(default=False, description="enable_thinking for reasoning models; "
                            "the thinking text goes to a ThinkingBlock.")
    chat_mode: Literal["native", "tokens", "raw"] | None = Field(
        default=None, description="How conversations reach the model (default: tokens with a "
        "tokenizer, else native).")
    preset: str | None = Field(default=None, description="Chat template preset (raw or tokens "
                               "mode).")
    tokenizer: str | None = Field(default=None, description="tokenizer.json or a Hugging Face "
                                  "folder (tokens mode).")
    timeout: float | None = Field(default=None, description="Seconds a call may take.")
    structured_output_method: Literal["function_calling", "json_schema"] = Field(
        default="function_calling", description="How structured_predict asks for the schema: "
        "a required tool call, or JSON in the system prompt.")

    _engine: ChatEngine | None = PrivateAttr(default=None)

    def _on_connect(self) -> None:
        self._engine = ChatEngine(self.client, mode=self.chat_mode, preset=self.preset,
                                  tokenizer=self.tokenizer)

    @classmethod
    def class_name(cls) -> str:
        return "RKLLM_llm"

    @property
    def metadata(self) -> LLMMetadata:
        """Context window and output size read from the loaded model's settings."""
        params = self.client.params
        return LLMMetadata(
            context_window=params.max_context_len,
            num_output=self.max_tokens or params.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=self._model_name,
        )

    @property
    def _model_name(self) -> str:
        return Path(self.model_path or "rkllm").name

    @property
    def engine(self) -> ChatEngine:
        """The :class:`~rkllm_core.chat.ChatEngine` every call goes through."""
        assert self._engine is not None
        return self._engine

    # -- arguments ---------------------------------------------------------------------------

    def _core_messages(self, messages: Sequence[ChatMessage]) -> list[CoreMessage]:
        formatter = self.messages_to_prompt
        if formatter is not None and formatter is not generic_messages_to_prompt:
            # a user-supplied formatter turns the conversation into one user turn
            return [CoreMessage.user(formatter(messages))]
        return to_chat_messages(messages)

    def _call_args(self, messages: list[CoreMessage], kwargs: dict[str, Any]) -> dict[str, Any]:
        tools = _tool_specs(kwargs.get("tools") or ())
        choice = tool_choice_name(kwargs.get("tool_choice"), bool(kwargs.get("tool_required")))
        stop = kwargs.get("stop", self.stop)
        return dict(messages=messages, tools=tools, tool_choice=choice,
                    enable_thinking=bool(kwargs.get("reasoning", self.reasoning)),
                    stop=list(stop or []),
                    max_new_tokens=kwargs.get("max_tokens", self.max_tokens),
                    sampling=run_sampling(self, self.client, kwargs),
                    timeout=kwargs.get("timeout", self.timeout))

    def _completion_messages(self, prompt: str, formatted: bool) -> list[CoreMessage]:
        formatter = self.completion_to_prompt
        if not formatted and formatter is not None:
            prompt = formatter(prompt)
        return [CoreMessage.user(prompt)]

    def _completion(self, result: ChatResult, delta: str | None = None) -> CompletionResponse:
        extra: dict[str, Any] = dict(usage(result))
        if result.message.reasoning:
            extra["thinking"] = result.message.reasoning
        return CompletionResponse(text=result.message.content, delta=delta,
                                  raw=raw_response(result, self._model_name),
                                  additional_kwargs=extra)

    # -- chat ----------------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        args = self._call_args(self._core_messages(messages), kwargs)
        return to_chat_response(self.engine.generate(**args), self._model_name)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        args = self._call_args(self._core_messages(messages), kwargs)
        return to_chat_response(await self.engine.agenerate(**args), self._model_name)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        stream = self.engine.stream(**self._call_args(self._core_messages(messages), kwargs))

        def gen() -> ChatResponseGen:
            turn = StreamAccumulator()
            for chunk in stream:
                yield turn.add(chunk)
            yield to_chat_response(stream.result, self._model_name, delta="")

        return gen()

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage],
                           **kwargs: Any) -> ChatResponseAsyncGen:
        stream = self.engine.astream(**self._call_args(self._core_messages(messages), kwargs))

        async def gen() -> ChatResponseAsyncGen:
            turn = StreamAccumulator()
            async for chunk in stream:
                yield turn.add(chunk)
            yield to_chat_response(stream.result, self._model_name, delta="")

        return gen()

    # -- completion ----------------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False,
                 **kwargs: Any) -> CompletionResponse:
        args = self._call_args(self._completion_messages(prompt, formatted), kwargs)
        return self._completion(self.engine.generate(**args))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False,
                        **kwargs: Any) -> CompletionResponse:
        args = self._call_args(self._completion_messages(prompt, formatted), kwargs)
        return self._completion(await self.engine.agenerate(**args))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False,
                        **kwargs: Any) -> CompletionResponseGen:
        args = self._call_args(self._completion_messages(prompt, formatted), kwargs)
        stream = self.engine.stream(**args)

        def gen() -> CompletionResponseGen:
            text = ""
            for chunk in stream:
                text += chunk.content
                extra = {"thinking_delta": chunk.reasoning} if chunk.reasoning else {}
                yield CompletionResponse(text=text, delta=chunk.content, additional_kwargs=extra)
            yield self._completion(stream.result, delta="")

        return gen()

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        args = self._call_args(self._completion_messages(prompt, formatted), kwargs)
        stream = self.engine.astream(**args)

        async def gen() -> CompletionResponseAsyncGen:
            text = ""
            async for chunk in stream:
                text += chunk.content
                extra = {"thinking_delta": chunk.reasoning} if chunk.reasoning else {}
                yield CompletionResponse(text=text, delta=chunk.content, additional_kwargs=extra)
            yield self._completion(stream.result, delta="")

        return gen()

    # -- tools ---------------------------------------------------------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The ``chat`` arguments that offer ``tools``; ``tool_choice`` ("auto", "none",
        "required" or a tool name) and ``tool_required`` are honoured."""
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            messages.append(ChatMessage(role=MessageRole.USER, content=user_msg))
        elif user_msg is not None:
            messages.append(user_msg)
        specs = to_tool_specs(tools)
        choice = tool_choice_name(kwargs.pop("tool_choice", None), tool_required)
        return {"messages": messages, "tools": specs, "tool_choice": choice, **kwargs}

    def _validate_chat_with_tools_response(
        self,
        response: ChatResponse,
        tools: Sequence[BaseTool],
        allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        """Keep only the first tool call unless parallel calls are allowed."""
        if not allow_parallel_tool_calls:
            message = response.message
            calls = [b for b in message.blocks if isinstance(b, ToolCallBlock)]
            if len(calls) > 1:
                message.blocks = [b for b in message.blocks
                                  if not isinstance(b, ToolCallBlock) or b is calls[0]]
                message.additional_kwargs["tool_calls"] = \
                    message.additional_kwargs.get("tool_calls", [])[:1]
        return response

    def get_tool_calls_from_response(
        self,
        response: ChatResponse,
        error_on_no_tool_call: bool = True,
        **kwargs: Any,
    ) -> list[ToolSelection]:
        """The tool calls of ``response`` (partial while streaming: arguments parsed so far).

        Example:
            >>> import tempfile, pathlib
            >>> from llama_index.core.tools import FunctionTool
            >>> from llama_index_rkllm import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\nwhen tools yes reply "<tool_call>'
            ...     '{\\\\"name\\\\": \\\\"add\\\\", \\\\"arguments\\\\": {\\\\"a\\\\": 1, '
            ...     '\\\\"b\\\\": 2}}</tool_call>"\\n')
            >>> def add(a: int, b: int) -> int:
            ...     "Add two numbers."
            ...     return a + b
            >>> llm = RKLLM(model_path=str(path), library="host", max_context_len=512)
            >>> response = llm.chat_with_tools([FunctionTool.from_defaults(add)], "1 + 2?")
            >>> call = llm.get_tool_calls_from_response(response)[0]
            >>> call.tool_name, call.tool_kwargs
            ('add', {'a': 1, 'b': 2})
        """
        calls = tool_selections(response.message)
        if not calls and error_on_no_tool_call:
            raise ValueError("Expected at least one tool call, but the model answered with "
                             f"text: {response.message.content!r}")
        return calls

    # -- structured output ---------------------------------------------------------------------

    def _engine_structured(self) -> bool:
        return self.pydantic_program_mode in (PydanticProgramMode.DEFAULT,
                                              PydanticProgramMode.FUNCTION)

    def _structured_request(self, output_cls: type[Model], prompt: PromptTemplate,
                            llm_kwargs: dict[str, Any], prompt_args: dict[str, Any]
                            ) -> tuple[list[ChatMessage], tuple[Any, ...], dict[str, Any]]:
        """The prompt's messages and the arguments of the engine's structured call."""
        messages = self._extend_messages(prompt.format_messages(llm=self, **prompt_args))
        args = self._call_args(to_chat_messages(messages), llm_kwargs)
        schema = output_cls.model_json_schema()
        options = dict(method=self.structured_output_method,
                       name=str(schema.get("title", output_cls.__name__)),
                       description=str(schema.get("description", "")),
                       enable_thinking=args["enable_thinking"],
                       max_new_tokens=args["max_new_tokens"], sampling=args["sampling"],
                       timeout=args["timeout"])
        return messages, (args["messages"], schema), options

    def _chat_started(self, messages: list[ChatMessage]) -> Any:
        # the engine's turns bypass chat(): report them as one chat so token counters see them
        dispatcher.event(LLMChatStartEvent(model_dict=self.to_payload(), messages=messages,
                                           additional_kwargs={}))
        return self.callback_manager.event(CBEventType.LLM,
                                           payload={EventPayload.MESSAGES: messages})

    def _chat_ended(self, event: Any, messages: list[ChatMessage], turn: ChatResult) -> None:
        response = to_chat_response(turn, self._model_name)
        event.on_end(payload={EventPayload.MESSAGES: messages, EventPayload.RESPONSE: response})
        dispatcher.event(LLMChatEndEvent(messages=messages, response=response))

    def _structured_value(self, output_cls: type[Model], prompt: PromptTemplate,
                          llm_kwargs: dict[str, Any], prompt_args: dict[str, Any]) -> Model:
        messages, positional, options = self._structured_request(output_cls, prompt,
                                                                 llm_kwargs, prompt_args)
        with self._chat_started(messages) as event:
            value, turn = self.engine.generate_structured(
                *positional, **options, validate=output_cls.model_validate)
            self._chat_ended(event, messages, turn)
        return cast(Model, value)

    async def _astructured_value(self, output_cls: type[Model], prompt: PromptTemplate,
                                 llm_kwargs: dict[str, Any], prompt_args: dict[str, Any]
                                 ) -> Model:
        messages, positional, options = self._structured_request(output_cls, prompt,
                                                                 llm_kwargs, prompt_args)
        with self._chat_started(messages) as event:
            # the engine's async turns: cancelling this call aborts the run on the model
            value, turn = await self.engine.agenerate_structured(
                *positional, **options, validate=output_cls.model_validate)
            self._chat_ended(event, messages, turn)
        return cast(Model, value)

    @dispatcher.span
    def structured_predict(self, output_cls: type[Model], prompt: PromptTemplate,
                           llm_kwargs: dict[str, Any] | None = None,
                           **prompt_args: Any) -> Model:
        """A validated ``output_cls`` for ``prompt``: a required tool call (or JSON in the
        system prompt, ``structured_output_method="json_schema"``), checked against the whole
        JSON schema (nested models, lists, optionals, enums) and repaired once by the chat
        engine, then validated by ``output_cls``. A reply that still fails raises
        :class:`~rkllm_core.chat.structured.StructuredOutputError` with the model's text in
        ``.raw``. Other ``pydantic_program_mode`` s use LlamaIndex's programs.

        Example:
            >>> import tempfile, pathlib
            >>> from pydantic import BaseModel
            >>> from llama_index.core.prompts import PromptTemplate
            >>> from llama_index_rkllm import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\nwhen tools yes reply "<tool_call>'
            ...     '{\\\\"name\\\\": \\\\"City\\\\", \\\\"arguments\\\\": {\\\\"name\\\\": '
            ...     '\\\\"Paris\\\\", \\\\"country\\\\": \\\\"France\\\\"}}</tool_call>"\\n')
            >>> class City(BaseModel):
            ...     name: str
            ...     country: str
            >>> llm = RKLLM(model_path=str(path), library="host", max_context_len=512)
            >>> llm.structured_predict(City, PromptTemplate("Tell me about {city}."), city="Paris")
            City(name='Paris', country='France')
        """
        if not self._engine_structured():
            value: Model = super().structured_predict(output_cls, prompt, llm_kwargs,
                                                      **prompt_args)
            return value
        dispatcher.event(LLMStructuredPredictStartEvent(
            output_cls=output_cls, template=prompt, template_args=prompt_args))
        result = self._structured_value(output_cls, prompt, llm_kwargs or {}, prompt_args)
        dispatcher.event(LLMStructuredPredictEndEvent(output=result))
        return result

    @dispatcher.span
    async def astructured_predict(self, output_cls: type[Model], prompt: PromptTemplate,
                                  llm_kwargs: dict[str, Any] | None = None,
                                  **prompt_args: Any) -> Model:
        """Async :meth:`structured_predict` on the engine's async turns: the event loop stays
        free, and cancelling the call aborts the run on the model.

        Example:
            >>> import asyncio, tempfile, pathlib
            >>> from pydantic import BaseModel
            >>> from llama_index.core.prompts import PromptTemplate
            >>> from llama_index_rkllm import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "{\\\\"items\\\\": '
            ...     '[\\\\"tea\\\\", \\\\"cake\\\\"], \\\\"total\\\\": 7}"\\n')
            >>> class Order(BaseModel):
            ...     items: list[str]
            ...     total: int
            >>> llm = RKLLM(model_path=str(path), library="host", max_context_len=512,
            ...             structured_output_method="json_schema")
            >>> asyncio.run(llm.astructured_predict(Order, PromptTemplate("Order {what}."),
            ...                                     what="tea"))
            Order(items=['tea', 'cake'], total=7)
        """
        if not self._engine_structured():
            value: Model = await super().astructured_predict(output_cls, prompt, llm_kwargs,
                                                             **prompt_args)
            return value
        dispatcher.event(LLMStructuredPredictStartEvent(
            output_cls=output_cls, template=prompt, template_args=prompt_args))
        result = await self._astructured_value(output_cls, prompt, llm_kwargs or {},
                                               prompt_args)
        dispatcher.event(LLMStructuredPredictEndEvent(output=result))
        return result

    def _function_program(self, output_cls: type[Model], prompt: PromptTemplate) -> Any:
        from llama_index.core.program.function_program import FunctionCallingProgram

        schema = output_cls.model_json_schema()
        return FunctionCallingProgram(output_cls=output_cls, llm=self, prompt=prompt,
                                      tool_choice=str(schema.get("title",
                                                                 output_cls.__name__)))

    def _structured_stream_call(
        self, output_cls: type[Model], prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any,
    ) -> Generator[Model | list[Model] | FlexibleModel | list[FlexibleModel], None, None]:
        if not self._engine_structured():
            return super()._structured_stream_call(output_cls, prompt, llm_kwargs,
                                                   **prompt_args)
        # partial objects follow the streamed tool-call arguments; the call is required
        stream: Generator[Any, None, None] = self._function_program(
            output_cls, prompt).stream_call(llm_kwargs=llm_kwargs, **prompt_args)
        return stream

    async def _structured_astream_call(
        self, output_cls: type[Model], prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any,
    ) -> AsyncGenerator[Model | list[Model] | FlexibleModel | list[FlexibleModel], None]:
        if not self._engine_structured():
            return await super()._structured_astream_call(output_cls, prompt, llm_kwargs,
                                                          **prompt_args)
        stream: AsyncGenerator[Any, None] = await self._function_program(
            output_cls, prompt).astream_call(llm_kwargs=llm_kwargs, **prompt_args)
        return stream


def _tool_specs(tools: Any) -> list[ToolSpec]:
    """``tools=`` of a call: ToolSpecs (from ``_prepare_chat_with_tools``), LlamaIndex tools or
    OpenAI-style dicts."""
    out: list[ToolSpec] = []
    for tool in tools:
        if isinstance(tool, ToolSpec):
            out.append(tool)
        elif isinstance(tool, dict):
            out.append(ToolSpec.from_openai(tool))
        else:
            out.extend(to_tool_specs([tool]))
    return out
