"""Local tokenization: a tokenizer rebuilt from a GGUF vocabulary gives exactly llama.cpp's ids
for rendered chat prompts and for awkward text, in every pre-tokenizer family it supports."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from rkllm_core.chat.templates import PRESETS
from rkllm_core.chat.tokenizer import ChatTokenizer, TokenizerUnavailableError
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


@pytest.fixture(scope="module")
def tokenizer(smollm2: Path) -> ChatTokenizer:
    return ChatTokenizer.from_gguf(smollm2)


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


@pytest.fixture(scope="module")
def smollm2_metadata(smollm2: Path) -> Any:
    import gguf

    return gguf.GGUFReader(smollm2)


def copy_vocab_with_pre_tokenizer(reader: Any, target: Path, pre: str) -> None:
    """A tensor-less GGUF with ``reader``'s metadata but another ``tokenizer.ggml.pre``."""
    import gguf

    writer = gguf.GGUFWriter(str(target), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = pre if key == "tokenizer.ggml.pre" else field.contents()
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
    copy_vocab_with_pre_tokenizer(smollm2_metadata, path, pre)
    ours = ChatTokenizer.from_gguf(path)
    theirs = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    prompt = PRESETS["smollm"].render(CONVERSATION, tools=TOOLS)
    for text in [prompt, *AWKWARD_TEXTS.values()]:
        assert ours.encode(text) == llama_ids(theirs, text), text


@pytest.mark.gguf
def test_from_pretrained_dir_reads_tokenizer_json_and_config(
    tokenizer: ChatTokenizer, tmp_path: Path
) -> None:
    (tmp_path / "tokenizer.json").write_text(tokenizer.tokenizer.to_str(), encoding="utf-8")
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


def test_a_sentencepiece_gguf_is_refused_with_the_alternative(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "spm.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    with pytest.raises(UnsupportedFeatureError, match="from_pretrained_dir"):
        ChatTokenizer.from_gguf(path)


def test_missing_tokenizers_package_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "tokenizer.json").write_text("{}", encoding="utf-8")
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(TokenizerUnavailableError, match="pip install tokenizers") as caught:
        ChatTokenizer.from_file(tmp_path / "tokenizer.json")
    assert isinstance(caught.value, ImportError)
