"""Every example in the docstrings of the three packages runs as written (on the host runtime)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
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



# The public surface: what a user imports from each package.
PUBLIC = ("rkllm_core", "rkllm_core.chat", "langchain_rkllm", "llama_index_rkllm")
# Hooks the frameworks call, never users: pydantic's, LangChain's and LlamaIndex's.
FRAMEWORK_HOOKS = {"model_post_init", "is_lc_serializable", "class_name"}


def _example_lines(doc: str | None) -> list[str]:
    """The doctest source lines of a docstring (``>>>`` and ``...`` continuation lines)."""
    return [line.strip()[4:] for line in (doc or "").splitlines()
            if line.strip().startswith((">>> ", "... "))]


def _own_members(cls: type) -> dict[str, object]:
    """What ``cls`` and its bases from these packages define (mixins included), not what it
    inherits from a framework."""
    members: dict[str, object] = {}
    for base in reversed(cls.__mro__):
        if base.__module__.split(".")[0] in ("rkllm_core", "langchain_rkllm",
                                             "llama_index_rkllm"):
            members.update(vars(base))
    return members


def _without_runnable_example() -> list[str]:
    """Public classes, functions, methods and properties whose docstring holds no doctest, and
    that no doctest of their class uses either."""
    missing = []
    for package in PUBLIC:
        module = importlib.import_module(package)
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, type) and issubclass(obj, BaseException):
                continue  # errors are raised by what has examples, not called
            own = _example_lines(obj.__doc__)
            if not own:
                missing.append(f"{package}.{name}")
            if not isinstance(obj, type):
                continue
            members = _own_members(obj)
            # an example anywhere in the class may be the one that uses a member
            in_class = own + [line for member in members.values()
                              for line in _example_lines(getattr(member, "__doc__", None))]
            for attr, member in members.items():
                kinds = (property, staticmethod, classmethod)
                if attr.startswith("_") or attr in FRAMEWORK_HOOKS or not (
                        callable(member) or isinstance(member, kinds)):
                    continue
                doc = getattr(member, "__doc__", None)
                used = any(re.search(rf"\.{attr}\b", line) for line in in_class)
                if not _example_lines(doc) and not used:
                    missing.append(f"{package}.{name}.{attr}")
    return missing


def test_every_public_class_function_and_method_has_a_runnable_example() -> None:
    # a doctest of its own, or a use in a doctest of its class: prose "examples" run nothing
    assert _without_runnable_example() == []
