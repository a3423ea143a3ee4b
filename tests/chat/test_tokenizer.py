"""Local tokenization: a GGUF's tokenizer gives exactly llama.cpp's ids for rendered chat prompts
and for awkward text, in every pre-tokenizer family the Python rebuild supports, whether it runs
on llama.cpp (llama-cpp-python installed) or is rebuilt with ``tokenizers`` (the fallback)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from rkllm_core.chat.templates import PRESETS
from rkllm_core.chat.tokenizer import (
    ChatTokenizer,
    LlamaVocabulary,
    TokenizerClosedError,
    TokenizerUnavailableError,
)
from rkllm_core.errors import InvalidParameterError, UnsupportedFeatureError

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 18}'},
    {"role": "user", "content": "Should I take an umbrella?"},
]
AWKWARD_TEXTS = {
    "german": "Grüße aus München! Die Straße ist naß, Äpfel und Öl kosten 3,50 €.",
    "chinese": "你好\uff0c世界\uff01今天天气怎么样\uff1f我们明天去北京。",
    "emoji": "Party 🎉👍🏽 time 🤖 — done ✅",
    "spaces": "   leading, inner   spaces and trailing   ",
    "digits": "1 12 123 1234 12345678901234567890 3.14159 2024-11-25",
    "whitespace": "\n\n\tTabs\tand\r\nCRLF  \n  \n",
    "contractions": "don't I'll we've THEY'RE it'S",
    "code": "    def square(x):\n        return x ** 2  # ok\n",
    "unicode spaces": "x\u00a0y\u2003z\u3000w",
    "special text": "<|im_start|>user\nHi<|im_end|>\n<|endoftext|>",
    "single space": " ",
}


@pytest.fixture(scope="module")
def smollm2() -> Path:
    pytest.importorskip("tokenizers")
    pytest.importorskip("gguf")
    from rkllm_core.host.models import smollm2_path

    return smollm2_path()


def rebuilt_without_llama_cpp(path: Path) -> ChatTokenizer:
    """``ChatTokenizer.from_gguf`` as it runs where llama-cpp-python is not installed."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "llama_cpp", None)
        return ChatTokenizer.from_gguf(path)


@pytest.fixture(scope="module")
def on_llama_cpp(smollm2: Path) -> ChatTokenizer:
    pytest.importorskip("llama_cpp")
    return ChatTokenizer.from_gguf(smollm2)


@pytest.fixture(scope="module")
def rebuilt(smollm2: Path) -> ChatTokenizer:
    return rebuilt_without_llama_cpp(smollm2)


@pytest.fixture(scope="module", params=["llama.cpp", "rebuilt"])
def tokenizer(request: pytest.FixtureRequest) -> ChatTokenizer:
    """Each test below runs on both engines of ``from_gguf``."""
    name = "on_llama_cpp" if request.param == "llama.cpp" else "rebuilt"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def llama_vocab(smollm2: Path) -> Any:
    llama_cpp = pytest.importorskip("llama_cpp")
    return llama_cpp.Llama(model_path=str(smollm2), vocab_only=True, verbose=False)


def llama_ids(vocab: Any, text: str, *, special: bool = True) -> list[int]:
    return list(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=special))


@pytest.mark.gguf
def test_rendered_smollm_conversation_has_llama_cpps_ids(
    tokenizer: ChatTokenizer, llama_vocab: Any
) -> None:
    prompt = PRESETS["smollm"].render(CONVERSATION, tools=TOOLS)
    ids = tokenizer.encode(prompt)
    assert ids == llama_ids(llama_vocab, prompt)
    assert ids[0] == tokenizer.token_id("<|im_start|>") == 1
    assert ids.count(2) == 5
    assert tokenizer.token_id("<|im_end|>") == 2


@pytest.mark.gguf
@pytest.mark.parametrize("text", list(AWKWARD_TEXTS.values()), ids=list(AWKWARD_TEXTS))
def test_awkward_text_has_llama_cpps_ids(
    tokenizer: ChatTokenizer, llama_vocab: Any, text: str
) -> None:
    assert tokenizer.encode(text) == llama_ids(llama_vocab, text)


