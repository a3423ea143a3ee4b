"""RKLLM generation on the host runtime's scripted engine, on every family with each feature."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest

from rkllm_core import (
    RKLLM,
    ImageInput,
    InvalidParameterError,
    RunError,
    SamplingParams,
    StreamChunk,
    UnsupportedFeatureError,
)
from tests.core.conftest import FAMILIES, FROM_1_2_0, FROM_1_2_1, ModelFile, open_model

UNICODE = "Grüße 你好 🙂!"


@pytest.mark.parametrize("llm", FAMILIES, indirect=True)
def test_generate_returns_the_reply_its_tokens_and_stop(llm: RKLLM) -> None:
    result = llm.generate("What is the capital of France?")
    assert result.text == "The capital of France is Paris."
    assert result.finish_reason == "stop"
    assert len(result.token_ids) == 7 and all(t > 0 for t in result.token_ids)
    assert result.perf.decode_tokens == 7


@pytest.mark.parametrize("llm", FAMILIES, indirect=True)
def test_stream_yields_one_chunk_per_token_and_keeps_the_result(llm: RKLLM) -> None:
    stream = llm.stream("What is the capital of France?")
    chunks = list(stream)
    assert [c.text for c in chunks] == ["The", " capital", " of", " France", " is", " Paris", "."]
    assert [c.token_id for c in chunks] == stream.result.token_ids
    assert stream.result.text == "The capital of France is Paris."


@pytest.mark.parametrize("llm", FAMILIES, indirect=True)
def test_multibyte_characters_split_across_tokens_arrive_whole(llm: RKLLM) -> None:
    chunks = list(llm.stream("unicode please"))
    assert "".join(c.text for c in chunks) == UNICODE
    assert "" in [c.text for c in chunks]  # RKLLM_RUN_WAITING: a character still incomplete
    assert "🙂" in [c.text for c in chunks]  # four one-byte tokens give one whole character
    assert llm.generate("unicode please").text == UNICODE


@pytest.mark.parametrize("llm", FROM_1_2_1, indirect=True)
def test_perf_comes_from_the_runtime_from_1_2_1(llm: RKLLM) -> None:
    perf = llm.generate("What is the capital of France?").perf
    assert perf.prefill_tokens is not None and perf.prefill_tokens > 6
    assert perf.decode_tokens == 7
    assert perf.peak_memory_mb is not None and perf.peak_memory_mb > 0


@pytest.mark.parametrize("llm", ["1.1", "1.2.0"], indirect=True)
def test_perf_is_measured_when_the_runtime_gives_none(llm: RKLLM) -> None:
    perf = llm.generate("What is the capital of France?").perf
    assert perf.prefill_tokens is None and perf.peak_memory_mb is None
    assert perf.decode_tokens == 7 and perf.prefill_ms > 0 and perf.decode_ms > 0
    assert perf.tokens_per_second == pytest.approx(7 * 1000 / perf.decode_ms)


@pytest.mark.parametrize("llm", FAMILIES, indirect=True)
def test_max_new_tokens_per_run_ends_with_length(llm: RKLLM) -> None:
    result = llm.generate("Tell me a long story", max_new_tokens=4)
    assert result.finish_reason == "length"
    assert len(result.token_ids) == 4
    assert result.text == "Once upon a time"
    assert llm.generate("Tell me a long story").text.endswith("until the context was full.")


@pytest.mark.parametrize("family", FAMILIES)
def test_max_new_tokens_at_load_ends_with_length(family: str) -> None:
    llm = open_model(family, max_new_tokens=3)
    result = llm.generate("Tell me a long story")
    assert (result.text, result.finish_reason) == ("Once upon a", "length")
    llm.close()


@pytest.mark.parametrize("llm", FAMILIES, indirect=True)
def test_stop_strings_cut_the_reply_and_end_the_run(llm: RKLLM) -> None:
    result = llm.generate("Tell me a long story", stop=["small board"])
    assert result.text == "Once upon a time there was a "
    assert result.finish_reason == "stop"
    assert len(result.token_ids) < 12


def test_per_run_sampling_and_max_new_tokens_are_native_on_1_3_0() -> None:
    llm = open_model("1.3.0")
    greedy = SamplingParams(top_k=1, temperature=0.0)
    result = llm.generate("Tell me a long story", sampling=greedy, max_new_tokens=2)
    assert (result.text, result.finish_reason) == ("Once upon", "length")
    llm.close()


@pytest.mark.parametrize("llm", FAMILIES[:-1], indirect=True)
def test_per_run_sampling_before_1_3_0_names_what_cannot_be_overridden(llm: RKLLM) -> None:
    with pytest.raises(UnsupportedFeatureError, match="top_k, temperature cannot be overridden"):
        llm.generate("Hello", sampling=SamplingParams(top_k=1, temperature=0.0))
    # the model's own sampling is no override: accepted
    assert llm.generate("Hello", sampling=llm.params.sampling).text == "I am a scripted model."


@pytest.mark.parametrize("llm", FAMILIES, indirect=True)
def test_token_and_embedding_inputs(llm: RKLLM) -> None:
    assert llm.generate(tokens=[72, 105, 33]).text == "Token input received."
    embeddings = np.ones((3, 32), dtype=np.float32)
    assert llm.generate(embeddings=embeddings).text == "Embedding input received."


@pytest.mark.parametrize("llm", FAMILIES, indirect=True)
def test_input_mistakes_are_refused_before_the_runtime(llm: RKLLM) -> None:
    with pytest.raises(InvalidParameterError, match="exactly one input"):
        llm.generate("Hello", tokens=[1])
    with pytest.raises(InvalidParameterError, match="exactly one input"):
        llm.generate()
    with pytest.raises(InvalidParameterError, match="tokens"):
        llm.generate(tokens=[-4])
    with pytest.raises(InvalidParameterError, match="2-D"):
        llm.generate(embeddings=np.ones(3, dtype=np.float32))
    with pytest.raises(InvalidParameterError, match="max_new_tokens"):
        llm.generate("Hello", max_new_tokens=0)


@pytest.mark.parametrize(("family", "kwargs", "release"), [
    ("1.1", {"role": "tool"}, "1.2.1"),
    ("1.2.0", {"role": "tool"}, "1.2.1"),
    ("1.2.0", {"enable_thinking": True}, "1.2.1"),
    ("1.1", {"keep_history": True}, "1.2.0"),
])
def test_per_run_features_the_family_lacks_raise(family: str, kwargs: dict[str, object],
                                                 release: str) -> None:
    llm = open_model(family)
    with pytest.raises(UnsupportedFeatureError, match=f"needs runtime {re.escape(release)}"):
        llm.generate("Hello", **kwargs)  # type: ignore[arg-type]
    assert llm.generate("Hello").text == "I am a scripted model."
    llm.close()


@pytest.mark.parametrize("llm", FROM_1_2_0, indirect=True)
def test_keep_history_carries_the_conversation(llm: RKLLM) -> None:
    llm.generate("Hello, my name is Alice.", keep_history=True)
    assert llm.generate("What is my name?", keep_history=True).text == "Your name is Alice."


@pytest.mark.parametrize("llm", FROM_1_2_0, indirect=True)
def test_without_keep_history_runs_are_independent(llm: RKLLM) -> None:
    llm.generate("Hello, my name is Alice.")
    assert llm.generate("What is my name?").text == "I do not know your name."


@pytest.mark.parametrize("llm", FROM_1_2_1, indirect=True)
def test_enable_thinking_and_tool_role(llm: RKLLM) -> None:
    thought = llm.generate("Think about France", enable_thinking=True).text
    assert thought.startswith("<think>\nThe user asks about France.\n</think>")
    assert llm.generate('{"temperature": 21}', role="tool").text == "It is sunny in Paris."


@pytest.mark.parametrize("family", ["1.2.1", "1.3.0"])
def test_multimodal_prompt_with_one_tag_per_image(family: str) -> None:
    llm = open_model(family)
    images = ImageInput(np.zeros((2, 16, 32), dtype=np.float32), width=392, height=392)
    result = llm.generate("<image><image>What is in these pictures?", image=images)
    assert result.text == "I see an image."
    with pytest.raises(InvalidParameterError, match="1 <image> tag"):
        llm.generate("<image>What is this?", image=images)
    flat = ImageInput(np.zeros((32, 32), dtype=np.float32), n_images=2)
    assert llm.generate("<image><image>Compare them.", image=flat).text == "I see an image."
    llm.close()


def test_an_image_embedding_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(InvalidParameterError, match="does not hold"):
        ImageInput(np.zeros((33, 32), dtype=np.float32), n_images=2)
    with pytest.raises(InvalidParameterError, match="n_image_tokens"):
        ImageInput(np.zeros(32, dtype=np.float32))


def test_image_tags_per_input_need_1_3_0() -> None:
    llm = open_model("1.2.3")
    image = ImageInput(np.zeros((16, 32), dtype=np.float32), start="<img>")
    with pytest.raises(UnsupportedFeatureError, match=r"1\.3\.0"):
        llm.generate("<image>What is this?", image=image)
    llm.close()


@pytest.mark.parametrize("llm", FAMILIES, indirect=True)
def test_lora_adapters_load_and_are_chosen_per_run(llm: RKLLM, tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match="does not exist"):
        llm.load_lora(tmp_path / "missing.gguf", "pirate")
    (tmp_path / "pirate.gguf").write_bytes(b"adapter")
    llm.load_lora(tmp_path / "pirate.gguf", "pirate", scale=0.5)
    assert llm.generate("Hello", lora="pirate").text == "Arr, matey!"
    assert llm.generate("Hello").text == "I am a scripted model."


@pytest.mark.parametrize("llm", FAMILIES, indirect=True)
def test_a_runtime_error_raises_run_error_and_the_model_recovers(llm: RKLLM) -> None:
    with pytest.raises(RunError, match="RKLLM_RUN_ERROR"):
        llm.generate("Hello", lora="ninja")  # no such adapter: RKLLM_RUN_ERROR before any token
    assert llm.generate("Hello").text == "I am a scripted model."


@pytest.mark.parametrize("family", FAMILIES)
def test_run_error_mid_stream_carries_the_partial_text(family: str, model_file: ModelFile) -> None:
    llm = open_model(family, model_file('error_after_tokens = 2\ndefault reply "a b c d"\n'))
    stream = llm.stream("Hello")
    received = []
    with pytest.raises(RunError) as info:
        for chunk in stream:
            received.append(chunk.text)
    assert received == ["a", " b"]
    assert info.value.partial_text == "a b"
    with pytest.raises(RunError) as again:
        llm.generate("Hello")
    assert again.value.partial_text == "a b"
    llm.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_an_exception_in_on_token_is_reraised_and_the_model_stays_usable(family: str) -> None:
    llm = open_model(family)
    seen: list[StreamChunk] = []

    def on_token(chunk: StreamChunk) -> None:
        seen.append(chunk)
        if len(seen) == 3:
            raise KeyError("handler failed")

    with pytest.raises(KeyError, match="handler failed"):
        llm.generate("Tell me a long story", on_token=on_token)
    assert len(seen) == 3  # the run was aborted at once
    assert llm.generate("Hello").text == "I am a scripted model."
    llm.close()


def test_on_token_sees_every_chunk_on_the_worker_thread() -> None:
    llm = open_model("1.3.0")
    threads: set[int] = set()
    texts: list[str] = []

    def on_token(chunk: StreamChunk) -> None:
        threads.add(threading.get_ident())
        texts.append(chunk.text)

    result = llm.generate("unicode", on_token=on_token)
    assert "".join(texts) == result.text == UNICODE
    assert threads and threading.get_ident() not in threads
    llm.close()


def test_on_token_sees_the_held_back_tail_too_in_generate_and_stream(
        model_file: ModelFile) -> None:
    # " wor" may start the stop string " world": held back until the run ends, then released
    llm = open_model("1.3.0", model_file('default reply "Hello wor"\n'))
    texts: list[str] = []
    result = llm.generate("Hi", stop=[" world"], on_token=lambda c: texts.append(c.text))
    assert "".join(texts) == result.text == "Hello wor"
    streamed: list[str] = []
    chunks = [c.text for c in llm.stream("Hi", stop=[" world"],
                                         on_token=lambda c: streamed.append(c.text))]
    assert streamed == chunks and "".join(chunks) == "Hello wor"
    llm.close()


def test_calling_the_model_from_on_token_raises_instead_of_deadlocking() -> None:
    llm = open_model("1.3.0")
    with pytest.raises(Exception, match="from inside a run's callback"):
        llm.generate("Hello", on_token=lambda chunk: llm.clear_kv_cache())
    assert llm.generate("Hello").text == "I am a scripted model."
    llm.close()


@pytest.mark.parametrize("family", ["1.1", "1.3.0"])
def test_callbacks_from_a_runtime_thread_are_handled(family: str, model_file: ModelFile) -> None:
    llm = open_model(family, model_file(f'callback_thread = runtime\ndefault reply "{UNICODE}"\n'))
    assert "".join(c.text for c in llm.stream("Hi")) == UNICODE
    llm.close()


@pytest.mark.parametrize("llm", FROM_1_2_1, indirect=True)
def test_before_hooks_run_with_the_handle_right_before_the_run(llm: RKLLM) -> None:
    llm.generate("Hello, my name is Alice.", keep_history=True)
    threads: list[int] = []

    def clear(handle: object) -> None:
        threads.append(threading.get_ident())
        assert llm.lib.clear_kv_cache(handle, False) == 0

    result = llm.generate("What is my name?", keep_history=True, before=[clear])
    assert result.text == "I do not know your name."
    assert threads and threads[0] != threading.get_ident()


@pytest.mark.parametrize("llm", FAMILIES, indirect=True)
def test_a_failing_before_hook_stops_the_run_and_is_reraised(llm: RKLLM) -> None:
    def fail(handle: object) -> None:
        raise OSError("hook failed")

    tokens: list[StreamChunk] = []
    with pytest.raises(OSError, match="hook failed"):
        llm.generate("Hello", before=[fail], on_token=tokens.append)
    assert tokens == []
    assert llm.generate("Hello").text == "I am a scripted model."


@pytest.mark.parametrize("family", FAMILIES[:-1])
def test_a_per_run_limit_above_the_load_time_one_still_reports_length(family: str) -> None:
    llm = open_model(family, max_new_tokens=3)
    result = llm.generate("Tell me a long story", max_new_tokens=10)
    assert (result.text, result.finish_reason) == ("Once upon a", "length")
    llm.close()
