"""Runtime 1.3.0: ``RKLLMCallback`` struct at init, nested image/video input, per-run sampling.

Example:
    >>> import ctypes
    >>> from rkllm_core.abi import v1_3_0
    >>> ctypes.sizeof(v1_3_0.RKLLMInput) == (160 if ctypes.sizeof(ctypes.c_void_p) == 8 else 84)
    True
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, c_char, c_char_p, c_float, c_int, c_int32, c_size_t, c_uint64, c_void_p
from dataclasses import replace

from rkllm_core.abi import v1_1, v1_2_0, v1_2_1
from rkllm_core.abi._spec import AbiFamily
from rkllm_core.abi.v1_2_1 import RKLLMExtendParam, RKLLMPerfStat, RKLLMResult


class RKLLMParam(ctypes.Structure):
    """``rkllm_init``'s parameters: image tags gone, ``ignore_eos_token`` added."""

    _fields_ = v1_2_0.param_fields(RKLLMExtendParam, image_tags=False)


class RKLLMImageInput(ctypes.Structure):
    """``multimodal_input.image`` (an anonymous struct in the header)."""

    _fields_ = [
        ("image_embed", POINTER(c_float)),
        ("n_image_tokens", c_size_t),
        ("n_image", c_size_t),
        ("image_start", c_char_p),
        ("image_end", c_char_p),
        ("image_content", c_char_p),
        ("image_width", c_size_t),
        ("image_height", c_size_t),
    ]


class RKLLMVideoInput(ctypes.Structure):
    """``multimodal_input.video`` (an anonymous struct in the header)."""

    _fields_ = [
        ("video_embed", POINTER(c_float)),
        ("n_frame_tokens", c_size_t),
        ("n_frame_per_video", c_size_t),
        ("n_video", c_size_t),
        ("video_start", c_char_p),
        ("video_end", c_char_p),
        ("video_content", c_char_p),
        ("frame_width", c_size_t),
        ("frame_height", c_size_t),
    ]


class RKLLMMultiModalInput(ctypes.Structure):
    """A prompt with ``<image>`` / ``<video>`` tags plus their embeddings and tag strings."""

    _fields_ = [("prompt", c_char_p), ("image", RKLLMImageInput), ("video", RKLLMVideoInput)]


class RKLLMInput(ctypes.Structure):
    """One run's input (an array of ``n_batch`` of them for batched models)."""

    _anonymous_ = ("_u",)
    _fields_ = v1_2_1.input_fields(RKLLMMultiModalInput)


class RKLLMSamplingParam(ctypes.Structure):
    """Per-run sampling override; must stay alive for the whole run."""

    _fields_ = [("top_k", c_int32), *v1_1.sampling_fields()]


class RKLLMInferParam(ctypes.Structure):
    """Per-run options, with sampling and ``max_new_tokens`` overrides (0 = init value)."""

    _fields_ = [
        *v1_1.RKLLMInferParam._fields_,
        ("sampling_params", POINTER(RKLLMSamplingParam)),
        ("keep_history", c_int),
        ("max_new_tokens", c_int32),
    ]


LLMResultCallback = v1_2_1.LLMResultCallback
#: ``int (*)(void* userdata, const char* text, int32_t text_len, int32_t* tokens, int32_t max)``;
#: ``text`` is read with its length, since NUL termination is undocumented.
LLMTokenizerCallback = ctypes.CFUNCTYPE(
    c_int, c_void_p, POINTER(c_char), c_int32, POINTER(c_int32), c_int32
)
#: ``int (*)(void* userdata, int32_t* tokens, uint64_t n, void* embed, uint64_t len_bytes)``.
LLMGetEmbedCallback = ctypes.CFUNCTYPE(
    c_int, c_void_p, POINTER(c_int32), c_uint64, c_void_p, c_uint64
)


class RKLLMCallback(ctypes.Structure):
    """What ``rkllm_init`` takes from 1.3.0 on, instead of a bare function pointer."""

    _fields_ = [
        ("result_callback", LLMResultCallback),
        ("result_userdata", c_void_p),
        ("tokenizer_callback", LLMTokenizerCallback),
        ("tokenizer_userdata", c_void_p),
        ("embed_callback", LLMGetEmbedCallback),
        ("embed_userdata", c_void_p),
    ]


CAPABILITIES = replace(
    v1_2_1.CAPABILITIES, per_run_sampling=True, image_tags_per_input=True, init_callbacks=True,
    callback_releases_buffers=True,
)

FAMILY = AbiFamily(
    key="1.3.0",
    capabilities=CAPABILITIES,
    releases=("1.3.0",),
    structs={
        **{k: v for k, v in v1_2_1.FAMILY.structs.items() if k != "RKLLMMultiModelInput"},
        "RKLLMParam": RKLLMParam,
        "RKLLMMultiModalInput": RKLLMMultiModalInput,
        "RKLLMInput": RKLLMInput,
        "RKLLMSamplingParam": RKLLMSamplingParam,
        "RKLLMInferParam": RKLLMInferParam,
        "RKLLMPerfStat": RKLLMPerfStat,
        "RKLLMResult": RKLLMResult,
        "RKLLMCallback": RKLLMCallback,
    },
    enums=v1_2_1.FAMILY.enums,
    callbacks={
        "LLMGetEmbedCallback": LLMGetEmbedCallback,
        "LLMTokenizerCallback": LLMTokenizerCallback,
        "LLMResultCallback": LLMResultCallback,
    },
    functions={
        **v1_1.core_functions(RKLLMParam, RKLLMInput, RKLLMInferParam, POINTER(RKLLMCallback)),
        **v1_2_1.kv_and_tools_functions(),
    },
)