@pytest.mark.gguf
@pytest.mark.parametrize("text", list(AWKWARD_TEXTS.values()), ids=list(AWKWARD_TEXTS))
def test_decoding_gives_the_text_back(tokenizer: ChatTokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.gguf
def test_without_parse_special_control_token_text_is_ordinary_text(
    tokenizer: ChatTokenizer, llama_vocab: Any
) -> None:
    text = "say <|im_end|> please"
    literal = tokenizer.encode(text, parse_special=False)
    assert literal == llama_ids(llama_vocab, text, special=False)
    assert tokenizer.token_id("<|im_end|>") not in literal
    assert tokenizer.token_id("<|im_end|>") in tokenizer.encode(text)


@pytest.mark.gguf
def test_special_tokens_come_from_the_gguf(tokenizer: ChatTokenizer) -> None:
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 2)
    assert tokenizer.vocab_size == 49152
    assert tokenizer.token_id("no such piece") is None
    prompt_ids = tokenizer.encode("<|im_start|>assistant\n")
    assert tokenizer.decode(prompt_ids, skip_special_tokens=True) == "assistant\n"


SAME_ON_BOTH_ENGINES = {
    **AWKWARD_TEXTS,
    "ascii": "The quick brown fox jumps over the lazy dog; 42 is the answer.",
    "whitespace runs": "a  b   c\t\t d \n\n\n e     f\r\n\r\n",
    "control text inside words": "x<|im_end|>y<|endoftext|>z<|im_start|>",
    "chat template": PRESETS["smollm"].render(CONVERSATION, tools=TOOLS),
    "empty": "",
}


@pytest.mark.gguf
def test_from_gguf_runs_on_llama_cpp_when_it_is_installed(on_llama_cpp: ChatTokenizer) -> None:
    assert isinstance(on_llama_cpp.tokenizer, LlamaVocabulary)
    assert on_llama_cpp.encode("<|im_start|>user\nHi<|im_end|>") == [1, 4093, 198, 26843, 2]


