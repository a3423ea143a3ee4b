"""Tokens and raw modes of the chat engine.

The scripted engine reads token ids below 256 as single bytes, so a byte-level tokenizer
(written here as a tokenizer.json) is one the scripted engine shares with the tests: what the
engine renders and tokenizes reaches the scripted rules as exactly that text. SmolLM2 then shows
the same with a real tokenizer and a real KV cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rkllm_core import RKLLM
from rkllm_core.chat.engine import ChatEngine
from rkllm_core.chat.messages import ChatMessage, ToolSpec
from rkllm_core.chat.tokenizer import ChatTokenizer

CALL = ('<tool_call>\\n{\\"name\\": \\"get_weather\\", \\"arguments\\": '
        '{\\"city\\": \\"Paris\\"}}\\n</tool_call>')
MODEL = f"""RKLLM-SCRIPTED 1
max_context_limit = 4096
when contains "broken tool" reply "<tool_call>{{\\"name\\": \\"get_weather\\", \\"arguments\\": {{city}}}}</tool_call>"
when contains "think about it" reply "<think>\\nLet me consider.\\n</think>\\n\\nDone thinking."
when contains "<tool_response>" reply "It is sunny in Paris."
when contains "weather" contains "<tools>" reply "{CALL}"
when contains "weather" tools yes reply "{CALL}"
when role tool reply "It is sunny in Paris."
when contains "tool results:" reply "It is sunny in Paris."
when contains "what is my name" remembers "alice" reply "Your name is Alice."
when contains "what is my name" contains "alice" reply "Your name is Alice."
when contains "what is my name" reply "I do not know."
when contains "stop test" reply "Hello there. User: hidden"
default reply "OK."
"""  # noqa: E501

WEATHER = ToolSpec("get_weather", "The weather in a city",
                   {"type": "object", "properties": {"city": {"type": "string"}}})


def byte_tokenizer(folder: Path) -> Path:
    """A tokenizer.json whose ids are the UTF-8 bytes of the text (0..255)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    # ByteLevel maps byte b to a printable character; give each character the id b
    table = _bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    path = folder / "tokenizer.json"
    tok.save(str(path))
    return path


def _bytes_to_unicode() -> dict[int, str]:
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(keep, chars, strict=True)}


@pytest.fixture(params=["1.3.0", "1.2.1", "1.2.0"])
def llm(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RKLLM]:
    path = tmp_path / "chat.scripted"
    path.write_text(MODEL)
    with RKLLM(path, library="host", runtime_version=request.param,
               max_context_len=4096) as model:
        yield model


@pytest.fixture
def tokens_engine(llm: RKLLM, tmp_path: Path) -> ChatEngine:
    return ChatEngine(llm, tokenizer=byte_tokenizer(tmp_path), preset="chatml")


def test_the_byte_tokenizer_round_trips() -> None:
    import tempfile

    tok = ChatTokenizer.from_file(byte_tokenizer(Path(tempfile.mkdtemp())))
    text = "<|im_start|>user\nGrüße 🙂<|im_end|>"
    assert tok.encode(text) == list(text.encode())
    assert tok.decode(tok.encode(text)) == text


def test_tokens_mode_prefills_exactly_the_new_tokens_each_turn(tokens_engine: ChatEngine,
                                                                llm: RKLLM) -> None:
    chat = tokens_engine
    assert chat.mode == "tokens"
    history = [ChatMessage.system("Be brief."), ChatMessage.user("My name is Alice.")]
    turn = chat.generate(history)
    sent_before = len(chat.render(history).encode())
    assert turn.usage.prefill_tokens == sent_before and not turn.reused_cache
    for k in range(2, 11):
        held = sent_before + len(turn.raw_text.encode())  # the prompt and the model's reply
        history += [turn.message, ChatMessage.user(f"Fact {k}.")]
        ids_now = len(chat.render(history).encode())
        turn = chat.generate(history)
        assert turn.reused_cache
        # only what follows the model's own reply is prefilled: its end-of-turn marker and
        # the new user turn; the reply's tokens are the model's own, reused as they are
        assert turn.usage.prefill_tokens == ids_now - held
        new_part = f"<|im_end|>\n<|im_start|>user\nFact {k}.<|im_end|>\n<|im_start|>assistant\n"
        assert turn.usage.prefill_tokens == len(new_part.encode())
        sent_before = ids_now
    history += [turn.message, ChatMessage.user("What is my name?")]
    assert chat.generate(history).message.content == "Your name is Alice."


def test_tokens_mode_cuts_a_diverged_history_back_to_the_common_prefix(
    tokens_engine: ChatEngine, llm: RKLLM
) -> None:
    chat = tokens_engine
    base = [ChatMessage.system("Be brief."), ChatMessage.user("My name is Alice.")]
    first = chat.generate(base)
    chat.generate([*base, first.message, ChatMessage.user("Hello.")])
    edited = [*base, first.message, ChatMessage.user("What is my name?")]
    again = chat.generate(edited)
    assert again.message.content == "Your name is Alice."
    common = len(chat.render([*base, first.message]).encode()) - len(
        b"<|im_start|>assistant\n")
    if llm.capabilities.kv_cache_size:  # 1.2.1+: cut the cache, keep the prefix
        assert again.reused_cache
        assert again.usage.prefill_tokens < len(chat.render(edited).encode()) - common + 40
    else:  # 1.2.0 cannot cut a range: the whole conversation is replayed, still correctly
        assert again.usage.prefill_tokens == len(chat.render(edited).encode())


