"""Runtime 1.2.1 and 1.2.2: ``role``/``enable_thinking``, batches, perf stats, tools, int callback.

Example:
    >>> from rkllm_core.abi import v1_2_1
    >>> v1_2_1.FAMILY.callback_returns_int
    True
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, c_bool, c_char_p, c_float, c_int, c_int8, c_int32, c_size_t, c_uint8
from dataclasses import replace
from typing import Any

from rkllm_core.abi import v1_1, v1_2_0
from rkllm_core.abi._spec import AbiFamily, FunctionSpec, LLMHandle, functions
from rkllm_core.abi.v1_1 import RKLLMEmbedInput, RKLLMTokenInput


class RKLLMExtendParam(ctypes.Structure):
    """Adds ``n_batch`` (1-8 recommended) and ``use_cross_attn``."""

    _fields_ = [
        *v1_2_0.RKLLMExtendParam._fields_[:4],
        ("n_batch", c_uint8),
        ("use_cross_attn", c_int8),
        ("reserved", c_uint8 * 104),
    ]


class RKLLMParam(ctypes.Structure):
    """``rkllm_init``'s parameters."""

    _fields_ = v1_2_0.param_fields(RKLLMExtendParam, image_tags=True)


class RKLLMMultiModelInput(ctypes.Structure):
    """Multimodal input with image count and encoder size (misspelt as in the 1.2.1 header)."""

    _fields_ = [
        *v1_1.RKLLMMultiModelInput._fields_,
        ("n_image", c_size_t),
        ("image_width", c_size_t),
        ("image_height", c_size_t),
    ]


def input_fields(multimodal: type[ctypes.Structure]) -> list[tuple[str, Any]]:
    """``RKLLMInput`` from 1.2.1 on: ``role`` and ``enable_thinking`` before the union."""
    return [
        ("role", c_char_p),
        ("enable_thinking", c_bool),
        ("input_type", c_int),
        ("_u", v1_1.input_union(multimodal)),
    ]


class RKLLMInput(ctypes.Structure):
    """One run's input (an array of ``n_batch`` of them for batched models)."""

    _anonymous_ = ("_u",)
    _fields_ = input_fields(RKLLMMultiModelInput)


class RKLLMCrossAttnParam(ctypes.Structure):
    """Encoder K/V caches for cross-attention models."""

    _fields_ = [
        ("encoder_k_cache", POINTER(c_float)),
        ("encoder_v_cache", POINTER(c_float)),
        ("encoder_mask", POINTER(c_float)),
        ("encoder_pos", POINTER(c_int32)),
        ("num_tokens", c_int),
    ]


class RKLLMPerfStat(ctypes.Structure):
    """Timings, filled only in the ``RKLLM_RUN_FINISH`` callback."""

    _fields_ = [
        ("prefill_time_ms", c_float),
        ("prefill_tokens", c_int),
        ("generate_time_ms", c_float),
        ("generate_tokens", c_int),
        ("memory_usage_mb", c_float),
    ]


class RKLLMResult(ctypes.Structure):
    """What one callback carries (an array of ``n_batch`` of them)."""

    _fields_ = [*v1_2_0.RKLLMResult._fields_, ("perf", RKLLMPerfStat)]


#: From 1.2.1 the callback returns int: 0 go on, 1 pause (2 release buffers, 1.3.0).
LLMResultCallback = ctypes.CFUNCTYPE(c_int, POINTER(RKLLMResult), ctypes.c_void_p, c_int)


def kv_and_tools_functions() -> dict[str, FunctionSpec]:
    """The five functions 1.2.1 adds or changes; 1.3.0 keeps them."""
    int_p = POINTER(c_int)
    return functions(
        FunctionSpec(
            "rkllm_clear_kv_cache",
            c_int,
            (LLMHandle, c_int, int_p, int_p),
            "Clear the KV cache, or per-batch [start, end) ranges.",
        ),
        FunctionSpec(
            "rkllm_get_kv_cache_size",
            c_int,
            (LLMHandle, int_p),
            "Write each batch's KV-cache length into an n_batch int array.",
        ),
        v1_2_0.TEMPLATE,
        FunctionSpec(
            "rkllm_set_function_tools",
            c_int,
            (LLMHandle, c_char_p, c_char_p, c_char_p),
            "Give the model's chat template a system prompt and tools (JSON).",
        ),
        FunctionSpec(
            "rkllm_set_cross_attn_params",
            c_int,
            (LLMHandle, POINTER(RKLLMCrossAttnParam)),
            "Set encoder K/V caches for cross attention.",
        ),
    )


CAPABILITIES = replace(
    v1_2_0.CAPABILITIES, kv_cache_size=True, kv_cache_ranges=True, function_tools=True,
    role_and_thinking=True, cross_attention=True, batches=True, perf_stats=True,
    several_images=True,
)

FAMILY = AbiFamily(
    key="1.2.1",
    capabilities=CAPABILITIES,
    releases=("1.2.1", "1.2.2"),
    structs={
        **v1_2_0.FAMILY.structs,
        "RKLLMExtendParam": RKLLMExtendParam,
        "RKLLMParam": RKLLMParam,
        "RKLLMEmbedInput": RKLLMEmbedInput,
        "RKLLMTokenInput": RKLLMTokenInput,
        "RKLLMMultiModelInput": RKLLMMultiModelInput,
        "RKLLMInput": RKLLMInput,
        "RKLLMCrossAttnParam": RKLLMCrossAttnParam,
        "RKLLMPerfStat": RKLLMPerfStat,
        "RKLLMResult": RKLLMResult,
    },
    enums=v1_2_0.FAMILY.enums,
    callbacks={"LLMResultCallback": LLMResultCallback},
    functions={
        **v1_1.core_functions(RKLLMParam, RKLLMInput, v1_2_0.RKLLMInferParam, LLMResultCallback),
        **kv_and_tools_functions(),
    },
)
