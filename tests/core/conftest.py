"""Fixtures for the RKLLM API tests: scripted models written per test, host runtimes per family."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rkllm_core import RKLLM

FAMILIES = ["1.1", "1.2.0", "1.2.1", "1.2.3", "1.3.0"]
FROM_1_2_0 = FAMILIES[1:]
FROM_1_2_1 = FAMILIES[2:]
ASSISTANT = Path(__file__).resolve().parent.parent / "models" / "assistant.scripted"

#: Replies to "short" at once; anything else streams a long reply and then stops sending
#: callbacks until rkllm_abort: a run that is not aborted never ends.
HANGING = (
    "hang_after_tokens = 5\n"
    'when contains "short" reply "ok"\n'
    'default reply "' + "word " * 50 + '"\n'
)

ModelFile = Callable[[str], Path]


@pytest.fixture
def model_file(tmp_path: Path) -> ModelFile:
    """Write a scripted model with the given body and return its path."""
    counter = iter(range(1000))

    def write(body: str) -> Path:
        path = tmp_path / f"model{next(counter)}.scripted"
        path.write_text("RKLLM-SCRIPTED 1\n" + body)
        return path

    return write


def open_model(family: str, path: Path = ASSISTANT, **kwargs: object) -> RKLLM:
    kwargs.setdefault("max_context_len", 512)
    return RKLLM(path, library="host", runtime_version=family, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def llm(request: pytest.FixtureRequest) -> Iterator[RKLLM]:
    """The assistant model on the family given by indirect parametrization."""
    model = open_model(request.param)
    yield model
    model.close()
