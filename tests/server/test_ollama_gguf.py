"""The Ollama routes over a real model (SmolLM2-135M-Instruct on the host runtime's GGUF engine),
driven by the official ``ollama`` client and LangChain's ``ChatOllama``. The tests assert what
holds for any reply (a 135M model's words differ from CPU to CPU): counts, reasons, framing."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import ollama
import pytest

from rkllm_core.host.build import find_llama_cpp
from rkllm_core.server import ModelConfig, ServerConfig
from rkllm_core.server import serving as running
from tests.server.test_ollama import ask

pytestmark = [
    pytest.mark.gguf,
    pytest.mark.skipif(find_llama_cpp() is None and not os.environ.get("CI"),
                       reason="needs the host extra (llama-cpp-python); CI always runs these"),
]

RAW_PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """SmolLM2 twice: in native mode (the runtime applies the GGUF's template) and in tokens
    mode (its own file as the tokenizer, the smollm preset), which takes raw prompts."""
    from rkllm_core.host.models import smollm2_path

    path = str(smollm2_path())
    models = [ModelConfig(path=path, id="smollm2", library="host",
                          params={"max_context_len": 2048, "top_k": 1}),
              ModelConfig(path=path, id="smollm2-tokens", library="host", tokenizer=path,
                          preset="smollm",
                          params={"max_context_len": 1024, "top_k": 1})]
    with running(ServerConfig(models=models)) as base:
        yield base


@pytest.fixture
def client(url: str) -> ollama.Client:
    return ollama.Client(host=url, timeout=120)


def test_list_and_show_describe_the_gguf_file(client: ollama.Client) -> None:
    listed = {m.model: m for m in client.list().models}
    details = listed["smollm2:latest"].details
    assert details is not None
    assert (details.format, details.family, details.parameter_size, details.quantization_level
            ) == ("gguf", "llama", "135M", "Q4_1")
    shown = client.show("smollm2")
    assert shown.modelinfo is not None and shown.modelinfo["llama.context_length"] == 2048
    assert shown.capabilities == ["completion", "tools"]


def test_chat_streams_a_reply_with_its_counts(client: ollama.Client) -> None:
    parts = list(client.chat("smollm2", messages=ask("What is the capital of France?"),
                             stream=True, options={"num_predict": 40}))
    *deltas, last = parts
    assert "".join(p.message.content or "" for p in deltas).strip()
    assert last.done and last.done_reason in ("stop", "length")
    assert last.eval_count is not None and 0 < last.eval_count <= 40
    assert last.prompt_eval_count is not None and last.prompt_eval_count > 5
    assert (last.eval_duration or 0) > 0 and (last.prompt_eval_duration or 0) > 0
    # the next turn extends the conversation: the KV cache holds the first one
    history = [*ask("What is the capital of France?"),
               {"role": "assistant", "content": "".join(p.message.content or "" for p in parts)},
               *ask("And of Italy?")]
    again = client.chat("smollm2", messages=history, options={"num_predict": 20})
    assert again.done and (again.prompt_eval_count or 0) > (last.prompt_eval_count or 0)


def test_num_predict_ends_with_length(client: ollama.Client) -> None:
    turn = client.chat("smollm2", messages=ask("Write a long story about a dragon."),
                       options={"num_predict": 5, "temperature": 0})
    assert turn.done_reason == "length" and turn.eval_count == 5


def test_generate_and_a_raw_prompt(client: ollama.Client) -> None:
    whole = client.generate("smollm2", "What is the capital of France?",
                            options={"num_predict": 30})
    assert (whole.response or "").strip() and whole.done_reason in ("stop", "length")
    templated = client.generate("smollm2-tokens", RAW_PROMPT, options={"num_predict": 30})
    raw = client.generate("smollm2-tokens", RAW_PROMPT, raw=True, options={"num_predict": 30})
    assert (raw.response or "").strip() and raw.done_reason in ("stop", "length")
    # as written: the prompt's own tokens, without the template (and its system prompt) around
    assert 0 < (raw.prompt_eval_count or 0) < (templated.prompt_eval_count or 0)
    streamed = list(client.generate("smollm2-tokens", RAW_PROMPT, raw=True, stream=True,
                                    options={"num_predict": 10}))
    assert "".join(p.response or "" for p in streamed).strip() and streamed[-1].done


def test_embed_counts_tokens_with_the_models_tokenizer(client: ollama.Client) -> None:
    got = client.embed("smollm2", ["The cat sat on the mat.", "Quarterly revenue grew."])
    assert len(got.embeddings) == 2 and len(got.embeddings[0]) == len(got.embeddings[1]) > 100
    assert all(math.isclose(math.hypot(*v), 1.0, rel_tol=1e-4) for v in got.embeddings)
    assert got.prompt_eval_count is not None and got.prompt_eval_count >= 8
    assert len(client.embeddings("smollm2", "The cat sat.").embedding) == len(got.embeddings[0])


def test_langchain_chat_ollama_on_smollm2(url: str) -> None:
    from langchain_ollama import ChatOllama

    llm = ChatOllama(model="smollm2", base_url=url, num_predict=30)
    reply = llm.invoke("What is the capital of France?")
    assert str(reply.content).strip()
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] > 0
    assert "".join(str(c.content) for c in llm.stream("Say hello.")).strip()
