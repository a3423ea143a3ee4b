"""Construction: one loaded model per file and settings across the package's classes, or a
model the caller loaded; serialisation and pickling never carry the native handle."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from langchain_core.load import dumpd, dumps, load

from langchain_rkllm import RKLLM, ChatRKLLM, RKLLMEmbeddings, RKLLMReranker
from rkllm_core import RKLLM as CoreRKLLM
from rkllm_core.errors import InvalidParameterError


def test_classes_naming_the_same_file_and_settings_share_one_model(
        assistant_file: Path) -> None:
    common = {"model_path": str(assistant_file), "library": "host", "max_context_len": 1024}
    chat = ChatRKLLM(**common)
    llm = RKLLM(**common)
    embeddings = RKLLMEmbeddings(**common)
    reranker = RKLLMReranker(**common, yes_token_id=1, no_token_id=2)
    assert chat.client is llm.client is embeddings.client is reranker.client
    assert ChatRKLLM(model=str(assistant_file), library="host",
                     max_context_len=1024).client is chat.client  # the alias, too


def test_other_settings_load_another_model(assistant_file: Path) -> None:
    a = ChatRKLLM(model_path=str(assistant_file), library="host", max_context_len=1024)
    b = ChatRKLLM(model_path=str(assistant_file), library="host", max_context_len=512)
    c = ChatRKLLM(model_path=str(assistant_file), library="host", max_context_len=1024,
                  top_k=1)
    assert len({id(a.client), id(b.client), id(c.client)}) == 3
    assert c.client.params.top_k == 1 and b.client.params.max_context_len == 512


def test_a_loaded_model_is_used_as_given(assistant_file: Path) -> None:
    with CoreRKLLM(assistant_file, library="host", max_context_len=512) as core:
        chat = ChatRKLLM(client=core)
        embeddings = RKLLMEmbeddings(client=core)
        assert chat.client is core and embeddings.client is core
        assert chat.model_path == str(assistant_file)
        assert chat.invoke("unicode please").content == "Grüße 你好 🙂!"


def test_a_model_is_required_and_a_client_must_be_a_core_model() -> None:
    with pytest.raises(InvalidParameterError, match=r"model_path= .* or client="):
        ChatRKLLM()
    with pytest.raises(InvalidParameterError, match=r"rkllm_core\.RKLLM"):
        RKLLMEmbeddings(client="not a model")


@pytest.mark.parametrize("cls", [ChatRKLLM, RKLLM, RKLLMEmbeddings, RKLLMReranker])
def test_pickling_never_carries_the_native_handle(assistant_file: Path, cls: type) -> None:
    obj = cls(model_path=str(assistant_file), library="host", max_context_len=1024)
    data = pickle.dumps(obj)
    assert b"RKLLMHandle" not in data and b"c_void_p" not in data
    copy = pickle.loads(data)
    assert copy is not obj
    assert copy.client is obj.client  # asked for the shared model again
    assert copy.model_path == obj.model_path


def test_an_unpickled_chat_model_works_when_the_original_is_gone(assistant_file: Path) -> None:
    with CoreRKLLM(assistant_file, library="host", max_context_len=512) as core:
        data = pickle.dumps(ChatRKLLM(client=core, max_context_len=512))
    copy = pickle.loads(data)  # the given model was closed: the copy loads from the file
    assert copy.client is not core and not copy.client.closed
    assert copy.invoke("unicode please").content == "Grüße 你好 🙂!"


@pytest.mark.filterwarnings("ignore:The function `load` is in beta")
def test_chat_model_and_llm_serialise_and_load_back(assistant_file: Path) -> None:
    for cls in (ChatRKLLM, RKLLM):
        obj = cls(model_path=str(assistant_file), library="host", max_context_len=1024,
                  max_tokens=16, stop=["x"])
        record = dumpd(obj)
        assert record["id"][-1] == cls.__name__
        assert "client" not in record["kwargs"]
        assert record["kwargs"]["model_path"] == str(assistant_file)
        back = load(record, valid_namespaces=["langchain_rkllm"], allowed_objects=[cls])
        assert isinstance(back, cls) and back.client is obj.client
        assert back.max_tokens == 16 and back.stop == ["x"]
        assert dumps(back) == dumps(obj)
