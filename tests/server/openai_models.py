"""The scripted models the OpenAI route tests serve, and a client for a running server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rkllm_core.server import ModelConfig

ASSISTANT = "\n".join([
    "RKLLM-SCRIPTED 1",
    "max_context_limit = 1024",
    "hidden_size = 8",
    "thinking = yes",
    'when contains "think about france" reply "Paris is the capital." '
    'think "The user asks about France."',
    'when role tool reply "It is sunny in Paris."',
    'when contains "tool results" reply "It is sunny in Paris."',
    r'when contains "weather" tools yes reply "Let me check.<tool_call>\n'
    r'{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"',
    r'when contains "json please" reply "{\"city\": \"Paris\", \"population\": 2100000}"',
    'when contains "long story" reply "Once upon a time there was a small board with a big '
    'NPU, and it told stories all day long."',
    'when contains "my name is" reply "Nice to meet you."',
    'when contains "what is my name" remembers "Alice" reply "Your name is Alice."',
    'when contains "echo" reply "You said: {input}"',
    'when input token reply "Token input received."',
    'default reply "I am a scripted model."',
    ""])

RERANKER = '''RKLLM-SCRIPTED 1
vocab_size = 1000
when contains "paris" reply "y"
default reply "n"
'''


def scripted(tmp_path: Path, name: str = "assistant", text: str = ASSISTANT,
             **settings: Any) -> ModelConfig:
    """A scripted model file in ``tmp_path`` and its config (host runtime, 1024 context)."""
    path = tmp_path / f"{name}.scripted"
    path.write_text(text)
    return ModelConfig(path=str(path), library="host", params={"max_context_len": 1024},
                       **settings)


def client(url: str) -> Any:
    """The official OpenAI client for a test server (bounded waits, no retries)."""
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=60, max_retries=0)
