"""The host runtime's GGUF engine: a real model (SmolLM2-135M-Instruct) through the ctypes layer.

Built for the 1.3.0 and 1.2.1 families. Sampling is greedy (top_k = 1) so answers are stable.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rkllm_core.host.build import find_llama_cpp
from tests.host.harness import Session

pytestmark = [
    pytest.mark.gguf,
    pytest.mark.skipif(find_llama_cpp() is None and not os.environ.get("CI"),
                       reason="needs the host extra (llama-cpp-python); CI always runs these"),
]

GGUF_FAMILIES = ["1.3.0", "1.2.1"]


def smollm2() -> Path:
    from rkllm_core.host.models import smollm2_path

    return smollm2_path()


@pytest.fixture(params=GGUF_FAMILIES)
def chat(request: pytest.FixtureRequest) -> Any:
    s = Session(request.param, model=smollm2(), top_k=1, max_new_tokens=48)
    yield s
    s.close()


def test_a_factual_question_is_answered_and_streamed_token_by_token(chat: Session) -> None:
    run = chat.run("What is the capital of France?")
    assert run.code == 0
    assert "Paris" in run.text()
    pieces = [e for e in run.events if e.state == 0 and e.texts[0]]
    assert len(pieces) >= 3  # one callback per token, not one for the whole reply
    assert all(e.token_ids[0] >= 0 for e in pieces)
    perf = run.perf
    assert perf["generate_tokens"] == len([e for e in run.events if e.state in (0, 1)])
    assert perf["prefill_tokens"] > 5 and perf["prefill_time_ms"] > 0
    assert perf["memory_usage_mb"] > 50  # the model's weights are resident


def test_keep_history_prefills_only_the_new_turn_and_remembers_the_first(chat: Session) -> None:
    first = chat.run("Hi, I am Alice.", keep_history=1)
    cached = chat.kv_cache_size()[0]
    # the cache holds the first turn: its prefill and what the model said
    assert cached >= first.perf["prefill_tokens"] + first.perf["generate_tokens"] - 1
    second = chat.run("Who am I?", keep_history=1)
    assert "Alice" in second.text()
    assert chat.kv_cache_size()[0] > cached
    assert chat.lib.clear_kv_cache(chat.model.handle, False) == 0
    fresh = chat.run("Who am I?", keep_history=0)
    assert "Alice" not in fresh.text()
    # the second turn prefilled its own tokens only; alone, the same turn pays the system prompt
    assert second.perf["prefill_tokens"] < fresh.perf["prefill_tokens"]


def test_hidden_states_of_paraphrases_are_closer_than_of_unrelated_sentences() -> None:
    s = Session("1.3.0", model=smollm2())

    def vector(text: str) -> np.ndarray:
        run = s.run(text, mode=1)
        assert run.code == 0
        hidden = run.events[0].hidden
        assert hidden is not None and hidden.shape[1] == 576  # SmolLM2-135M's width
        v = hidden.mean(axis=0)
        return np.asarray(v / np.linalg.norm(v))

    a = vector("The cat sat on the mat.")
    b = vector("A cat was sitting on the mat.")
    c = vector("Quarterly tax filings are due in April.")
    assert float(a @ b) > float(a @ c)
    s.close()


def test_logits_argmax_is_the_greedy_first_token(chat: Session) -> None:
    logits_run = chat.run("What is the capital of France?", mode=2)
    logits = logits_run.events[0].logits
    assert logits is not None and logits.shape == (1, 49152)
    greedy = chat.run("What is the capital of France?")
    first = next(e.token_ids[0] for e in greedy.events if e.state in (0, 1))
    assert int(np.argmax(logits[0])) == first


def test_abort_stops_the_run_within_one_token() -> None:
    s = Session("1.3.0", model=smollm2(), top_k=1, max_new_tokens=400, max_context_len=1024)
    tokens_after_abort: list[int] = []
    aborted = threading.Event()

    def on_event(event: Any) -> None:
        if aborted.is_set() and event.state in (0, 1):
            tokens_after_abort.append(event.token_ids[0])
        if len(s.events) == 4 and not aborted.is_set():
            aborted.set()
            s.lib.abort(s.model.handle)  # from inside the callback: the next token is not made

    s.on_event = on_event
    run = s.run("Write a long story about a dragon.")
    assert run.code == 0 and aborted.is_set()
    assert len(tokens_after_abort) <= 1
    assert not s.lib.is_running(s.model.handle)
    s.on_event = None
    assert "Paris" in s.run("What is the capital of France?").text()  # still usable
    s.close()


def test_prompt_cache_save_then_load_reduces_the_next_prefill(
    chat: Session, tmp_path: Path
) -> None:
    cache = tmp_path / "prompt_cache.bin"
    handle = chat.model.handle
    cold = chat.run("What is the capital of France?", save_cache=str(cache))
    assert cache.exists() and cache.stat().st_size > 1000  # real llama.cpp state, not just ids
    assert chat.lib.load_prompt_cache(handle, str(cache).encode()) == 0
    warm = chat.run("What is the capital of France?")
    assert warm.perf["prefill_tokens"] < cold.perf["prefill_tokens"]
    assert warm.text() == cold.text()  # the restored state is the same state
    assert chat.lib.release_prompt_cache(handle) == 0


def _write_lora(path: Path, scale_noise: float = 4.0) -> None:
    """A rank-4 LoRA for SmolLM2's last FFN: random enough to change what the model says."""
    import gguf

    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", 4.0)
    # ffn_down: ne = [1536 (in), 576 (out)]; A: ne [1536, r]; B: ne [r, 576] (numpy reverses)
    writer.add_tensor("blk.29.ffn_down.weight.lora_a",
                      rng.normal(0, scale_noise, (4, 1536)).astype(np.float32))
    writer.add_tensor("blk.29.ffn_down.weight.lora_b",
                      rng.normal(0, scale_noise, (576, 4)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_gguf_lora_is_loaded_and_selected_per_run(chat: Session, tmp_path: Path) -> None:
    adapter_file = tmp_path / "noisy.gguf"
    _write_lora(adapter_file)
    adapter_type = chat.family.struct("RKLLMLoraAdapter")
    handle = chat.model.handle
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf")
    junk_adapter = adapter_type(str(junk).encode(), b"x", 1.0)
    assert chat.lib.load_lora(handle, ctypes.byref(junk_adapter)) != 0
    adapter = adapter_type(str(adapter_file).encode(), b"noisy", 1.0)
    assert chat.lib.load_lora(handle, ctypes.byref(adapter)) == 0
    base = chat.run("What is the capital of France?").text()
    with_lora = chat.run("What is the capital of France?", lora="noisy").text()
    assert with_lora != base
    assert chat.run("What is the capital of France?").text() == base  # deselected again
    unknown = chat.run("Hello", lora="missing")
    assert unknown.code != 0


def test_the_runtime_template_comes_from_the_gguf_and_can_be_switched_off(chat: Session) -> None:
    assert "host engine: gguf" in chat.model.init_log
    templated = chat.run("The capital of France is", keep_history=1)
    # the template wrapped the input: the prefill holds more than the 5 tokens of the text
    assert templated.perf["prefill_tokens"] > 15
    raw = chat.lib.set_chat_template(chat.model.handle, b"", b"", b"")
    assert raw == 0
    # raw text: the model continues the text instead of answering as an assistant
    run = chat.run("The capital of France is")
    assert run.code == 0 and "Paris" in run.text()
    assert run.perf["prefill_tokens"] <= 6


def test_token_and_embedding_inputs_reach_the_model(chat: Session) -> None:
    ids = [28, 19] * 2  # any ids: the model must take them without a template
    run = chat.run(tokens=ids)
    assert run.code == 0 and run.perf["prefill_tokens"] == len(ids)
    embed = np.random.default_rng(1).normal(0, 0.02, (3, 576)).astype(np.float32)
    run = chat.run(embed=embed)
    assert run.code == 0 and run.perf["prefill_tokens"] == 3


def test_max_context_len_above_the_models_limit_fails_init() -> None:
    from rkllm_core.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="max_context"):
        Session("1.3.0", model=smollm2(), max_context_len=100_000)
