"""Runtime 1.1.0-1.1.4: the first layout family; later families import what they keep.

Example:
    >>> import ctypes
    >>> from rkllm_core.abi import v1_1
    >>> ctypes.sizeof(v1_1.RKLLMResult) == (32 if ctypes.sizeof(ctypes.c_void_p) == 8 else 20)
    True
"""

from __future__ import annotations

import ctypes
from ctypes import (
    CFUNCTYPE,
    POINTER,
    c_bool,
    c_char_p,
    c_float,
    c_int,
    c_int32,
    c_size_t,
    c_uint8,
    c_void_p,
)
from typing import Any

from rkllm_core.abi._spec import AbiFamily, Capabilities, FunctionSpec, LLMHandle, functions
from rkllm_core.abi.enums import LLMCallState, RKLLMInferMode, RKLLMInputType, members


class RKLLMExtendParam(ctypes.Structure):
    """Board-specific init options; 1.1 knows only the NPU domain."""

    _fields_ = [("base_domain_id", c_int32), ("reserved", c_uint8 * 112)]


def sampling_fields() -> list[tuple[str, Any]]:
    """``RKLLMParam``'s sampling block, unchanged from 1.1 to 1.3.0."""
    return [
        ("top_p", c_float),
        ("temperature", c_float),
        ("repeat_penalty", c_float),
        ("frequency_penalty", c_float),
        ("presence_penalty", c_float),
        ("mirostat", c_int32),
        ("mirostat_tau", c_float),
        ("mirostat_eta", c_float),
    ]


class RKLLMParam(ctypes.Structure):
    """``rkllm_init``'s parameters (returned by value from ``rkllm_createDefaultParam``)."""

    _fields_ = [
        ("model_path", c_char_p),
        ("max_context_len", c_int32),
        ("max_new_tokens", c_int32),
        ("top_k", c_int32),
        *sampling_fields(),
        ("skip_special_token", c_bool),
        ("is_async", c_bool),
        ("img_start", c_char_p),
        ("img_end", c_char_p),
        ("img_content", c_char_p),
        ("extend_param", RKLLMExtendParam),
    ]


class RKLLMLoraAdapter(ctypes.Structure):
    """One LoRA adapter file for ``rkllm_load_lora``."""

    _fields_ = [
        ("lora_adapter_path", c_char_p),
        ("lora_adapter_name", c_char_p),
        ("scale", c_float),
    ]


class RKLLMEmbedInput(ctypes.Structure):
    """``n_tokens x hidden_size`` float32 input embeddings."""

    _fields_ = [("embed", POINTER(c_float)), ("n_tokens", c_size_t)]


class RKLLMTokenInput(ctypes.Structure):
    """Token-id input; never templated by the runtime."""

    _fields_ = [("input_ids", POINTER(c_int32)), ("n_tokens", c_size_t)]


class RKLLMMultiModelInput(ctypes.Structure):
    """A prompt with ``<image>`` placeholders plus the image embeddings."""

    _fields_ = [
        ("prompt", c_char_p),
        ("image_embed", POINTER(c_float)),
        ("n_image_tokens", c_size_t),
    ]


def input_union(multimodal: type[ctypes.Structure]) -> type[ctypes.Union]:
    """``RKLLMInput``'s anonymous union, around the family's multimodal struct."""

    class _RKLLMInputUnion(ctypes.Union):
        _fields_ = [
            ("prompt_input", c_char_p),
            ("embed_input", RKLLMEmbedInput),
            ("token_input", RKLLMTokenInput),
            ("multimodal_input", multimodal),
        ]

    return _RKLLMInputUnion


class RKLLMInput(ctypes.Structure):
    """One run's input: ``input_type`` says which union member is set."""

    _anonymous_ = ("_u",)
    _fields_ = [("input_type", c_int), ("_u", input_union(RKLLMMultiModelInput))]


class RKLLMLoraParam(ctypes.Structure):
    """Selects a loaded LoRA adapter by name for one run."""

    _fields_ = [("lora_adapter_name", c_char_p)]


class RKLLMPromptCacheParam(ctypes.Structure):
    """Asks a run to save its prompt cache to a file."""

    _fields_ = [("save_prompt_cache", c_int), ("prompt_cache_path", c_char_p)]


class RKLLMInferParam(ctypes.Structure):
    """Per-run options."""

    _fields_ = [
        ("mode", c_int),
        ("lora_params", POINTER(RKLLMLoraParam)),
        ("prompt_cache_params", POINTER(RKLLMPromptCacheParam)),
    ]


