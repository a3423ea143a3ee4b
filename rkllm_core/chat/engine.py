"""The chat engine both adapters use: a message list in, the cheapest correct runtime call out.

LangChain and LlamaIndex hand over the whole conversation on every call; the runtime takes one
new input at a time and keeps the history in its KV cache. :class:`ChatEngine` remembers what
the cache of its :class:`~rkllm_core.RKLLM` holds and sends only what is new when the
conversation extends it; when the conversation diverges it clears the cache and replays.

Three ways to reach the model:

``native`` (default)
    Plain text with ``role`` and ``enable_thinking``; the runtime applies the chat template
    baked into the ``.rkllm`` file and ``rkllm_set_function_tools`` gives it the system prompt and
    tools. Needs no extra files and never sends special tokens as text. Its limits: an assistant
    turn cannot be sent, so a history the cache does not hold is replayed as a transcript inside
    one user turn; a system prompt goes through ``rkllm_set_function_tools`` (1.2.1+) or, on older
    runtimes and models without a template, is written at the top of the first user turn.
``tokens`` (when a tokenizer is given)
    The engine renders the whole conversation with the model's Jinja chat template, tokenizes it
    locally and sends token ids. Exact for any history; a diverged history is cut back to the
    longest common prefix of token ids (1.2.1+), so an edit late in a long chat is cheap.
``raw``
    The engine renders a template preset and sends it as text with the runtime template switched
    off (``rkllm_set_chat_template`` with empty strings, which also switches off the runtime's
    tool and thinking handling, rknn-llm issue 429).

This module holds :class:`ChatEngine` (construction, the public calls, finishing a turn); the
turn's result types are in :mod:`rkllm_core.chat.results`, the conversation helpers in
:mod:`rkllm_core.chat.conversation`, the KV-cache bookkeeping and the plans of each mode in
:mod:`rkllm_core.chat.plans`, the streams in :mod:`rkllm_core.chat.streams` and the
structured-output exchange in :mod:`rkllm_core.chat.structured`.

Example:
    >>> import tempfile, pathlib
    >>> from rkllm_core import RKLLM
    >>> from rkllm_core.chat import ChatEngine, ChatMessage
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\nwhen contains "france" reply "Paris."\\n'
    ...                     'default reply "Hello!"\\n')
    >>> with RKLLM(path, library="host", max_context_len=512) as llm:
    ...     chat = ChatEngine(llm)
    ...     first = chat.generate([ChatMessage.user("Hi")])
    ...     history = [ChatMessage.user("Hi"), first.message,
    ...                ChatMessage.user("Capital of France?")]
    ...     second = chat.generate(history)
    >>> first.message.content, second.message.content, second.reused_cache
    ('Hello!', 'Paris.', True)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from rkllm_core.backend import ReadKVCacheSize
from rkllm_core.chat.conversation import (
    ToolChoice,
    _split_system,
    _tool_specs,
    _trailing_inputs,
    hermes_tool_instructions,
    tool_choice_instruction,
)
from rkllm_core.chat.messages import ChatMessage, ToolCall, ToolSpec
from rkllm_core.chat.output import OutputParser, ToolFormat
from rkllm_core.chat.plans import _forget, _Plan, _plan_native, _plan_rendered, _state_of
from rkllm_core.chat.results import ChatChunk, ChatResult, ChatUsage, Mode
from rkllm_core.chat.streams import AsyncChatStream, ChatStream, _consume
from rkllm_core.chat.structured import _structured_flow
from rkllm_core.errors import InvalidParameterError


class ChatEngine:
    """Conversations on one :class:`~rkllm_core.RKLLM`, with KV-cache reuse, tools and reasoning.

    Args:
        model: the loaded model.
        mode: ``"native"``, ``"tokens"`` or ``"raw"``; default ``tokens`` when ``tokenizer`` is
            given, else ``native``.
        preset: a chat template preset name (see :mod:`rkllm_core.chat.templates`) or None to
            guess from the model file name where a mode needs one.
        tokenizer: for tokens mode: a :class:`~rkllm_core.chat.tokenizer.ChatTokenizer`, a
            ``tokenizer.json`` path or a Hugging Face model folder (whose
            ``tokenizer_config.json`` chat template is then used).
        tool_format: how the model writes tool calls (default: the preset's, else ``hermes``).

    Example:
        >>> import tempfile, pathlib
        >>> from rkllm_core import RKLLM
        >>> from rkllm_core.chat import ChatEngine, ChatMessage, ToolSpec
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\nwhen contains "weather" tools yes reply '
        ...     '"<tool_call>\\\\n{\\\\"name\\\\": \\\\"get_weather\\\\", \\\\"arguments\\\\": '
        ...     '{\\\\"city\\\\": \\\\"Paris\\\\"}}\\\\n</tool_call>"\\n')
        >>> weather = ToolSpec("get_weather", "Weather of a city",
        ...                    {"type": "object", "properties": {"city": {"type": "string"}}})
        >>> with RKLLM(path, library="host", max_context_len=512) as llm:
        ...     turn = ChatEngine(llm).generate([ChatMessage.user("Weather in Paris?")],
        ...                                     tools=[weather])
        >>> turn.finish_reason, turn.message.tool_calls[0].name
        ('tool_calls', 'get_weather')

        Streaming, asyncio, and a new conversation:

        >>> import asyncio
        >>> llm = RKLLM(path, library="host", max_context_len=512)
        >>> chat = ChatEngine(llm)
        >>> "".join(c.content for c in chat.stream([ChatMessage.user("Hi")]))
        'OK.'
        >>> async def both() -> tuple[str, str]:
        ...     streamed = [c.content async for c in chat.astream([ChatMessage.user("Hi")])]
        ...     turn = await chat.agenerate([ChatMessage.user("Hi")])
        ...     return "".join(streamed), turn.message.content
        >>> asyncio.run(both())
        ('OK.', 'OK.')
        >>> chat.reset()  # forget the cache: the next turn replays its whole conversation
        >>> chat.generate([ChatMessage.user("Hi")]).reused_cache
        False
        >>> llm.close()
    """

    def __init__(self, model: Any, *, mode: Mode | None = None, preset: Any = None,
                 tokenizer: Any = None, tool_format: ToolFormat | None = None) -> None:
        self.model = model
        self._state = _state_of(model)
        self._tokenizer = None
        self._template: str | None = None
        self._bos = self._eos = ""
        self.preset = self._resolve_preset(preset)
        if tokenizer is not None:
            self._tokenizer, hf_template = self._load_tokenizer(tokenizer)
            if hf_template is not None and preset is None:
                self._template = hf_template
        if self.preset is not None and self._template is None:
            self._template = self.preset.template
            self._bos, self._eos = self.preset.bos_token, self.preset.eos_token
        self.mode: Mode = mode or ("tokens" if self._tokenizer is not None else "native")
        if mode is None and self.mode == "native" and self._template is not None and \
                not model.capabilities.chat_template:
            self.mode = "raw"  # runtime 1.1 has no template of its own: render the preset
        if self.mode == "tokens" and self._tokenizer is None:
            raise InvalidParameterError(
                "tokens mode needs the model's tokenizer: ChatEngine(model, tokenizer="
                "'path/to/tokenizer.json' or a Hugging Face model folder)")
        if self.mode in ("tokens", "raw") and self._template is None:
            raise InvalidParameterError(
                f"{self.mode} mode needs a chat template: give preset= (one of the built-in "
                "presets) or a Hugging Face folder with tokenizer_config.json")
        # runtime 1.1 keeps no history and applies no template: it takes the prompt as written
        self._stateful = model.capabilities.kv_cache_clear
        fmt = tool_format or (getattr(self.preset, "tool_call_format", None) if self.preset
                              else None) or "hermes"
        self.tool_format: ToolFormat = fmt

    # -- construction helpers --------------------------------------------------------------

    def _resolve_preset(self, preset: Any) -> Any:
        if preset is None:
            return None
        if isinstance(preset, str):
            from rkllm_core.chat.templates import PRESETS, preset_for

            return PRESETS[preset] if preset in PRESETS else preset_for(preset)
        return preset

    @staticmethod
    def _load_tokenizer(tokenizer: Any) -> tuple[Any, str | None]:
        from pathlib import Path

        from rkllm_core.chat.tokenizer import ChatTokenizer

        if isinstance(tokenizer, ChatTokenizer):
            return tokenizer, None
        path = Path(tokenizer)
        if path.is_dir():
            from rkllm_core.chat.templates import load_hf_template

            template, _extra = load_hf_template(path)
            return ChatTokenizer.from_pretrained_dir(path), template
        if path.suffix == ".gguf":
            return ChatTokenizer.from_gguf(path), None
        return ChatTokenizer.from_file(path), None

    # -- public API ------------------------------------------------------------------------

    def stream(self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = (),
               tool_choice: ToolChoice = "auto", enable_thinking: bool = False,
               stop: Sequence[str] = (), max_new_tokens: int | None = None,
               sampling: Any = None, timeout: float | None = None) -> ChatStream:
        """Start the assistant's turn; iterate the returned :class:`ChatStream` for chunks."""
        def start() -> tuple[_Plan, Any]:
            plan = self._plan(messages, tools, tool_choice, enable_thinking, stop,
                              max_new_tokens, sampling)
            return plan, self.model.stream(**plan.run_kwargs, setup=plan.setup,
                                           timeout=timeout)
        return ChatStream(self, start)

    def astream(self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = (),
                tool_choice: ToolChoice = "auto", enable_thinking: bool = False,
                stop: Sequence[str] = (), max_new_tokens: int | None = None,
                sampling: Any = None, timeout: float | None = None) -> AsyncChatStream:
        """Async :meth:`stream`: ``async for chunk in engine.astream(...)``; never blocks."""
        def start() -> tuple[_Plan, Any]:
            plan = self._plan(messages, tools, tool_choice, enable_thinking, stop,
                              max_new_tokens, sampling)
            return plan, self.model.astream(**plan.run_kwargs, setup=plan.setup,
                                            timeout=timeout)
        return AsyncChatStream(self, start)

    def generate(self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = (),
                 tool_choice: ToolChoice = "auto", enable_thinking: bool = False,
                 stop: Sequence[str] = (), max_new_tokens: int | None = None,
                 sampling: Any = None, timeout: float | None = None,
                 on_chunk: Callable[[ChatChunk], None] | None = None) -> ChatResult:
        """The whole assistant turn. With ``tool_choice`` required or a tool name, a turn
        without a (matching) call gets one retry that repeats the instruction."""
        kwargs = dict(tools=tools, tool_choice=tool_choice, enable_thinking=enable_thinking,
                      stop=stop, max_new_tokens=max_new_tokens, sampling=sampling,
                      timeout=timeout)
        stream = self.stream(messages, **kwargs)
        for chunk in stream:
            if on_chunk is not None:
                on_chunk(chunk)
        result = stream.result
        retry = self._tool_retry(messages, result, tools, tool_choice)
        if retry is None:
            return result
        stream = self.stream(retry, **kwargs)
        for chunk in stream:
            if on_chunk is not None:
                on_chunk(chunk)
        return stream.result

    async def agenerate(self, messages: Sequence[ChatMessage], *,
                        tools: Sequence[ToolSpec] = (), tool_choice: ToolChoice = "auto",
                        enable_thinking: bool = False, stop: Sequence[str] = (),
                        max_new_tokens: int | None = None, sampling: Any = None,
                        timeout: float | None = None,
                        on_chunk: Callable[[ChatChunk], Any] | None = None) -> ChatResult:
        """Async :meth:`generate`; ``on_chunk`` may be a coroutine function."""
        kwargs = dict(tools=tools, tool_choice=tool_choice, enable_thinking=enable_thinking,
                      stop=stop, max_new_tokens=max_new_tokens, sampling=sampling,
                      timeout=timeout)
        stream = self.astream(messages, **kwargs)
        await _consume(stream, on_chunk)
        result = stream.result
        retry = self._tool_retry(messages, result, tools, tool_choice)
        if retry is None:
            return result
        stream = self.astream(retry, **kwargs)
        await _consume(stream, on_chunk)
        return stream.result

    def generate_structured(
            self, messages: Sequence[ChatMessage], schema: Mapping[str, Any] | None = None, *,
            method: Literal["json_schema", "json_mode", "function_calling"] = "json_schema",
            name: str = "respond", description: str = "", enable_thinking: bool = False,
            max_new_tokens: int | None = None, sampling: Any = None,
            timeout: float | None = None,
            validate: Callable[[Any], Any] | None = None) -> tuple[Any, ChatResult]:
        """A JSON answer for ``schema``: (the parsed value, the turn that gave it).

        ``json_schema`` / ``json_mode`` ask for JSON in the system prompt; ``function_calling``
        binds one tool whose parameters are the schema and requires a call to it. The value is
        checked against the schema, then by ``validate`` when given (e.g. a pydantic model's
        ``model_validate``: what it returns is the value; a ``ValueError`` it raises is a failed
        check); a failing reply gets one repair turn quoting the error, then
        :class:`~rkllm_core.chat.structured.StructuredOutputError`.

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> from rkllm_core.chat import ChatEngine, ChatMessage
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text("RKLLM-SCRIPTED 1\\n" +
            ...                     r'default reply "{\\"city\\": \\"Paris\\"}"')
            >>> schema = {"type": "object", "properties": {"city": {"type": "string"}}}
            >>> with RKLLM(path, library="host", max_context_len=512) as llm:
            ...     value, _ = ChatEngine(llm).generate_structured(
            ...         [ChatMessage.user("Where?")], schema)
            >>> value
            {'city': 'Paris'}
        """
        kwargs: dict[str, Any] = dict(enable_thinking=enable_thinking,
                                      max_new_tokens=max_new_tokens, sampling=sampling,
                                      timeout=timeout)
        flow = _structured_flow(messages, schema, method, name, description, validate)
        request = next(flow)
        while True:
            history, extra = request
            try:
                request = flow.send(self.generate(history, **extra, **kwargs))
            except StopIteration as done:
                value: tuple[Any, ChatResult] = done.value
                return value

    async def agenerate_structured(
            self, messages: Sequence[ChatMessage], schema: Mapping[str, Any] | None = None, *,
            method: Literal["json_schema", "json_mode", "function_calling"] = "json_schema",
            name: str = "respond", description: str = "", enable_thinking: bool = False,
            max_new_tokens: int | None = None, sampling: Any = None,
            timeout: float | None = None,
            validate: Callable[[Any], Any] | None = None) -> tuple[Any, ChatResult]:
        """Async :meth:`generate_structured`; never blocks the event loop.

        Example:
            >>> import asyncio, tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> from rkllm_core.chat import ChatEngine, ChatMessage
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text("RKLLM-SCRIPTED 1\\n" + r'default reply "{\\"n\\": 3}"')
            >>> async def main() -> object:
            ...     with RKLLM(path, library="host", max_context_len=512) as llm:
            ...         value, _ = await ChatEngine(llm).agenerate_structured(
            ...             [ChatMessage.user("How many?")], {"type": "object"})
            ...         return value
            >>> asyncio.run(main())
            {'n': 3}
        """
        kwargs: dict[str, Any] = dict(enable_thinking=enable_thinking,
                                      max_new_tokens=max_new_tokens, sampling=sampling,
                                      timeout=timeout)
        flow = _structured_flow(messages, schema, method, name, description, validate)
        request = next(flow)
        while True:
            history, extra = request
            try:
                request = flow.send(await self.agenerate(history, **extra, **kwargs))
            except StopIteration as done:
                value: tuple[Any, ChatResult] = done.value
                return value

    def reset(self) -> None:
        """Forget what the KV cache holds; the next call replays its conversation."""
        with self._state.lock:
            self._state.valid = False
            self._state.epoch += 1

    # -- tool choice -----------------------------------------------------------------------

    @staticmethod
    def _tool_retry(messages: Sequence[ChatMessage], result: ChatResult,
                    tools: Sequence[ToolSpec], tool_choice: ToolChoice) -> list[ChatMessage] | None:
        if not tools or tool_choice in ("auto", "none") or result.finish_reason in ("abort",
                                                                                   "error"):
            return None
        calls = result.message.tool_calls
        if tool_choice in ("required", "any"):
            if calls:
                return None
            ask = "Answer with a tool call now, in the format described, and nothing else."
        else:
            if calls and all(c.name == tool_choice for c in calls):
                return None
            ask = f"Call the tool `{tool_choice}` now, in the format described, and nothing else."
        return [*messages, result.message, ChatMessage.user(ask)]

    # -- planning --------------------------------------------------------------------------

    def _plan(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec],
              tool_choice: ToolChoice, enable_thinking: bool, stop: Sequence[str],
              max_new_tokens: int | None, sampling: Any) -> _Plan:
        messages = list(messages)
        for m in messages:
            if not isinstance(m, ChatMessage):
                raise InvalidParameterError(
                    f"messages must be rkllm_core.chat.ChatMessage objects, got {type(m).__name__}")
        tools = [] if tool_choice == "none" else _tool_specs(tools)
        instruction = tool_choice_instruction(tool_choice, tools) if tools else ""
        if tool_choice not in ("auto", "none") and not tools:
            raise InvalidParameterError(f"tool_choice={tool_choice!r} needs tools to call")
        system, rest = _split_system(messages)
        if instruction:
            system = f"{system}\n\n{instruction}" if system else instruction
        preset = self.preset
        think = bool(preset.supports_thinking) if preset is not None else True
        starts_in_reasoning = bool(getattr(preset, "prompt_ends_in_thinking", False)) and \
            enable_thinking
        stops = list(stop)
        parser_kwargs: dict[str, Any] = dict(
            tool_format=self.tool_format if tools else None, think=think,
            starts_in_reasoning=starts_in_reasoning, stop=stops)
        # the model cuts at a stop string inside the runtime's callback and aborts there, so
        # where a turn ends does not depend on how fast a consumer (or a process) reads it
        base: dict[str, Any] = dict(keep_history=self._stateful, max_new_tokens=max_new_tokens,
                                    sampling=sampling, stop=stops)
        state = self._state
        with state.lock:
            state.epoch += 1
            capabilities = self.model.capabilities
            if self.mode == "native":
                plan = _plan_native(state, system, rest, tools, enable_thinking, base,
                                    capabilities=capabilities, stateful=self._stateful)
            else:
                _trailing_inputs(rest)  # validates the last message
                text = self.render(
                    ([ChatMessage.system(system)] if system is not None else []) + rest,
                    tools, enable_thinking)
                plan = _plan_rendered(state, text, self.mode, self._tokenizer, base,
                                      capabilities=capabilities, stateful=self._stateful)
            plan.parser_kwargs = parser_kwargs
            plan.epoch = state.epoch
            if capabilities.kv_cache_size:
                # last before the run: the size it starts from and, when the plan reuses the
                # cache, a check that it still holds what this engine recorded
                plan.setup.append(ReadKVCacheSize(plan.reused_tokens if plan.reused else None))
            state.valid = False  # until this run records what the cache then holds
            if not self._stateful:  # 1.1 keeps no history: every call sends everything
                plan.record = _forget
            return plan

    def render(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = (),
               enable_thinking: bool = False) -> str:
        """The prompt text tokens and raw modes send for ``messages``.

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> from rkllm_core.chat import ChatEngine, ChatMessage
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\n')
            >>> with RKLLM(path, library="host", max_context_len=512) as llm:
            ...     text = ChatEngine(llm, mode="raw", preset="chatml").render(
            ...         [ChatMessage.user("Hi")])
            >>> text.endswith("<|im_start|>assistant\\n")
            True
        """
        from rkllm_core.chat.templates import render_chat

        if self._template is None:
            raise InvalidParameterError("no chat template: give preset= or a tokenizer folder")
        return render_chat(self._template, [m.to_openai() for m in messages],
                           tools=[t.to_openai() for t in tools] or None,
                           add_generation_prompt=True, enable_thinking=enable_thinking,
                           bos_token=self._bos, eos_token=self._eos)

    # -- finishing a turn ------------------------------------------------------------------

    def _finish(self, plan: _Plan, parser: OutputParser, generation: Any,
                error: BaseException | None) -> ChatResult:
        parsed = parser.finish_result()
        finish = generation.finish_reason if generation is not None else "error"
        stop_hit = parsed.stop_sequence or (
            generation.stop_sequence if generation is not None else None)
        if stop_hit is not None:
            finish = "stop"
        elif parsed.tool_calls and finish == "stop":
            finish = "tool_calls"
        reply = ChatMessage.assistant(parsed.content, tool_calls=parsed.tool_calls,
                                      reasoning=parsed.reasoning or None)
        raw_text = generation.text if generation is not None else ""
        clean_end = generation is not None and generation.finish_reason == "stop" and \
            stop_hit is None
        state = self._state
        with state.lock:
            if state.epoch == plan.epoch:
                ids = list(generation.token_ids) if generation is not None else []
                # tokens mode knows the exact ids even after a stop or abort; text modes only
                # know a cleanly ended turn
                if self.mode == "tokens" and generation is not None:
                    plan.record(state, ids, reply, raw_text)
                else:
                    plan.record(state, ids, reply if clean_end else None, raw_text)
                state.size = self._size_after(plan, generation)
        perf = generation.perf if generation is not None else None
        # before 1.2.1 the runtime reports no prefill count; tokens mode knows what it sent
        prefill = perf.prefill_tokens if perf is not None else None
        if prefill is None:
            prefill = plan.sent_tokens or 0
        usage = ChatUsage(
            input_tokens=(generation.kv_cache_size_before
                          if generation is not None and generation.kv_cache_size_before
                          is not None else plan.reused_tokens) + prefill,
            # the tokens the caller got: after a stop the runtime may make a few more before
            # its abort lands, and those are not part of the reply
            output_tokens=len(generation.token_ids) if generation is not None else 0,
            prefill_tokens=prefill,
            prefill_ms=perf.prefill_ms if perf is not None else 0.0,
            decode_ms=perf.decode_ms if perf is not None else 0.0,
            tokens_per_second=perf.tokens_per_second if perf is not None else 0.0)
        return ChatResult(reply, parsed.invalid_tool_calls, finish, usage, stop_hit,
                          self.mode, plan.reused, self.model.runtime_info.release, raw_text)

    @staticmethod
    def _size_after(plan: _Plan, generation: Any) -> int | None:
        """The KV size after the run: where it started, plus what was prefilled and made."""
        perf = generation.perf if generation is not None else None
        start = generation.kv_cache_size_before if generation is not None else None
        if start is None or perf is None or perf.prefill_tokens is None:
            return None
        return int(start + perf.prefill_tokens + perf.decode_tokens)


__all__ = ["AsyncChatStream", "ChatChunk", "ChatEngine", "ChatResult", "ChatStream",
           "ChatUsage", "ToolCall", "hermes_tool_instructions", "tool_choice_instruction"]
