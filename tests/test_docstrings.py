"""Every example in the docstrings of the three packages runs as written (on the host runtime)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from types import ModuleType

import pytest

import langchain_rkllm
import llama_index_rkllm
import rkllm_core

# the core modules' examples are run by tests/core/test_docs.py
ALREADY = {"rkllm_core", "rkllm_core.model", "rkllm_core.params", "rkllm_core.streaming"}


def _modules() -> list[ModuleType]:
    found = []
    for package in (rkllm_core, langchain_rkllm, llama_index_rkllm):
        found.append(package)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name not in ALREADY and not info.name.endswith("__main__"):
                found.append(importlib.import_module(info.name))
    return [m for m in found if m.__name__ not in ALREADY]


@pytest.mark.parametrize("module", _modules(), ids=lambda m: m.__name__)
def test_docstring_examples_run(module: ModuleType) -> None:
    failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failures == 0
