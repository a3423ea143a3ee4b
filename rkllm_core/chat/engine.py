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

import inspect
import itertools
import json
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rkllm_core.backend import (
    ClearKVCache,
    ReadKVCacheSize,
    RunSetup,
    SetChatTemplate,
    SetFunctionTools,
)
from rkllm_core.chat.messages import ChatMessage, InvalidToolCall, ToolCall, ToolSpec
from rkllm_core.chat.output import OutputParser, ToolCallDelta, ToolFormat
from rkllm_core.errors import InvalidParameterError, RKLLMError, StaleKVCacheError

logger = logging.getLogger("rkllm_core")

Mode = Literal["native", "tokens", "raw"]
ToolChoice = str  # "auto" | "none" | "required" | "any" | a tool name

TOOL_RESPONSE = "tool_response"


@dataclass(frozen=True)
class ChatUsage:
    """Tokens of one call: ``input_tokens`` is the whole context the reply was computed on
    (reused cache plus what was prefilled now), ``prefill_tokens`` what this call prefilled.

    Example:
        >>> import tempfile, pathlib
        >>> from rkllm_core import RKLLM
        >>> from rkllm_core.chat import ChatEngine, ChatMessage
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi there."\\n')
        >>> with RKLLM(path, library="host", max_context_len=512) as llm:
        ...     chat = ChatEngine(llm)
        ...     first = chat.generate([ChatMessage.user("Hello")])
        ...     second = chat.generate([ChatMessage.user("Hello"), first.message,
        ...                             ChatMessage.user("Again")])
        >>> u = second.usage  # the first turn was in the KV cache: only the new one prefilled
        >>> u.prefill_tokens < u.input_tokens, u.total_tokens == u.input_tokens + u.output_tokens
        (True, True)
    """

    input_tokens: int
    output_tokens: int
    prefill_tokens: int
    prefill_ms: float
    decode_ms: float
    tokens_per_second: float

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


@dataclass
class ChatChunk:
    """One streamed piece of an assistant turn.

    Example:
        >>> import tempfile, pathlib
        >>> from rkllm_core import RKLLM
        >>> from rkllm_core.chat import ChatEngine, ChatMessage
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi there."\\n')
        >>> with RKLLM(path, library="host", max_context_len=512) as llm:
        ...     chunks = list(ChatEngine(llm).stream([ChatMessage.user("Hello")]))
        >>> "".join(c.content for c in chunks), chunks[0].reasoning, chunks[0].tool_calls
        ('Hi there.', '', [])
    """

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    token_id: int | None = None


@dataclass
class ChatResult:
    """A finished assistant turn.

    ``finish_reason``: ``stop`` (end of turn or a stop sequence), ``tool_calls`` (the turn
    asks for tools), ``length``, ``abort`` or ``error``.

    Example:
        >>> import tempfile, pathlib
        >>> from rkllm_core import RKLLM
        >>> from rkllm_core.chat import ChatEngine, ChatMessage
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi there."\\n')
        >>> with RKLLM(path, library="host", max_context_len=512) as llm:
        ...     turn = ChatEngine(llm).generate([ChatMessage.user("Hello")], stop=[" there"])
        >>> turn.message.content, turn.finish_reason, turn.stop_sequence, turn.mode
        ('Hi', 'stop', ' there', 'native')
    """

    message: ChatMessage
    invalid_tool_calls: list[InvalidToolCall]
    finish_reason: str
    usage: ChatUsage
    stop_sequence: str | None
    mode: Mode
    reused_cache: bool
    runtime_release: str
    raw_text: str = ""

    def metadata(self) -> dict[str, Any]:
        """What the adapters report about a turn: finish reason, timings, the runtime release,
        the chat mode and whether the KV cache was reused.

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> from rkllm_core.chat import ChatEngine, ChatMessage
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi."\\n')
            >>> with RKLLM(path, library="host", max_context_len=512) as llm:
            ...     meta = ChatEngine(llm).generate([ChatMessage.user("Hello")]).metadata()
            >>> meta["finish_reason"], meta["chat_mode"], meta["runtime_release"]
            ('stop', 'native', '1.3.0')
        """
        u = self.usage
        return {
            "finish_reason": self.finish_reason,
            "stop_sequence": self.stop_sequence,
            "prefill_tokens": u.prefill_tokens,
            "prefill_ms": u.prefill_ms,
            "decode_ms": u.decode_ms,
            "tokens_per_second": u.tokens_per_second,
            "runtime_release": self.runtime_release,
            "chat_mode": self.mode,
            "kv_cache_reused": self.reused_cache,
        }


