"""The examples in docs/core-api.md and in the docstrings of the core modules run as written."""

from __future__ import annotations

import doctest
import re
from pathlib import Path
from types import ModuleType

import pytest

import rkllm_core
from rkllm_core import model, params, streaming

GUIDE = Path(__file__).resolve().parent.parent.parent / "docs" / "core-api.md"


@pytest.mark.parametrize("module", [rkllm_core, model, params, streaming],
                         ids=lambda m: m.__name__)
def test_docstring_examples_run(module: ModuleType) -> None:
    failures, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert attempted > 0 and failures == 0


def test_the_guide_runs_top_to_bottom(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    assert len(blocks) > 10
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(GUIDE), "exec"), namespace)
    out = capsys.readouterr().out
    assert "The capital of France is Paris." in out
    assert "Your name is Alice." in out
