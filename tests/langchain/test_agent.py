"""A LangChain 1.x agent (``langchain.agents.create_agent``) on ChatRKLLM and the scripted
engine: two tools called one after the other, tool results fed back, a structured answer, tokens
streamed, and the KV cache carrying the conversation from one agent step to the next."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.structured_output import ToolStrategy
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from pydantic import BaseModel

from langchain_rkllm import ChatRKLLM
from tests.langchain.conftest import call, scripted


class PicnicPlan(BaseModel):
    """The plan for a picnic."""

    city: str
    weather: str
    food: str


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny, 24 C in {city}"


def suggest_food(weather: str) -> str:
    """Picnic food that suits the weather."""
    return "cucumber sandwiches" if "sunny" in weather else "hot soup"


# Each step answers the new input only: the question, then each tool's result.
AGENT_RULES = [
    ('contains "picnic" tools yes', "I will check the weather first.\n"
     + call("get_weather", {"city": "Paris"})),
    ('role tool contains "24 C"', call("suggest_food", {"weather": "sunny"})),
    ('role tool contains "sandwiches"', call("PicnicPlan", {
        "city": "Paris", "weather": "sunny, 24 C", "food": "cucumber sandwiches"})),
]


@pytest.fixture
def model(make_file: Any) -> ChatRKLLM:
    path: Path = make_file("agent.scripted", scripted({"max_context_limit": 4096}, AGENT_RULES))
    return ChatRKLLM(model_path=str(path), library="host", max_context_len=4096)


def _agent(model: ChatRKLLM) -> Any:
    return create_agent(model, tools=[get_weather, suggest_food],
                        system_prompt="You plan picnics with the tools you have.",
                        response_format=ToolStrategy(PicnicPlan))


def _check_run(state: dict[str, Any]) -> list[AIMessage]:
    assert state["structured_response"] == PicnicPlan(
        city="Paris", weather="sunny, 24 C", food="cucumber sandwiches")
    messages = state["messages"]
    tool_results = [m.content for m in messages if isinstance(m, ToolMessage)]
    assert tool_results[:2] == ["sunny, 24 C in Paris", "cucumber sandwiches"]
    steps = [m for m in messages if isinstance(m, AIMessage)]
    assert [[c["name"] for c in m.tool_calls] for m in steps] == [
        ["get_weather"], ["suggest_food"], ["PicnicPlan"]]
    # step 1 prefilled the system prompt, the tools and the question; steps 2 and 3 found the
    # conversation in the KV cache and prefilled only the new tool result
    reused = [m.response_metadata["kv_cache_reused"] for m in steps]
    prefill = [m.response_metadata["prefill_tokens"] for m in steps]
    assert reused == [False, True, True]
    assert max(prefill[1:]) < prefill[0]
    return steps


def test_an_agent_completes_a_two_tool_task_with_a_structured_answer(model: ChatRKLLM) -> None:
    state = _agent(model).invoke({"messages": [HumanMessage("Plan a picnic in Paris.")]})
    _check_run(state)


def test_an_agent_streams_its_tokens_and_tool_call_chunks(model: ChatRKLLM) -> None:
    tokens: list[AIMessageChunk] = []
    final: dict[str, Any] = {}
    for mode, data in _agent(model).stream(
            {"messages": [HumanMessage("Plan a picnic in Paris.")]},
            stream_mode=["messages", "values"]):
        if mode == "messages":
            chunk, _meta = data
            if isinstance(chunk, AIMessageChunk):
                tokens.append(chunk)
        else:
            final = data
    steps = _check_run(final)
    text = "".join(str(c.content) for c in tokens)
    assert text.startswith("I will check the weather first.")
    streamed_calls = [tc["name"] for c in tokens for tc in c.tool_call_chunks if tc["name"]]
    assert streamed_calls == ["get_weather", "suggest_food", "PicnicPlan"]
    assert len(tokens) > 3 * len(steps)  # token by token, not one chunk per step


def test_an_agent_runs_async(model: ChatRKLLM) -> None:
    state = asyncio.run(_agent(model).ainvoke(
        {"messages": [HumanMessage("Plan a picnic in Paris.")]}))
    _check_run(state)