# ---------------------------------------------------------------------------------------------
# What the KV cache of one model holds (shared by every ChatEngine over that model)


@dataclass
class _CacheState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    epoch: int = 0            # bumped by every plan; a finishing run records only its own epoch
    valid: bool = False
    key: tuple[Any, ...] | None = None   # how the cache was set up (mode, system, tools)
    turns: tuple[ChatMessage, ...] = ()  # native: non-system messages in the cache
    tokens: list[int] = field(default_factory=list)  # tokens mode: ids in the cache
    text: str = ""            # raw mode: text in the cache
    size: int | None = None   # kv_cache_size after the last recorded run (1.2.1+)
    setup: tuple[Any, ...] | None = None  # what set_function_tools / set_chat_template last got


_states: weakref.WeakKeyDictionary[Any, _CacheState] = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()


def _state_of(model: Any) -> _CacheState:
    with _states_lock:
        state = _states.get(model)
        if state is None:
            state = _states[model] = _CacheState()
        return state


# ---------------------------------------------------------------------------------------------
# Plans


@dataclass
class _Plan:
    run_kwargs: dict[str, Any]
    setup: list[RunSetup]  # done by the model on its worker right before the run
    epoch: int
    reused: bool
    reused_tokens: int
    record: Callable[[_CacheState, list[int], ChatMessage | None, str], None]
    parser_kwargs: dict[str, Any]
    sent_tokens: int | None = None  # tokens mode: how many ids this run sends


_Request = tuple[list[ChatMessage], dict[str, Any]]


def _structured_flow(messages: Sequence[ChatMessage], schema: Mapping[str, Any] | None,
                     method: str, name: str, description: str,
                     validate: Callable[[Any], Any] | None = None,
                     ) -> Generator[_Request, ChatResult, tuple[Any, ChatResult]]:
    """The steps of a structured answer, shared by the sync and async engines: it yields the
    turns to run (history, extra generate arguments) and receives their results."""

    def accepted(value: Any) -> tuple[Any, str | None]:
        # a check the JSON schema cannot express (a pydantic validator): repaired the same way
        if validate is None:
            return value, None
        try:
            return validate(value), None
        except ValueError as exc:
            return None, str(exc)
    from rkllm_core.chat.structured import (
        StructuredOutputError,
        arguments_error,
        check_reply,
        check_schema,
        json_instruction,
        repair_request,
    )

    history = list(messages)
    if method == "function_calling":
        if schema is None:
            raise InvalidParameterError("function_calling needs a schema")
        check_schema(schema)  # a schema the validator refuses fails here, before any run
        extra: dict[str, Any] = {"tools": [ToolSpec(name, description, schema)],
                                 "tool_choice": name}
        result = yield history, extra
        for attempt in range(2):
            call = next((c for c in result.message.tool_calls if c.name == name), None)
            if call is not None:
                value, problem = dict(call.arguments), arguments_error(call.arguments, schema)
                if problem is None:
                    value, problem = accepted(value)
                if problem is None:
                    return value, result
                error = problem
            else:
                error = f"no call to the tool `{name}`"
            if attempt == 0:
                history = [*history, result.message, ChatMessage.user(repair_request(error))]
                result = yield history, extra
        raise StructuredOutputError(f"the model did not produce a valid `{name}` call: "
                                    f"{error}", result.raw_text)
    if method not in ("json_schema", "json_mode"):
        raise InvalidParameterError(
            f"method must be json_schema, json_mode or function_calling, not {method!r}")
    wanted = schema if method == "json_schema" else None
    if wanted is not None:
        check_schema(wanted)
    sentence = json_instruction(wanted)
    system, rest = _split_system(history)
    history = [ChatMessage.system(f"{system}\n\n{sentence}" if system else sentence), *rest]
    for attempt in range(2):
        result = yield history, {}
        value, problem = check_reply(result.message.content, wanted)
        if problem is None:
            value, problem = accepted(value)
        if problem is None:
            return value, result
        if attempt == 0:
            history = [*history, result.message, ChatMessage.user(repair_request(problem))]
    raise StructuredOutputError(f"the model's reply is not valid JSON for the schema: "
                                f"{problem}", result.raw_text)


