"""Bad input gets a typed error that names the problem and the fix, and breaks nothing.

Every test ends by asking the model again: an error must never leave it unusable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rkllm_core import (
    RKLLM,
    ImageInput,
    InvalidParameterError,
    ModelLoadError,
    RKLLMError,
    RunError,
    RuntimeVersionError,
)
from rkllm_core.chat import ChatEngine, ChatMessage, ToolSpec
from rkllm_core.library import load_library
from tests.reliability.conftest import ModelFile, paced

ASSISTANT = Path(__file__).resolve().parent.parent / "models" / "assistant.scripted"
FINE = "I am a scripted model."


@pytest.fixture(scope="module")
def llm() -> Iterator[RKLLM]:
    model = RKLLM(ASSISTANT, library="host", runtime_version="1.3.0", max_context_len=256)
    yield model
    model.close()


@pytest.fixture(autouse=True)
def still_answers(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, the shared model still answers."""
    yield
    if "llm" in request.fixturenames:
        model = request.getfixturevalue("llm")
        assert model.generate("Hello", timeout=30).text == FINE


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"prompt": 42}, "prompt must be a str, got int"),
    ({"prompt": b"Hello"}, "prompt must be a str, got bytes"),
    ({"prompt": ""}, "prompt is empty"),
    ({"prompt": "Hello", "role": "system"}, "role must be 'user' or 'tool'"),
    ({"prompt": "Hello", "keep_history": "yes"}, "keep_history must be True or False"),
    ({"prompt": "Hello", "enable_thinking": 1}, "enable_thinking must be True or False"),
    ({"prompt": "Hello", "max_new_tokens": "10"}, "max_new_tokens must be an int"),
    ({"prompt": "Hello", "max_new_tokens": True}, "max_new_tokens must be an int"),
    ({"prompt": "Hello", "max_new_tokens": -3}, "max_new_tokens must be > 0"),
    ({"prompt": "Hello", "stop": [None]}, "stop must be a string or a list of strings"),
    ({"prompt": "Hello", "sampling": {"top_k": 1}}, "sampling must be a SamplingParams"),
    ({"prompt": "Hello", "timeout": 0}, "timeout must be None or a positive number"),
    ({"prompt": "Hello", "timeout": "5"}, "timeout must be None or a positive number"),
    ({"prompt": "Hello", "lora": 7}, "lora .* must be a str"),
    ({"prompt": "Hello", "image": np.zeros((4, 32))}, "image must be an ImageInput"),
    ({"tokens": "abc"}, "tokens must be a non-empty list of ids"),
    ({"tokens": [1, True]}, "tokens must be a non-empty list of ids"),
    ({"tokens": [1, 2**40]}, "tokens must be a non-empty list of ids"),
])
def test_wrong_types_and_out_of_range_arguments_are_refused_by_name(
        llm: RKLLM, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        llm.generate(**kwargs)


def test_a_single_stop_string_is_one_stop_not_one_per_character(llm: RKLLM) -> None:
    result = llm.generate("What is the capital of France?", stop="Paris")
    assert result.text == "The capital of France is "


def test_bad_arguments_to_streams_and_async_calls_are_refused_before_queueing(llm: RKLLM) -> None:
    with pytest.raises(InvalidParameterError, match="timeout"):
        llm.stream("Hello", timeout=-1)
    with pytest.raises(InvalidParameterError, match="prompt is empty"):
        llm.astream("")
    with pytest.raises(InvalidParameterError, match="texts\\[1\\] is empty"):
        llm.embed(["fine", ""])
    assert not llm.is_running


def test_out_of_range_model_parameters_name_the_field() -> None:
    with pytest.raises(InvalidParameterError, match="top_p"):
        RKLLM(ASSISTANT, library="host", max_context_len=256, top_p=3)
    with pytest.raises(InvalidParameterError, match="max_context_len"):
        RKLLM(ASSISTANT, library="host", max_context_len="large")
    with pytest.raises(InvalidParameterError, match="abort_grace"):
        RKLLM(ASSISTANT, library="host", max_context_len=256, abort_grace=0)


def test_nul_bytes_in_text_are_refused_instead_of_cutting_the_prompt(llm: RKLLM) -> None:
    # a C string ends at NUL: "echo" would silently become the whole prompt
    with pytest.raises(InvalidParameterError, match="NUL character at index 4"):
        llm.generate("Tell\x00 me a long story")
    with pytest.raises(InvalidParameterError, match="NUL"):
        llm.embed("a\x00b")
    with pytest.raises(InvalidParameterError, match="NUL"):
        llm.generate("Hello", lora="pir\x00ate")


def test_lone_surrogates_are_refused_with_the_way_to_clean_them(llm: RKLLM) -> None:
    with pytest.raises(InvalidParameterError, match=r"lone surrogate .* at index 6.*replace"):
        llm.generate("Hello \udc80 world")
    with pytest.raises(InvalidParameterError, match="lone surrogate"):
        llm.stream("\ud800")


def test_a_prompt_longer_than_the_context_is_a_run_error_naming_the_limit(llm: RKLLM) -> None:
    with pytest.raises(RunError, match="max_context_len"):
        llm.generate("echo " + "word " * 400)


def test_too_many_tokens_or_embedding_rows_are_refused_before_the_runtime(llm: RKLLM) -> None:
    with pytest.raises(InvalidParameterError, match="300 ids, more than max_context_len \\(256\\)"):
        llm.generate(tokens=[65] * 300)
    with pytest.raises(InvalidParameterError, match="300 rows"):
        llm.generate(embeddings=np.zeros((300, 32), dtype=np.float32))


@pytest.mark.parametrize(("array", "message"), [
    (np.zeros((3,), dtype=np.float32), "2-D float32 array"),
    (np.zeros((2, 3, 32), dtype=np.float32), "2-D float32 array"),
    (np.zeros((0, 32), dtype=np.float32), "2-D float32 array"),
    (np.zeros((3, 32), dtype=np.complex64), "real numbers .* complex64"),
    (np.array([["a", "b"]]), "real numbers"),
    (np.full((2, 32), np.nan, dtype=np.float32), "NaN or infinity"),
])
def test_embedding_arrays_of_the_wrong_shape_or_dtype_are_refused(
        llm: RKLLM, array: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        llm.generate(embeddings=array)


def test_embedding_rows_of_the_wrong_width_are_refused_once_the_width_is_known(
        llm: RKLLM) -> None:
    assert llm.hidden_states(tokens=[65, 66]).shape == (2, 32)  # learns the hidden size
    # 8 floats a row while the runtime reads 32: it would read past the buffer
    with pytest.raises(InvalidParameterError, match="8 values but the model's hidden size is 32"):
        llm.generate(embeddings=np.zeros((3, 8), dtype=np.float32))
    with pytest.raises(InvalidParameterError, match="hidden size"):
        llm.generate("<image>What is it?", image=ImageInput(np.zeros((1, 4, 8), np.float32)))
    # float64 and int rows of the right width are converted
    assert llm.generate(embeddings=np.ones((3, 32))).text == "Embedding input received."


def test_image_arrays_of_the_wrong_shape_or_dtype_are_refused() -> None:
    with pytest.raises(InvalidParameterError, match="real numbers"):
        ImageInput(np.zeros((1, 4, 32), dtype=bool))
    with pytest.raises(InvalidParameterError, match="real numbers"):
        ImageInput(np.array([[None]]))
    with pytest.raises(InvalidParameterError, match="does not hold"):
        ImageInput(np.zeros((5, 32), np.float32), n_images=2)
    nested: Any = [[0.0] * 32] * 4
    assert ImageInput(nested).n_image_tokens == 4  # a nested list is an array too


def test_missing_unreadable_or_foreign_lora_and_prompt_cache_files(
        llm: RKLLM, tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match="does not exist: check the path"):
        llm.load_lora(tmp_path / "missing.gguf", "pirate")
    with pytest.raises(InvalidParameterError, match="is not a file"):
        llm.load_lora(tmp_path, "pirate")
    with pytest.raises(InvalidParameterError, match="LoRA scale"):
        llm.load_lora(ASSISTANT, "pirate", scale=float("nan"))
    with pytest.raises(InvalidParameterError, match="does not exist"):
        llm.load_prompt_cache(tmp_path / "missing.bin")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00not a prompt cache" * 10)
    with pytest.raises(RKLLMError, match="must be a prompt cache saved by this model"):
        llm.load_prompt_cache(garbage)
    with pytest.raises(InvalidParameterError, match=r"folder .* does not exist"):
        llm.generate("Hello", save_prompt_cache=tmp_path / "no" / "such" / "cache.bin")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_files_are_refused_with_the_permission_fix(
        llm: RKLLM, tmp_path: Path) -> None:
    locked = tmp_path / "locked.gguf"
    locked.write_bytes(b"adapter")
    locked.chmod(0)
    with pytest.raises(InvalidParameterError, match="cannot be read"):
        llm.load_lora(locked, "pirate")


def test_missing_unreadable_and_foreign_model_files(tmp_path: Path, model_file: ModelFile) -> None:
    with pytest.raises(InvalidParameterError, match="does not exist"):
        RKLLM(tmp_path / "missing.rkllm", library="host", max_context_len=256)
    with pytest.raises(InvalidParameterError, match="not a file"):
        RKLLM(tmp_path, library="host", max_context_len=256)
    foreign = tmp_path / "foreign.rkllm"
    foreign.write_bytes(os.urandom(256))
    with pytest.raises(ModelLoadError, match="magic"):
        RKLLM(foreign, library="host", max_context_len=256)
    # a failed init leaves nothing behind: the same process loads a good model next
    with RKLLM(model_file(paced(0)), library="host", max_context_len=256) as good:
        assert good.generate("short").text == "ok"


def test_a_forced_runtime_release_that_does_not_match_the_library_is_refused() -> None:
    path = load_library("host", runtime_version="1.3.0").path
    expected = r"says it is runtime 1\.3\.0, but 1\.2\.1 was asked.*Use runtime_version='1\.3\.0'"
    with pytest.raises(RuntimeVersionError, match=expected):
        RKLLM(ASSISTANT, library=str(path), runtime_version="1.2.1", max_context_len=256)
    with pytest.raises(RuntimeVersionError, match="not supported"):
        RKLLM(ASSISTANT, library=str(path), runtime_version="0.9", max_context_len=256)


@pytest.mark.parametrize(("spec", "message"), [
    ({"type": "function", "function": {"description": "no name"}}, "non-empty string 'name'"),
    ({"type": "function", "function": {"name": ""}}, "non-empty string 'name'"),
    ({"type": "function", "function": "get_weather"}, "non-empty string 'name'"),
    ({"name": "f", "parameters": "city: str"}, "'parameters' must be a JSON-schema object"),
    ({"name": "f", "parameters": ["city"]}, "'parameters' must be a JSON-schema object"),
])
def test_malformed_tool_schemas_are_refused_naming_the_fix(
        spec: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        ToolSpec.from_openai(spec)


def test_malformed_tools_given_to_the_model_are_refused(llm: RKLLM) -> None:
    with pytest.raises(InvalidParameterError, match="not valid JSON"):
        llm.set_function_tools("system", "[{not json")
    with pytest.raises(InvalidParameterError, match="JSON array of function objects"):
        llm.set_function_tools("system", '{"name": "f"}')
    with pytest.raises(InvalidParameterError, match="cannot be written as JSON"):
        llm.set_function_tools("system", [{"name": "f", "parameters": {"enum": {1, 2}}}])
    with pytest.raises(InvalidParameterError, match="system contains a NUL"):
        llm.set_function_tools("sys\x00tem", [])
    with pytest.raises(InvalidParameterError, match="lone surrogate"):
        llm.set_chat_template("\udc80", "", "")
    with pytest.raises(InvalidParameterError, match="tool_choice 'nope' names no bound tool"):
        ChatEngine(llm).generate([ChatMessage.user("Hi")], tools=[ToolSpec("f")],
                                 tool_choice="nope")
    with pytest.raises(InvalidParameterError, match="ChatMessage objects"):
        ChatEngine(llm).generate([{"role": "user", "content": "Hi"}])  # type: ignore[list-item]


def test_garbage_tool_call_json_from_the_model_is_an_invalid_call_not_an_exception(
        model_file: ModelFile) -> None:
    with RKLLM(model_file(paced(0)), library="host", max_context_len=256) as model:
        chat = ChatEngine(model)
        result = chat.generate([ChatMessage.user("make a garbage call")],
                               tools=[ToolSpec("get_weather")])
        assert result.message.tool_calls == ()
        assert len(result.invalid_tool_calls) == 1
        assert "get_weather" in result.invalid_tool_calls[0].raw
        assert result.invalid_tool_calls[0].error
        assert chat.generate([ChatMessage.user("short")]).message.content == "ok"
