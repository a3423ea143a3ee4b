"""The host runtime's C declarations against abi.json, checked by the C compiler itself."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import rkllm_core.host as host

FAMILY_MACRO = {"1.1": 110, "1.2.0": 120, "1.2.1": 121, "1.2.3": 123, "1.3.0": 130}


def _assertions(facts: dict[str, Any], abi: str) -> str:
    lines = ['#include "rkllm_abi.h"']
    for name, struct in facts["structs"].items():
        lines.append(
            f'_Static_assert(sizeof({name}) == {struct["sizeof"][abi]}, "sizeof {name}");'
        )
        lines.append(
            f'_Static_assert(_Alignof({name}) == {struct["alignof"][abi]}, "alignof {name}");'
        )
        for field in struct["fields"]:
            f = field["name"]
            off = field["offset"][abi]
            lines.append(
                f'_Static_assert(__builtin_offsetof({name}, {f}) == {off}, "{name}.{f}");'
            )
    return "\n".join(lines) + "\n"


def _compile(
    source: str, family: str, tmp_path: Path, *flags: str
) -> subprocess.CompletedProcess[str]:
    src = tmp_path / f"layout_{family}.c"
    src.write_text(source)
    return subprocess.run(
        ["cc", "-std=c11", "-ffreestanding", "-fsyntax-only", *flags,
         f"-DRKLLM_HOST_FAMILY={FAMILY_MACRO[family]}", f"-I{host.SOURCE_DIR}", str(src)],
        capture_output=True, text=True, check=False,
    )


@pytest.mark.parametrize("family", list(FAMILY_MACRO))
def test_host_header_matches_abi_json_on_lp64(
    family: str, abi_facts: dict[str, Any], tmp_path: Path
) -> None:
    result = _compile(_assertions(abi_facts[family], "lp64"), family, tmp_path)
    assert result.returncode == 0, result.stderr


def _has_m32(tmp_path: Path) -> bool:
    probe = tmp_path / "m32.c"
    probe.write_text("#include <stdint.h>\nint32_t x;\n")
    return subprocess.run(
        ["cc", "-m32", "-ffreestanding", "-fsyntax-only", str(probe)],
        capture_output=True, check=False,
    ).returncode == 0


@pytest.mark.parametrize("family", list(FAMILY_MACRO))
def test_host_header_matches_abi_json_on_ilp32(
    family: str, abi_facts: dict[str, Any], tmp_path: Path
) -> None:
    if shutil.which("cc") is None or not _has_m32(tmp_path):
        pytest.skip("this compiler cannot target 32-bit (cc -m32)")
    # i386 aligns 8-byte scalars to 4, armhf to 8; none of these structs holds one.
    result = _compile(_assertions(abi_facts[family], "ilp32"), family, tmp_path, "-m32")
    assert result.returncode == 0, result.stderr


def test_a_wrong_offset_fails_the_check(abi_facts: dict[str, Any], tmp_path: Path) -> None:
    source = _assertions(abi_facts["1.3.0"], "lp64").replace(
        "RKLLMInferParam, keep_history) == 32", "RKLLMInferParam, keep_history) == 28"
    )
    assert _compile(source, "1.3.0", tmp_path).returncode != 0