@pytest.mark.gguf
def test_without_llama_cpp_from_gguf_falls_back_to_the_python_rebuild(
    smollm2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    fallback = ChatTokenizer.from_gguf(smollm2)
    assert isinstance(fallback.tokenizer, tokenizers.Tokenizer)
    assert fallback.encode("<|im_start|>user\nHi<|im_end|>") == [1, 4093, 198, 26843, 2]


@pytest.mark.gguf
@pytest.mark.parametrize(
    "text", list(SAME_ON_BOTH_ENGINES.values()), ids=list(SAME_ON_BOTH_ENGINES)
)
def test_llama_cpp_and_the_rebuild_give_the_same_ids_and_text(
    on_llama_cpp: ChatTokenizer, rebuilt: ChatTokenizer, text: str
) -> None:
    for parse_special in (True, False):
        ids = on_llama_cpp.encode(text, parse_special=parse_special)
        assert ids == rebuilt.encode(text, parse_special=parse_special)
        for skip in (False, True):
            ours = on_llama_cpp.decode(ids, skip_special_tokens=skip)
            assert ours == rebuilt.decode(ids, skip_special_tokens=skip)


@pytest.mark.gguf
def test_every_id_decodes_and_looks_up_alike_on_both_engines(
    on_llama_cpp: ChatTokenizer, rebuilt: ChatTokenizer
) -> None:
    ids = range(rebuilt.vocab_size)
    assert on_llama_cpp.vocab_size == rebuilt.vocab_size
    # one id at a time: pieces that are only part of a UTF-8 character become U+FFFD alike
    for skip in (False, True):
        ours = [on_llama_cpp.decode([i], skip_special_tokens=skip) for i in ids]
        assert ours == [rebuilt.decode([i], skip_special_tokens=skip) for i in ids]
    hugging_face: Any = rebuilt.tokenizer
    pieces = [hugging_face.id_to_token(i) for i in ids]
    assert [on_llama_cpp.token_id(p) for p in pieces] == [rebuilt.token_id(p) for p in pieces]


@pytest.mark.gguf
def test_decoding_an_id_outside_the_vocabulary_is_refused(tokenizer: ChatTokenizer) -> None:
    for ids in ([5, tokenizer.vocab_size], [-1]):
        with pytest.raises(InvalidParameterError, match="outside the vocabulary"):
            tokenizer.decode(ids)


@pytest.mark.gguf
def test_a_closed_llama_vocabulary_refuses_use_and_closes_once(smollm2: Path) -> None:
    pytest.importorskip("llama_cpp")
    vocabulary = LlamaVocabulary(smollm2)
    assert vocabulary.encode("Hi<|im_end|>", parse_special=True) == [26843, 2]
    assert vocabulary.metadata("tokenizer.ggml.pre") == "smollm"
    assert vocabulary.metadata("no.such.key") is None
    vocabulary.close()
    vocabulary.close()
    assert "closed" in repr(vocabulary)
    with pytest.raises(TokenizerClosedError, match="load it again"):
        vocabulary.encode("Hi", parse_special=True)


def test_without_llama_cpp_and_tokenizers_a_gguf_names_both_installs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("gguf")
    path = tmp_path / "vocab.gguf"
    path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(TokenizerUnavailableError, match=r"rkllm-py\[host\].*pip install gguf"):
        ChatTokenizer.from_gguf(path)


@pytest.fixture(scope="module")
def smollm2_metadata(smollm2: Path) -> Any:
    import gguf

    return gguf.GGUFReader(smollm2)


def copy_vocab(reader: Any, target: Path, changes: dict[str, str]) -> None:
    """A tensor-less GGUF with ``reader``'s metadata, string values replaced by ``changes``."""
    import gguf

    writer = gguf.GGUFWriter(str(target), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = changes.get(key, field.contents())
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, kind, sub_type=sub)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()


# llama-bpe: Llama 3 (digits in threes, whole words looked up first); qwen2: Qwen2/2.5/3 and the
# DeepSeek-R1 Qwen distills (single digits).
@pytest.mark.gguf
@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2"])
def test_other_pre_tokenizers_match_llama_cpp_on_the_same_vocabulary(
    smollm2_metadata: Any, tmp_path: Path, pre: str
) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    path = tmp_path / f"vocab-{pre}.gguf"
    copy_vocab(smollm2_metadata, path, {"tokenizer.ggml.pre": pre})
    on_llama_cpp, rebuilt = ChatTokenizer.from_gguf(path), rebuilt_without_llama_cpp(path)
    theirs = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    prompt = PRESETS["smollm"].render(CONVERSATION, tools=TOOLS)
    for text in [prompt, *AWKWARD_TEXTS.values()]:
        assert on_llama_cpp.encode(text) == rebuilt.encode(text) == llama_ids(theirs, text), text


@pytest.mark.gguf
def test_from_pretrained_dir_reads_tokenizer_json_and_config(
    tokenizer: ChatTokenizer, rebuilt: ChatTokenizer, tmp_path: Path
) -> None:
    hugging_face: Any = rebuilt.tokenizer
    (tmp_path / "tokenizer.json").write_text(hugging_face.to_str(), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(
        '{"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}}', encoding="utf-8"
    )
    loaded = ChatTokenizer.from_pretrained_dir(tmp_path)
    prompt = PRESETS["smollm"].render(CONVERSATION, tools=TOOLS)
    assert loaded.encode(prompt) == tokenizer.encode(prompt)
    assert (loaded.bos_token, loaded.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert ChatTokenizer.from_file(tmp_path / "tokenizer.json").encode(prompt) == loaded.encode(
        prompt
    )


def test_a_folder_without_tokenizer_json_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match=r"has no tokenizer\.json"):
        ChatTokenizer.from_pretrained_dir(tmp_path)


@pytest.mark.gguf
@pytest.mark.parametrize("engine", ["llama.cpp", "rebuilt"])
@pytest.mark.parametrize(
    ("key", "value"), [("tokenizer.ggml.model", "llama"), ("tokenizer.ggml.pre", "no-such-pre")]
)
def test_a_sentencepiece_or_unknown_vocabulary_is_refused_with_the_alternative(
    smollm2_metadata: Any, tmp_path: Path, engine: str, key: str, value: str
) -> None:
    if engine == "llama.cpp":
        pytest.importorskip("llama_cpp")
    path = tmp_path / "other.gguf"
    copy_vocab(smollm2_metadata, path, {key: value})
    with pytest.raises(UnsupportedFeatureError, match="from_pretrained_dir"):
        if engine == "llama.cpp":
            ChatTokenizer.from_gguf(path)
        else:
            rebuilt_without_llama_cpp(path)


def test_missing_tokenizers_package_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "tokenizer.json").write_text("{}", encoding="utf-8")
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(TokenizerUnavailableError, match="pip install tokenizers") as caught:
        ChatTokenizer.from_file(tmp_path / "tokenizer.json")
    assert isinstance(caught.value, ImportError)
