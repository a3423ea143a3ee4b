"""The host runtime's own behavioural tests (scripted and GGUF engines) under AddressSanitizer
and UndefinedBehaviorSanitizer: any memory error or undefined behaviour in the C runtime aborts
the child pytest, so this fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

pytestmark = pytest.mark.stress


def _runtime_library(name: str) -> str | None:
    for compiler in ("gcc", "cc"):
        try:
            out = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True,
                                 text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            continue
        if os.path.isabs(out) and os.path.exists(out):
            return out
    return None


def test_host_runtime_tests_pass_under_asan_and_ubsan(tmp_path: Path) -> None:
    asan = _runtime_library("libasan.so")
    stdcxx = _runtime_library("libstdc++.so.6")
    if asan is None or stdcxx is None:
        pytest.skip("the compiler has no AddressSanitizer runtime")
    # python is not instrumented, so the sanitizer runtime is preloaded; libstdc++ too, or
    # ASan cannot intercept the C++ exceptions llama.cpp throws and catches internally
    env = dict(os.environ, RKLLM_HOST_SANITIZE="1", RKLLM_HOST_CACHE=str(tmp_path / "host"),
               LD_PRELOAD=f"{asan} {stdcxx}",
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    tests = [str(ROOT / "tests" / "host" / "test_runtime_behaviour.py"),
             str(ROOT / "tests" / "host" / "test_gguf_engine.py")]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False)
    tail = (result.stdout + result.stderr)[-3000:]
    assert result.returncode == 0, tail
    assert "AddressSanitizer" not in result.stderr and "runtime error:" not in result.stderr
    built = list((tmp_path / "host").glob("*.so"))
    assert built, "no sanitized runtime was built"
