"""Hidden states, embeddings, logits, reranking, KV cache, templates, tools, caches, info."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rkllm_core import (
    RKLLM,
    ExtendParams,
    InvalidParameterError,
    ModelLoadError,
    RKLLMError,
    UnsupportedFeatureError,
)
from tests.core.conftest import FAMILIES, FROM_1_2_0, FROM_1_2_1, ModelFile, open_model

ROOT = Path(__file__).resolve().parent.parent.parent
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]


def scripted_tokenize(text: str, vocab_size: int) -> list[int]:
    """The scripted engine's tokenizer: words (with their leading space) or single bytes."""

    def is_word(byte: int) -> bool:
        return byte < 0x80 and (chr(byte).isalnum() or byte == ord("_"))

    data, ids, i = text.encode(), [], 0
    while i < len(data):
        start = i
        if data[i] == 32 and i + 1 < len(data) and is_word(data[i + 1]):
            i += 1
        if is_word(data[i]):
            while i < len(data) and is_word(data[i]):
                i += 1
        else:
            i += 1
        piece = data[start:i]
        if len(piece) == 1:
            ids.append(piece[0])
            continue
        h = 1469598103934665603
        for byte in piece:
            h = ((h ^ byte) * 1099511628211) % 2**64
        ids.append(256 + h % (vocab_size - 264))
    return ids


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("llm", FAMILIES, indirect=True)
def test_hidden_states_are_copied_per_token(llm: RKLLM) -> None:
    first = llm.hidden_states(tokens=[300, 301, 302])
    assert first.shape == (3, 32) and first.dtype == np.float32
    llm.generate("What is the capital of France?")  # the runtime reuses its buffers
    assert np.array_equal(llm.hidden_states(tokens=[300, 301, 302]), first)


@pytest.mark.parametrize("llm", FAMILIES, indirect=True)
def test_embeddings_of_similar_texts_are_closer(llm: RKLLM) -> None:
    cat, cat2, other = llm.embed(["the cat sat on the warm mat", "a cat sat on a mat",
                                  "quarterly revenue grew in europe"])
    assert cosine(cat, cat2) > cosine(cat, other)
    assert np.linalg.norm(cat) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("llm", FAMILIES, indirect=True)
def test_embedding_a_text_gives_the_same_vector_every_time(llm: RKLLM) -> None:
    once = llm.embed("the cat sat", pooling="last", normalize=False)
    twice = llm.embed(["the cat sat", "the cat sat"], pooling="last", normalize=False)
    assert np.array_equal(twice[0], once[0]) and np.array_equal(twice[1], once[0])
    assert not np.array_equal(llm.embed("the cat sat", instruction="Find pets")[0],
                              llm.embed("the cat sat")[0])
    with pytest.raises(InvalidParameterError, match="pooling"):
        llm.embed("x", pooling="max")  # type: ignore[arg-type]


@pytest.mark.parametrize("llm", FROM_1_2_0, indirect=True)
def test_logits_argmax_is_the_first_generated_token(llm: RKLLM) -> None:
    logits = llm.logits("What is the capital of France?")
    assert logits.shape == (1, 4096)
    first = llm.generate("What is the capital of France?").token_ids[0]
    assert int(np.argmax(logits[-1])) == first


@pytest.mark.parametrize("family", FROM_1_2_0)
def test_rerank_scores_relevant_documents_near_one(family: str, model_file: ModelFile) -> None:
    path = model_file('vocab_size = 2048\nwhen contains "paris" reply "yes"\ndefault reply "no"\n')
    llm = open_model(family, path, tokenizer=lambda text: scripted_tokenize(text, 2048))
    scores = llm.rerank("What is the capital of France?",
                        ["Paris is the capital of France.", "Bananas are yellow."])
    assert scores[0] > 0.99 and scores[1] < 0.01
    llm.close()


@pytest.mark.parametrize("llm", FROM_1_2_0, indirect=True)
def test_rerank_without_token_ids_says_how_to_provide_them(llm: RKLLM) -> None:
    with pytest.raises(UnsupportedFeatureError, match="tokenizer="):
        llm.rerank("query", ["document"])
    with pytest.raises(InvalidParameterError, match="outside the vocabulary"):
        llm.rerank("query", ["document"], yes_token_id=10**6, no_token_id=1)


def test_logits_and_rerank_need_1_2_0() -> None:
    llm = open_model("1.1")
    with pytest.raises(UnsupportedFeatureError, match=r"needs runtime 1.2.0"):
        llm.logits("Hello")
    with pytest.raises(UnsupportedFeatureError, match=r"needs runtime 1.2.0"):
        llm.rerank("q", ["d"], yes_token_id=1, no_token_id=2)
    llm.close()


