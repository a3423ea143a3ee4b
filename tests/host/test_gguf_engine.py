"""The host runtime's GGUF engine: a real model (SmolLM2-135M-Instruct) through the ctypes layer.

Built for the 1.3.0 and 1.2.1 families. The tests assert what the runtime guarantees (prefill
counts, what the KV cache holds, logits and token ids), never the words of a reply: llama.cpp
picks its SIMD kernels by CPU, so a 135M model's greedy reply differs from machine to machine
(exact replies are the scripted engine's business, tests/host/test_runtime_behaviour.py).
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rkllm_core.chat.templates import PRESETS
from rkllm_core.chat.tokenizer import ChatTokenizer
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


@pytest.fixture(scope="module")
def tokenizer() -> ChatTokenizer:
    return ChatTokenizer.from_gguf(smollm2())


def user_turn(tokenizer: ChatTokenizer, text: str) -> list[int]:
    """What the runtime prefills for a user turn once the system prompt is cached: SmolLM2's
    template around the text, which stays text (tokenized as the runtime does, piece by piece)."""
    return (tokenizer.encode("<|im_start|>user\n") + tokenizer.encode(text, parse_special=False)
            + tokenizer.encode("<|im_end|>\n<|im_start|>assistant\n"))


def logits_from_empty_cache(session: Session, prompt: str, **kwargs: Any) -> np.ndarray:
    """The next-token logits after ``prompt`` prefilled from an empty KV cache, so that two
    calls on one machine run the very same computation."""
    session.clear_kv_cache()
    run = session.run(prompt, mode=2, **kwargs)
    assert run.code == 0 and run.events[0].logits is not None
    return np.asarray(run.events[0].logits[0], dtype=np.float64)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    return np.asarray(shifted - np.log(np.exp(shifted).sum()))


# Logits of the same state computed by other kernels (another CPU, another batch split) differ
# by far less than this; another prompt's, or the noisy LoRA's, by more than 15 here.
SAME_STATE_LOGITS = 1.0


def test_a_reply_is_streamed_token_by_token_and_its_text_is_its_tokens(
    chat: Session, tokenizer: ChatTokenizer
) -> None:
    run = chat.run("What is the capital of France?")
    assert run.code == 0 and run.text().strip()
    pieces = [e for e in run.events if e.state == 0 and e.texts[0]]
    assert len(pieces) >= 3  # one callback per token, not one for the whole reply
    ids = [e.token_ids[0] for e in run.events if e.state in (0, 1) and e.token_ids[0] >= 0]
    assert tokenizer.decode(ids, skip_special_tokens=True) == run.text()
    perf = run.perf
    assert perf["generate_tokens"] == len(ids)
    assert perf["prefill_tokens"] > 5 and perf["prefill_time_ms"] > 0
    assert perf["memory_usage_mb"] > 50  # the model's weights are resident


def test_keep_history_prefills_only_the_new_turn_and_the_cache_holds_every_token(
    chat: Session, tokenizer: ChatTokenizer
) -> None:
    first = chat.run("My name is Alice.", keep_history=1)
    cached = chat.kv_cache_size()[0]
    # the cache holds the first turn: all it prefilled and every token the model said
    assert cached == first.perf["prefill_tokens"] + first.perf["generate_tokens"]
    second = chat.run("Who am I?", keep_history=1)
    # with history only the new turn is prefilled: no second system prompt
    assert second.perf["prefill_tokens"] == len(user_turn(tokenizer, "Who am I?"))
    assert chat.kv_cache_size()[0] == (
        cached + second.perf["prefill_tokens"] + second.perf["generate_tokens"])
    chat.clear_kv_cache()
    fresh = chat.run("Who am I?", keep_history=0)
    # alone, the same turn pays the system prompt again, which the first turn's prefill held
    system = first.perf["prefill_tokens"] - len(user_turn(tokenizer, "My name is Alice."))
    assert system > 0
    assert fresh.perf["prefill_tokens"] == system + second.perf["prefill_tokens"]


def test_keep_history_remembers_the_first_turn_in_the_next_tokens_odds(
    chat: Session, tokenizer: ChatTokenizer
) -> None:
    # the question, and the start of the answer, as tokens after whatever the model replied
    probe = tokenizer.encode("<|im_end|>\n<|im_start|>user\nRepeat my name.<|im_end|>\n"
                             "<|im_start|>assistant\nYour name is")
    alice = tokenizer.encode(" Alice")[0]

    def log_odds_of_alice_after(first_turn: str, keep_history: int) -> float:
        chat.clear_kv_cache()
        assert chat.run(first_turn, keep_history=keep_history).code == 0
        run = chat.run(tokens=probe, mode=2, keep_history=1)
        assert run.code == 0 and run.events[0].logits is not None
        return float(log_softmax(run.events[0].logits[0].astype(np.float64))[alice])

    remembered = log_odds_of_alice_after("My name is Alice.", keep_history=1)
    forgotten = log_odds_of_alice_after("My name is Alice.", keep_history=0)
    never_told = log_odds_of_alice_after("Hello.", keep_history=1)
    # measured here: -1.8 remembered, -7.5 forgotten, -7.7 never told (about 300 times as
    # likely); asked: at least 10 times, a margin no CPU's rounding comes near
    assert remembered > max(forgotten, never_told) + math.log(10)


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
    chat.clear_kv_cache()
    logits_run = chat.run("What is the capital of France?", mode=2)
    logits = logits_run.events[0].logits
    assert logits is not None and logits.shape == (1, 49152)
    # from an empty cache again, so greedy decoding sees the very same logits (the top two of
    # this prompt are 0.1 apart: another prefill split could tip them)
    chat.clear_kv_cache()
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
    again = s.run("What is the capital of France?")  # still usable
    assert again.code == 0 and again.text().strip() and again.finish.perf
    s.close()


def test_prompt_cache_save_then_load_serves_the_whole_prompt(
    chat: Session, tmp_path: Path
) -> None:
    cache = tmp_path / "prompt_cache.bin"
    handle = chat.model.handle
    question = "What is the capital of France?"
    chat.clear_kv_cache()
    cold = chat.run(question, save_cache=str(cache))
    assert cold.code == 0 and cold.perf["prefill_tokens"] > 5
    assert cache.exists() and cache.stat().st_size > 1000  # real llama.cpp state, not just ids
    cold_logits = logits_from_empty_cache(chat, question)
    assert chat.lib.load_prompt_cache(handle, str(cache).encode()) == 0
    # an empty cache, so only the loaded prompt cache can spare the prefill
    chat.clear_kv_cache()
    warm = chat.run(question, mode=2)
    assert warm.perf["prefill_tokens"] == 0  # every token of the prompt came from the file
    assert warm.events[0].logits is not None
    # the restored state is the same state: the next token's logits agree
    assert np.abs(warm.events[0].logits[0] - cold_logits).max() < SAME_STATE_LOGITS
    assert chat.lib.release_prompt_cache(handle) == 0
    chat.clear_kv_cache()
    released = chat.run(question, mode=2)
    assert released.perf["prefill_tokens"] == cold.perf["prefill_tokens"]


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
    question = "What is the capital of France?"
    base = logits_from_empty_cache(chat, question)
    with_lora = logits_from_empty_cache(chat, question, lora="noisy")
    assert np.abs(with_lora - base).max() > SAME_STATE_LOGITS  # 38 here
    deselected = logits_from_empty_cache(chat, question)
    assert np.abs(deselected - base).max() < SAME_STATE_LOGITS  # 0 here: the same computation
    assert chat.run(question, lora="noisy").code == 0  # generation takes the adapter too
    unknown = chat.run("Hello", lora="missing")
    assert unknown.code != 0


def test_the_runtime_template_comes_from_the_gguf_and_can_be_switched_off(
    chat: Session, tokenizer: ChatTokenizer
) -> None:
    assert "host engine: gguf" in chat.model.init_log
    text = "The capital of France is"
    templated = chat.run(text, keep_history=1)
    # the GGUF's template wrapped the input: its system prompt and turn markers, token for token
    rendered = PRESETS["smollm"].render([{"role": "user", "content": text}])
    assert templated.perf["prefill_tokens"] == len(tokenizer.encode(rendered))
    raw = chat.lib.set_chat_template(chat.model.handle, b"", b"", b"")
    assert raw == 0
    # raw text: exactly the text's own tokens are prefilled, and the model continues them
    run = chat.run(text)
    assert run.code == 0 and run.text()
    assert run.perf["prefill_tokens"] == len(tokenizer.encode(text)) == 5


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
