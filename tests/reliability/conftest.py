"""Scripted models for the reliability tests: paced like an NPU, hanging, failing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

ModelFile = Callable[[str], Path]

#: Replies to "short" at once; anything else streams five words, then sends no more
#: callbacks until rkllm_abort.
HANGING = (
    "hang_after_tokens = 5\n"
    'when contains "short" reply "ok"\n'
    'default reply "' + "word " * 50 + '"\n'
)

#: An assistant paced like a small model on an NPU (prefill fast, decode a token at a time),
#: with its callbacks coming from a runtime-owned thread.
PACED = (
    "callback_thread = runtime\n"
    "prefill_tokens_per_second = 4000\n"
    "decode_tokens_per_second = {tps}\n"
    "hidden_size = 32\n"
    'when contains "weather" tools yes reply "<tool_call>\\n{{\\"name\\": \\"get_weather\\", '
    '\\"arguments\\": {{\\"city\\": \\"Paris\\"}}}}\\n</tool_call>"\n'
    'when contains "garbage call" reply "<tool_call>\\n{{\\"name\\": get_weather, '
    '\\"arguments\\": oops\\n</tool_call>"\n'
    'when contains "short" reply "ok"\n'
    'when contains "echo" reply "You said: {{input}}"\n'
    'default reply "' + "word " * 40 + '"\n'
)


@pytest.fixture
def model_file(tmp_path: Path) -> ModelFile:
    """Write a scripted model with the given body and return its path."""
    counter = iter(range(1000))

    def write(body: str) -> Path:
        path = tmp_path / f"model{next(counter)}.scripted"
        path.write_text("RKLLM-SCRIPTED 1\n" + body)
        return path

    return write


def paced(tps: int = 400) -> str:
    """The PACED model body at ``tps`` decode tokens per second."""
    return PACED.format(tps=tps)
