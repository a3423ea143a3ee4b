"""The OpenAI routes over a real model (SmolLM2-135M-Instruct on the host runtime's GGUF engine),
driven by the official ``openai`` client and LangChain's ``ChatOpenAI``. The tests assert what
holds for any reply (a 135M model's words differ from CPU to CPU): counts, reasons, framing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import pytest

from rkllm_core.host.build import find_llama_cpp
from rkllm_core.server import ModelConfig, ServerConfig
from rkllm_core.server import serving as running

pytestmark = [
    pytest.mark.gguf,
    pytest.mark.skipif(find_llama_cpp() is None and not os.environ.get("CI"),
                       reason="needs the host extra (llama-cpp-python); CI always runs these"),
]

RAW_PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """SmolLM2 in native mode: the runtime applies the GGUF's template to chat turns; text
    completions are tokenized with the GGUF's own vocabulary."""
    from rkllm_core.host.models import smollm2_path

    model = ModelConfig(path=str(smollm2_path()), id="smollm2", library="host",
                        params={"max_context_len": 2048, "top_k": 1})
    with running(ServerConfig(models=[model])) as base:
        yield base


@pytest.fixture
def api(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=300, max_retries=0)


def user(text: str) -> Any:
    return {"role": "user", "content": text}


def test_chat_answers_whole_and_streamed_with_consistent_usage(api: openai.OpenAI) -> None:
    ask = [user("What is the capital of France?")]
    whole = api.chat.completions.create(model="smollm2", messages=ask, max_tokens=24)
    chunks = list(api.chat.completions.create(model="smollm2", messages=ask, max_tokens=24,
                                              stream=True,
                                              stream_options={"include_usage": True}))
    content = whole.choices[0].message.content
    assert content and whole.choices[0].finish_reason in ("stop", "length")
    usage = whole.usage
    assert usage is not None and 0 < usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = chunks[-1].usage
    assert streamed == content  # greedy (top_k 1): the same reply both ways
    assert final is not None and final.completion_tokens == usage.completion_tokens


def test_the_second_turn_is_served_from_the_kv_cache(api: openai.OpenAI) -> None:
    history: list[Any] = [user("In one word: what colour is the sky?")]
    # room for the reply to end by itself: a reply cut at max_tokens is not kept in the cache
    first = api.chat.completions.create(model="smollm2", messages=history, max_tokens=200)
    assert first.choices[0].finish_reason == "stop"
    history += [first.choices[0].message.model_dump(exclude_none=True),
                user("And the grass?")]
    second = api.chat.completions.create(model="smollm2", messages=history, max_tokens=8)
    assert first.usage is not None and second.usage is not None
    details = second.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    # everything of the first turn was in the cache; only the new user turn was prefilled
    assert first.usage.prompt_tokens <= details.cached_tokens < second.usage.prompt_tokens


def test_a_completion_sends_the_prompt_without_the_chat_template(api: openai.OpenAI) -> None:
    from rkllm_core.chat.tokenizer import ChatTokenizer
    from rkllm_core.host.models import smollm2_path

    done = api.completions.create(model="smollm2", prompt=RAW_PROMPT, max_tokens=16)
    chat = api.chat.completions.create(model="smollm2", max_tokens=1,
                                       messages=[user("What is the capital of France?")])
    assert done.choices[0].text and done.choices[0].finish_reason in ("stop", "length")
    expected = len(ChatTokenizer.from_gguf(smollm2_path()).encode(RAW_PROMPT))
    assert done.usage is not None and done.usage.prompt_tokens == expected
    # the same question as a chat turn also carries the template's default system prompt
    assert chat.usage is not None and chat.usage.prompt_tokens > expected + 10


def test_embeddings_put_similar_sentences_closer(api: openai.OpenAI) -> None:
    got = api.embeddings.create(model="smollm2", input=[
        "The cat sat on the mat.", "A cat was sitting on the mat.",
        "Quarterly tax filings are due in April."])
    a, b, c = (np.asarray(e.embedding) for e in got.data)
    assert a.shape == (576,)  # SmolLM2-135M's width
    assert float(a @ b) > float(a @ c)


def test_langchain_chat_openai_streams_a_reply(url: str) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(base_url=f"{url}/v1", api_key="unused", model="smollm2",
                                      max_tokens=16, timeout=300, max_retries=0)
    pieces = list(llm.stream("What is the capital of France?"))
    assert "".join(str(p.content) for p in pieces).strip()
