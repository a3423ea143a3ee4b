"""The completion LLM ``RKLLM`` on the scripted engine: text, stop sequences, streaming with a
token callback per chunk (sync and async), usage, batches."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler

from langchain_rkllm import RKLLM

STORY = "Once upon a time there was a small board with a big NPU."


@pytest.fixture
def llm(make_file: Any) -> RKLLM:
    path: Path = make_file("writer.scripted",
                           f'RKLLM-SCRIPTED 1\nwhen contains "story" reply "{STORY}"\n'
                           'when contains "unicode" reply "Grüße 你好 🙂!"\n'
                           'default reply "{input}"\n')
    return RKLLM(model_path=str(path), library="host", max_context_len=512)


class Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


class AsyncTokens(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def test_invoke_completes_the_prompt(llm: RKLLM) -> None:
    assert llm.invoke("Tell me a story") == STORY


def test_stop_sequences_per_call_and_at_init(llm: RKLLM) -> None:
    assert llm.invoke("Tell me a story", stop=[" there"]) == "Once upon a time"
    stopping = RKLLM(model_path=llm.model_path, library="host", max_context_len=512,
                     stop=[" with"])
    assert stopping.client is llm.client
    assert stopping.invoke("Tell me a story") == "Once upon a time there was a small board"
    assert "".join(stopping.stream("Tell me a story")) == \
        "Once upon a time there was a small board"


def test_stream_fires_a_token_callback_per_chunk(llm: RKLLM) -> None:
    handler = Tokens()
    pieces = list(llm.stream("unicode please", config={"callbacks": [handler]}))
    assert "".join(pieces) == "Grüße 你好 🙂!"
    assert len(pieces) > 4 and pieces[-1] == ""  # the closing piece carries the usage
    assert handler.tokens == pieces[:-1]


def test_invoke_with_a_callback_streams_tokens_to_it(llm: RKLLM) -> None:
    handler = Tokens()
    assert llm.invoke("unicode please", config={"callbacks": [handler]}) == "Grüße 你好 🙂!"
    assert "".join(handler.tokens) == "Grüße 你好 🙂!" and len(handler.tokens) > 4


def test_astream_and_ainvoke_await_async_callbacks(llm: RKLLM) -> None:
    async def main() -> tuple[list[str], list[str], str]:
        handler = AsyncTokens()
        pieces = [p async for p in llm.astream("unicode please",
                                                config={"callbacks": [handler]})]
        return pieces, handler.tokens, await llm.ainvoke("Tell me a story")

    pieces, tokens, story = asyncio.run(main())
    assert "".join(pieces) == "Grüße 你好 🙂!"
    assert [t for t in tokens if t] == [p for p in pieces if p]
    assert story == STORY


def test_generate_reports_usage_and_finish_reasons(llm: RKLLM) -> None:
    result = llm.generate(["Tell me a story", "echo this"], max_tokens=3)
    assert [g[0].text for g in result.generations] == ["Once upon a", "echo this"]
    infos = [g[0].generation_info or {} for g in result.generations]
    assert [i["finish_reason"] for i in infos] == ["length", "stop"]
    usage = result.llm_output["token_usage"] if result.llm_output else {}
    assert usage["completion_tokens"] == sum(i["completion_tokens"] for i in infos) == 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert result.llm_output is not None
    assert result.llm_output["model_name"] == "writer.scripted"


def test_batch_and_ls_params(llm: RKLLM) -> None:
    assert llm.batch(["Tell me a story", "echo"]) == [STORY, "echo"]
    assert llm._get_ls_params(stop=["x"]) == {
        "ls_provider": "rkllm", "ls_model_type": "llm", "ls_model_name": "writer.scripted",
        "ls_stop": ["x"]}
