"""Building one run: a run's arguments become the runtime's ``RKLLMInput`` and
``RKLLMInferParam``, and setup steps become calls the worker makes right before it.

A :class:`RunBuilder` serves one loaded model. What the structs hold, and what is refused, is
decided by the loaded family's :class:`~rkllm_core.abi.Capabilities` (per-run sampling, role and
thinking, several images, ...); arguments no runtime could take are refused first by
:func:`~rkllm_core.validation.check_run_arguments`. The result is a queued-to-be
:class:`~rkllm_core.worker._Run` that keeps every buffer the runtime reads alive until it ends.

Example:
    >>> import tempfile, pathlib
    >>> from rkllm_core.backend import SetFunctionTools
    >>> from rkllm_core.inputs import RunBuilder
    >>> from rkllm_core.library import load_library
    >>> from rkllm_core.params import ModelParams
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\n')
    >>> builder = RunBuilder(load_library("host", runtime_version="1.2.0"),
    ...                      ModelParams(model_path=path, max_new_tokens=-1), n_batch=1)
    >>> run = builder.build("generate", prompt="Hi", role="user", enable_thinking=False,
    ...                     tokens=None, embeddings=None, image=None, keep_history=False,
    ...                     max_new_tokens=5, sampling=None, lora=None,
    ...                     save_prompt_cache=None, stop=None, on_token=None)
    >>> run.max_new_tokens, run.enforce_max_tokens  # no per-run limit on 1.2.0: we abort
    (5, True)
    >>> builder.setup_call(SetFunctionTools("", "[]", "tool_response"))
    Traceback (most recent call last):
    ...
    rkllm_core.errors.UnsupportedFeatureError: set_function_tools() needs runtime 1.2.1 ...
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from rkllm_core.abi.enums import RKLLMInferMode, RKLLMInputType
from rkllm_core.backend import (
    ClearKVCache,
    ReadKVCacheSize,
    RunSetup,
    SetChatTemplate,
    SetFunctionTools,
    kv_cache_holds,
)
from rkllm_core.errors import InvalidParameterError, StaleKVCacheError, UnsupportedFeatureError
from rkllm_core.library import RuntimeLibrary
from rkllm_core.params import ModelParams, SamplingParams
from rkllm_core.results import ImageInput, StreamChunk
from rkllm_core.streaming import StopMatcher
from rkllm_core.validation import (
    _c_text,
    check_return_code,
    check_run_arguments,
    require_capability,
    unsupported,
)
from rkllm_core.worker import _Run


class RunBuilder:
    """Turns one model's run arguments into a :class:`~rkllm_core.worker._Run` for the
    loaded family, and setup steps into calls on the native handle; see the module docstring.

    ``hidden_size`` is learned from the first hidden-state run; from then on embedding rows of
    another width are refused before the runtime reads past them.
    """

    def __init__(self, lib: RuntimeLibrary, params: ModelParams, n_batch: int) -> None:
        self.lib = lib
        self.params = params
        self.n_batch = n_batch
        self.hidden_size: int | None = None

    def build(
        self,
        kind: Literal["generate", "hidden", "logits"],
        *,
        prompt: str | None,
        role: str,
        enable_thinking: bool,
        tokens: Sequence[int] | None,
        embeddings: np.ndarray | None,
        image: ImageInput | None,
        keep_history: bool,
        max_new_tokens: int | None,
        sampling: SamplingParams | None,
        lora: str | None,
        save_prompt_cache: str | os.PathLike[str] | None,
        stop: Sequence[str] | None,
        on_token: Callable[[StreamChunk], object] | None,
        lane: bool = False,
    ) -> _Run:
        """One run of ``kind`` (``lane``: one input of a batch, see :meth:`build_batch`)."""
        family = self.lib.family
        can = family.capabilities
        if self.n_batch > 1 and not lane:
            # the runtime reads n_batch inputs: one alone would make it read past our struct
            raise UnsupportedFeatureError(
                f"this model was loaded with n_batch={self.n_batch}: every run takes "
                f"{self.n_batch} inputs; use generate_batch([...])")
        stops = check_run_arguments(
            prompt=prompt, role=role, enable_thinking=enable_thinking, tokens=tokens,
            embeddings=embeddings, image=image, keep_history=keep_history,
            max_new_tokens=max_new_tokens, sampling=sampling, lora=lora,
            save_prompt_cache=save_prompt_cache, stop=stop)
        if not can.role_and_thinking and role != "user":
            raise unsupported(self.lib, f"role={role!r}", "role_and_thinking")
        if not can.role_and_thinking and enable_thinking:
            raise unsupported(self.lib, "enable_thinking", "role_and_thinking")
        if not can.keep_history and keep_history:
            raise unsupported(self.lib, "keep_history", "keep_history")
        if kind == "logits" and not can.logits:
            raise unsupported(self.lib, "logits", "logits")
        if max_new_tokens is not None and max_new_tokens <= 0:
            raise InvalidParameterError(f"max_new_tokens must be > 0, got {max_new_tokens}")
        if sampling is not None and not can.per_run_sampling:
            differ = sampling.differences(self.params)
            if differ:
                raise UnsupportedFeatureError(
                    f"per-run sampling needs runtime 1.3.0; runtime {self.lib.release} fixes "
                    f"sampling when the model loads, so {', '.join(differ)} cannot be "
                    "overridden for one run: set them in ModelParams instead")
        keep: list[Any] = []
        inp = family.struct("RKLLMInput")()
        if can.role_and_thinking:
            inp.role = role.encode()
            inp.enable_thinking = enable_thinking
        if image is not None:
            assert prompt is not None
            self._fill_image(inp, prompt, image, keep)
        elif prompt is not None:
            inp.input_type = int(RKLLMInputType.RKLLM_INPUT_PROMPT)
            data = prompt.encode()
            keep.append(data)
            inp.prompt_input = data
        elif tokens is not None:
            ids = list(tokens) if not isinstance(tokens, (str, bytes)) else []
            if not ids or any(isinstance(t, bool) or not isinstance(t, (int, np.integer))
                              or not 0 <= t < 2**31 for t in ids):
                raise InvalidParameterError("tokens must be a non-empty list of ids >= 0")
            if len(ids) >= self.params.max_context_len:
                raise InvalidParameterError(
                    f"tokens has {len(ids)} ids, more than max_context_len "
                    f"({self.params.max_context_len}) allows: shorten the input or load the "
                    "model with a larger max_context_len")
            array = (ctypes.c_int32 * len(ids))(*ids)
            keep.append(array)
            inp.input_type = int(RKLLMInputType.RKLLM_INPUT_TOKEN)
            inp.token_input.input_ids = array
            inp.token_input.n_tokens = len(ids)
        else:
            data_f = self.float_rows(embeddings, "embeddings")
            if data_f.ndim != 2 or data_f.shape[0] == 0 or data_f.shape[1] == 0:
                raise InvalidParameterError(
                    f"embeddings must be a 2-D float32 array (n_tokens, hidden_size), got shape "
                    f"{data_f.shape}")
            if data_f.shape[0] >= self.params.max_context_len:
                raise InvalidParameterError(
                    f"embeddings has {data_f.shape[0]} rows (tokens), more than max_context_len "
                    f"({self.params.max_context_len}) allows")
            keep.append(data_f)
            inp.input_type = int(RKLLMInputType.RKLLM_INPUT_EMBED)
            inp.embed_input.embed = data_f.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            inp.embed_input.n_tokens = data_f.shape[0]

        infer = family.struct("RKLLMInferParam")()
        infer.mode = int({
            "generate": RKLLMInferMode.RKLLM_INFER_GENERATE,
            "hidden": RKLLMInferMode.RKLLM_INFER_GET_LAST_HIDDEN_LAYER,
            "logits": RKLLMInferMode.RKLLM_INFER_GET_LOGITS,
        }[kind])
        if can.keep_history:
            infer.keep_history = int(keep_history)
        if lora is not None:
            lora_param = family.struct("RKLLMLoraParam")(lora.encode())
            keep.append(lora_param)
            infer.lora_params = ctypes.pointer(lora_param)
        if save_prompt_cache is not None:
            cache = family.struct("RKLLMPromptCacheParam")(1, os.fsencode(save_prompt_cache))
            keep.append(cache)
            infer.prompt_cache_params = ctypes.pointer(cache)
        native_limits = can.per_run_sampling
        if native_limits:
            if max_new_tokens is not None:
                infer.max_new_tokens = max_new_tokens
            if sampling is not None:
                sp = family.struct("RKLLMSamplingParam")()
                sampling.fill_native(sp)
                keep.append(sp)  # the runtime reads it during the whole run
                infer.sampling_params = ctypes.pointer(sp)
        limit = self.params.max_new_tokens
        if max_new_tokens is not None:
            # 1.3.0's per-run value replaces the init one; older runtimes still stop at theirs
            limit = max_new_tokens if native_limits or limit <= 0 else min(limit, max_new_tokens)
        return _Run(
            kind=kind, input=inp, infer=infer, keepalive=keep,
            max_new_tokens=limit,
            enforce_max_tokens=max_new_tokens is not None and not native_limits,
            stop=StopMatcher(stops), on_token=on_token)

    def build_batch(self, prompts: Sequence[str], *, keep_history: bool,
                    max_new_tokens: int | None, sampling: SamplingParams | None
                    ) -> tuple[_Run, list[_Run]]:
        """One run of ``n_batch`` inputs, and the lanes of the given ``prompts`` (the free
        lanes repeat the last prompt)."""
        if self.n_batch < 2:
            raise UnsupportedFeatureError(
                "generate_batch needs a model loaded with ExtendParams(n_batch=N), N from 2 to 8 "
                "(runtime 1.2.1+)")
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise InvalidParameterError("prompts must be a list of strings")
        given = list(prompts)
        if not 1 <= len(given) <= self.n_batch:
            raise InvalidParameterError(
                f"give 1 to {self.n_batch} prompts (the model was loaded with "
                f"n_batch={self.n_batch}), got {len(given)}")
        lanes = [self.build("generate", prompt=p, role="user", enable_thinking=False,
                            tokens=None, embeddings=None, image=None,
                            keep_history=keep_history, max_new_tokens=max_new_tokens,
                            sampling=sampling, lora=None, save_prompt_cache=None,
                            stop=None, on_token=None, lane=True)
                 for p in given + [given[-1]] * (self.n_batch - len(given))]
        if lanes[0].enforce_max_tokens:
            raise unsupported(self.lib, "max_new_tokens per batch run", "per_run_sampling")
        inputs = (self.lib.family.struct("RKLLMInput") * self.n_batch)(*[x.input for x in lanes])
        run = _Run(kind="generate", input=inputs, infer=lanes[0].infer, keepalive=[inputs],
                   max_new_tokens=lanes[0].max_new_tokens, enforce_max_tokens=False,
                   stop=StopMatcher([]), lanes=lanes)
        return run, lanes[:len(given)]

    def float_rows(self, value: Any, name: str) -> np.ndarray:
        """``value`` as C-contiguous float32, refusing what would not be a real vector.

        The runtime reads ``rows x hidden_size`` floats from the pointer it gets: a row of the
        wrong width makes it read past the buffer, so the width is checked once it is known.
        """
        array = np.asarray(value)
        if array.dtype.kind not in "fiu":
            raise InvalidParameterError(
                f"{name} must hold real numbers (float32), got dtype {array.dtype}")
        data = np.ascontiguousarray(array, dtype=np.float32)
        if data.size and not np.isfinite(data).all():
            raise InvalidParameterError(f"{name} contains NaN or infinity")
        if self.hidden_size is not None and data.ndim >= 2 and data.shape[-1] != \
                self.hidden_size:
            raise InvalidParameterError(
                f"{name} rows have {data.shape[-1]} values but the model's hidden size is "
                f"{self.hidden_size}: each row must be one token's embedding")
        return data

    def _fill_image(self, inp: Any, prompt: str, image: ImageInput, keep: list[Any]) -> None:
        can = self.lib.family.capabilities
        embed = self.float_rows(image.embed, "image embed")
        n_images, n_tokens = image.n_images, image.n_image_tokens
        tags = prompt.count("<image>")
        if not can.several_images:
            if n_images != 1:
                raise unsupported(self.lib, "several images in one prompt", "several_images")
        elif tags != n_images:
            raise InvalidParameterError(
                f"the prompt has {tags} <image> tag(s) but {n_images} image(s) were given; "
                "the runtime needs one tag per image")
        if not can.image_tags_per_input and any(
                t is not None for t in (image.start, image.end, image.content)):
            raise UnsupportedFeatureError(
                f"image tags per input need runtime 1.3.0; on runtime {self.lib.release} set "
                "ModelParams.img_start / img_end / img_content")
        data = prompt.encode()
        keep += [embed, data]
        mm = inp.multimodal_input
        inp.input_type = int(RKLLMInputType.RKLLM_INPUT_MULTIMODAL)
        mm.prompt = data
        # 1.3.0 nests the image fields in a struct of their own, beside the video ones
        target = mm.image if can.image_tags_per_input else mm
        target.image_embed = embed.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        target.n_image_tokens = n_tokens
        if can.several_images:
            target.n_image = n_images
            target.image_width = image.width
            target.image_height = image.height
        if can.image_tags_per_input:
            for name, value in (("image_start", image.start), ("image_end", image.end),
                                ("image_content", image.content)):
                raw = (value or "").encode()
                keep.append(raw)
                setattr(target, name, raw)

    def setup_hooks(self, run: _Run, setup: Sequence[RunSetup]) -> list[Callable[[Any], None]]:
        """``setup`` checked now, as calls the worker makes right before ``run``."""
        if isinstance(setup, (str, bytes)) or not isinstance(setup, Sequence):
            raise InvalidParameterError(
                f"setup must be a list of rkllm_core.backend steps, got {type(setup).__name__}")
        calls = [self.setup_call(op) for op in setup]

        def hook(call: Callable[[Any], int | None]) -> Callable[[Any], None]:
            def step(handle: Any) -> None:
                size = call(handle)
                if size is not None:
                    run.kv_size_before = size
            return step

        return [hook(call) for call in calls]

    def setup_call(self, op: RunSetup) -> Callable[[Any], int | None]:
        """One :mod:`rkllm_core.backend` step, checked now, as a call the worker makes with the
        native handle; it returns the KV-cache size for :class:`ReadKVCacheSize`."""
        lib = self.lib
        if isinstance(op, ClearKVCache):
            require_capability(lib, "kv_cache_clear", "clearing the KV cache")
            keep = bool(op.keep_system_prompt)
            if op.start is None and op.end is None:
                def clear(handle: Any) -> None:
                    check_return_code(lib.clear_kv_cache(handle, keep), "rkllm_clear_kv_cache",
                                      "see the runtime's log on stderr")
                return clear
            require_capability(lib, "kv_cache_ranges", "clearing a range of the KV cache")
            first, last = op.start, op.end
            if not (isinstance(first, int) and isinstance(last, int)) or isinstance(
                    first, bool) or isinstance(last, bool) or not 0 <= first < last:
                raise InvalidParameterError(
                    f"a KV-cache range is [start, end) with 0 <= start < end, got "
                    f"[{first}, {last})")
            start, end = (ctypes.c_int * 1)(first), (ctypes.c_int * 1)(last)

            def clear_range(handle: Any) -> None:
                check_return_code(lib.clear_kv_cache(handle, keep, start, end),
                                  "rkllm_clear_kv_cache",
                                  "a range must lie inside the cache (see kv_cache_size)")
            return clear_range
        if isinstance(op, ReadKVCacheSize):
            require_capability(lib, "kv_cache_size", "reading the KV-cache size")
            limit = int(self.params.max_context_len)
            expected = op.expected

            def read(handle: Any) -> int:
                sizes = (ctypes.c_int * 1)()
                check_return_code(lib.get_kv_cache_size(handle, sizes), "rkllm_get_kv_cache_size",
                                  "the runtime could not report it")
                if expected is not None and not kv_cache_holds(sizes[0], expected, limit):
                    raise StaleKVCacheError(
                        f"the KV cache holds {sizes[0]} positions where {expected} were "
                        "expected: it was cleared or trimmed behind the caller's back")
                return int(sizes[0])
            return read
        if isinstance(op, SetChatTemplate):
            require_capability(lib, "chat_template", "set_chat_template()")
            args = (_c_text(op.system, "system"), _c_text(op.prefix, "prefix"),
                    _c_text(op.postfix, "postfix"))

            def template(handle: Any) -> None:
                check_return_code(lib.set_chat_template(handle, *args), "rkllm_set_chat_template",
                                  "see the runtime's log on stderr")
            return template
        if isinstance(op, SetFunctionTools):
            require_capability(lib, "function_tools", "set_function_tools()")
            tool_args = (_c_text(op.system, "system"), _c_text(op.tools_json, "tools"),
                         _c_text(op.tool_response, "tool_response_str"))

            def tools(handle: Any) -> None:
                check_return_code(lib.set_function_tools(handle, *tool_args),
                                  "rkllm_set_function_tools",
                                  "the model needs its own chat template (the runtime logs "
                                  "'chat_template is empty' otherwise), and "
                                  "set_chat_template() must not have been called")
            return tools
        raise InvalidParameterError(
            f"a setup step is one of rkllm_core.backend's ClearKVCache, ReadKVCacheSize, "
            f"SetChatTemplate, SetFunctionTools; got {type(op).__name__}")
