"""What describes one ABI family: plain data, no behaviour.

Example:
    >>> from rkllm_core.abi import get_family
    >>> get_family("1.3.0").functions["rkllm_init"].argtypes[0].__name__
    'LP_c_void_p'
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: ``LLMHandle`` is ``void*`` in every release.
LLMHandle = ctypes.c_void_p


@dataclass(frozen=True)
class FunctionSpec:
    """One exported C function: its prototype as ctypes types, and what it does."""

    name: str
    restype: Any
    argtypes: tuple[Any, ...]
    doc: str


@dataclass(frozen=True)
class AbiFamily:
    """The ctypes view of one runtime layout family (see ``abi.json``)."""

    key: str
    releases: tuple[str, ...]
    structs: Mapping[str, type[ctypes.Structure]]
    enums: Mapping[str, Mapping[str, int]]
    callbacks: Mapping[str, Any]
    functions: Mapping[str, FunctionSpec]

    @property
    def result_callback(self) -> Any:
        """The ``LLMResultCallback`` function-pointer type of this family."""
        return self.callbacks["LLMResultCallback"]

    @property
    def callback_returns_int(self) -> bool:
        """True from 1.2.1 on: the result callback returns 0 (go on), 1 (pause) or 2 (release)."""
        return self.result_callback._restype_ is ctypes.c_int

    def struct(self, name: str) -> type[ctypes.Structure]:
        """The struct class called ``name`` in this family's header."""
        return self.structs[name]

    def has(self, function: str) -> bool:
        """Whether this family exports ``function``."""
        return function in self.functions

    def added_in(self, function: str) -> str | None:
        """The first release that exports ``function`` (None if this family already has it)."""
        from rkllm_core.abi import FAMILIES

        for family in FAMILIES.values():
            if function in family.functions:
                return family.releases[0] if family is not self else None
        return None


def functions(
    *specs: FunctionSpec, base: Mapping[str, FunctionSpec] | None = None, drop: tuple[str, ...] = ()
) -> dict[str, FunctionSpec]:
    """A function table: ``base`` without ``drop``, then ``specs`` added or replacing."""
    table = {k: v for k, v in (base or {}).items() if k not in drop}
    for spec in specs:
        table[spec.name] = spec
    return table
