"""Where a model runs, seen from the chat layer and the adapters: the :class:`Backend` protocol,
and what they ask a model to do on the runtime around a run, as plain data.

Three backends implement the protocol: :class:`~rkllm_core.RKLLM` (the runtime in this
process), :class:`~rkllm_core.IsolatedRKLLM` (the runtime in a child process, so a crash costs a
restart) and :class:`~rkllm_core.RemoteRKLLM` (a model served by ``rkllm serve`` on another
machine, over HTTP). The chat engine never calls the runtime itself: before a turn it may need
the function tools set, the chat template replaced, the KV cache cleared or cut back, and its size
checked. Each is a small frozen dataclass here, passed as ``setup=[...]`` to ``stream`` /
``generate`` (and their async twins). The model carries them out on its worker thread right
before the run, with nothing in between, so they pickle to a child process as well as they run
in this one, and travel as JSON to a server.

Example:
    >>> import tempfile, pathlib
    >>> from rkllm_core import RKLLM
    >>> from rkllm_core.backend import ClearKVCache, ReadKVCacheSize
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi."\\n')
    >>> with RKLLM(path, library="host", max_context_len=512) as llm:
    ...     first = llm.generate("Hello", keep_history=True, setup=[ReadKVCacheSize()])
    ...     second = llm.generate("Again", keep_history=True, setup=[ReadKVCacheSize()])
    ...     fresh = llm.generate("Hello", setup=[ClearKVCache(), ReadKVCacheSize()])
    >>> first.kv_cache_size_before, second.kv_cache_size_before > 0, fresh.kv_cache_size_before
    (0, True, 0)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict

from typing_extensions import Unpack

if TYPE_CHECKING:
    import os

    import numpy as np

    from rkllm_core.abi import Capabilities
    from rkllm_core.isolated import IsolatedRKLLM
    from rkllm_core.model import RKLLM, GenerationResult, ImageInput, RuntimeInfo, StreamChunk
    from rkllm_core.params import SamplingParams
    from rkllm_core.remote import RemoteRKLLM

#: How far the runtime's KV size may differ from what a caller counted (an end token or two).
KV_SIZE_SLACK = 2


@dataclass(frozen=True)
class SetFunctionTools:
    """``rkllm_set_function_tools``: the system prompt and the tools (OpenAI-style JSON list).

    Example:
        >>> from rkllm_core.backend import SetFunctionTools
        >>> SetFunctionTools("You are terse.", "[]", "tool_response").tools_json
        '[]'
    """

    system: str
    tools_json: str
    tool_response: str


@dataclass(frozen=True)
class SetChatTemplate:
    """``rkllm_set_chat_template``: ``("", "", "")`` makes the runtime take prompts as written.

    Example:
        >>> from rkllm_core.backend import SetChatTemplate
        >>> SetChatTemplate("", "", "").prefix
        ''
    """

    system: str
    prefix: str
    postfix: str


@dataclass(frozen=True)
class ClearKVCache:
    """``rkllm_clear_kv_cache``: all of it, or only positions ``[start, end)`` (1.2.1+).

    Example:
        >>> from rkllm_core.backend import ClearKVCache
        >>> ClearKVCache(start=10, end=42).start
        10
    """

    keep_system_prompt: bool = False
    start: int | None = None
    end: int | None = None


@dataclass(frozen=True)
class ReadKVCacheSize:
    """Read the KV-cache size the run starts from (1.2.1+) into the result's
    ``kv_cache_size_before``; with ``expected``, first check the cache still holds that many
    positions (within :data:`KV_SIZE_SLACK`), or that the runtime trimmed it itself at the
    context limit, else raise :class:`~rkllm_core.errors.StaleKVCacheError` and do not run.

    Example:
        >>> from rkllm_core.backend import ReadKVCacheSize, kv_cache_holds
        >>> ReadKVCacheSize(expected=120).expected
        120
        >>> kv_cache_holds(observed=121, expected=120, context_limit=512)
        True
    """

    expected: int | None = None


RunSetup = SetFunctionTools | SetChatTemplate | ClearKVCache | ReadKVCacheSize


def kv_cache_holds(observed: int, expected: int, context_limit: int) -> bool:
    """Whether a KV cache of ``observed`` positions still holds a conversation counted at
    ``expected``: the same size within :data:`KV_SIZE_SLACK`, or smaller because the runtime
    trimmed a conversation that outgrew the context (it drops older positions and keeps going).

    Example:
        >>> from rkllm_core.backend import kv_cache_holds
        >>> kv_cache_holds(0, 120, 512), kv_cache_holds(300, 511, 512)
        (False, True)
    """
    trimmed = expected >= context_limit - KV_SIZE_SLACK and 0 < observed < expected
    return trimmed or abs(observed - expected) <= KV_SIZE_SLACK


class RunOptions(TypedDict, total=False):
    """The options of one run, declared once for every backend (``**options:
    Unpack[RunOptions]``); :meth:`RKLLM.generate <rkllm_core.RKLLM.generate>` says what each
    does.

    Example:
        >>> from rkllm_core.backend import RunOptions
        >>> options: RunOptions = {"max_new_tokens": 64, "stop": ["\\nUser:"]}
        >>> sorted(options)
        ['max_new_tokens', 'stop']
    """

    role: str
    enable_thinking: bool
    tokens: Sequence[int] | None
    embeddings: np.ndarray | None
    image: ImageInput | None
    keep_history: bool
    max_new_tokens: int | None
    sampling: SamplingParams | None
    lora: str | None
    save_prompt_cache: str | os.PathLike[str] | None
    stop: Sequence[str] | None
    setup: Sequence[RunSetup]
    timeout: float | None


class EmbedOptions(TypedDict, total=False):
    """The options of :meth:`RKLLM.embed <rkllm_core.RKLLM.embed>`, for every backend.

    Example:
        >>> from rkllm_core.backend import EmbedOptions
        >>> options: EmbedOptions = {"pooling": "last", "normalize": True}
        >>> options["pooling"]
        'last'
    """

    pooling: Literal["mean", "last"]
    normalize: bool
    instruction: str | None
    timeout: float | None


class RerankOptions(TypedDict, total=False):
    """The options of :meth:`RKLLM.rerank <rkllm_core.RKLLM.rerank>`, for every backend.

    Example:
        >>> from rkllm_core.backend import RerankOptions
        >>> options: RerankOptions = {"yes_token_id": 9693, "no_token_id": 2152}
        >>> options["yes_token_id"]
        9693
    """

    instruction: str | None
    yes_token_id: int | None
    no_token_id: int | None
    tokenizer: Any
    timeout: float | None


class _TextStream(Protocol):
    """A run's chunks; ``result`` once iterated to its end; ``abort`` / ``close`` end it early."""

    def __iter__(self) -> Iterator[StreamChunk]: ...
    @property
    def result(self) -> GenerationResult: ...
    def abort(self) -> None: ...
    def close(self) -> None: ...


