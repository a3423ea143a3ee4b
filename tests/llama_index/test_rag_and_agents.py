"""LlamaIndex components running on the host runtime: query and chat engines over an index
built with RKLLMEmbedding, a FunctionAgent through native tool calls and a ReActAgent through
text, each with exact answers from a scripted model."""

from __future__ import annotations

import asyncio
from pathlib import Path

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.agent.workflow import (
    AgentOutput,
    FunctionAgent,
    ReActAgent,
    ToolCallResult,
)
from llama_index.core.chat_engine.types import ChatMode
from llama_index.core.schema import QueryBundle

from llama_index_rkllm import RKLLM, RKLLMEmbedding, RKLLMRerank
from tests.llama_index.conftest import DOCUMENTS


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def _index(embed_model: RKLLMEmbedding) -> VectorStoreIndex:
    return VectorStoreIndex.from_documents([Document(text=t) for t in DOCUMENTS],
                                           embed_model=embed_model)


def test_query_engine_answers_from_the_retrieved_document(llm: RKLLM,
                                                          embed_model: RKLLMEmbedding) -> None:
    engine = _index(embed_model).as_query_engine(llm=llm, similarity_top_k=1)
    response = engine.query("How much RAM does the Rock 5B have?")
    assert str(response) == "The Rock 5B has 16 GB of RAM."
    assert response.source_nodes[0].node.get_content() == DOCUMENTS[0]


def test_query_engine_reranks_retrieved_nodes_with_rkllm_rerank(
        llm: RKLLM, embed_model: RKLLMEmbedding, tmp_path: Path) -> None:
    judge = tmp_path / "reranker.scripted"
    judge.write_text('RKLLM-SCRIPTED 1\nwhen contains "16 gb" reply "y"\ndefault reply "n"\n')
    # the toy reranker answers single bytes, whose token ids are their codes
    rerank = RKLLMRerank(model_path=str(judge), library="host", max_context_len=1024,
                         yes_token_id=ord("y"), no_token_id=ord("n"), top_n=1)
    engine = _index(embed_model).as_query_engine(llm=llm, similarity_top_k=3,
                                                 node_postprocessors=[rerank])
    response = engine.query("How much RAM does the Rock 5B have?")
    assert str(response) == "The Rock 5B has 16 GB of RAM."
    [best] = response.source_nodes
    assert best.node.get_content() == DOCUMENTS[0] and best.score is not None
    assert best.score > 0.99
    nodes = _index(embed_model).as_retriever(similarity_top_k=3).retrieve("RAM")
    ranked = asyncio.run(rerank.apostprocess_nodes(nodes, QueryBundle("RAM?")))
    assert ranked[0].node.get_content() == DOCUMENTS[0]


def test_chat_engine_over_the_index_keeps_the_history(model_file: Path,
                                                      embed_model: RKLLMEmbedding) -> None:
    # raw mode sends the rendered conversation as text, so the scripted model sees the
    # retrieved context in the system prompt (native mode hands it to the runtime template)
    llm = RKLLM(model_path=str(model_file), library="host", max_context_len=4096,
                chat_mode="raw", preset="chatml")
    chat = _index(embed_model).as_chat_engine(chat_mode=ChatMode.CONTEXT, llm=llm,
                                              similarity_top_k=1)
    first = chat.chat("My name is Alice. How much RAM does the Rock 5B have?")
    assert str(first) == "The Rock 5B has 16 GB of RAM."
    second = chat.chat("What is my name?")
    assert str(second) == "Your name is Alice."
    assert [m.role.value for m in chat.chat_history] == ["user", "assistant"] * 2


def test_function_agent_completes_a_two_tool_task_with_native_tool_calls(llm: RKLLM) -> None:
    async def run() -> tuple[str, list[ToolCallResult], list[AgentOutput]]:
        agent = FunctionAgent(tools=[add, multiply], llm=llm)
        handler = agent.run("What is (2 + 3) * 4?")
        results, outputs = [], []
        async for event in handler.stream_events():
            if isinstance(event, ToolCallResult):
                results.append(event)
            elif isinstance(event, AgentOutput):
                outputs.append(event)
        return str(await handler), results, outputs

    answer, results, outputs = asyncio.run(run())
    assert answer == "(2 + 3) * 4 = 20."
    assert [(r.tool_name, r.tool_kwargs, r.tool_output.content) for r in results] == [
        ("add", {"a": 2, "b": 3}, "5"), ("multiply", {"a": 5, "b": 4}, "20")]
    # the agent loop extends the conversation: each later step prefills only the tool result
    assert [o.raw["kv_cache_reused"] for o in outputs if isinstance(o.raw, dict)] == [
        False, True, True]


def test_react_agent_completes_the_same_task_through_text(llm: RKLLM) -> None:
    async def run() -> tuple[str, list[ToolCallResult]]:
        agent = ReActAgent(tools=[add, multiply], llm=llm)
        handler = agent.run("What is (2 + 3) * 4?")
        results = [e async for e in handler.stream_events() if isinstance(e, ToolCallResult)]
        return str(await handler), results

    answer, results = asyncio.run(run())
    assert answer == "(2 + 3) * 4 = 20."
    assert [(r.tool_name, r.tool_kwargs, r.tool_output.content) for r in results] == [
        ("add", {"a": 2, "b": 3}, "5"), ("multiply", {"a": 5, "b": 4}, "20")]