@pytest.mark.parametrize("mode", ["native", "tokens", "raw"])
def test_a_tool_call_round_trip_in_every_mode(mode: str, llm: RKLLM, tmp_path: Path) -> None:
    tokenizer = byte_tokenizer(tmp_path) if mode == "tokens" else None
    chat = ChatEngine(llm, mode=mode, preset="chatml", tokenizer=tokenizer)  # type: ignore[arg-type]
    history = [ChatMessage.user("What is the weather in Paris?")]
    stream = chat.stream(history, tools=[WEATHER])
    content = "".join(c.content for c in stream)
    turn = stream.result
    assert content == "" and turn.finish_reason == "tool_calls"
    [call] = turn.message.tool_calls
    assert (call.name, dict(call.arguments)) == ("get_weather", {"city": "Paris"})
    history += [turn.message, ChatMessage.tool("sunny", tool_call_id=call.id, name=call.name)]
    answer = chat.generate(history, tools=[WEATHER])
    assert answer.message.content == "It is sunny in Paris."
    assert answer.reused_cache


@pytest.mark.parametrize("mode", ["tokens", "raw"])
def test_stop_sequences_are_exact_in_rendered_modes(mode: str, llm: RKLLM,
                                                    tmp_path: Path) -> None:
    tokenizer = byte_tokenizer(tmp_path) if mode == "tokens" else None
    chat = ChatEngine(llm, mode=mode, preset="chatml", tokenizer=tokenizer)  # type: ignore[arg-type]
    turn = chat.generate([ChatMessage.user("stop test")], stop=["User:"])
    assert turn.message.content == "Hello there. " and turn.stop_sequence == "User:"
    follow = chat.generate([ChatMessage.user("stop test"), turn.message,
                            ChatMessage.user("What is my name?")])
    assert follow.message.content == "I do not know."


def test_raw_mode_switches_the_runtime_template_off_once(llm: RKLLM) -> None:
    chat = ChatEngine(llm, mode="raw", preset="chatml")
    first = chat.generate([ChatMessage.user("My name is Alice.")])
    second = chat.generate([ChatMessage.user("My name is Alice."), first.message,
                            ChatMessage.user("What is my name?")])
    assert second.reused_cache and second.message.content == "Your name is Alice."
    chat.reset()
    replayed = chat.generate([ChatMessage.user("My name is Alice."), first.message,
                              ChatMessage.user("What is my name?")])
    assert not replayed.reused_cache and replayed.message.content == "Your name is Alice."
    if llm.capabilities.kv_cache_size:  # the runtime reports prefills (1.2.1+)
        assert 0 < second.usage.prefill_tokens < replayed.usage.prefill_tokens


@pytest.mark.gguf
def test_smollm2_in_tokens_mode_reuses_its_own_reply_tokens() -> None:
    # SmolLM2's words differ by CPU (llama.cpp's SIMD kernels): what is asserted holds for any
    # reply. The cache keeps the first prompt and the model's own reply tokens as generated,
    # and the second turn sends exactly the tokens of what follows them.
    from rkllm_core.host.models import smollm2_path

    path = smollm2_path()
    with RKLLM(path, library="host", max_context_len=2048, top_k=1, max_new_tokens=24) as llm:
        chat = ChatEngine(llm, tokenizer=path, preset="smollm")
        tokenizer = ChatTokenizer.from_gguf(path)
        history = [ChatMessage.user("Hi, I am Alice.")]
        first_prompt = chat.render(history)
        first = chat.generate(history)
        history += [first.message, ChatMessage.user("Who am I?")]
        second_prompt = chat.render(history)
        second = chat.generate(history)
    cached = first_prompt + first.raw_text
    assert second_prompt.startswith(cached)  # the conversation extends what the cache holds
    assert second.reused_cache
    kept = second.usage.input_tokens - second.usage.prefill_tokens  # the runtime's KV size
    first_ids = tokenizer.encode(first_prompt, parse_special=True)
    assert abs(kept - (len(first_ids) + first.usage.output_tokens)) <= 1  # an end token
    new_ids = tokenizer.encode(second_prompt[len(cached):], parse_special=True)
    assert second.usage.prefill_tokens == len(new_ids)
    assert second.usage.output_tokens > 0


@pytest.mark.parametrize("mode", ["tokens", "raw"])
def test_malformed_calls_and_reasoning_in_rendered_modes(mode: str, llm: RKLLM,
                                                         tmp_path: Path) -> None:
    tokenizer = byte_tokenizer(tmp_path) if mode == "tokens" else None
    chat = ChatEngine(llm, mode=mode, preset="qwen3", tokenizer=tokenizer)  # type: ignore[arg-type]
    bad = chat.generate([ChatMessage.user("broken tool")], tools=[WEATHER])
    assert bad.message.tool_calls == () and bad.invalid_tool_calls[0].name == "get_weather"
    stream = chat.stream([ChatMessage.user("think about it")], enable_thinking=True)
    chunks = list(stream)
    assert "".join(c.content for c in chunks) == "Done thinking."
    assert "".join(c.reasoning for c in chunks).strip() == "Let me consider."