@pytest.mark.parametrize("llm", FROM_1_2_1, indirect=True)
def test_kv_cache_size_grows_with_history_and_clears(llm: RKLLM) -> None:
    first = llm.generate("Hello, my name is Alice.", keep_history=True)
    assert first.perf.prefill_tokens is not None
    size = llm.kv_cache_size
    assert size == first.perf.prefill_tokens + first.perf.decode_tokens
    llm.clear_kv_cache(ranges=(2, 7))
    assert llm.kv_cache_size == size - 5
    llm.clear_kv_cache(keep_system_prompt=True)
    assert 0 < llm.kv_cache_size < size - 5
    llm.clear_kv_cache()
    assert llm.kv_cache_size == 0
    with pytest.raises(RKLLMError, match="rkllm_clear_kv_cache failed"):
        llm.clear_kv_cache(ranges=[(0, 10_000)])
    with pytest.raises(InvalidParameterError, match="start < end"):
        llm.clear_kv_cache(ranges=(5, 2))


def test_clear_kv_cache_on_1_2_0_forgets_the_conversation() -> None:
    llm = open_model("1.2.0")
    llm.generate("Hello, my name is Alice.", keep_history=True)
    llm.clear_kv_cache()
    assert llm.generate("What is my name?", keep_history=True).text == "I do not know your name."
    with pytest.raises(UnsupportedFeatureError, match=r"needs runtime 1.2.1"):
        llm.clear_kv_cache(ranges=(0, 1))
    with pytest.raises(UnsupportedFeatureError, match=r"needs runtime 1.2.1"):
        _ = llm.kv_cache_size
    llm.close()


@pytest.mark.parametrize(("call", "release"), [
    (lambda m: m.clear_kv_cache(), "1.2.0"),
    (lambda m: m.kv_cache_size, "1.2.1"),
    (lambda m: m.set_chat_template("", "", ""), "1.2.0"),
    (lambda m: m.set_function_tools("", TOOLS), "1.2.1"),
    (lambda m: m.set_cross_attn_params(np.zeros(4), np.zeros(4), np.zeros(2), np.zeros(2)),
     "1.2.1"),
])
def test_settings_the_1_1_runtime_lacks_raise_naming_the_release(call: object,
                                                                  release: str) -> None:
    llm = open_model("1.1")
    with pytest.raises(UnsupportedFeatureError, match=f"needs runtime {re.escape(release)}"):
        call(llm)  # type: ignore[operator]
    assert llm.generate("Hello").text == "I am a scripted model."
    llm.close()


@pytest.mark.parametrize("llm", FROM_1_2_0, indirect=True)
def test_an_empty_chat_template_sends_prompts_raw(llm: RKLLM) -> None:
    templated = llm.generate("What is my name?").perf.prefill_tokens
    llm.set_chat_template("", "", "")
    raw = llm.generate("What is my name?")
    assert raw.text == "I do not know your name."
    if templated is not None:
        assert raw.perf.prefill_tokens == 5


@pytest.mark.parametrize("llm", FROM_1_2_1, indirect=True)
def test_function_tools_round_trip(llm: RKLLM) -> None:
    assert llm.generate("What is the weather?").text == "I am a scripted model."
    llm.set_function_tools("You are helpful.", TOOLS)
    call = llm.generate("What is the weather in Paris?", keep_history=True).text
    assert json.loads(call.split("\n")[1])["name"] == "get_weather"
    answer = llm.generate('{"temperature": 21}', role="tool", keep_history=True)
    assert answer.text == "It is sunny in Paris."
    llm.set_function_tools("You are helpful.", json.dumps(TOOLS))
    with pytest.raises(InvalidParameterError, match="not valid JSON"):
        llm.set_function_tools("", "not json")
    with pytest.raises(InvalidParameterError, match="JSON array"):
        llm.set_function_tools("", '{"type": "function"}')


def test_function_tools_without_a_model_template_fail_with_the_reason(
    model_file: ModelFile,
) -> None:
    llm = open_model("1.2.3", model_file("chat_template = none\n"))
    with pytest.raises(RKLLMError, match="needs its own chat template"):
        llm.set_function_tools("", TOOLS)
    llm.close()


