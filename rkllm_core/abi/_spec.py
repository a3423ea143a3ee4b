"""What describes one ABI family: plain data, no behaviour.

Example:
    >>> from rkllm_core.abi import get_family
    >>> get_family("1.3.0").functions["rkllm_init"].argtypes[0].__name__
    'LP_c_void_p'
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: ``LLMHandle`` is ``void*`` in every release.
LLMHandle = ctypes.c_void_p


@dataclass(frozen=True)
class FunctionSpec:
    """One exported C function: its prototype as ctypes types, and what it does."""

    name: str
    restype: Any
    argtypes: tuple[Any, ...]
    doc: str


@dataclass(frozen=True)
class Capabilities:
    """What one runtime family can do, declared beside its structs: the model, its inputs and
    the chat layer ask these, never the family's name. Each flag says where the runtime has it.

    Example:
        >>> from rkllm_core.abi import get_family
        >>> get_family("1.3.0").capabilities.per_run_sampling
        True
        >>> get_family("1.2.3").capabilities.per_run_sampling
        False
        >>> from rkllm_core.abi import first_release_with
        >>> first_release_with("function_tools")
        '1.2.1'
    """

    keep_history: bool  # RKLLMInferParam.keep_history
    logits: bool  # RKLLM_INFER_GET_LOGITS
    embedding_flash: bool  # RKLLMExtendParam.embed_flash (embedding table in flash)
    chat_template: bool  # rkllm_set_chat_template
    kv_cache_clear: bool  # rkllm_clear_kv_cache
    kv_cache_size: bool  # rkllm_get_kv_cache_size
    kv_cache_ranges: bool  # rkllm_clear_kv_cache takes [start, end) position ranges
    function_tools: bool  # rkllm_set_function_tools, and RKLLMInput.role "tool"
    role_and_thinking: bool  # RKLLMInput.role and RKLLMInput.enable_thinking
    cross_attention: bool  # rkllm_set_cross_attn_params, RKLLMExtendParam.use_cross_attn
    batches: bool  # RKLLMExtendParam.n_batch: one run takes n_batch inputs
    perf_stats: bool  # RKLLMResult.perf: the runtime's own prefill/decode timings
    several_images: bool  # RKLLMMultiModalInput.n_image: several images per prompt
    per_run_sampling: bool  # RKLLMInferParam.sampling_params and max_new_tokens
    image_tags_per_input: bool  # image_start / image_end / image_content per input
    init_callbacks: bool  # rkllm_init takes RKLLMCallback (result, tokenizer, embedding)
    callback_releases_buffers: bool  # a result callback returning 2 frees logits/hidden states


@dataclass(frozen=True)
class AbiFamily:
    """The ctypes view of one runtime layout family (see ``abi.json``)."""

    key: str
    releases: tuple[str, ...]
    structs: Mapping[str, type[ctypes.Structure]]
    enums: Mapping[str, Mapping[str, int]]
    callbacks: Mapping[str, Any]
    functions: Mapping[str, FunctionSpec]
    capabilities: Capabilities

    @property
    def result_callback(self) -> Any:
        """The ``LLMResultCallback`` function-pointer type of this family."""
        return self.callbacks["LLMResultCallback"]

    @property
    def callback_returns_int(self) -> bool:
        """True from 1.2.1 on: the result callback returns 0 (go on), 1 (pause) or 2 (release)."""
        return self.result_callback._restype_ is ctypes.c_int

    def struct(self, name: str) -> type[ctypes.Structure]:
        """The struct class called ``name`` in this family's header."""
        return self.structs[name]

    def has(self, function: str) -> bool:
        """Whether this family exports ``function``."""
        return function in self.functions


def functions(
    *specs: FunctionSpec, base: Mapping[str, FunctionSpec] | None = None, drop: tuple[str, ...] = ()
) -> dict[str, FunctionSpec]:
    """A function table: ``base`` without ``drop``, then ``specs`` added or replacing."""
    table = {k: v for k, v in (base or {}).items() if k not in drop}
    for spec in specs:
        table[spec.name] = spec
    return table
