"""What a loaded model keeps between runs: RKLLM's KV-cache, LoRA, prompt-cache, chat-template,
function-tool and cross-attention calls (``_ModelStateMethods``).

Each call runs on the model's worker thread, queued behind the runs before it, so it never
changes the model under a run. The KV-cache, template and tool calls are the same
:mod:`rkllm_core.backend` steps that ``generate(..., setup=...)`` carries out right before a run.
:class:`~rkllm_core.model.RKLLM` inherits these methods.

Example:
    >>> import tempfile, pathlib
    >>> from rkllm_core import RKLLM
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hello."\\n')
    >>> with RKLLM(path, library="host", max_context_len=512) as llm:
    ...     llm.set_chat_template("You are terse.", "<user>", "</user>")
    ...     before = llm.kv_cache_size
    ...     reply = llm.generate("Hi", keep_history=True).text
    ...     before, reply, llm.kv_cache_size > before
    (0, 'Hello.', True)
"""

from __future__ import annotations

import ctypes
import json
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from rkllm_core.backend import ClearKVCache, ReadKVCacheSize, SetChatTemplate, SetFunctionTools
from rkllm_core.errors import InvalidParameterError
from rkllm_core.library import RuntimeLibrary
from rkllm_core.validation import (
    _is_number,
    _readable_file,
    check_return_code,
    check_text,
    require_capability,
)

if TYPE_CHECKING:
    from rkllm_core.inputs import RunBuilder
    from rkllm_core.worker import RunWorker


