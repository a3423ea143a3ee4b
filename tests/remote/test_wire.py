"""The JSON both ends of the backend routes share: what goes in comes out the same, and what
must not cross (file paths, unknown steps) is refused with the fix."""

from __future__ import annotations

import numpy as np
import pytest

from rkllm_core.backend import ClearKVCache, ReadKVCacheSize, SetChatTemplate, SetFunctionTools
from rkllm_core.errors import (
    BusyError,
    InvalidParameterError,
    ModelWedgedError,
    RKLLMError,
    StaleKVCacheError,
)
from rkllm_core.params import SamplingParams
from rkllm_core.remote_wire import (
    decode_array,
    decode_error,
    decode_line,
    decode_run,
    encode_array,
    encode_error,
    encode_result,
    encode_run,
)
from rkllm_core.results import GenerationResult, ImageInput, PerfStats


def test_every_run_option_round_trips() -> None:
    setup = [SetFunctionTools("Be brief.", "[]", "tool_response"), SetChatTemplate("", "", ""),
             ClearKVCache(start=3, end=9), ReadKVCacheSize(expected=42)]
    image = ImageInput(np.arange(32, dtype=np.float32).reshape(8, 4), n_images=2)
    options = {"role": "tool", "enable_thinking": True, "tokens": [1, 2, 3],
               "embeddings": np.eye(2, dtype=np.float32), "image": image, "keep_history": True,
               "max_new_tokens": 7, "sampling": SamplingParams(top_k=1, temperature=0.0),
               "lora": "pirate", "stop": "User:", "setup": setup, "timeout": 2.5}
    run = decode_run(encode_run("<image>Hi", options, run_id="r1"))
    got = run.options
    assert (run.prompt, run.timeout, run.run_id, run.expected) == ("<image>Hi", 2.5, "r1", 42)
    assert got["setup"] == setup and got["stop"] == ["User:"] and got["tokens"] == [1, 2, 3]
    assert got["sampling"] == options["sampling"] and got["lora"] == "pirate"
    np.testing.assert_array_equal(got["embeddings"], np.eye(2))
    assert (got["image"].n_images, got["image"].n_image_tokens) == (2, 4)
    np.testing.assert_array_equal(got["image"].embed, image.embed)
    assert (got["role"], got["enable_thinking"], got["keep_history"], got["max_new_tokens"]) == \
        ("tool", True, True, 7)


def test_nothing_that_names_a_file_or_a_hook_crosses() -> None:
    with pytest.raises(InvalidParameterError, match="save_prompt_cache"):
        encode_run("Hi", {"save_prompt_cache": "/tmp/c.bin"})
    with pytest.raises(InvalidParameterError, match="save_prompt_cache"):
        decode_run({"prompt": "Hi", "save_prompt_cache": "/etc/passwd"})
    with pytest.raises(InvalidParameterError, match="before= hooks"):
        encode_run("Hi", {"before": [print]})
    with pytest.raises(InvalidParameterError, match="lora"):
        encode_run("Hi", {"lora": object()})
    with pytest.raises(InvalidParameterError, match="setup step"):
        decode_run({"prompt": "Hi", "setup": [{"type": "LoadPromptCache", "path": "/x"}]})
    with pytest.raises(InvalidParameterError, match="ClearKVCache"):
        decode_run({"setup": [{"type": "ClearKVCache", "start": "not a number"}]})
    assert decode_run({"prompt": "Hi", "unknown": 1}).prompt == "Hi"  # unknown fields: ignored


def test_arrays_keep_dtype_shape_and_values_and_refuse_lies() -> None:
    for array in (np.random.default_rng(0).random((3, 5)).astype(np.float32),
                  np.arange(6, dtype=np.int64).reshape(2, 3), np.zeros((0, 4), np.float32)):
        back = decode_array(encode_array(array))
        assert back.dtype == array.dtype and back.shape == array.shape
        np.testing.assert_array_equal(back, array)
    wire = encode_array(np.ones(4, np.float32))
    with pytest.raises(InvalidParameterError, match="does not hold"):
        decode_array({**wire, "shape": [5]})
    with pytest.raises(InvalidParameterError):
        decode_array({**wire, "dtype": "|O"})


def test_results_and_errors_come_back_as_their_own_types() -> None:
    result = GenerationResult("Hi", [7, 8], "stop", PerfStats(3, 1.5, 2, 2.0, 1000.0, None),
                              kv_cache_size_before=12, stop_sequence="User:")
    import json

    assert decode_line(json.dumps(encode_result(result))) == result
    for error in (StaleKVCacheError("replay"), ModelWedgedError("stuck", partial_text="He")):
        with pytest.raises(type(error)) as raised:
            decode_line(json.dumps({"error": encode_error(error)}))
        assert str(raised.value) == str(error)
        assert getattr(raised.value, "partial_text", "") == getattr(error, "partial_text", "")
    # the server's own errors (queue full, unknown model) map by their HTTP status
    assert type(decode_error({"type": "QueueFullError", "message": "full"}, 429)) is BusyError
    assert type(decode_error({"type": "ModelNotFoundError", "message": "no"}, 404)) is \
        InvalidParameterError
    assert type(decode_error({"message": "odd"}, 500)) is RKLLMError
    with pytest.raises(RKLLMError, match="not part of a run"):
        decode_line("<html>")
