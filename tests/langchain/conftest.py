"""Scripted models for the LangChain adapter's tests, and asyncio for the standard suites."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def call(name: str, arguments: dict[str, object]) -> str:
    """A Hermes tool-call block, as the scripted model writes it."""
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n</tool_call>"  # noqa: E501


def scripted(settings: dict[str, object], rules: list[tuple[str, str]],
             default: str = "OK, noted.") -> str:
    """A scripted model file: ``rules`` are (conditions, reply) pairs, first match wins."""
    lines = ["RKLLM-SCRIPTED 1", *(f"{k} = {v}" for k, v in settings.items())]
    for conditions, reply in rules:
        lines.append(f"when {conditions} reply {json.dumps(reply, ensure_ascii=False)}")
    lines.append(f"default reply {json.dumps(default)}")
    return "\n".join(lines) + "\n"


# One assistant for the behaviour tests. Rules react to the new input only; none is written
# for a prompt of LangChain's standard suites.
ASSISTANT_RULES: list[tuple[str, str]] = [
    ('contains "think about it"', "Done thinking."),
    # a history the KV cache does not hold arrives as one transcript turn (native mode)
    ('contains "tool results" contains "error"', "The tool failed; I will not retry."),
    ('contains "tool results"', "It is sunny in Paris."),
    ('contains "broken tool" tools yes',
     '<tool_call>{"name": "get_weather", "arguments": {city: Paris}}</tool_call>'),
    ('contains "two cities" tools yes',
     call("get_weather", {"city": "Paris"}) + "\n" + call("get_weather", {"city": "Lyon"})),
    ('contains "weather" tools yes', "Let me look.\n" + call("get_weather", {"city": "Paris"})),
    ('contains "weather" tools no', "I cannot look up the weather."),
    ('contains "answer with a tool call now" tools yes', call("get_weather", {"city": "Paris"})),
    ('contains "call the tool `get_time`" tools yes', call("get_time", {"city": "Paris"})),
    ('role tool contains "error"', "The tool failed; I will not retry."),
    ('role tool', "It is sunny in Paris."),
    ('contains "stop test"', "Hello there. User: this should not be seen"),
    ('contains "corrected json" remembers "bad json"', '{"city": "Paris", "days": 3}'),
    ('contains "bad json"', "no json here"),
    ('contains "city json" tools yes', call("City", {"name": "Paris", "country": "France"})),
    ('contains "city json"', '{"name": "Paris", "country": "France"}'),
    ('contains "unicode"', "Grüße 你好 🙂!"),
]


@pytest.fixture
def assistant_file(tmp_path: Path) -> Path:
    """A fresh scripted assistant (its own file, so its own loaded model and KV cache)."""
    text = scripted({"max_context_limit": 4096, "thinking": "yes"}, ASSISTANT_RULES)
    # a thinking block only for the reasoning rule
    text = text.replace('reply "Done thinking."', 'reply "Done thinking." think "Let me see."')
    path = tmp_path / "assistant.scripted"
    path.write_text(text)
    return path


@pytest.fixture
def make_file(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a scripted model text to a file of the test's own directory."""
    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path
    return write


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    # the standard suites' async tests need pytest-asyncio's mark before it collects them
    if name.startswith("test") and inspect.iscoroutinefunction(obj):
        pytest.mark.asyncio(obj)
