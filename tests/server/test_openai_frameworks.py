"""LangChain's ``ChatOpenAI`` and LlamaIndex's ``OpenAILike`` pointed at ``rkllm serve``, as
users configure them for any OpenAI-compatible server, on a scripted model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from rkllm_core.server import ServerConfig
from tests.server.openai_models import scripted

Serve = Callable[[ServerConfig], AbstractContextManager[str]]


def chat_openai(url: str, **kwargs: Any) -> Any:
    langchain_openai = pytest.importorskip("langchain_openai")
    return langchain_openai.ChatOpenAI(base_url=f"{url}/v1", api_key="unused",
                                       model="assistant", timeout=60, max_retries=0, **kwargs)


def openai_like(url: str) -> Any:
    module = pytest.importorskip("llama_index.llms.openai_like")
    return module.OpenAILike(api_base=f"{url}/v1", api_key="unused", model="assistant",
                             is_chat_model=True, is_function_calling_model=True, timeout=60,
                             max_retries=0)


def test_langchain_invokes_and_streams(tmp_path: Path, serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        llm = chat_openai(url)
        answer = llm.invoke("Hello")
        pieces = list(llm.stream("Tell me a long story"))
        async_answer = asyncio.run(llm.ainvoke("Hello"))
    assert answer.content == "I am a scripted model." == async_answer.content
    assert answer.response_metadata["finish_reason"] == "stop"
    assert answer.usage_metadata is not None and answer.usage_metadata["input_tokens"] > 0
    text = "".join(str(p.content) for p in pieces)
    assert text.startswith("Once upon a time") and len(pieces) > 5


def test_langchain_binds_tools_and_gets_a_tool_call(tmp_path: Path,
                                                    serve_models: Serve) -> None:
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        llm = chat_openai(url).bind_tools([get_weather])
        whole = llm.invoke("What is the weather in Paris?")
        streamed = None
        for chunk in llm.stream("What is the weather in Paris?"):
            streamed = chunk if streamed is None else streamed + chunk
    assert [(c["name"], c["args"]) for c in whole.tool_calls] == [
        ("get_weather", {"city": "Paris"})]
    assert streamed is not None
    assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [
        ("get_weather", {"city": "Paris"})]


class City(BaseModel):
    """A city and its population."""

    city: str = Field(description="the city's name")
    population: int


def test_langchain_structured_output(tmp_path: Path, serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        structured = chat_openai(url).with_structured_output(City)
        value = structured.invoke("json please")
        json_mode = chat_openai(url).with_structured_output(
            City, method="json_mode").invoke("json please")
    assert value == City(city="Paris", population=2100000) == json_mode


def test_llamaindex_openai_like_chats_and_streams(tmp_path: Path, serve_models: Serve) -> None:
    from llama_index.core.llms import ChatMessage

    with serve_models(ServerConfig(models=[scripted(tmp_path)])) as url:
        llm = openai_like(url)
        answer = llm.chat([ChatMessage(role="user", content="Hello")])
        pieces = list(llm.stream_chat([ChatMessage(role="user", content="Tell me a long story")]))
        completion = llm.complete("Hello")
    assert answer.message.content == "I am a scripted model."
    assert pieces and pieces[-1].message.content.startswith("Once upon a time")
    assert "".join(p.delta or "" for p in pieces) == pieces[-1].message.content
    assert completion.text == "I am a scripted model."
