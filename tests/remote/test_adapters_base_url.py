"""Both adapters on a board's server by URL (``base_url=``): the laptop-against-the-board setup
of issue 15's remote backend, with the server's model ids and API key."""

from __future__ import annotations

import pytest
from langchain_core.tools import tool

from langchain_rkllm import ChatRKLLM, RKLLMEmbeddings, RKLLMReranker
from llama_index_rkllm import RKLLM as LlamaRKLLM
from llama_index_rkllm import RKLLMEmbedding
from rkllm_core import RemoteRKLLM
from rkllm_core.errors import InvalidParameterError, RemoteUnavailableError


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def test_chatrkllm_by_url_chats_streams_calls_tools_and_reuses_the_cache(url: str) -> None:
    chat = ChatRKLLM(base_url=url, model="m")
    assert isinstance(chat.client, RemoteRKLLM) and chat.model_path == "m"
    first = chat.invoke("My name is Alice.")
    assert first.content == "OK, noted."
    second = chat.invoke([("human", "My name is Alice."), ("ai", first.content),
                          ("human", "What is my name?")])
    assert second.content == "Your name is Alice."
    assert second.response_metadata["kv_cache_reused"] is True
    assert "".join(str(c.content) for c in chat.stream("unicode please")) == "Grüße, 日本 🙂"
    call = chat.bind_tools([get_weather]).invoke("What is the weather in Paris?")
    assert call.tool_calls[0]["args"] == {"city": "Paris"}
    other = chat.invoke("Hello", model="judge")  # another model the server serves, by id
    assert other.content == "n" and other.response_metadata["model_name"] == "judge"


def test_llamaindex_by_url_chats_and_both_embed_and_rerank(url: str) -> None:
    from llama_index.core.llms import ChatMessage

    llm = LlamaRKLLM(base_url=url, model_path="m")
    assert llm.chat([ChatMessage(role="user", content="Hello")]).message.content == "OK, noted."
    vectors = RKLLMEmbeddings(base_url=url, model="m").embed_documents(["a cat", "a dog"])
    assert len(vectors) == 2 and len(vectors[0]) == 16
    assert len(RKLLMEmbedding(base_url=url, model_path="m").get_text_embedding("a cat")) == 16
    judge = RKLLMReranker(base_url=url, model="judge", yes_token_id=ord("y"),
                          no_token_id=ord("n"))
    scores = judge.rerank("capital of France?", ["Paris is the capital.", "Bananas are yellow."])
    assert scores[0] > 0.5 > scores[1]


def test_load_settings_with_a_url_are_refused_and_a_dead_url_is_typed(url: str) -> None:
    with pytest.raises(InvalidParameterError, match="max_context_len, isolated cannot be set"):
        ChatRKLLM(base_url=url, model="m", max_context_len=2048, isolated=True)
    with pytest.raises(RemoteUnavailableError, match=r"127\.0\.0\.1:9"):
        ChatRKLLM(base_url="http://127.0.0.1:9", model="m")


def test_the_api_key_is_sent_from_the_field_or_the_environment(
        serve: object, tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from rkllm_core.server import ServerConfig
    from tests.remote.conftest import ASSISTANT, model

    config = ServerConfig(models=[model(Path(str(tmp_path)), "m", ASSISTANT)], api_key="k3y")
    with serve(config) as base:  # type: ignore[operator]
        with pytest.raises(RemoteUnavailableError, match="API key"):
            ChatRKLLM(base_url=base, model="m")
        assert ChatRKLLM(base_url=base, model="m", api_key="k3y").invoke("Hi").content
        monkeypatch.setenv("RKLLM_API_KEY", "k3y")
        assert LlamaRKLLM(base_url=base, model_path="m").complete("Hi").text


def test_the_server_guide_remote_example_runs(serve: object, tmp_path: object,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import re
    from pathlib import Path

    from rkllm_core.server import ServerConfig
    from tests.remote.conftest import ASSISTANT, model

    guide = Path(__file__).resolve().parents[2] / "docs" / "server.md"
    block = re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.S)[-1]
    folder = Path(str(tmp_path))
    config = ServerConfig(models=[model(folder, "qwen2.5-1.5b", ASSISTANT),
                                  model(folder, "qwen3-embedding", ASSISTANT)], api_key="KEY")
    with serve(config) as base:  # type: ignore[operator]
        exec(compile(block.replace("http://BOARD:8080", base), str(guide), "exec"), {})
    assert capsys.readouterr().out.strip() == "OK, noted."