class _AsyncTextStream(Protocol):
    def __aiter__(self) -> AsyncIterator[StreamChunk]: ...
    @property
    def result(self) -> GenerationResult: ...
    def abort(self) -> None: ...
    async def aclose(self) -> None: ...


class Backend(Protocol):
    """What the chat engine and the adapters need from a loaded model, wherever it runs.

    ``stream`` / ``generate`` and their async twins take the run options of
    :meth:`RKLLM.generate <rkllm_core.RKLLM.generate>` (``role``, ``enable_thinking``,
    ``tokens``, ``keep_history``, ``max_new_tokens``, ``sampling``, ``stop``, ``setup``,
    ``timeout``...); ``embed`` / ``rerank`` and their async twins those of
    :meth:`RKLLM.embed <rkllm_core.RKLLM.embed>` and :meth:`RKLLM.rerank
    <rkllm_core.RKLLM.rerank>`.

    A static protocol (mypy checks the three backends against it); ask ``is_backend`` at run
    time.

    Example:
        >>> import tempfile, pathlib
        >>> from rkllm_core import IsolatedRKLLM, RKLLM
        >>> from rkllm_core.backend import Backend, is_backend
        >>> from rkllm_core.chat import ChatEngine, ChatMessage
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi."\\n')
        >>> def ask(model: Backend) -> str:
        ...     return ChatEngine(model).generate([ChatMessage.user("Hello")]).message.content
        >>> with RKLLM(path, library="host", max_context_len=512) as here, \\
        ...         IsolatedRKLLM(path, library="host", max_context_len=512) as there:
        ...     [(is_backend(m), ask(m)) for m in (here, there)]
        [(True, 'Hi.'), (True, 'Hi.')]
    """

    @property
    def capabilities(self) -> Capabilities: ...
    @property
    def runtime_info(self) -> RuntimeInfo: ...
    @property
    def params(self) -> Any: ...
    @property
    def closed(self) -> bool: ...
    @property
    def kv_cache_size(self) -> int: ...

    def stream(self, prompt: str | None = None,
               **options: Unpack[RunOptions]) -> _TextStream: ...
    def astream(self, prompt: str | None = None,
                **options: Unpack[RunOptions]) -> _AsyncTextStream: ...
    def generate(self, prompt: str | None = None,
                 **options: Unpack[RunOptions]) -> GenerationResult: ...
    async def agenerate(self, prompt: str | None = None,
                        **options: Unpack[RunOptions]) -> GenerationResult: ...
    def embed(self, texts: str | Sequence[str], **options: Unpack[EmbedOptions]) -> Any: ...
    async def aembed(self, texts: str | Sequence[str],
                     **options: Unpack[EmbedOptions]) -> Any: ...
    def rerank(self, query: str, documents: Sequence[str],
               **options: Unpack[RerankOptions]) -> list[float]: ...
    async def arerank(self, query: str, documents: Sequence[str],
                      **options: Unpack[RerankOptions]) -> list[float]: ...
    def clear_kv_cache(self, keep_system_prompt: bool = False, ranges: Any = None) -> None: ...
    def abort(self) -> bool: ...
    def close(self) -> None: ...


def _conforms(here: RKLLM, there: IsolatedRKLLM, remote: RemoteRKLLM) -> list[Backend]:
    """Never called: mypy checks here that the three backends implement the protocol."""
    first: Backend = here
    second: Backend = there
    third: Backend = remote
    return [first, second, third]


def is_backend(value: object) -> bool:
    """Whether ``value`` is one of rkllm-py's backends (without touching the model: a runtime
    protocol check would read every property, loading or querying it).

    Example:
        >>> from rkllm_core.backend import is_backend
        >>> is_backend("model.rkllm")
        False
    """
    import sys

    # not imported here: only an imported rkllm_core.remote can have made one (and it needs httpx)
    remote = sys.modules.get("rkllm_core.remote")
    if remote is not None and isinstance(value, remote.RemoteRKLLM):
        return True
    from rkllm_core.isolated import IsolatedRKLLM
    from rkllm_core.model import RKLLM

    return isinstance(value, (RKLLM, IsolatedRKLLM))