class _ModelStateMethods:
    """The calls of :class:`~rkllm_core.model.RKLLM` that change what the loaded model keeps
    between runs; RKLLM sets the attributes declared here."""

    lib: RuntimeLibrary
    _builder: RunBuilder
    _cross_attn_keep: list[Any]

    if TYPE_CHECKING:
        @property
        def _live(self) -> RunWorker: ...

    def load_lora(self, path: str | os.PathLike[str], name: str, scale: float = 1.0) -> None:
        """Load a LoRA adapter; select it per run with ``generate(..., lora=name)``.

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> d = pathlib.Path(tempfile.mkdtemp())
            >>> _ = (d / "m.scripted").write_text(
            ...     'RKLLM-SCRIPTED 1\\nwhen lora pirate reply "Arr!"\\ndefault reply "Hello."\\n')
            >>> _ = (d / "pirate.gguf").write_bytes(b"adapter")
            >>> with RKLLM(d / "m.scripted", library="host", max_context_len=512) as llm:
            ...     llm.load_lora(d / "pirate.gguf", "pirate")
            ...     llm.generate("Hi", lora="pirate").text
            'Arr!'
        """
        _readable_file(path, "LoRA adapter")
        check_text(name, "LoRA name")
        if not _is_number(scale) or not math.isfinite(scale):
            raise InvalidParameterError(f"LoRA scale must be a finite number, got {scale!r}")
        adapter = self.lib.family.struct("RKLLMLoraAdapter")(
            os.fsencode(path), name.encode(), scale)
        code = self._live.call(lambda h: self.lib.load_lora(h, ctypes.byref(adapter)),
                               "load_lora()")
        check_return_code(
            code, f"rkllm_load_lora({path})",
            "the adapter must be a LoRA exported for this model (.rkllm or GGUF LoRA)")

    def load_prompt_cache(self, path: str | os.PathLike[str]) -> None:
        """Load a prompt cache saved by ``generate(..., save_prompt_cache=path)``.

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> d = pathlib.Path(tempfile.mkdtemp())
            >>> _ = (d / "m.scripted").write_text('RKLLM-SCRIPTED 1\\n')
            >>> with RKLLM(d / "m.scripted", library="host", runtime_version="1.3.0",
            ...            max_context_len=512) as llm:
            ...     _ = llm.generate("Hello", save_prompt_cache=d / "cache.bin")
            ...     llm.load_prompt_cache(d / "cache.bin")
            ...     llm.release_prompt_cache()
        """
        _readable_file(path, "prompt cache")
        raw = os.fsencode(path)
        code = self._live.call(lambda h: self.lib.load_prompt_cache(h, raw),
                               "load_prompt_cache()")
        check_return_code(code, f"rkllm_load_prompt_cache({path})",
                          "the file must be a prompt cache saved by this model and runtime")

    def release_prompt_cache(self) -> None:
        """Drop the loaded prompt cache (do this before loading another one).

        Example: see :meth:`load_prompt_cache`.
        """
        code = self._live.call(self.lib.release_prompt_cache, "release_prompt_cache()")
        check_return_code(code, "rkllm_release_prompt_cache", "no prompt cache was loaded")

    def clear_kv_cache(self, keep_system_prompt: bool = False,
                       ranges: Sequence[tuple[int, int]] | tuple[int, int] | None = None) -> None:
        """Clear the KV cache (1.2.0+), keeping the system prompt if asked, or only the
        ``[start, end)`` position ``ranges`` (1.2.1+; one range per batch).

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\n')
            >>> with RKLLM(path, library="host", max_context_len=512) as llm:
            ...     _ = llm.generate("Hello", keep_history=True)
            ...     llm.clear_kv_cache()
            ...     llm.kv_cache_size
            0
        """
        if ranges is None:
            op = ClearKVCache(keep_system_prompt)
        else:
            pairs = [ranges] if isinstance(ranges, tuple) else list(ranges)
            if len(pairs) != 1 or len(pairs[0]) != 2:
                raise InvalidParameterError(
                    "ranges must be one (start, end) pair with 0 <= start < end")
            op = ClearKVCache(keep_system_prompt, pairs[0][0], pairs[0][1])
        self._live.call(self._builder.setup_call(op), "clear_kv_cache()")

    @property
    def kv_cache_size(self) -> int:
        """Positions currently in the KV cache (runtime 1.2.1+).

        Example: see :meth:`clear_kv_cache`.
        """
        size: int = self._live.call(self._builder.setup_call(ReadKVCacheSize()), "kv_cache_size")
        return size

    def set_chat_template(self, system: str, prefix: str, postfix: str) -> None:
        """Replace the model's chat template (1.2.0+). Clears the KV cache and switches off
        ``enable_thinking`` and tool handling; ``("", "", "")`` sends prompts raw.

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\n')
            >>> with RKLLM(path, library="host", max_context_len=512) as llm:
            ...     llm.set_chat_template("", "", "")
        """
        self._live.call(self._builder.setup_call(SetChatTemplate(system, prefix, postfix)),
                        "set_chat_template()")

    def set_function_tools(self, system: str, tools: Sequence[dict[str, Any]] | str,
                           tool_response_str: str = "tool_response") -> None:
        """Give the model's chat template a system prompt and tools (1.2.1+).

        ``tools`` is a list of OpenAI-style function dicts or their JSON. Needs the model's own
        template: do not combine with :meth:`set_chat_template`. Send tool results with
        ``generate(result_json, role="tool")``.

        Example:
            >>> import tempfile, pathlib
            >>> from rkllm_core import RKLLM
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\nwhen contains "weather" tools yes '
            ...                     'reply "<tool_call>get_weather</tool_call>"\\n')
            >>> tools = [{"type": "function", "function": {"name": "get_weather",
            ...           "parameters": {"type": "object", "properties": {}}}}]
            >>> with RKLLM(path, library="host", max_context_len=512) as llm:
            ...     llm.set_function_tools("You are helpful.", tools)
            ...     llm.generate("What is the weather?").text
            '<tool_call>get_weather</tool_call>'
        """
        if isinstance(tools, str):
            try:
                parsed = json.loads(tools)
            except json.JSONDecodeError as exc:
                raise InvalidParameterError(f"tools is not valid JSON: {exc}") from exc
        else:
            parsed = list(tools)
        if not isinstance(parsed, list) or not all(isinstance(t, dict) for t in parsed):
            raise InvalidParameterError("tools must be a JSON array of function objects")
        try:
            tools_json = json.dumps(parsed, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidParameterError(
                f"tools cannot be written as JSON ({exc}): use only dicts, lists, strings, "
                "numbers, booleans and None in the function schemas") from exc
        step = SetFunctionTools(system, tools_json, tool_response_str)
        self._live.call(self._builder.setup_call(step), "set_function_tools()")

    def set_cross_attn_params(self, encoder_k_cache: np.ndarray, encoder_v_cache: np.ndarray,
                              encoder_mask: np.ndarray, encoder_pos: np.ndarray) -> None:
        """Set encoder K/V caches for a cross-attention model (1.2.1+, ``use_cross_attn``).

        K is float32 ``[layers][tokens][kv_heads][head_dim]``, V
        ``[layers][kv_heads][head_dim][tokens]``, mask float32 ``[tokens]``, pos int32
        ``[tokens]``. The arrays are kept alive by this object until the next call.

        Example:
            >>> import numpy as np, tempfile, pathlib
            >>> from rkllm_core import RKLLM, ExtendParams
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
            >>> _ = path.write_text('RKLLM-SCRIPTED 1\\n')
            >>> with RKLLM(path, library="host", max_context_len=512,
            ...            extend=ExtendParams(use_cross_attn=True)) as llm:
            ...     kv = np.zeros((1, 2, 1, 4), dtype=np.float32)
            ...     llm.set_cross_attn_params(kv, kv, np.ones(2, np.float32), np.arange(2))
        """
        require_capability(self.lib, "cross_attention", "set_cross_attn_params()")
        k = np.ascontiguousarray(encoder_k_cache, dtype=np.float32)
        v = np.ascontiguousarray(encoder_v_cache, dtype=np.float32)
        mask = np.ascontiguousarray(encoder_mask, dtype=np.float32)
        pos = np.ascontiguousarray(encoder_pos, dtype=np.int32)
        n = int(pos.shape[0]) if pos.ndim == 1 else -1
        if n <= 0 or mask.shape != (n,) or k.size != v.size or k.size % n:
            raise InvalidParameterError(
                "encoder_pos and encoder_mask must be 1-D with one entry per encoder token, and "
                "the K and V caches the same size, a multiple of the token count")
        fp = ctypes.POINTER(ctypes.c_float)
        params = self.lib.family.struct("RKLLMCrossAttnParam")(
            k.ctypes.data_as(fp), v.ctypes.data_as(fp), mask.ctypes.data_as(fp),
            pos.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), n)
        code = self._live.call(lambda h: self.lib.set_cross_attn_params(h, ctypes.byref(params)),
                               "set_cross_attn_params()")
        check_return_code(code, "rkllm_set_cross_attn_params",
                          "the model must be loaded with ExtendParams(use_cross_attn=True)")
        self._cross_attn_keep = [k, v, mask, pos, params]  # the runtime may keep the pointers
