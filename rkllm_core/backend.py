"""What the chat layer asks a model to do on the runtime around a run, as plain data.

The chat engine never calls the runtime itself: before a turn it may need the function tools
set, the chat template replaced, the KV cache cleared or cut back, and its size checked. Each is
a small frozen dataclass here, passed as ``setup=[...]`` to ``stream`` / ``generate`` (and their
async twins). The model carries them out on its worker thread right before the run, with
nothing in between, so they pickle to a child process (:class:`~rkllm_core.IsolatedRKLLM`) as
well as they run in this one.

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

from dataclasses import dataclass

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
