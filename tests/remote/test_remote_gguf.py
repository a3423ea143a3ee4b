"""The remote backend serving a real model: SmolLM2-135M-Instruct on the host runtime's GGUF
engine, behind a real ``rkllm serve`` on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from rkllm_core import RKLLM
from rkllm_core.backend import ClearKVCache
from rkllm_core.chat import ChatEngine, ChatMessage
from rkllm_core.remote import RemoteRKLLM
from rkllm_core.server import ModelConfig, ServerConfig, serving

pytestmark = pytest.mark.gguf

SETTINGS: dict[str, Any] = {"max_context_len": 1024, "top_k": 1}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    from rkllm_core.host.models import smollm2_path

    config = ServerConfig(models=[ModelConfig(path=str(smollm2_path()), id="smollm2",
                                              library="host", params=SETTINGS)])
    with serving(config) as base:
        yield base


def test_a_remote_smollm2_chat_reuses_its_cache_and_replays_after_another_client(
        url: str) -> None:
    with RemoteRKLLM(url, "smollm2") as llm, RemoteRKLLM(url, "smollm2") as other:
        chat = ChatEngine(llm)
        history = [ChatMessage.user("Hi, my name is Alice.")]
        first = chat.generate(history, max_new_tokens=24)
        assert first.message.content.strip() and first.finish_reason in ("stop", "length")
        history += [first.message, ChatMessage.user("What is the capital of France?")]
        second = chat.generate(history, max_new_tokens=24)
        # the server kept the conversation: only the new turn was prefilled
        assert second.reused_cache and second.message.content.strip()
        assert 0 < second.usage.prefill_tokens < second.usage.input_tokens
        ChatEngine(other).generate([ChatMessage.user("Tell me a joke.")], max_new_tokens=8)
        history += [second.message, ChatMessage.user("Thank you!")]
        third = chat.generate(history, max_new_tokens=24)
        # another client's conversation was in the cache: the whole history was sent again
        assert not third.reused_cache and third.message.content.strip()
        assert third.usage.prefill_tokens == third.usage.input_tokens


def test_a_remote_greedy_answer_is_the_in_process_one(url: str) -> None:
    from rkllm_core.host.models import smollm2_path

    prompt = "Name three colours."
    fresh = [ClearKVCache()]  # whatever ran before, both start from an empty cache
    with RemoteRKLLM(url, "smollm2") as remote, \
            RKLLM(smollm2_path(), library="host", **SETTINGS) as here:
        stream = remote.stream(prompt, max_new_tokens=16, setup=fresh)
        streamed = "".join(chunk.text for chunk in stream)
        expected = here.generate(prompt, max_new_tokens=16, setup=fresh)
    assert streamed == stream.result.text == expected.text and expected.text.strip()
    assert stream.result.token_ids == expected.token_ids
