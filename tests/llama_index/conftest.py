"""Scripted models for the LlamaIndex adapter: exact answers from the host runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llama_index_rkllm import RKLLM, RKLLMEmbedding


def tool_call(tool: str, /, **arguments: int | str) -> str:
    """A Hermes tool call as a scripted reply string (escaped for the model file)."""
    args = ", ".join(f'\\"{k}\\": ' + (f'\\"{v}\\"' if isinstance(v, str) else str(v))
                     for k, v in arguments.items())
    return f'<tool_call>{{\\"name\\": \\"{tool}\\", \\"arguments\\": {{{args}}}}}</tool_call>'


# the documents' facts appear in a reply only when retrieval put them in the prompt
ASSISTANT = f"""RKLLM-SCRIPTED 1
max_context_limit = 4096
hidden_size = 64
thinking = yes
when contains "what is my name" contains "alice" reply "Your name is Alice."
when contains "what is my name" remembers "alice" reply "Your name is Alice."
when contains "rock 5b" contains "16 gb" reply "The Rock 5B has 16 GB of RAM."
when role tool contains "20" reply "(2 + 3) * 4 = 20."
when role tool contains "5" tools yes reply "{tool_call("multiply", a=5, b=4)}"
when contains "(2 + 3) * 4" tools yes reply "{tool_call("add", a=2, b=3)}"
when contains "observation: 20" reply "Thought: I can answer without using any more tools.\\nAnswer: (2 + 3) * 4 = 20."
when contains "observation: 5" reply "Thought: Now I multiply.\\nAction: multiply\\nAction Input: {{\\"a\\": 5, \\"b\\": 4}}"
when contains "(2 + 3) * 4" reply "Thought: First I add.\\nAction: add\\nAction Input: {{\\"a\\": 2, \\"b\\": 3}}"
when contains "describe paris" tools yes reply "{tool_call("City", name="Paris", country="France", population_millions=2)}"
when contains "json city" reply "Here it is: {{\\"name\\": \\"Paris\\", \\"country\\": \\"France\\", \\"population_millions\\": 2}}"
when contains "weather" tools yes reply "Let me check.\\n{tool_call("get_weather", city="Paris")}"
when contains "think about it" reply "Done thinking." think "Let me consider."
when contains "slow" reply "One two three four five."
default reply "I do not know."
"""  # noqa: E501

DOCUMENTS = [
    "The Rock 5B board has 16 GB of RAM and an RK3588 NPU.",
    "Bananas are yellow fruit grown in the tropics.",
    "The Eiffel Tower is in Paris and is 330 metres tall.",
]


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "assistant.scripted"
    path.write_text(ASSISTANT)
    return path


@pytest.fixture
def llm(model_file: Path, place: Any) -> RKLLM:
    return RKLLM(**place(model_path=str(model_file), library="host", max_context_len=4096),
                 max_tokens=256)


@pytest.fixture
def embed_model(llm: RKLLM) -> RKLLMEmbedding:
    return RKLLMEmbedding(client=llm.client)
