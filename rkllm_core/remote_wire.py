"""The JSON of the backend routes (``/rkllm/v1/models/{model}/...``), for both ends: what
:class:`~rkllm_core.remote.RemoteRKLLM` sends and reads, and what ``rkllm serve`` reads and
sends. Plain data in, plain data out; no HTTP here (the client speaks it with httpx, the server
with FastAPI).

A run is one ``POST .../run`` whose body is :func:`encode_run`'s object; the answer streams
NDJSON lines: ``{"chunk": {"text", "token_id"}}`` per chunk, then ``{"result": {...}}`` (a
:class:`~rkllm_core.results.GenerationResult`) or ``{"error": {"type", "message",
"partial_text"}}`` (an :class:`~rkllm_core.errors.RKLLMError` by its class name, which the client
raises again). Setup steps travel tagged (``{"type": "ClearKVCache", ...}``); arrays as base64
of their little-endian bytes with dtype and shape. Nothing in a run names a file: a
``save_prompt_cache`` path is refused, a LoRA is named, never given by path.

Example:
    >>> from rkllm_core.backend import ClearKVCache, ReadKVCacheSize
    >>> from rkllm_core.remote_wire import decode_run, encode_run
    >>> body = encode_run("Hi", {"keep_history": True, "stop": ["User:"],
    ...                          "setup": [ClearKVCache(), ReadKVCacheSize(expected=12)]})
    >>> body["setup"][1]
    {'type': 'ReadKVCacheSize', 'expected': 12}
    >>> run = decode_run(body)
    >>> run.prompt, run.options["setup"][1], run.expected
    ('Hi', ReadKVCacheSize(expected=12), 12)
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from rkllm_core import errors
from rkllm_core.backend import (
    ClearKVCache,
    ReadKVCacheSize,
    RunSetup,
    SetChatTemplate,
    SetFunctionTools,
)
from rkllm_core.errors import (
    BusyError,
    InvalidParameterError,
    RemoteUnavailableError,
    RKLLMError,
    RunError,
    RuntimeCrashedError,
    RunTimeoutError,
)
from rkllm_core.params import ModelParams, SamplingParams
from rkllm_core.results import GenerationResult, ImageInput, RuntimeInfo, StreamChunk

if TYPE_CHECKING:
    from rkllm_core.abi import Capabilities

#: The request header naming a remote client: whoever ran last on a model owns its KV cache.
CLIENT_HEADER = "X-RKLLM-Client"
#: Where the backend routes live.
PREFIX = "/rkllm/v1/models"

_SETUP_KINDS: dict[str, type[RunSetup]] = {
    kind.__name__: kind
    for kind in (SetFunctionTools, SetChatTemplate, ClearKVCache, ReadKVCacheSize)
}
_ARRAY_KINDS = "fiu"


# -- arrays --------------------------------------------------------------------------------------

def encode_array(value: Any) -> dict[str, Any]:
    """A numeric array as ``{"dtype", "shape", "base64"}`` (little-endian bytes).

    Example:
        >>> import numpy as np
        >>> from rkllm_core.remote_wire import decode_array, encode_array
        >>> wire = encode_array(np.arange(6, dtype=np.float32).reshape(2, 3))
        >>> wire["dtype"], wire["shape"], decode_array(wire)[1].tolist()
        ('<f4', [2, 3], [3.0, 4.0, 5.0])
    """
    array = np.asarray(value)
    if array.dtype.kind not in _ARRAY_KINDS:
        raise InvalidParameterError(f"an array of dtype {array.dtype} cannot be sent: give real "
                                    "numbers (float32)")
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return {"dtype": little.dtype.str, "shape": list(little.shape),
            "base64": base64.b64encode(little.tobytes()).decode("ascii")}


def decode_array(value: Any) -> np.ndarray:
    """The array :func:`encode_array` encoded; :class:`InvalidParameterError` if it is not one.

    Example: see :func:`encode_array`.
    """
    try:
        dtype = np.dtype(str(value["dtype"]))
        shape = tuple(int(n) for n in value["shape"])
        raw = base64.b64decode(str(value["base64"]), validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidParameterError(f"not an encoded array ({{dtype, shape, base64}}): {exc}")\
            from None
    if dtype.kind not in _ARRAY_KINDS or dtype.itemsize > 8 or any(n < 0 for n in shape) or \
            len(raw) != math.prod(shape) * dtype.itemsize:
        raise InvalidParameterError(
            f"an encoded array of dtype {dtype} and shape {list(shape)} does not hold "
            f"{len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


# -- runs ------------------------------------------------------------------------------------------

def encode_setup(step: RunSetup) -> dict[str, Any]:
    """One setup step as tagged JSON (``{"type": <class name>, <its fields>}``).

    Example:
        >>> from rkllm_core.backend import SetChatTemplate
        >>> from rkllm_core.remote_wire import encode_setup
        >>> encode_setup(SetChatTemplate("", "", ""))
        {'type': 'SetChatTemplate', 'system': '', 'prefix': '', 'postfix': ''}
    """
    if type(step).__name__ not in _SETUP_KINDS:
        raise InvalidParameterError(
            f"setup steps are rkllm_core.backend's {', '.join(_SETUP_KINDS)}; got {step!r}")
    return {"type": type(step).__name__, **dataclasses.asdict(step)}


def decode_setup(value: Any) -> RunSetup:
    """The step :func:`encode_setup` encoded; :class:`InvalidParameterError` if it is not one.

    Example:
        >>> from rkllm_core.remote_wire import decode_setup
        >>> decode_setup({"type": "ClearKVCache", "start": 4, "end": 9})
        ClearKVCache(keep_system_prompt=False, start=4, end=9)
    """
    kind = _SETUP_KINDS.get(str(value.get("type"))) if isinstance(value, dict) else None
    if kind is None:
        raise InvalidParameterError(
            f"a setup step must be an object with type one of {', '.join(_SETUP_KINDS)}; "
            f"got {value!r}")
    fields = {k: v for k, v in value.items() if k != "type"}
    try:
        step: RunSetup = TypeAdapter(kind).validate_python(fields)
    except ValidationError as exc:
        raise InvalidParameterError(f"setup step {kind.__name__}: {_problems(exc)}") from None
    return step


def _encode_image(image: ImageInput) -> dict[str, Any]:
    fields = {f.name: getattr(image, f.name) for f in dataclasses.fields(image)}
    return {**fields, "embed": encode_array(image.embed)}


class _RunBody(BaseModel):
    """A run request as the server reads it (fields it does not know are ignored)."""

    model_config = ConfigDict(extra="ignore", arbitrary_types_allowed=True)

    prompt: str | None = None
    tokens: list[int] | None = None
    embeddings: dict[str, Any] | None = None
    image: dict[str, Any] | None = None
    role: str = "user"
    enable_thinking: bool = False
    keep_history: bool = False
    max_new_tokens: int | None = None
    sampling: SamplingParams | None = None
    lora: str | None = None
    save_prompt_cache: Any = None
    stop: list[str] | None = None
    setup: list[Any] = []
    timeout: float | None = None
    run_id: str | None = None


def encode_run(prompt: str | None, options: Mapping[str, Any],
               run_id: str | None = None) -> dict[str, Any]:
    """The body of ``POST .../run`` for ``stream(prompt, **options)``
    (:class:`~rkllm_core.backend.RunOptions`); refuses what cannot be sent (``save_prompt_cache``
    writes a file on the server; ``before`` hooks need the runtime's handle).

    Example:
        >>> from rkllm_core.params import SamplingParams
        >>> from rkllm_core.remote_wire import encode_run
        >>> encode_run(None, {"tokens": (1, 2), "sampling": SamplingParams(top_k=1)})["tokens"]
        [1, 2]
        >>> encode_run("Hi", {"save_prompt_cache": "/tmp/cache.bin"})
        Traceback (most recent call last):
        ...
        rkllm_core.errors.InvalidParameterError: save_prompt_cache= writes a file where ...
    """
    unknown = sorted(set(options) - set(_RunBody.model_fields))
    if "before" in unknown:
        raise InvalidParameterError(
            "before= hooks need the native handle, which lives on the server: use setup= steps "
            "(rkllm_core.backend) or an in-process RKLLM")
    if unknown:
        raise InvalidParameterError(f"unknown run options: {', '.join(unknown)}")
    if options.get("save_prompt_cache") is not None:
        raise InvalidParameterError(
            "save_prompt_cache= writes a file where the model runs, which a remote client may "
            "not do: save prompt caches on the server's machine with an in-process RKLLM")
    body: dict[str, Any] = {"prompt": prompt}
    for name, value in options.items():
        if value is None or name == "save_prompt_cache":
            continue
        if name == "tokens":
            value = [int(t) for t in value]
        elif name == "embeddings":
            value = encode_array(value)
        elif name == "image":
            value = _encode_image(value)
        elif name == "sampling":
            value = value.model_dump(mode="json")
        elif name == "stop":
            value = [value] if isinstance(value, str) else list(value)
        elif name == "setup":
            value = [encode_setup(step) for step in value]
        elif name == "lora" and not isinstance(value, str):
            raise InvalidParameterError(
                "lora= names an adapter the server's model has loaded (a str), not a file")
        body[name] = value
    if run_id is not None:
        body["run_id"] = run_id
    return body


@dataclass
class DecodedRun:
    """A run request as the server runs it: ``backend.astream(prompt, **options)``.

    ``expected`` is the KV-cache size the client's chat engine counted (its
    :class:`~rkllm_core.backend.ReadKVCacheSize`), when it reuses the cache.
    """

    prompt: str | None
    options: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    run_id: str | None = None
    expected: int | None = None


def decode_run(body: Any) -> DecodedRun:
    """What :func:`encode_run` sent, checked: :class:`InvalidParameterError` names what is
    wrong (a ``save_prompt_cache`` is refused: no path from a request reaches the filesystem).

    Example: see the module example.
    """
    if not isinstance(body, dict):
        raise InvalidParameterError("the run request must be a JSON object")
    try:
        run = _RunBody.model_validate(body)
    except ValidationError as exc:
        raise InvalidParameterError(f"invalid run request: {_problems(exc)}") from None
    if run.save_prompt_cache is not None:
        raise InvalidParameterError(
            "save_prompt_cache is not accepted over HTTP (it would write a file on the server); "
            "save prompt caches with an in-process RKLLM on the server's machine")
    if run.timeout is not None and not 0 < run.timeout < math.inf:
        raise InvalidParameterError(f"timeout must be a positive number of seconds, got "
                                    f"{run.timeout!r}")
    options: dict[str, Any] = {
        "role": run.role, "enable_thinking": run.enable_thinking,
        "keep_history": run.keep_history, "setup": [decode_setup(s) for s in run.setup]}
    for name in ("tokens", "max_new_tokens", "sampling", "lora", "stop"):
        value = getattr(run, name)
        if value is not None:
            options[name] = value
    if run.embeddings is not None:
        options["embeddings"] = decode_array(run.embeddings)
    if run.image is not None:
        image = dict(run.image)
        try:
            options["image"] = ImageInput(**{**image, "embed": decode_array(image.get("embed"))})
        except TypeError as exc:
            raise InvalidParameterError(f"invalid image: {exc}") from None
    expected = next((s.expected for s in options["setup"]
                     if isinstance(s, ReadKVCacheSize) and s.expected is not None), None)
    return DecodedRun(run.prompt, options, run.timeout, run.run_id, expected)


# -- results -------------------------------------------------------------------------------------

def encode_chunk(chunk: StreamChunk) -> dict[str, Any]:
    """One NDJSON line's object for a streamed chunk.

    Example:
        >>> from rkllm_core.results import StreamChunk
        >>> from rkllm_core.remote_wire import encode_chunk
        >>> encode_chunk(StreamChunk("Hi", 7))
        {'chunk': {'text': 'Hi', 'token_id': 7}}
    """
    return {"chunk": {"text": chunk.text, "token_id": chunk.token_id}}


def encode_result(result: GenerationResult) -> dict[str, Any]:
    """The last NDJSON line's object of a run that ended.

    Example:
        >>> from rkllm_core.results import GenerationResult, PerfStats
        >>> from rkllm_core.remote_wire import encode_result
        >>> line = encode_result(GenerationResult("Hi", [7], "stop", PerfStats(3, 1.0, 1, 2.0,
        ...                                                                    500.0, None)))
        >>> line["result"]["finish_reason"], line["result"]["perf"]["prefill_tokens"]
        ('stop', 3)
    """
    return {"result": dataclasses.asdict(result)}


_RESULT = TypeAdapter(GenerationResult)


def decode_line(line: str | bytes) -> StreamChunk | GenerationResult:
    """One NDJSON line of a run: a chunk or the result; an error line raises its error.

    Example:
        >>> from rkllm_core.remote_wire import decode_line
        >>> decode_line('{"chunk": {"text": "Hi", "token_id": 7}}')
        StreamChunk(text='Hi', token_id=7)
        >>> decode_line('{"error": {"type": "RunTimeoutError", "message": "too slow", '
        ...             '"partial_text": "Hi"}}')
        Traceback (most recent call last):
        ...
        rkllm_core.errors.RunTimeoutError: too slow
    """
    try:
        value = json.loads(line)
        if "chunk" in value:
            chunk = value["chunk"]
            token = chunk.get("token_id")
            return StreamChunk(str(chunk["text"]), None if token is None else int(token))
        if "result" in value:
            result: GenerationResult = _RESULT.validate_python(value["result"])
            return result
        error = value["error"]
    except (ValueError, TypeError, KeyError, AttributeError, ValidationError) as exc:
        raise RKLLMError(f"the server sent a line that is not part of a run: {exc}") from None
    raise decode_error(error)


# -- errors --------------------------------------------------------------------------------------

_WITH_PARTIAL_TEXT = (RunError, RunTimeoutError, RuntimeCrashedError, RemoteUnavailableError)
#: Every error class of rkllm_core.errors, by name; the server's own ones map by status.
_ERRORS: dict[str, type[RKLLMError]] = {
    name: value for name, value in vars(errors).items()
    if isinstance(value, type) and issubclass(value, RKLLMError)
}


def encode_error(error: BaseException) -> dict[str, Any]:
    """An error as ``{"type", "message", "partial_text"}``: its class name and what it says.

    Example:
        >>> from rkllm_core.errors import RunTimeoutError
        >>> from rkllm_core.remote_wire import encode_error
        >>> encode_error(RunTimeoutError("too slow", partial_text="Hi"))
        {'type': 'RunTimeoutError', 'message': 'too slow', 'partial_text': 'Hi'}
    """
    return {"type": type(error).__name__, "message": str(error) or type(error).__name__,
            "partial_text": str(getattr(error, "partial_text", "") or "")}


def decode_error(value: Any, status: int | None = None) -> RKLLMError:
    """The exception an error object names (:func:`encode_error`'s, or the OpenAI-shaped one
    the server's middleware answers with), with its ``partial_text``. A class this side does
    not know becomes the nearest one for ``status`` (404/400 :class:`InvalidParameterError`,
    429 :class:`~rkllm_core.errors.BusyError`), else :class:`~rkllm_core.errors.RKLLMError`.

    Example:
        >>> from rkllm_core.remote_wire import decode_error
        >>> error = decode_error({"type": "RuntimeCrashedError", "message": "gone",
        ...                       "partial_text": "Hel"})
        >>> type(error).__name__, error.partial_text
        ('RuntimeCrashedError', 'Hel')
        >>> type(decode_error({"type": "QueueFullError", "message": "full"}, 429)).__name__
        'BusyError'
    """
    if not isinstance(value, dict):
        value = {"message": str(value)}
    message = str(value.get("message") or "the server reported an error")
    partial = str(value.get("partial_text") or "")
    kind = _ERRORS.get(str(value.get("type")))
    if kind is None:
        kind = (InvalidParameterError if status in (400, 404, 413, 422) else
                BusyError if status == 429 else RKLLMError)
    if issubclass(kind, _WITH_PARTIAL_TEXT):
        return kind(message, partial_text=partial)
    return kind(message)


# -- model info -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelInfo:
    """What ``GET /rkllm/v1/models/{model}`` says of a served model.

    Example:
        >>> from rkllm_core.remote_wire import ModelInfo
        >>> ModelInfo.__dataclass_fields__.keys() >= {"id", "capabilities", "params"}
        True
    """

    id: str
    role: str
    runtime_info: RuntimeInfo
    capabilities: Capabilities
    params: ModelParams


def encode_model_info(model_id: str, role: str, runtime_info: RuntimeInfo,
                      capabilities: Capabilities, params: ModelParams) -> dict[str, Any]:
    """The answer of ``GET /rkllm/v1/models/{model}``.

    Example:
        >>> import pathlib, tempfile
        >>> from rkllm_core.abi import get_family
        >>> from rkllm_core.params import ModelParams
        >>> from rkllm_core.remote_wire import decode_model_info, encode_model_info
        >>> from rkllm_core.results import RuntimeInfo
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.rkllm"
        >>> _ = path.write_bytes(b"x")
        >>> info = RuntimeInfo("host", "1.3.0", "1.3.0", "asked", True, "HOST", None, None,
        ...                    None, 4096)
        >>> wire = encode_model_info("m", "chat", info, get_family("1.3.0").capabilities,
        ...                          ModelParams(model_path=path, top_k=1))
        >>> back = decode_model_info(wire)
        >>> back.params.top_k, back.capabilities.per_run_sampling, back.runtime_info.release
        (1, True, '1.3.0')
    """
    return {"id": model_id, "role": role, "runtime_info": dataclasses.asdict(runtime_info),
            "capabilities": dataclasses.asdict(capabilities),
            "params": params.model_dump(mode="json")}


def decode_model_info(value: Any) -> ModelInfo:
    """:func:`encode_model_info`'s answer read back. The parameters are not checked again (the
    model file is on the server's machine, not here).

    Example: see :func:`encode_model_info`.
    """
    from pathlib import Path

    from rkllm_core.abi import Capabilities

    params = dict(value["params"])
    params["model_path"] = Path(params["model_path"])
    known = {k: v for k, v in params.items() if k in ModelParams.model_fields}
    return ModelInfo(
        id=str(value["id"]), role=str(value.get("role", "chat")),
        runtime_info=TypeAdapter(RuntimeInfo).validate_python(value["runtime_info"]),
        capabilities=TypeAdapter(Capabilities).validate_python(value["capabilities"]),
        params=ModelParams.model_construct(**known))


def encode_texts(texts: str | Sequence[str]) -> list[str]:
    """``embed``'s texts as a JSON list (one text is a list of one, as RKLLM.embed takes it).

    Example:
        >>> from rkllm_core.remote_wire import encode_texts
        >>> encode_texts("a cat"), encode_texts(("a", "b"))
        (['a cat'], ['a', 'b'])
    """
    return [texts] if isinstance(texts, str) else [str(t) for t in texts]


def _problems(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                     for e in error.errors())


__all__ = [
    "CLIENT_HEADER",
    "PREFIX",
    "DecodedRun",
    "ModelInfo",
    "decode_array",
    "decode_error",
    "decode_line",
    "decode_model_info",
    "decode_run",
    "decode_setup",
    "encode_array",
    "encode_chunk",
    "encode_error",
    "encode_model_info",
    "encode_result",
    "encode_run",
    "encode_setup",
    "encode_texts",
]
