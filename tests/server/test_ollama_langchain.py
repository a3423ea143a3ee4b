"""LangChain's ``ChatOllama`` pointed at ``rkllm serve`` (issue 15): invoke with usage, stream,
tools with a tool-result round trip, reasoning and structured output, on a scripted model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from pydantic import BaseModel

pytest.importorskip("langchain_ollama")

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_ollama import ChatOllama

from rkllm_core.server import ServerConfig
from rkllm_core.server import serving as running
from tests.server.test_ollama import CHAT, _model


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running(ServerConfig(models=[_model(tmp_path_factory.mktemp("lc"), CHAT)])) as base:
        yield base


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


class Forecast(BaseModel):
    """A forecast."""

    city: str
    days: int


def test_invoke_reports_usage_and_metadata(url: str) -> None:
    llm = ChatOllama(model=CHAT, base_url=url, validate_model_on_init=True, temperature=0)
    reply = llm.invoke("Hello")
    assert reply.content == "Hi there."
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] > 0
    assert reply.usage_metadata["input_tokens"] > 0
    assert reply.response_metadata["done_reason"] == "stop"
    assert reply.response_metadata["model_name"] == CHAT


def test_stream_and_astream_give_the_reply_in_pieces(url: str) -> None:
    llm = ChatOllama(model=f"{CHAT}:latest", base_url=url)
    chunks = list(llm.stream("Hello"))
    assert len(chunks) > 1 and "".join(str(c.content) for c in chunks) == "Hi there."

    async def pieces() -> str:
        return "".join([str(c.content) async for c in llm.astream("Hello")])

    assert asyncio.run(pieces()) == "Hi there."


def test_bind_tools_calls_with_object_arguments_and_takes_the_result(url: str) -> None:
    llm = ChatOllama(model=CHAT, base_url=url).bind_tools([get_weather])
    question = HumanMessage("What is the weather in Paris?")
    called = llm.invoke([question])
    assert isinstance(called, AIMessage)
    [call] = called.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"}
    streamed = [c for c in llm.stream([question]) if c.tool_calls]
    assert [c.tool_calls[0]["args"] for c in streamed] == [{"city": "Paris"}]
    result = ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])
    answer = llm.invoke([question, called, result])
    assert answer.content == "It is sunny in Paris." and not answer.tool_calls


def test_reasoning_and_structured_output(url: str) -> None:
    thinker = ChatOllama(model=CHAT, base_url=url, reasoning=True)
    reply = thinker.invoke("Please think about it.")
    assert reply.content == "Done thinking."
    assert reply.additional_kwargs["reasoning_content"] == "Let me consider."
    structured = ChatOllama(model=CHAT, base_url=url).with_structured_output(
        Forecast, method="json_schema")
    assert structured.invoke("json please") == Forecast(city="Paris", days=3)
