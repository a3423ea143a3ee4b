"""Runtime 1.2.0: ``n_keep``, CPU options, ``keep_history``, logits mode, KV-cache, templates.

Example:
    >>> from rkllm_core.abi import v1_2_0
    >>> "rkllm_set_chat_template" in v1_2_0.FAMILY.functions
    True
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, c_bool, c_char_p, c_float, c_int, c_int8, c_int32, c_uint8, c_uint32
from dataclasses import replace
from typing import Any

from rkllm_core.abi import v1_1
from rkllm_core.abi._spec import AbiFamily, FunctionSpec, LLMHandle, functions
from rkllm_core.abi.enums import LLMCallState, RKLLMInferMode, members
from rkllm_core.abi.v1_1 import (
    RKLLMInput,
    RKLLMLoraParam,
    RKLLMPromptCacheParam,
    RKLLMResultLastHiddenLayer,
)


class RKLLMExtendParam(ctypes.Structure):
    """Adds ``embed_flash`` and the CPU selection (``CPU0``-``CPU7`` bits) to 1.1's domain id."""

    _fields_ = [
        ("base_domain_id", c_int32),
        ("embed_flash", c_int8),
        ("enabled_cpus_num", c_int8),
        ("enabled_cpus_mask", c_uint32),
        ("reserved", c_uint8 * 106),
    ]


def param_fields(extend: type[ctypes.Structure], *, image_tags: bool) -> list[tuple[str, Any]]:
    """``RKLLMParam`` from 1.2.0 on; 1.3.0 moves the image tags into the input."""
    head: list[tuple[str, Any]] = [
        ("model_path", c_char_p),
        ("max_context_len", c_int32),
        ("max_new_tokens", c_int32),
        ("top_k", c_int32),
        ("n_keep", c_int32),
        *v1_1.sampling_fields(),
        ("skip_special_token", c_bool),
    ]
    if image_tags:
        return [
            *head,
            ("is_async", c_bool),
            ("img_start", c_char_p),
            ("img_end", c_char_p),
            ("img_content", c_char_p),
            ("extend_param", extend),
        ]
    return [*head, ("ignore_eos_token", c_bool), ("is_async", c_bool), ("extend_param", extend)]


class RKLLMParam(ctypes.Structure):
    """``rkllm_init``'s parameters."""

    _fields_ = param_fields(RKLLMExtendParam, image_tags=True)


class RKLLMInferParam(ctypes.Structure):
    """Per-run options; ``keep_history`` 1 keeps the conversation in the KV cache."""

    _fields_ = [*v1_1.RKLLMInferParam._fields_, ("keep_history", c_int)]


class RKLLMResultLogits(ctypes.Structure):
    """Logits, ``num_tokens x vocab_size`` float32; freed when the callback returns."""

    _fields_ = [("logits", POINTER(c_float)), ("vocab_size", c_int), ("num_tokens", c_int)]


class RKLLMResult(ctypes.Structure):
    """What one callback carries."""

    _fields_ = [*v1_1.RKLLMResult._fields_, ("logits", RKLLMResultLogits)]


LLMResultCallback = ctypes.CFUNCTYPE(None, POINTER(RKLLMResult), ctypes.c_void_p, c_int)

TEMPLATE = FunctionSpec(
    "rkllm_set_chat_template",
    c_int,
    (LLMHandle, c_char_p, c_char_p, c_char_p),
    "Replace the model's chat template; clears the KV cache and disables tools/thinking handling.",
)

CAPABILITIES = replace(
    v1_1.CAPABILITIES, keep_history=True, logits=True, embedding_flash=True, chat_template=True,
    kv_cache_clear=True,
)

FAMILY = AbiFamily(
    key="1.2.0",
    capabilities=CAPABILITIES,
    releases=("1.2.0",),
    structs={
        **v1_1.FAMILY.structs,
        "RKLLMExtendParam": RKLLMExtendParam,
        "RKLLMParam": RKLLMParam,
        "RKLLMInput": RKLLMInput,
        "RKLLMInferParam": RKLLMInferParam,
        "RKLLMResultLastHiddenLayer": RKLLMResultLastHiddenLayer,
        "RKLLMResultLogits": RKLLMResultLogits,
        "RKLLMResult": RKLLMResult,
        "RKLLMLoraParam": RKLLMLoraParam,
        "RKLLMPromptCacheParam": RKLLMPromptCacheParam,
    },
    enums={
        **v1_1.FAMILY.enums,
        "LLMCallState": members(LLMCallState, without=("RKLLM_RUN_GET_LAST_HIDDEN_LAYER",)),
        "RKLLMInferMode": members(RKLLMInferMode),
    },
    callbacks={"LLMResultCallback": LLMResultCallback},
    functions=functions(
        FunctionSpec(
            "rkllm_clear_kv_cache",
            c_int,
            (LLMHandle, c_int),
            "Clear the KV cache, optionally keeping the system prompt.",
        ),
        TEMPLATE,
        base=v1_1.core_functions(RKLLMParam, RKLLMInput, RKLLMInferParam, LLMResultCallback),
    ),
)
