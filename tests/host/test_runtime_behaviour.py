"""The host runtime, built for every family, driven through our ctypes layer.

Each test pins one behaviour of librkllmrt that a binding relies on (SEMANTICS.md), on every
family that has it.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rkllm_core.errors import ModelLoadError
from rkllm_core.library import load_library
from tests.host.harness import FAMILIES, MODELS, Session

FROM_1_2_0 = FAMILIES[1:]
FROM_1_2_1 = FAMILIES[2:]


@pytest.fixture
def session(request: pytest.FixtureRequest) -> Iterator[Session]:
    s = Session(request.param)
    yield s
    s.close()


def write_model(tmp_path: Path, body: str, name: str = "model.scripted") -> Path:
    path = tmp_path / name
    path.write_text("RKLLM-SCRIPTED 1\n" + body)
    return path


@pytest.mark.parametrize("family", FAMILIES)
def test_default_param_has_rockchips_documented_defaults(family: str) -> None:
    param = load_library("host", runtime_version=family).create_default_param()
    assert param.top_k == 40
    assert param.top_p == pytest.approx(0.9)
    assert param.temperature == pytest.approx(0.8)
    assert param.repeat_penalty == pytest.approx(1.1)
    assert (param.frequency_penalty, param.presence_penalty, param.mirostat) == (0, 0, 0)
    assert param.mirostat_tau == pytest.approx(5.0)
    assert param.mirostat_eta == pytest.approx(0.1)
    assert param.extend_param.base_domain_id == 0
    if family != "1.1":
        assert param.extend_param.enabled_cpus_num == 4
    if family in FROM_1_2_1:
        assert param.extend_param.n_batch == 1


@pytest.mark.parametrize("session", FAMILIES, indirect=True)
def test_one_callback_per_token_then_finish(session: Session) -> None:
    run = session.run("What is the capital of France?")
    assert run.code == 0
    assert run.text() == "The capital of France is Paris."
    assert run.states[-1] == 2 and set(run.states[:-1]) == {0}
    tokens = [e.token_ids[0] for e in run.events[:-1]]
    assert len(tokens) > 5 and all(t >= 0 for t in tokens)
    assert run.finish.texts == [None]  # text may be NULL: the binding must cope


@pytest.mark.parametrize("session", FAMILIES, indirect=True)
def test_multibyte_characters_arrive_whole_after_waiting_states(session: Session) -> None:
    run = session.run("unicode please")
    assert run.text() == "Grüße 你好 🙂!"
    waiting = [e for e in run.events if e.state == 1]
    assert waiting and all(e.texts == [b""] for e in waiting)
    for e in run.events:
        if e.state == 0:
            e.texts[0].decode("utf-8")  # every NORMAL text is complete UTF-8 # type: ignore[union-attr]


@pytest.mark.parametrize("session", FROM_1_2_1, indirect=True)
def test_finish_carries_perf_stats(session: Session) -> None:
    run = session.run("What is the capital of France?")
    perf = run.perf
    generated = sum(1 for e in run.events if e.state in (0, 1))
    assert perf["generate_tokens"] == generated
    assert perf["prefill_tokens"] > len(["What", "is", "the", "capital", "of", "France?"])
    assert perf["prefill_time_ms"] > 0 and perf["generate_time_ms"] > 0
    assert perf["memory_usage_mb"] > 10  # VmHWM of this process


@pytest.mark.parametrize("session", FROM_1_2_1, indirect=True)
def test_keep_history_carries_the_conversation_and_prefills_only_new_tokens(
    session: Session,
) -> None:
    first = session.run("Hello, my name is Alice.", keep_history=1)
    size_after_first = session.kv_cache_size()[0]
    assert size_after_first == first.perf["prefill_tokens"] + first.perf["generate_tokens"]
    second = session.run("What is my name?", keep_history=1)
    assert second.text() == "Your name is Alice."
    assert second.perf["prefill_tokens"] < first.perf["prefill_tokens"]  # no system prompt again
    assert session.kv_cache_size()[0] == size_after_first + second.perf["prefill_tokens"] + \
        second.perf["generate_tokens"]


@pytest.mark.parametrize("session", FROM_1_2_1, indirect=True)
def test_without_keep_history_each_run_is_independent(session: Session) -> None:
    first = session.run("Hello, my name is Alice.", keep_history=0)
    system_len = session.kv_cache_size()[0]
    assert 0 < system_len < first.perf["prefill_tokens"]  # only the system prompt stays cached
    assert session.run("What is my name?", keep_history=0).text() == "I do not know your name."


@pytest.mark.parametrize("session", FROM_1_2_1, indirect=True)
def test_clear_kv_cache_whole_keeping_system_prompt_and_ranges(session: Session) -> None:
    session.run("Hello, my name is Alice.", keep_history=1)
    session.run("Tell me a long story", keep_history=1)
    full = session.kv_cache_size()[0]
    start, end = (ctypes.c_int * 1)(2), (ctypes.c_int * 1)(7)
    assert session.lib.clear_kv_cache(session.model.handle, False, start, end) == 0
    assert session.kv_cache_size()[0] == full - 5
    bad_start, bad_end = (ctypes.c_int * 1)(0), (ctypes.c_int * 1)(full + 10)
    assert session.lib.clear_kv_cache(session.model.handle, False, bad_start, bad_end) != 0
    assert session.lib.clear_kv_cache(session.model.handle, True) == 0
    system_len = session.kv_cache_size()[0]
    assert 0 < system_len < full - 5
    assert session.run("What is my name?", keep_history=1).text() == "I do not know your name."
    assert session.lib.clear_kv_cache(session.model.handle, False) == 0
    assert session.kv_cache_size() == [0]


def test_clear_kv_cache_on_1_2_0_takes_two_arguments() -> None:
    s = Session("1.2.0")
    s.run("Hello, my name is Alice.", keep_history=1)
    assert s.lib.clear_kv_cache(s.model.handle, False) == 0
    assert s.run("What is my name?", keep_history=1).text() == "I do not know your name."
    s.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_init_fails_when_max_context_len_exceeds_the_model_limit(family: str) -> None:
    with pytest.raises(ModelLoadError, match="max_context_limit \\(1024\\)") as info:
        Session(family, max_context_len=4096)
    assert "lower it" in str(info.value)


@pytest.mark.parametrize("family", ["1.1", "1.3.0"])
def test_a_corrupt_model_file_raises_model_load_error(family: str, tmp_path: Path) -> None:
    corrupt = tmp_path / "broken.rkllm"
    corrupt.write_bytes(b"\x00\x13garbage that is no model" * 10)
    with pytest.raises(ModelLoadError, match="magic") as info:
        Session(family, model=corrupt)
    assert "toolkit release" in str(info.value)


def test_a_scripted_model_with_a_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write_model(tmp_path, "vocab_size = 4096\nwhen contains reply\n")
    with pytest.raises(ModelLoadError, match="line 3"):
        Session("1.3.0", model=path)


def test_init_logs_the_release_before_reading_the_model(capfd: pytest.CaptureFixture[str]) -> None:
    lib = load_library("host", runtime_version="1.2.3")
    param = lib.create_default_param()
    missing = b"/nonexistent/model.rkllm"
    param.model_path = missing
    handle = ctypes.c_void_p()
    null_callback = lib.family.result_callback()  # a NULL function pointer
    assert lib.init(ctypes.byref(handle), ctypes.byref(param), null_callback) != 0
    assert handle.value is None
    err = capfd.readouterr().err
    assert "I rkllm: rkllm-runtime version: 1.2.3" in err
    assert err.index("rkllm-runtime version") < err.index("failed to open model file")


@pytest.mark.parametrize("family", FROM_1_2_1)
def test_board_only_parameters_are_accepted_and_reported(
    family: str, capfd: pytest.CaptureFixture[str]
) -> None:
    s = Session(family, enabled_cpus_mask=0xF0, enabled_cpus_num=4, base_domain_id=1,
                embed_flash=1)
    assert s.run("What is the capital of France?").code == 0
    s.close()
    err = capfd.readouterr().err
    assert "Enabled cpus: [4, 5, 6, 7]" in err
    assert "recorded, not applied" in err


@pytest.mark.parametrize("family", FROM_1_2_0)
def test_set_chat_template_with_empty_strings_sends_the_prompt_raw(
    family: str, capfd: pytest.CaptureFixture[str]
) -> None:
    s = Session(family)
    s.run("Hello, my name is Alice.", keep_history=1)
    assert s.lib.set_chat_template(s.model.handle, b"", b"", b"") == 0
    err = capfd.readouterr().err
    assert "All kv caches have been deleted!" in err and "disable" in err
    run = s.run("What is my name?", keep_history=1)
    assert run.text() == "I do not know your name."  # the cache was cleared
    if family in FROM_1_2_1:
        assert run.perf["prefill_tokens"] == 5  # 'What', ' is', ' my', ' name', '?': raw
        assert s.kv_cache_size()[0] == run.perf["prefill_tokens"] + run.perf["generate_tokens"]
    s.close()


@pytest.mark.parametrize("family", FROM_1_2_1)
def test_function_tools_need_a_chat_template(family: str, tmp_path: Path,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    bare = Session(family, model=write_model(tmp_path, "chat_template = none\n"))
    tools = b'[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]'
    assert bare.lib.set_function_tools(bare.model.handle, b"", tools, b"tool_response") != 0
    assert "chat_template is empty" in capfd.readouterr().err
    bare.close()


@pytest.mark.parametrize("session", FROM_1_2_1, indirect=True)
def test_tool_call_round_trip_with_role_tool(session: Session) -> None:
    assert session.run("What is the weather?").text() == "I am a scripted model."
    tools = b'[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]'
    handle = session.model.handle
    assert session.lib.set_function_tools(handle, b"You are helpful.", tools,
                                          b"tool_response") == 0
    call = session.run("What is the weather in Paris?", keep_history=1)
    assert call.text().startswith("<tool_call>\n{\"name\": \"get_weather\"")
    result = session.run('{"temperature": 21}', role="tool", keep_history=1)
    assert result.text() == "It is sunny in Paris."
    assert session.lib.set_function_tools(handle, b"", b"not json", b"tool_response") != 0


@pytest.mark.parametrize("session", FROM_1_2_1, indirect=True)
def test_enable_thinking_adds_the_reasoning_block(session: Session) -> None:
    thinking = session.run("Think about France", enable_thinking=True).text()
    assert thinking == "<think>\nThe user asks about France.\n</think>\n\nParis is the capital."
    assert session.run("Think about France", enable_thinking=False).text() == \
        "Paris is the capital."


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("session", FAMILIES, indirect=True)
def test_last_hidden_layer_mode_returns_per_token_states(session: Session) -> None:
    def embed(text: str) -> np.ndarray:
        run = session.run(text, mode=1)
        assert run.code == 0
        hidden_state = 4 if session.family.key == "1.1" else 0  # 1.1 has its own state
        events = [e for e in run.events if e.hidden is not None]
        assert len(events) == 1 and events[0].state == hidden_state
        assert run.states[-1] == 2
        states = events[0].hidden
        assert states is not None and states.shape[1] == 32
        return states.mean(axis=0)

    cat = embed("the cat sat on the warm mat")
    cat2 = embed("a cat sat on a mat")
    other = embed("quarterly revenue grew in europe")
    assert _cos(cat, cat2) > _cos(cat, other)


@pytest.mark.parametrize("session", FROM_1_2_0, indirect=True)
def test_logits_mode_argmax_is_the_greedy_token(session: Session) -> None:
    run = session.run("What is the capital of France?", mode=2)
    logits = [e.logits for e in run.events if e.logits is not None]
    assert len(logits) == 1 and logits[0] is not None and logits[0].shape == (1, 4096)
    generated = session.run("What is the capital of France?")
    assert int(np.argmax(logits[0][0])) == generated.events[0].token_ids[0]


@pytest.mark.parametrize("session", FAMILIES, indirect=True)
def test_token_and_embedding_inputs_are_not_templated(session: Session) -> None:
    token_run = session.run(tokens=[72, 105, 33])
    assert token_run.text() == "Token input received."
    embed_run = session.run(embed=np.ones((3, 32), dtype=np.float32))
    assert embed_run.text() == "Embedding input received."
    if session.family.key in FROM_1_2_1:
        assert token_run.perf["prefill_tokens"] in (3, 3 + session.kv_cache_size()[0])
    bad = session.run(tokens=[1, 999_999])
    assert bad.code != 0 and bad.states == [3]


@pytest.mark.parametrize("family", ["1.2.1", "1.3.0"])
def test_multimodal_input_checks_image_count(family: str) -> None:
    s = Session(family)
    mm = s.family.struct("RKLLMInput")()
    mm.role = b"user"
    mm.input_type = 3
    embed = np.zeros((2, 16, 32), dtype=np.float32)
    mm.multimodal_input.prompt = b"<image><image>What is in these pictures?"
    image = mm.multimodal_input.image if family == "1.3.0" else mm.multimodal_input
    image.image_embed = embed.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    image.n_image_tokens = 16
    image.n_image = 2
    ok = s.run(inputs=[mm])
    assert ok.text() == "I see an image."
    assert ok.perf["prefill_tokens"] > 32  # both images' tokens were prefilled
    image.n_image = 1
    bad = s.run(inputs=[mm])
    assert bad.code != 0 and bad.states == [3]
    s.close()


@pytest.mark.parametrize("session", FAMILIES, indirect=True)
def test_lora_adapters_load_from_files_and_are_selected_per_run(
    session: Session, tmp_path: Path
) -> None:
    handle = session.model.handle
    adapter_type = session.family.struct("RKLLMLoraAdapter")
    missing = adapter_type(str(tmp_path / "missing.gguf").encode(), b"pirate", 1.0)
    assert session.lib.load_lora(handle, ctypes.byref(missing)) != 0
    (tmp_path / "pirate.gguf").write_bytes(b"adapter")
    adapter = adapter_type(str(tmp_path / "pirate.gguf").encode(), b"pirate", 1.0)
    assert session.lib.load_lora(handle, ctypes.byref(adapter)) == 0
    assert session.run("Hello", lora="pirate").text() == "Arr, matey!"
    assert session.run("Hello").text() == "I am a scripted model."
    unknown = session.run("Hello", lora="ninja")
    assert unknown.code != 0 and unknown.states == [3]


@pytest.mark.parametrize("session", FROM_1_2_1, indirect=True)
def test_prompt_cache_save_then_load_reduces_the_next_prefill(
    session: Session, tmp_path: Path
) -> None:
    cache = tmp_path / "prompt_cache.bin"
    handle = session.model.handle
    cold = session.run("What is the capital of France?", save_cache=str(cache))
    assert cache.exists() and cold.perf["prefill_tokens"] > 0
    assert session.lib.load_prompt_cache(handle, str(cache).encode()) == 0
    session.lib.clear_kv_cache(handle, False)
    warm = session.run("What is the capital of France?")
    assert warm.text() == "The capital of France is Paris."
    assert warm.perf["prefill_tokens"] < cold.perf["prefill_tokens"]
    assert session.lib.release_prompt_cache(handle) == 0
    session.lib.clear_kv_cache(handle, False)
    assert session.run("What is the capital of France?").perf["prefill_tokens"] == \
        cold.perf["prefill_tokens"]
    assert session.lib.load_prompt_cache(handle, str(tmp_path / "nope.bin").encode()) != 0
    (tmp_path / "junk.bin").write_bytes(b"junk")
    assert session.lib.load_prompt_cache(handle, str(tmp_path / "junk.bin").encode()) != 0


PACED = "decode_tokens_per_second = 40\nprefill_tokens_per_second = 2000\n"


@pytest.mark.parametrize("family", FAMILIES)
def test_abort_from_another_thread_stops_the_run_within_a_token(
    family: str, tmp_path: Path
) -> None:
    reply = 'default reply "' + "word " * 200 + '"'
    s = Session(family, model=write_model(tmp_path, PACED + reply))
    running_seen: list[bool] = []

    def on_event(event: object) -> None:
        if len(s.events) == 3:
            running_seen.append(s.lib.is_running(s.model.handle))
            threading.Thread(target=s.lib.abort, args=(s.model.handle,)).start()

    s.on_event = on_event
    started = time.monotonic()
    run = s.run("go")
    assert run.code == 0 and running_seen == [True]
    assert len([e for e in run.events if e.state == 0]) <= 5
    assert time.monotonic() - started < 2
    assert not s.lib.is_running(s.model.handle)
    s.on_event = None
    assert s.run("again").text().startswith("word word")
    s.close()


@pytest.mark.parametrize("session", FROM_1_2_1, indirect=True)
def test_callback_returning_1_pauses_and_keeps_the_cache(session: Session) -> None:
    session.reply = [0, 0, 1]
    run = session.run("Tell me a long story", keep_history=0)
    assert run.code == 0 and len(run.events) == 3 and 2 not in run.states
    assert session.kv_cache_size()[0] > 3  # paused: the cache is not cleared


@pytest.mark.parametrize("family", FROM_1_2_1)
def test_a_garbage_callback_return_value_is_reported(family: str,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    """NativeModel never returns garbage (see test_native); a raw callback that does is logged."""
    lib = load_library("host", runtime_version=family)
    raw = lib.family.result_callback(lambda result, userdata, state: -1337410544)
    param = lib.create_default_param()
    param.model_path = str(MODELS / "assistant.scripted").encode()
    handle = ctypes.c_void_p()
    callbacks = lib.family.struct("RKLLMCallback")(raw) if family == "1.3.0" else None
    assert lib.init(ctypes.byref(handle), ctypes.byref(param),
                    ctypes.byref(callbacks) if callbacks else raw) == 0
    inp = lib.family.struct("RKLLMInput")(role=b"user", input_type=0)
    inp.prompt_input = b"Hello"
    infer = lib.family.struct("RKLLMInferParam")()
    assert lib.run(handle, ctypes.byref(inp), ctypes.byref(infer), None) == 0
    assert lib.destroy(handle) == 0
    assert "the result callback returned -1337410544" in capfd.readouterr().err


@pytest.mark.parametrize("family", ["1.1", "1.3.0"])
def test_callbacks_can_come_from_a_runtime_thread(family: str, tmp_path: Path) -> None:
    model = write_model(tmp_path, 'callback_thread = runtime\ndefault reply "Hi there."')
    s = Session(family, model=model)
    run = s.run("Hello")
    assert run.text() == "Hi there."
    assert {e.thread for e in run.events} != {threading.get_ident()}
    caller = Session(family)
    assert {e.thread for e in caller.run("Hello").events} == {threading.get_ident()}
    s.close()
    caller.close()


@pytest.mark.parametrize("family", ["1.2.3", "1.3.0"])
def test_run_async_returns_at_once_and_calls_back_from_its_thread(
    family: str, tmp_path: Path
) -> None:
    s = Session(family, model=write_model(tmp_path, PACED + 'default reply "a b c d e f"'))
    done = threading.Event()
    s.on_event = lambda e: done.set() if e.state == 2 else None
    inp, ip = s.make_input("Hello"), s.make_infer()
    run_async = s.lib.function("rkllm_run_async")  # rkllm-py never calls it (rknn-llm #320)
    assert run_async(s.model.handle, ctypes.byref(inp), ctypes.byref(ip), None) == 0
    assert s.lib.is_running(s.model.handle) and not done.is_set()  # it returned mid-run
    assert done.wait(5)
    assert b"".join(e.texts[0] or b"" for e in s.events if e.state == 0) == b"a b c d e f"
    assert {e.thread for e in s.events} != {threading.get_ident()}
    deadline = time.monotonic() + 5
    while s.lib.is_running(s.model.handle) and time.monotonic() < deadline:
        time.sleep(0.005)
    s.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_an_injected_error_ends_the_run_with_run_error(family: str, tmp_path: Path) -> None:
    model = write_model(tmp_path, 'error_after_tokens = 2\ndefault reply "a b c d"')
    s = Session(family, model=model)
    run = s.run("Hello")
    assert run.code == -1
    assert run.states == [0, 0, 3]
    s.close()


def test_max_new_tokens_from_init_and_per_run_on_1_3_0() -> None:
    s = Session("1.3.0", max_new_tokens=4)
    assert s.run("Tell me a long story").perf["generate_tokens"] == 4
    assert s.run("Tell me a long story", max_new_tokens=2).perf["generate_tokens"] == 2
    sampled = s.run("Tell me a long story",
                    sampling={"top_k": 1, "top_p": 1.0, "temperature": 0.0,
                              "repeat_penalty": 1.0, "frequency_penalty": 0.0,
                              "presence_penalty": 0.0, "mirostat": 0, "mirostat_tau": 5.0,
                              "mirostat_eta": 0.1})
    assert sampled.code == 0 and sampled.perf["generate_tokens"] == 4
    s.close()


@pytest.mark.parametrize("family", ["1.2.1", "1.3.0"])
def test_batched_inputs_give_an_array_of_results(family: str) -> None:
    s = Session(family, n_batch=2)
    inputs = [s.make_input("What is the capital of France?"), s.make_input("Hello")]
    run = s.run(inputs=inputs)
    assert run.code == 0
    assert run.text(0) == "The capital of France is Paris."
    assert run.text(1) == "I am a scripted model."
    finished_lane_1 = [e for e in run.events[:-1] if e.token_ids[1] < 0]
    assert finished_lane_1 and all(e.texts[1] is None for e in finished_lane_1)
    assert len(run.finish.perf) == 2
    assert len(s.kv_cache_size()) == 2
    logits = s.run(inputs=inputs, mode=2)
    assert logits.code != 0  # "Getting the logits is not supported for multiple batches."
    s.close()


@pytest.mark.parametrize("session", FAMILIES, indirect=True)
def test_an_input_longer_than_the_context_is_a_run_error(session: Session) -> None:
    run = session.run("word " * 600)
    assert run.code != 0 and run.states == [3]
    assert session.run("Hello").code == 0


@pytest.mark.parametrize("family", FROM_1_2_1)
def test_cross_attention_needs_use_cross_attn_at_init(family: str) -> None:
    buf = (ctypes.c_float * 8)()
    pos = (ctypes.c_int32 * 2)()
    plain = Session(family)
    params = plain.family.struct("RKLLMCrossAttnParam")(buf, buf, buf, pos, 2)
    assert plain.lib.set_cross_attn_params(plain.model.handle, ctypes.byref(params)) != 0
    plain.close()
    cross = Session(family, use_cross_attn=1)
    assert cross.lib.set_cross_attn_params(cross.model.handle, ctypes.byref(params)) == 0
    params.num_tokens = 0
    assert cross.lib.set_cross_attn_params(cross.model.handle, ctypes.byref(params)) != 0
    cross.close()


def test_a_model_without_tokenizer_uses_the_tokenizer_callback_on_1_3_0(tmp_path: Path) -> None:
    from rkllm_core.abi import v1_3_0

    seen: list[bytes] = []

    @v1_3_0.LLMTokenizerCallback
    def tokenize(userdata, text, length, tokens, n_max):  # type: ignore[no-untyped-def]
        raw = ctypes.string_at(text, length)
        seen.append(raw)
        for i, byte in enumerate(raw[:n_max]):
            tokens[i] = byte
        return min(len(raw), n_max)

    class WithTokenizer(Session):
        def _extra_callbacks(self) -> dict[str, object]:
            return {"tokenizer_callback": tokenize}

    model = write_model(tmp_path, 'needs_tokenizer_callback = yes\ndefault reply "ok"')
    with pytest.raises(ModelLoadError, match="tokenizer"):
        Session("1.3.0", model=model)
    s = WithTokenizer("1.3.0", model=model)
    assert s.run("Hi!").perf["prefill_tokens"] >= 3
    assert b"Hi!" in seen
    s.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_null_and_invalid_arguments_return_nonzero_without_crashing(family: str) -> None:
    s = Session(family)
    lib, null = s.lib, ctypes.c_void_p()
    assert lib.run(null, None, None, None) != 0
    assert lib.run(s.model.handle, None, None, None) != 0
    assert lib.abort(null) != 0
    assert lib.destroy(null) != 0
    assert lib.load_prompt_cache(null, b"x") != 0
    assert lib.release_prompt_cache(null) != 0
    assert lib.load_lora(null, None) != 0
    assert lib.init(None, None, None if family == "1.3.0" else lib.family.result_callback()) != 0
    if family in FROM_1_2_0:
        assert lib.clear_kv_cache(null, False) != 0
        assert lib.set_chat_template(null, b"", b"", b"") != 0
        assert lib.set_chat_template(s.model.handle, None, b"", b"") != 0
    if family in FROM_1_2_1:
        assert lib.get_kv_cache_size(null, None) != 0
        assert lib.set_function_tools(null, b"", b"[]", b"") != 0
        assert lib.set_cross_attn_params(null, None) != 0
    bad_mode = s.run("Hello", mode=7)
    assert bad_mode.code != 0 and bad_mode.states == [3]
    assert s.run("Hello").text() == "I am a scripted model."
    s.close()


def test_busy_handle_refuses_a_second_run_and_state_changes(tmp_path: Path) -> None:
    s = Session("1.3.0", model=write_model(tmp_path, PACED + 'default reply "' + "x " * 30 + '"'))
    results: dict[str, int] = {}

    def on_event(event: object) -> None:
        if len(s.events) == 2:
            inp, ip = s.make_input("again"), s.make_infer()
            results["run"] = s.lib.run(s.model.handle, ctypes.byref(inp), ctypes.byref(ip), None)
            results["clear"] = s.lib.clear_kv_cache(s.model.handle, False, None, None)
            results["template"] = s.lib.set_chat_template(s.model.handle, b"", b"", b"")

    s.on_event = on_event
    assert s.run("go").code == 0
    assert results == {"run": -1, "clear": -1, "template": -1}
    s.close()
