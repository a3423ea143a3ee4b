"""rerank_token_ids: the ids of "yes" and "no" from given ids, a tokenizer (file, folder,
object or function), the GGUF's own vocabulary, or a known conversion's file name, in that
order; an error naming every way when none applies."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from rkllm_core.errors import InvalidParameterError, UnsupportedFeatureError
from rkllm_core.host.build import find_llama_cpp
from rkllm_core.rerank_tokens import KNOWN_VOCABULARIES, arerank_token_ids, rerank_token_ids

QWEN = (9693, 2152)


def word_level(folder: Path, yes: int, no: int) -> Path:
    """A tokenizer.json in which "yes" and "no" have these ids."""
    from tokenizers import Tokenizer, models

    path = folder / "tokenizer.json"
    Tokenizer(models.WordLevel({"[UNK]": 0, "yes": yes, "no": no}, unk_token="[UNK]")).save(
        str(path))
    return path


@pytest.mark.parametrize("name", [
    "Qwen3-Reranker-0.6B-rk3588-w8a8.rkllm", "qwen3_reranker_8b.rkllm",
    "Qwen2.5-1.5B-Instruct-w8a8.rkllm", "Qwen3-4B.rkllm", "qwen2-vl-2b.rkllm"])
def test_known_conversions_are_recognised_by_their_file_name(name: str) -> None:
    assert rerank_token_ids(f"/models/{name}") == QWEN


@pytest.mark.parametrize("name", ["Qwen3.5-2B.rkllm", "Qwen1.5-4B.rkllm", "llama3.rkllm"])
def test_other_vocabularies_are_not_guessed(name: str) -> None:
    with pytest.raises(UnsupportedFeatureError):
        rerank_token_ids(name)


def test_the_error_names_every_way_to_the_ids() -> None:
    with pytest.raises(UnsupportedFeatureError) as error:
        rerank_token_ids("/models/my-reranker.rkllm")
    message = str(error.value)
    assert "my-reranker.rkllm" in message
    assert "yes_token_id=" in message and "no_token_id=" in message
    assert "tokenizer=" in message
    assert all(known.name in message for known in KNOWN_VOCABULARIES)


def test_given_ids_come_first_and_one_id_is_completed_by_the_others(tmp_path: Path) -> None:
    tokenizer = word_level(tmp_path, 5, 6)
    assert rerank_token_ids("Qwen3-Reranker-4B.rkllm", tokenizer=tokenizer,
                            yes_token_id=1, no_token_id=2) == (1, 2)
    assert rerank_token_ids("Qwen3-Reranker-4B.rkllm", yes_token_id=1) == (1, QWEN[1])
    assert rerank_token_ids("m.rkllm", tokenizer=tokenizer, no_token_id=7) == (5, 7)
    with pytest.raises(InvalidParameterError, match="yes_token_id"):
        rerank_token_ids("m.rkllm", yes_token_id=-1, no_token_id=2)


def test_a_tokenizer_beats_the_file_name(tmp_path: Path) -> None:
    tokenizer = word_level(tmp_path, 5, 6)
    assert rerank_token_ids("Qwen3-Reranker-4B.rkllm", tokenizer=tokenizer) == (5, 6)
    assert rerank_token_ids("Qwen3-Reranker-4B.rkllm", tokenizer=str(tokenizer)) == (5, 6)


def test_a_hugging_face_folder_and_a_loaded_tokenizer_work(tmp_path: Path) -> None:
    from rkllm_core.chat.tokenizer import ChatTokenizer

    path = word_level(tmp_path, 11, 12)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "[UNK]"}))
    assert rerank_token_ids("m.rkllm", tokenizer=tmp_path) == (11, 12)
    assert rerank_token_ids("m.rkllm", tokenizer=ChatTokenizer.from_file(path)) == (11, 12)


def test_a_function_gives_the_first_id_of_each_word() -> None:
    assert rerank_token_ids("m.rkllm", tokenizer=lambda text: [ord(c) for c in text]) == (
        ord("y"), ord("n"))
    with pytest.raises(InvalidParameterError, match="no tokens"):
        rerank_token_ids("m.rkllm", tokenizer=lambda text: [])


def test_a_named_tokenizer_must_load(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match="does not exist"):
        rerank_token_ids("Qwen3-Reranker-4B.rkllm", tokenizer=tmp_path / "missing.json")
    with pytest.raises(InvalidParameterError, match="tokenizer must be"):
        rerank_token_ids("m.rkllm", tokenizer=42)


def test_a_changed_tokenizer_file_is_read_again(tmp_path: Path) -> None:
    path = word_level(tmp_path, 5, 6)
    assert rerank_token_ids("m.rkllm", tokenizer=path) == (5, 6)
    stat = path.stat()
    word_level(tmp_path, 7, 8)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert rerank_token_ids("m.rkllm", tokenizer=path) == (7, 8)


def test_the_async_twin_gives_the_same_ids(tmp_path: Path) -> None:
    path = word_level(tmp_path, 21, 22)  # not read before: read on a worker thread

    async def main() -> list[tuple[int, int]]:
        return [await arerank_token_ids("m.rkllm", tokenizer=path),
                await arerank_token_ids("m.rkllm", tokenizer=path),
                await arerank_token_ids("Qwen3-Reranker-4B.rkllm"),
                await arerank_token_ids("m.rkllm", yes_token_id=1, no_token_id=2)]

    assert asyncio.run(main()) == [(21, 22), (21, 22), QWEN, (1, 2)]


@pytest.mark.gguf
@pytest.mark.skipif(find_llama_cpp() is None and not os.environ.get("CI"),
                    reason="needs the host extra (llama-cpp-python); CI always runs these")
def test_a_gguf_model_gives_the_ids_of_its_own_vocabulary() -> None:
    from rkllm_core.chat.tokenizer import ChatTokenizer
    from rkllm_core.host.models import smollm2_path

    yes, no = rerank_token_ids(smollm2_path())
    vocabulary = ChatTokenizer.from_gguf(smollm2_path())
    assert vocabulary.decode([yes]) == "yes" and vocabulary.decode([no]) == "no"
    # a tokenizer given by the caller still wins over the model's own vocabulary
    assert rerank_token_ids(smollm2_path(), tokenizer=lambda text: [len(text)]) == (3, 2)