@pytest.mark.parametrize("llm", FROM_1_2_1, indirect=True)
def test_a_saved_prompt_cache_shortens_the_next_prefill(llm: RKLLM, tmp_path: Path) -> None:
    cache = tmp_path / "cache.bin"
    cold = llm.generate("What is the capital of France?", save_prompt_cache=cache)
    assert cache.exists()
    llm.load_prompt_cache(cache)
    llm.clear_kv_cache()
    warm = llm.generate("What is the capital of France?")
    assert warm.text == cold.text
    assert warm.perf.prefill_tokens is not None and cold.perf.prefill_tokens is not None
    assert warm.perf.prefill_tokens < cold.perf.prefill_tokens
    llm.release_prompt_cache()
    with pytest.raises(InvalidParameterError, match="does not exist"):
        llm.load_prompt_cache(tmp_path / "missing.bin")
    (tmp_path / "junk.bin").write_bytes(b"junk")
    with pytest.raises(RKLLMError, match="rkllm_load_prompt_cache"):
        llm.load_prompt_cache(tmp_path / "junk.bin")


@pytest.mark.parametrize("llm", ["1.1", "1.2.0"], indirect=True)
def test_prompt_cache_files_are_written_on_older_runtimes(llm: RKLLM, tmp_path: Path) -> None:
    cache = tmp_path / "cache.bin"
    llm.generate("Hello", save_prompt_cache=cache)
    assert cache.stat().st_size > 0
    llm.load_prompt_cache(cache)
    llm.release_prompt_cache()


@pytest.mark.parametrize("family", FROM_1_2_1)
def test_cross_attention_params_need_use_cross_attn(family: str) -> None:
    kv = np.zeros((1, 2, 1, 4), dtype=np.float32)
    mask, pos = np.ones(2, dtype=np.float32), np.arange(2)
    plain = open_model(family)
    with pytest.raises(RKLLMError, match="use_cross_attn=True"):
        plain.set_cross_attn_params(kv, kv, mask, pos)
    with pytest.raises(InvalidParameterError, match="one entry per encoder token"):
        plain.set_cross_attn_params(kv, kv, np.ones(3, dtype=np.float32), pos)
    plain.close()
    cross = open_model(family, extend=ExtendParams(use_cross_attn=True))
    cross.set_cross_attn_params(kv, kv, mask, pos)
    assert cross.generate("Hello").text == "I am a scripted model."
    cross.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_runtime_info_reports_the_library_and_the_init_log(family: str,
                                                          model_file: ModelFile) -> None:
    llm = open_model(family, model_file("platform = RK3576\nmax_context_limit = 2048\n"))
    info = llm.runtime_info
    assert (info.family, info.detection_method, info.is_host_runtime) == (family, "explicit", True)
    assert info.release.startswith(family)
    assert Path(info.library_path).is_file()
    assert (info.platform, info.model_platform, info.max_context_limit) == \
        ("HOST", "RK3576", 2048)
    assert info.driver_version == "none (host runtime)"
    assert info.toolkit_version is not None
    llm.close()


def test_n_batch_needs_1_2_1_and_is_refused_before_loading_on_older_runtimes() -> None:
    with pytest.raises(UnsupportedFeatureError, match=r"1\.2\.1"):
        open_model("1.2.0", extend=ExtendParams(n_batch=2))
    batched = open_model("1.3.0", extend=ExtendParams(n_batch=2))  # batches: test_batch.py
    assert batched.n_batch == 2
    batched.close()


def test_a_1_3_0_model_without_tokenizer_uses_the_given_tokenizer(model_file: ModelFile) -> None:
    path = model_file('needs_tokenizer_callback = yes\ndefault reply "ok"\n')
    seen: list[str] = []

    def tokenize(text: str) -> list[int]:
        seen.append(text)
        return list(text.encode())

    with pytest.raises(ModelLoadError, match="tokenizer"):
        open_model("1.3.0", path)
    llm = open_model("1.3.0", path, tokenizer=tokenize)
    assert llm.generate("Hi!").text == "ok"
    assert "Hi!" in seen
    llm.close()


def test_importing_the_package_loads_only_numpy_and_pydantic() -> None:
    code = ("import sys, rkllm_core\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('langchain', "
            "'langchain_core', 'llama_cpp', 'llama_index', 'torch', 'transformers')]\n"
            "print(heavy, 'rkllm_core.host.build' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[] False"


def test_a_board_init_log_is_parsed_into_platform_driver_and_limits() -> None:
    from rkllm_core.model import parse_init_log

    log = ("I rkllm: rkllm-runtime version: 1.2.1, rknpu driver version: 0.9.8, platform: RK3588\n"
           "I rkllm: rkllm-toolkit version: 1.2.1, max_context_limit: 4096, npu_core_num: 3, "
           "target_platform: RK3576, model_dtype: W8A8\n")
    assert parse_init_log(log) == {"platform": "RK3588", "driver_version": "0.9.8",
                                   "model_platform": "RK3576", "toolkit_version": "1.2.1",
                                   "max_context_limit": 4096}
    assert set(parse_init_log("").values()) == {None}
