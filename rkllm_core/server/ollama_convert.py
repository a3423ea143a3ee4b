"""Translation between Ollama's API (the ``ollama`` package's types) and the chat engine's terms,
for the Ollama routes of ``rkllm serve``: messages, tools, ``options``/``format``/``think`` in;
replies, timings and model descriptions out.

Example:
    >>> from rkllm_core.server.ollama_convert import chat_messages, describe_file
    >>> [m.role for m in chat_messages([{"role": "user", "content": "Hi"}])]
    ['user']
    >>> d = describe_file("/models/Qwen2.5-1.5B-Instruct_W8A8_RK3588.rkllm")
    >>> d.format, d.family, d.parameter_size, d.quantization_level
    ('rkllm', 'qwen2', '1.5B', 'W8A8')
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypedDict, TypeVar

from ollama._types import Message, ModelDetails, Options
from pydantic import BaseModel, TypeAdapter, ValidationError

from rkllm_core.chat import ChatMessage, ChatResult, ChatUsage, ToolCall, ToolSpec
from rkllm_core.errors import InvalidParameterError

logger = logging.getLogger("rkllm_core.server")

_T = TypeVar("_T")

#: ``options`` that map onto the run's sampling (the rest of Ollama's sampling has no twin).
_SAMPLING_OPTIONS = ("temperature", "top_k", "top_p", "repeat_penalty", "presence_penalty",
                     "frequency_penalty", "mirostat", "mirostat_tau", "mirostat_eta")
_THINK_LEVELS = ("high", "medium", "low")

# Ollama's family names (``general.architecture``), most specific first: a DeepSeek-R1 distill
# names its Qwen or Llama base, which is its architecture; SmolLM is a Llama.
_FAMILIES: tuple[tuple[str, str], ...] = (
    (r"qwen[-_ ]?3", "qwen3"), (r"qwen", "qwen2"), (r"smollm|llama|mistral|tinyllama", "llama"),
    (r"gemma[-_ ]?3", "gemma3"), (r"gemma[-_ ]?2", "gemma2"), (r"gemma", "gemma"),
    (r"phi[-_ ]?3", "phi3"), (r"phi", "phi2"), (r"minicpm", "minicpm"),
    (r"internlm", "internlm2"), (r"chatglm|glm", "chatglm"), (r"deepseek", "deepseek2"),
    (r"bge|bert|e5[-_]", "bert"),
)
_PARAMETER_SIZE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)([bm])(?![a-z0-9])", re.I)
_QUANTIZATION = re.compile(
    r"(?<![a-z0-9])(w\d+a\d+(?:[-_]g\d+)?|i?q\d+(?:_[a-z0-9]+)*|bf16|fp16|f16|f32)(?![a-z0-9])",
    re.I)


# -- requests ------------------------------------------------------------------------------------

def validated(kind: type[_T], value: Any, where: str) -> _T:
    """``value`` validated as ``kind`` (an ``ollama`` type, or a list of one), errors naming
    their place in the request (``messages.2.role: Field required``).

    Example:
        >>> from ollama._types import Options
        >>> from rkllm_core.server.ollama_convert import validated
        >>> validated(Options, {"temperature": 0.2, "unknown": 1}, "options").temperature
        0.2
        >>> validated(Options, {"top_k": "many"}, "options")
        Traceback (most recent call last):
        ...
        rkllm_core.errors.InvalidParameterError: invalid request: options.top_k: ...
    """
    try:
        return TypeAdapter(kind).validate_python(value)
    except ValidationError as exc:
        parts = [".".join([where, *(str(p) for p in e["loc"])]) + ": " + e["msg"]
                 for e in exc.errors()]
        raise InvalidParameterError("invalid request: " + "; ".join(parts)) from None


def text_only(where: str) -> InvalidParameterError:
    """The error for images sent to this text-only server.

    Example:
        >>> from rkllm_core.server.ollama_convert import text_only
        >>> "text models only" in str(text_only("messages.0"))
        True
    """
    return InvalidParameterError(
        f"{where}: images are not supported: rkllm serve answers with text models only; send "
        "the request without `images`")


def chat_messages(raw: Sequence[Any] | None) -> list[ChatMessage]:
    """Ollama's ``messages`` as the engine's messages: ``images`` refused (a text-only server),
    tool results (``role: tool`` with ``tool_name``), assistant turns with ``tool_calls`` whose
    arguments are objects (a JSON string of one is accepted too) and ``thinking``.

    Example:
        >>> from rkllm_core.server.ollama_convert import chat_messages
        >>> turns = chat_messages([
        ...     {"role": "user", "content": "Weather in Paris?"},
        ...     {"role": "assistant", "content": "", "tool_calls": [
        ...         {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        ...     {"role": "tool", "content": "sunny", "tool_name": "get_weather"}])
        >>> turns[1].tool_calls[0].arguments, turns[2].name
        ({'city': 'Paris'}, 'get_weather')
    """
    prepared: list[Any] = []
    for i, message in enumerate(raw or ()):
        if not isinstance(message, Mapping):
            prepared.append(message)  # validation below names the problem
            continue
        message = dict(message)
        if message.pop("images", None):
            raise text_only(f"messages.{i}")
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            message["tool_calls"] = [_object_arguments(c) for c in calls]
        prepared.append(message)
    out = []
    for m in validated(list[Message], prepared, "messages"):
        calls = [ToolCall(c.function.name, dict(c.function.arguments)) for c in m.tool_calls or ()]
        if m.role == "tool":
            out.append(ChatMessage.tool(m.content or "", name=m.tool_name))
        elif m.role == "assistant":
            out.append(ChatMessage.assistant(m.content or "", tool_calls=calls,
                                             reasoning=m.thinking or None))
        else:
            out.append(ChatMessage(m.role, m.content or ""))  # type: ignore[arg-type]
    return out


def _object_arguments(call: Any) -> Any:
    """A tool call whose ``function.arguments`` is a JSON string (OpenAI's way), as an object."""
    function = call.get("function") if isinstance(call, Mapping) else None
    if isinstance(function, Mapping) and isinstance(function.get("arguments"), str):
        try:
            arguments = json.loads(function["arguments"] or "{}")
        except json.JSONDecodeError:
            return call  # validation says arguments must be an object
        return {**call, "function": {**function, "arguments": arguments}}
    return call


def tool_specs(raw: Sequence[Any] | None) -> list[ToolSpec]:
    """The request's ``tools`` as the engine's tool specs, their JSON schemas kept whole (the
    ``ollama`` package's ``Tool`` type keeps only part of a schema).

    Example:
        >>> from rkllm_core.server.ollama_convert import tool_specs
        >>> [t.name for t in tool_specs([{"type": "function", "function": {
        ...     "name": "get_weather", "parameters": {"type": "object", "properties": {}}}}])]
        ['get_weather']
    """
    return [ToolSpec.from_openai(t) for t in raw or () if isinstance(t, Mapping)]


def thinking(think: bool | str | None) -> bool:
    """Ollama's ``think`` (true/false, or an effort ``"high"``/``"medium"``/``"low"``, which is
    thinking on: the runtime has no effort setting) as ``enable_thinking``.

    Example:
        >>> from rkllm_core.server.ollama_convert import thinking
        >>> thinking(None), thinking(True), thinking("low")
        (False, True, True)
    """
    if isinstance(think, str):
        if think.lower() not in _THINK_LEVELS:
            raise InvalidParameterError(
                f"think: {think!r} is not true, false, 'high', 'medium' or 'low'")
        return True
    return bool(think)


def turn_settings(options: Mapping[str, Any] | Options | None,
                  format: Any = None) -> dict[str, Any]:
    """``options`` and ``format`` as :class:`~rkllm_core.server.turns.TurnRequest` fields:
    ``sampling``, ``stop``, ``max_new_tokens`` (``num_predict``; -1, -2 and 0 mean no limit, as
    in Ollama), ``json_mode`` (``format: "json"``) and ``schema`` (a JSON schema object).

    ``seed`` is ignored (the runtime takes no seed per run), ``num_ctx`` too: the context is
    fixed when the model is loaded (``max_context_len``). Both only show in the debug log.

    Example:
        >>> from rkllm_core.server.ollama_convert import turn_settings
        >>> s = turn_settings({"temperature": 0, "num_predict": 8, "stop": ["\\n"], "seed": 1},
        ...                   format="json")
        >>> s["sampling"], s["max_new_tokens"], s["stop"], s["json_mode"]
        ({'temperature': 0.0}, 8, ['\\n'], True)
    """
    given = options if isinstance(options, Options) else validated(Options, options or {},
                                                                    "options")
    ignored = [name for name in ("seed", "num_ctx") if given.get(name) is not None]
    if ignored:
        logger.debug("ignoring options %s: the runtime has no per-request seed, and the "
                     "context is fixed when the model is loaded", ", ".join(ignored))
    sampling = {name: given.get(name) for name in _SAMPLING_OPTIONS
                if given.get(name) is not None}
    limit = given.num_predict
    settings: dict[str, Any] = {
        "sampling": sampling, "stop": list(given.stop or ()),
        "max_new_tokens": limit if limit is not None and limit > 0 else None,
        "json_mode": format == "json", "schema": None}
    if isinstance(format, Mapping):
        settings["schema"] = dict(format)
    elif format not in (None, "", "json"):
        raise InvalidParameterError(
            f"format: {format!r} is not 'json' or a JSON schema object")
    return settings


# -- responses -----------------------------------------------------------------------------------

def now() -> str:
    """The current time as Ollama writes ``created_at`` (RFC 3339, UTC).

    Example:
        >>> from rkllm_core.server.ollama_convert import now
        >>> now().endswith("Z")
        True
    """
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def done_reason(finish_reason: str) -> str:
    """A turn's finish reason as Ollama's ``done_reason`` (a tool call ends with ``stop``).

    Example:
        >>> from rkllm_core.server.ollama_convert import done_reason
        >>> done_reason("tool_calls"), done_reason("length")
        ('stop', 'length')
    """
    return "stop" if finish_reason == "tool_calls" else finish_reason


class Timings(TypedDict):
    """The counts and nanosecond timings that end an Ollama response (see :func:`timings`).

    Example:
        >>> from rkllm_core.server.ollama_convert import Timings
        >>> sorted(Timings.__annotations__)[:2]
        ['eval_count', 'eval_duration']
    """

    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int


def timings(usage: ChatUsage, arrived: float) -> Timings:
    """The nanosecond timings and token counts of a finished turn, as Ollama reports them.

    ``prompt_eval_count`` is the whole context the reply was computed on (what the KV cache
    already held plus what was prefilled now), as ``usage.prompt_tokens`` on the OpenAI routes;
    ``prompt_eval_duration`` is the time this turn's prefill took. ``load_duration`` is 0: the
    models are loaded when the server starts and stay loaded.

    Example:
        >>> import time
        >>> from rkllm_core.chat import ChatUsage
        >>> from rkllm_core.server.ollama_convert import timings
        >>> t = timings(ChatUsage(input_tokens=12, output_tokens=3, prefill_tokens=12,
        ...                       prefill_ms=4.0, decode_ms=9.5, tokens_per_second=315.0),
        ...             time.monotonic())
        >>> t["prompt_eval_count"], t["prompt_eval_duration"], t["eval_count"], t["eval_duration"]
        (12, 4000000, 3, 9500000)
    """
    return Timings(total_duration=int((time.monotonic() - arrived) * 1e9), load_duration=0,
                   prompt_eval_count=usage.input_tokens,
                   prompt_eval_duration=int(usage.prefill_ms * 1e6),
                   eval_count=usage.output_tokens, eval_duration=int(usage.decode_ms * 1e6))


def ollama_tool_calls(calls: Sequence[ToolCall]) -> list[Message.ToolCall] | None:
    """The engine's tool calls as Ollama's (arguments as objects); None when there are none.

    Example:
        >>> from rkllm_core.chat import ToolCall
        >>> from rkllm_core.server.ollama_convert import ollama_tool_calls
        >>> [c.function.arguments for c in ollama_tool_calls([ToolCall("f", {"x": 1})])]
        [{'x': 1}]
    """
    if not calls:
        return None
    return [Message.ToolCall(function=Message.ToolCall.Function(
        name=c.name, arguments=dict(c.arguments))) for c in calls]


def reply_message(result: ChatResult) -> Message:
    """The finished turn's assistant message: content, ``thinking`` and ``tool_calls``.

    Example:
        >>> from rkllm_core.chat import ChatMessage, ChatResult, ChatUsage
        >>> from rkllm_core.server.ollama_convert import reply_message
        >>> usage = ChatUsage(1, 1, 1, 0.0, 0.0, 0.0)
        >>> turn = ChatResult(ChatMessage.assistant("Hi", reasoning="greet"), [], "stop", usage,
        ...                   None, "native", False, "1.3.0")
        >>> m = reply_message(turn)
        >>> m.content, m.thinking, m.tool_calls
        ('Hi', 'greet', None)
    """
    message = result.message
    return Message(role="assistant", content=message.content,
                   thinking=message.reasoning or None,
                   tool_calls=ollama_tool_calls(message.tool_calls))


def dump(model: BaseModel) -> dict[str, Any]:
    """A response model as Ollama sends it: JSON values, no nulls, fields by their wire names.

    Example:
        >>> from ollama._types import StatusResponse
        >>> from rkllm_core.server.ollama_convert import dump
        >>> dump(StatusResponse(status="success"))
        {'status': 'success'}
    """
    data: dict[str, Any] = model.model_dump(mode="json", exclude_none=True, by_alias=True)
    return data


# -- models ----------------------------------------------------------------------------------------

def family_of(name: str) -> str | None:
    """The model family Ollama would report, guessed from a model's file name (None if the name
    does not say).

    Example:
        >>> from rkllm_core.server.ollama_convert import family_of
        >>> family_of("DeepSeek-R1-Distill-Qwen-1.5B_W8A8"), family_of("SmolLM2-135M"), \\
        ...     family_of("model")
        ('qwen2', 'llama', None)
    """
    lowered = name.lower()
    for pattern, family in _FAMILIES:
        if re.search(pattern, lowered):
            return family
    return None


def describe_file(path: str) -> ModelDetails:
    """Ollama's ``details`` of a model file: its format (``rkllm``, or ``gguf`` on the host
    runtime), family, parameter size and quantization where its name says them.

    Example:
        >>> from rkllm_core.server.ollama_convert import describe_file
        >>> d = describe_file("/m/SmolLM2-135M-Instruct.Q4_1.gguf")
        >>> d.format, d.family, d.parameter_size, d.quantization_level
        ('gguf', 'llama', '135M', 'Q4_1')
    """
    name = Path(path).name
    stem = Path(path).stem
    size = _PARAMETER_SIZE.search(stem)
    quantization = _QUANTIZATION.search(stem)
    family = family_of(stem)
    return ModelDetails(
        parent_model="", format="gguf" if name.lower().endswith(".gguf") else "rkllm",
        family=family, families=[family] if family else None,
        parameter_size=f"{size.group(1)}{size.group(2).upper()}" if size else None,
        quantization_level=quantization.group(1).upper() if quantization else None)


def file_facts(path: str) -> tuple[int, datetime, str]:
    """(size in bytes, modification time, digest) of a model file.

    The digest is the sha256 of the path, size and modification time, not of the content: a
    model is gigabytes, and listing models must stay instant. It changes when the file does.

    Example:
        >>> import tempfile, pathlib
        >>> from rkllm_core.server.ollama_convert import file_facts
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "m.rkllm"
        >>> _ = f.write_bytes(b"12345")
        >>> size, modified, digest = file_facts(str(f))
        >>> size, modified.tzinfo is not None, len(digest)
        (5, True, 64)
    """
    stat = os.stat(path)
    key = f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
    return (stat.st_size, datetime.fromtimestamp(stat.st_mtime, timezone.utc),
            hashlib.sha256(key).hexdigest())


__all__ = [
    "Timings",
    "chat_messages",
    "describe_file",
    "done_reason",
    "dump",
    "family_of",
    "file_facts",
    "now",
    "ollama_tool_calls",
    "reply_message",
    "text_only",
    "thinking",
    "timings",
    "tool_specs",
    "turn_settings",
    "validated",
]
