"""A runtime crash under the adapters with ``isolated=True``: the application gets a typed error
with what the model had said, and its next call answers (a child process is restarted)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from llama_index.core import Document, VectorStoreIndex

from langchain_rkllm import ChatRKLLM
from llama_index_rkllm import RKLLM, RKLLMEmbedding
from rkllm_core import RuntimeCrashedError

REPLY = "alpha beta gamma delta epsilon"
#: SIGSEGV inside the runtime right after its third token, in runs whose input says "boom"
CRASHY = ("RKLLM-SCRIPTED 1\ncrash_after_tokens = 3\ncrash_on = \"boom\"\n"
          f'default reply "{REPLY}"\n')


@pytest.fixture
def crashy(tmp_path: Path) -> Path:
    path = tmp_path / "crashy.scripted"
    path.write_text(CRASHY)
    return path


def test_a_crash_mid_chatrkllm_stream_is_typed_with_the_partial_text_and_the_next_call_answers(
        crashy: Path) -> None:
    chat = ChatRKLLM(model_path=str(crashy), library="host", max_context_len=512, isolated=True)
    streamed: list[str] = []
    with pytest.raises(RuntimeCrashedError, match="SIGSEGV") as info:
        for chunk in chat.stream("boom, tell me"):
            streamed.append(str(chunk.content))
    assert info.value.partial_text == "alpha beta gamma"
    assert "".join(streamed) == "alpha beta gamma"  # nothing the runtime said was lost
    assert chat.invoke("tell me again").content == REPLY

    async def astream() -> list[str]:
        return [str(chunk.content) async for chunk in chat.astream("boom, async")]

    with pytest.raises(RuntimeCrashedError) as async_info:
        asyncio.run(astream())
    assert async_info.value.partial_text == "alpha beta gamma"
    assert asyncio.run(chat.ainvoke("and now?")).content == REPLY


def test_a_crash_in_a_llamaindex_query_engine_is_typed_and_the_next_query_answers(
        crashy: Path) -> None:
    llm = RKLLM(model_path=str(crashy), library="host", max_context_len=4096, max_tokens=256,
                isolated=True)
    embed = RKLLMEmbedding(client=llm.client)  # the same child process
    index = VectorStoreIndex.from_documents(
        [Document(text="The Rock 5B has an RK3588 with a 6 TOPS NPU.")], embed_model=embed)
    engine = index.as_query_engine(llm=llm, similarity_top_k=1)
    with pytest.raises(RuntimeCrashedError) as info:
        engine.query("boom: which SoC does the Rock 5B have?")
    assert info.value.partial_text == "alpha beta gamma"
    answer = engine.query("Which SoC does the Rock 5B have?")
    assert str(answer) == REPLY
    assert answer.source_nodes[0].node.get_content().startswith("The Rock 5B")