def _forget(state: _CacheState, generated: list[int], reply: ChatMessage | None,
            raw: str) -> None:
    state.valid = False


def _tool_specs(tools: Any) -> list[ToolSpec]:
    """``tools`` as a list of ToolSpec: specs or OpenAI-style dicts, names unique."""
    if isinstance(tools, (ToolSpec, Mapping, str)) or not isinstance(tools, Sequence):
        raise InvalidParameterError(
            f"tools must be a list of ToolSpec or OpenAI-style tool dicts, got "
            f"{type(tools).__name__}")
    specs: list[ToolSpec] = []
    for tool in tools:
        if isinstance(tool, ToolSpec):
            specs.append(tool)
        elif isinstance(tool, Mapping):
            specs.append(ToolSpec.from_openai(tool))
        else:
            raise InvalidParameterError(
                f"tools must be ToolSpec objects or OpenAI-style dicts, got {type(tool).__name__}")
    names = [s.name for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InvalidParameterError(f"tool names must be unique; repeated: {', '.join(repeated)}")
    return specs


def _split_system(messages: Sequence[ChatMessage]) -> tuple[str | None, list[ChatMessage]]:
    system = [m.content for m in messages if m.role == "system"]
    rest = [m for m in messages if m.role != "system"]
    return ("\n\n".join(system) if system else None), rest


def _trailing_inputs(rest: list[ChatMessage]) -> tuple[list[ChatMessage], list[ChatMessage]]:
    """(history, new inputs): the last user turn, or the trailing run of tool results."""
    if not rest:
        raise InvalidParameterError("the conversation is empty: give at least one user message")
    last = rest[-1]
    if last.role == "user":
        return rest[:-1], [last]
    if last.role == "tool":
        k = len(rest)
        while k > 0 and rest[k - 1].role == "tool":
            k -= 1
        return rest[:k], rest[k:]
    raise InvalidParameterError(
        "the conversation ends with an assistant turn; the model answers a user or tool "
        "message: append one (to continue the assistant's text, use tokens or raw mode)")


def _tool_results_text(tools: list[ChatMessage]) -> str:
    """Several tool results in one tool turn, as Rockchip's 1.3.0 server sends them."""
    if len(tools) == 1:
        return tools[0].content
    return json.dumps([{"name": m.name, "tool_call_id": m.tool_call_id, "content": m.content}
                       for m in tools], ensure_ascii=False)


def _transcript(history: Sequence[ChatMessage]) -> str:
    lines = []
    for m in history:
        if m.role == "user":
            lines.append(f"User: {m.content}")
        elif m.role == "assistant":
            calls = "".join(f"\n<tool_call>\n{json.dumps({'name': c.name, 'arguments': dict(c.arguments)}, ensure_ascii=False)}\n</tool_call>"  # noqa: E501
                            for c in m.tool_calls)
            lines.append(f"Assistant: {m.content}{calls}")
        elif m.role == "tool":
            lines.append(f"Tool result{f' ({m.name})' if m.name else ''}: {m.content}")
    return "\n".join(lines)


def hermes_tool_instructions(tools: Sequence[ToolSpec]) -> str:
    """The Hermes / Qwen tool block for a system prompt (used where the runtime cannot add it)."""
    specs = "\n".join(json.dumps(t.to_openai(), ensure_ascii=False) for t in tools)
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{specs}\n</tools>\n\nFor each function call, return a json object with "
            "function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def tool_choice_instruction(tool_choice: ToolChoice, tools: Sequence[ToolSpec]) -> str:
    """The sentence that asks for a tool call when ``tool_choice`` requires one ("" for auto)."""
    if tool_choice in ("auto", "none"):
        return ""
    if tool_choice in ("required", "any"):
        return "You must answer with at least one tool call."
    if tool_choice not in {t.name for t in tools}:
        raise InvalidParameterError(
            f"tool_choice {tool_choice!r} names no bound tool; bound tools: "
            f"{', '.join(t.name for t in tools) or '(none)'}")
    return f"You must call the tool `{tool_choice}`."


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
            if self.mode == "native":
                plan = self._plan_native(state, system, rest, tools, enable_thinking, base)
            else:
                plan = self._plan_rendered(state, system, rest, tools, enable_thinking, base)
            plan.parser_kwargs = parser_kwargs
            plan.epoch = state.epoch
            if self.model.capabilities.kv_cache_size:
                # last before the run: the size it starts from and, when the plan reuses the
                # cache, a check that it still holds what this engine recorded
                plan.setup.append(ReadKVCacheSize(plan.reused_tokens if plan.reused else None))
            state.valid = False  # until this run records what the cache then holds
            if not self._stateful:  # 1.1 keeps no history: every call sends everything
                plan.record = _forget
            return plan

    def _plan_native(self, state: _CacheState, system: str | None, rest: list[ChatMessage],
                     tools: list[ToolSpec], enable_thinking: bool,
                     base: dict[str, Any]) -> _Plan:
        history, inputs = _trailing_inputs(rest)
        can_set_tools = self.model.capabilities.function_tools
        tools_json = json.dumps([t.to_openai() for t in tools], ensure_ascii=False)
        key = ("native", system, tools_json)
        reused = (state.valid and state.key == key and len(state.turns) == len(history)
                  and all(a.same_turn(b) for a, b in zip(state.turns, history, strict=True)))
        steps: list[RunSetup] = []
        fold_system = ""
        if not reused:
            setup = (system, tools_json)
            if can_set_tools and (system is not None or tools or state.setup is not None):
                if state.setup != setup:
                    steps.append(SetFunctionTools(system or "", tools_json, TOOL_RESPONSE))
                    state.setup = setup
            elif system is not None or tools:
                # no runtime call for a system prompt: write it (and the tools) into the turn
                parts = [system or ""] + ([hermes_tool_instructions(tools)] if tools else [])
                fold_system = "\n\n".join(p for p in parts if p)
            if self._stateful:
                steps.append(ClearKVCache())
        if reused:
            role = inputs[0].role
            text = _tool_results_text(inputs) if role == "tool" else inputs[0].content
        elif history or fold_system:
            role = "user"
            parts = [fold_system] if fold_system else []
            if history:
                parts.append("Earlier in this conversation:\n" + _transcript(history))
            if inputs[0].role == "tool":
                parts.append("Tool results:\n" + _tool_results_text(inputs))
            else:
                parts.append(inputs[0].content if not history
                             else "Now the user says: " + inputs[0].content)
            text = "\n\n".join(parts)
        else:
            role = inputs[0].role
            text = _tool_results_text(inputs) if role == "tool" else inputs[0].content
        if role == "tool" and not self.model.capabilities.function_tools:
            role, text = "user", "Tool results:\n" + text
        images = inputs[0].images if inputs[0].role == "user" else ()
        run_kwargs = dict(base, prompt=text, role=role, enable_thinking=enable_thinking)
        if images:
            run_kwargs["image"] = self._image_input(images)
        reused_tokens = (state.size or 0) if reused else 0
        turns_before = tuple(rest)

        def record(state: _CacheState, _ids: list[int], reply: ChatMessage | None,
                   _raw: str) -> None:
            if reply is None:
                state.valid = False
                return
            state.key = key
            state.turns = (*turns_before, reply)
            state.valid = True

        return _Plan(run_kwargs, steps, 0, reused, reused_tokens, record, {})

    def _image_input(self, images: Sequence[Any]) -> Any:
        import numpy as np

        from rkllm_core.model import ImageInput

        arrays = [np.asarray(i, dtype=np.float32) for i in images]
        return ImageInput(np.concatenate(arrays, axis=0), n_images=len(arrays),
                          n_image_tokens=arrays[0].shape[0])

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

    def _plan_rendered(self, state: _CacheState, system: str | None, rest: list[ChatMessage],
                       tools: list[ToolSpec], enable_thinking: bool,
                       base: dict[str, Any]) -> _Plan:
        _trailing_inputs(rest)  # validates the last message
        messages = ([ChatMessage.system(system)] if system is not None else []) + rest
        text = self.render(messages, tools, enable_thinking)
        setup: list[RunSetup] = []
        key: tuple[Any, ...] = (self.mode,)
        same_setup = state.valid and state.key == key
        if self.mode == "tokens":
            assert self._tokenizer is not None
            cached = state.tokens if same_setup else []
            if cached and state.text and text.startswith(state.text):
                # the conversation extends what the cache holds: keep the model's own reply
                # tokens (re-tokenizing its text may split it differently) and add the rest
                ids = cached + list(self._tokenizer.encode(text[len(state.text):],
                                                           parse_special=True))
            else:
                ids = list(self._tokenizer.encode(text, parse_special=True))
            common = 0
            for a, b in zip(cached, ids, strict=False):
                if a != b:
                    break
                common += 1
            if common == len(ids):  # nothing new: recompute the last token for its logits
                common -= 1
            can_cut = self.model.capabilities.kv_cache_size
            if common < len(cached) and not (can_cut and common > 0):
                common = 0
            if common == 0 and self._stateful:
                setup.append(ClearKVCache())
            elif 0 < common < len(cached):
                setup.append(ClearKVCache(start=common, end=len(cached)))
            run_kwargs = dict(base, tokens=ids[common:])
            reused, reused_tokens = common > 0, common
            sent: int | None = len(ids) - common

            def record(state: _CacheState, generated: list[int], reply: ChatMessage | None,
                       raw: str) -> None:
                state.key = key
                state.tokens = ids + [t for t in generated if t >= 0]
                state.text = text + raw
                state.valid = True
        else:
            cached_text = state.text if same_setup else ""
            if cached_text and text.startswith(cached_text) and len(text) > len(cached_text):
                new_text, reused, reused_tokens = text[len(cached_text):], True, state.size or 0
            else:
                new_text, reused, reused_tokens = text, False, 0
                if state.setup != ("raw",) and self.model.capabilities.chat_template:
                    setup.append(SetChatTemplate("", "", ""))
                    state.setup = ("raw",)
                if self._stateful:
                    setup.append(ClearKVCache())
            # thinking is in the rendered text; the runtime's flag is off after
            # rkllm_set_chat_template anyway (and absent before 1.2.1)
            run_kwargs = dict(base, prompt=new_text, role="user")
            sent = None

            def record(state: _CacheState, generated: list[int], reply: ChatMessage | None,
                       raw: str) -> None:
                if reply is None:
                    state.valid = False
                    return
                state.key = key
                state.text = text + raw
                state.valid = True
        return _Plan(run_kwargs, setup, 0, reused, reused_tokens, record, {}, sent)

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


async def _consume(stream: AsyncChatStream, on_chunk: Callable[[ChatChunk], Any] | None) -> None:
    async for chunk in stream:
        if on_chunk is not None:
            value = on_chunk(chunk)
            if inspect.isawaitable(value):
                await value


class _ChatStreamBase:
    def __init__(self, engine: ChatEngine, start: Callable[[], tuple[_Plan, Any]]) -> None:
        self._engine = engine
        self._start = start
        self._plan, self._text = start()
        self._parser = OutputParser(**self._plan.parser_kwargs)
        self._result: ChatResult | None = None

    def _replay(self) -> None:
        """The cache was not what the engine recorded: forget it and start the turn again."""
        logger.info("the KV cache changed behind the chat engine; replaying the conversation")
        self._engine.reset()
        self._plan, self._text = self._start()
        self._parser = OutputParser(**self._plan.parser_kwargs)

    @property
    def result(self) -> ChatResult:
        """The finished turn; available once the stream was iterated to its end."""
        if self._result is None:
            raise RKLLMError("the turn has not finished: iterate the stream to its end first")
        return self._result

    def _chunk(self, piece: Any) -> ChatChunk | None:
        delta = self._parser.feed(piece.text)
        if self._parser.stopped:
            self._text.abort()
        if not delta:
            return None
        return ChatChunk(delta.content, delta.reasoning, delta.tool_calls, piece.token_id)

    def _tail(self, generation: Any, error: BaseException | None) -> ChatChunk | None:
        delta = self._parser.finish()
        self._result = self._engine._finish(self._plan, self._parser, generation, error)
        if not delta:
            return None
        return ChatChunk(delta.content, delta.reasoning, delta.tool_calls, None)


class ChatStream(_ChatStreamBase):
    """Chunks of one assistant turn as the model produces them; ``result`` at the end.

    Leaving the loop early (``break``, an exception) aborts the run; the model stays usable and
    the next turn replays what the cache no longer holds.

    Example:
        >>> import tempfile, pathlib
        >>> from rkllm_core import RKLLM
        >>> from rkllm_core.chat import ChatEngine, ChatMessage
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi there."\\n')
        >>> with RKLLM(path, library="host", max_context_len=512) as llm:
        ...     stream = ChatEngine(llm).stream([ChatMessage.user("Hello")])
        ...     text = "".join(chunk.content for chunk in stream)
        >>> text == stream.result.message.content == "Hi there."
        True
    """

    def __iter__(self) -> Iterator[ChatChunk]:
        try:
            try:
                first = next(iter(self._text), None)
            except StaleKVCacheError:
                self._replay()
                first = next(iter(self._text), None)
            for piece in itertools.chain([first] if first is not None else [], self._text):
                chunk = self._chunk(piece)
                if chunk is not None:
                    yield chunk
                if self._parser.stopped:
                    break
        except BaseException as exc:
            self._text.abort()
            self._engine._finish(self._plan, self._parser, None, exc)
            raise
        if self._parser.stopped:
            self._text.close()  # the run was aborted at the stop sequence: wait for its end
        generation = self._text.result
        tail = self._tail(generation, None)
        if tail is not None:
            yield tail


class AsyncChatStream(_ChatStreamBase):
    """The asyncio twin of :class:`ChatStream`.

    Example:
        >>> import asyncio
        >>> import tempfile, pathlib
        >>> from rkllm_core import RKLLM
        >>> from rkllm_core.chat import ChatEngine, ChatMessage
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi there."\\n')
        >>> async def main() -> tuple[str, str]:
        ...     with RKLLM(path, library="host", max_context_len=512) as llm:
        ...         stream = ChatEngine(llm).astream([ChatMessage.user("Hello")])
        ...         text = "".join([chunk.content async for chunk in stream])
        ...         return text, stream.result.finish_reason
        >>> asyncio.run(main())
        ('Hi there.', 'stop')
    """

    async def _iterate(self) -> AsyncIterator[ChatChunk]:
        try:
            try:
                first = await anext(aiter(self._text), None)
            except StaleKVCacheError:
                self._replay()
                first = await anext(aiter(self._text), None)
            if first is not None:
                chunk = self._chunk(first)
                if chunk is not None:
                    yield chunk
            async for piece in self._text:
                if self._parser.stopped:
                    break
                chunk = self._chunk(piece)
                if chunk is not None:
                    yield chunk
                if self._parser.stopped:
                    break
            if self._parser.stopped:
                await self._text.aclose()
        except BaseException as exc:
            self._text.abort()
            self._engine._finish(self._plan, self._parser, None, exc)
            raise
        tail = self._tail(self._text.result, None)
        if tail is not None:
            yield tail

    def __aiter__(self) -> AsyncIterator[ChatChunk]:
        return self._iterate()


__all__ = ["AsyncChatStream", "ChatChunk", "ChatEngine", "ChatResult", "ChatStream",
           "ChatUsage", "ToolCall", "hermes_tool_instructions", "tool_choice_instruction"]
