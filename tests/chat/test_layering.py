"""The chat layer stands on the backend protocol, never on the ctypes binding (issue 14): it
must run against a model in another process or on another machine."""

from __future__ import annotations

import subprocess
import sys

CTYPES_LAYER = ("ctypes", "rkllm_core.native", "rkllm_core.library", "rkllm_core.model",
                "rkllm_core.inputs", "rkllm_core.worker", "rkllm_core.abi.v1_3_0")


def test_importing_the_chat_engine_loads_nothing_of_the_ctypes_layer() -> None:
    probe = ("import sys, rkllm_core.chat, rkllm_core.chat.engine, rkllm_core.chat.plans, "
             "rkllm_core.chat.streams, rkllm_core.chat.structured; "
             f"print(sorted(m for m in {CTYPES_LAYER!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