class RKLLMResultLastHiddenLayer(ctypes.Structure):
    """Hidden states, ``num_tokens x embd_size`` float32; freed when the callback returns."""

    _fields_ = [
        ("hidden_states", POINTER(c_float)),
        ("embd_size", c_int),
        ("num_tokens", c_int),
    ]


class RKLLMResult(ctypes.Structure):
    """What one callback carries. ``text`` is read as raw bytes: it may be NULL."""

    _fields_ = [
        ("text", c_void_p),
        ("token_id", c_int32),
        ("last_hidden_layer", RKLLMResultLastHiddenLayer),
    ]


#: ``void (*)(RKLLMResult*, void*, LLMCallState)`` until 1.2.0.
LLMResultCallback = CFUNCTYPE(None, POINTER(RKLLMResult), c_void_p, c_int)

handle_p = POINTER(LLMHandle)


def core_functions(
    param: type[ctypes.Structure],
    input_: type[ctypes.Structure],
    infer: type[ctypes.Structure],
    init_callback: Any,
) -> dict[str, FunctionSpec]:
    """The ten functions every release exports, over that release's structs."""
    return functions(
        FunctionSpec("rkllm_createDefaultParam", param, (), "Default init parameters."),
        FunctionSpec(
            "rkllm_init",
            c_int,
            (handle_p, POINTER(param), init_callback),
            "Load a model; 0 on success.",
        ),
        FunctionSpec(
            "rkllm_load_lora",
            c_int,
            (LLMHandle, POINTER(RKLLMLoraAdapter)),
            "Load one LoRA adapter.",
        ),
        FunctionSpec(
            "rkllm_load_prompt_cache", c_int, (LLMHandle, c_char_p), "Load a prompt cache file."
        ),
        FunctionSpec(
            "rkllm_release_prompt_cache", c_int, (LLMHandle,), "Drop the loaded prompt cache."
        ),
        FunctionSpec("rkllm_destroy", c_int, (LLMHandle,), "Free the model."),
        FunctionSpec(
            "rkllm_run",
            c_int,
            (LLMHandle, POINTER(input_), POINTER(infer), c_void_p),
            "Run synchronously, calling back per token.",
        ),
        FunctionSpec(
            "rkllm_run_async",
            c_int,
            (LLMHandle, POINTER(input_), POINTER(infer), c_void_p),
            "Start a run and return at once (unreliable before 1.2.2).",
        ),
        FunctionSpec("rkllm_abort", c_int, (LLMHandle,), "Ask a running inference to stop."),
        FunctionSpec(
            "rkllm_is_running",
            c_int,
            (LLMHandle,),
            "1 while a run is in progress (whatever old headers say).",
        ),
    )


#: Runtime 1.1 runs prompts: no history, logits, templates, tools or KV-cache calls.
CAPABILITIES = Capabilities(
    keep_history=False, logits=False, embedding_flash=False, chat_template=False,
    kv_cache_clear=False, kv_cache_size=False, kv_cache_ranges=False, function_tools=False,
    role_and_thinking=False, cross_attention=False, batches=False, perf_stats=False,
    several_images=False, per_run_sampling=False, image_tags_per_input=False,
    init_callbacks=False, callback_releases_buffers=False,
)

FAMILY = AbiFamily(
    key="1.1",
    capabilities=CAPABILITIES,
    releases=("1.1.0", "1.1.1", "1.1.2", "1.1.3", "1.1.4"),
    structs={
        "RKLLMExtendParam": RKLLMExtendParam,
        "RKLLMParam": RKLLMParam,
        "RKLLMLoraAdapter": RKLLMLoraAdapter,
        "RKLLMEmbedInput": RKLLMEmbedInput,
        "RKLLMTokenInput": RKLLMTokenInput,
        "RKLLMMultiModelInput": RKLLMMultiModelInput,
        "RKLLMInput": RKLLMInput,
        "RKLLMLoraParam": RKLLMLoraParam,
        "RKLLMPromptCacheParam": RKLLMPromptCacheParam,
        "RKLLMInferParam": RKLLMInferParam,
        "RKLLMResultLastHiddenLayer": RKLLMResultLastHiddenLayer,
        "RKLLMResult": RKLLMResult,
    },
    enums={
        "LLMCallState": members(LLMCallState),
        "RKLLMInputType": members(RKLLMInputType),
        "RKLLMInferMode": members(RKLLMInferMode, without=("RKLLM_INFER_GET_LOGITS",)),
    },
    callbacks={"LLMResultCallback": LLMResultCallback},
    functions=core_functions(RKLLMParam, RKLLMInput, RKLLMInferParam, LLMResultCallback),
)
