"""What every suite shares: the run context, statistics, scripted models, the machine."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent

#: Rockchip's RK3588 figures for Qwen2.5-1.5B w8a8 (rknn-llm benchmark.md, v1.3.0; see
#: ../shared/rkllm-abi/SEMANTICS.md section 3): TTFT 378.31 ms for a 128-token prompt, 16.69
#: tokens/s decode. Prefill is not published; 128 / 0.37831 s is the rate it implies.
RK3588_QWEN25_15B_TTFT_MS = 378.31
RK3588_QWEN25_15B_PREFILL_TPS = round(128 / (RK3588_QWEN25_15B_TTFT_MS / 1000.0), 1)
RK3588_QWEN25_15B_DECODE_TPS = 16.69

WORDS = [
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven",
    "small", "boards", "compute", "tokens", "for", "every", "question", "people", "ask", "about",
    "rivers", "mountains", "and", "distant", "cities",
]


@dataclass
class Context:
    """One benchmark run: sizes (quick or full), where scratch files go, the runtime library."""

    quick: bool
    workdir: Path
    runtime_version: str = "1.3.0"
    notes: list[str] = field(default_factory=list)
    _library: Any = None

    @property
    def library(self) -> Any:
        """The host runtime every suite runs on (built on first use)."""
        if self._library is None:
            from rkllm_core.library import load_library

            self._library = load_library("host", runtime_version=self.runtime_version)
        return self._library

    def scripted_model(self, name: str, body: str) -> Path:
        """Write a scripted model file and return its path."""
        path = self.workdir / f"{name}.scripted"
        path.write_text("RKLLM-SCRIPTED 1\n" + body)
        return path


def quote(text: str) -> str:
    """A scripted-model string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def words(n: int, offset: int = 0) -> str:
    """``n`` plain words (one scripted token each, with its leading space)."""
    return " ".join(WORDS[(offset + i) % len(WORDS)] for i in range(n))


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median and spread of repeated measurements."""
    a = np.asarray(values, dtype=float)
    return {
        "median": float(np.median(a)),
        "p25": float(np.percentile(a, 25)),
        "p75": float(np.percentile(a, 75)),
        "min": float(a.min()),
        "max": float(a.max()),
        "n": int(a.size),
    }


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """``{"p50": ..., "p99": ..., "max": ..., "mean": ..., "n": ...}`` of latency samples."""
    a = np.asarray(values, dtype=float)
    out = {f"p{q:g}": float(np.percentile(a, q)) for q in qs}
    out.update(mean=float(a.mean()), max=float(a.max()), n=int(a.size))
    return out


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence fd 2 (the runtime's init log) for a block."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def stamp_tokens(llm: Any, stamps: list[int]) -> None:
    """Append ``time.perf_counter_ns()`` to ``stamps`` for every token callback of ``llm``.

    The probe sits in front of the model's per-result handler, the first Python frame after
    the ctypes trampoline; it reads private attributes because no public hook runs inside the
    runtime's callback for streamed runs.
    """
    worker = llm._worker
    handle_result = worker._on_result

    def probe(run: Any, result: Any, state: int) -> int:
        if state in (0, 1):
            stamps.append(time.perf_counter_ns())
        return int(handle_result(run, result, state))

    worker._on_result = probe


class RawSession:
    """One model handle driven through the raw ctypes layer: no RKLLM, no worker thread.

    ``handler(result_pointer, state) -> int`` is the whole callback; this is what a hand-written
    ctypes program does.
    """

    def __init__(self, lib: Any, model: Path, max_context_len: int,
                 handler: Callable[[Any, int], int]) -> None:
        self.lib = lib
        family = lib.family
        self.result_type = ctypes.POINTER(family.struct("RKLLMResult"))

        def callback(result: Any, userdata: Any, state: int) -> int:
            return handler(result, state)

        self._callback = family.result_callback(callback)
        param = lib.create_default_param()
        self._path = os.fsencode(model)
        param.model_path = self._path
        param.max_context_len = max_context_len
        param.max_new_tokens = -1
        self._param = param
        self.handle = ctypes.c_void_p()
        init_arg: Any = self._callback
        if family.key == "1.3.0":
            self._callbacks = family.struct("RKLLMCallback")()
            self._callbacks.result_callback = self._callback
            init_arg = ctypes.byref(self._callbacks)
        with quiet_stderr():
            code = lib.init(ctypes.byref(self.handle), ctypes.byref(param), init_arg)
        if code != 0 or not self.handle.value:
            raise RuntimeError(f"rkllm_init failed for {model}")

    def make_input(self, prompt: str) -> tuple[Any, Any]:
        """(RKLLMInput, the bytes it points at) for a user prompt."""
        inp = self.lib.family.struct("RKLLMInput")()
        data = prompt.encode()
        if hasattr(inp, "role"):
            inp.role = b"user"
        inp.input_type = 0
        inp.prompt_input = data
        return inp, data

    def make_infer(self, mode: int = 0) -> Any:
        """RKLLMInferParam for generation (0) or hidden states (1), no history."""
        infer = self.lib.family.struct("RKLLMInferParam")()
        infer.mode = mode
        return infer

    def run(self, inp: Any, infer: Any) -> int:
        """``rkllm_run``: blocks, calling the handler per token."""
        return int(self.lib.run(self.handle, ctypes.byref(inp), ctypes.byref(infer), None))

    def close(self) -> None:
        """Destroy the handle once."""
        if self.handle.value:
            self.lib.destroy(self.handle)
            self.handle = ctypes.c_void_p()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info(lib: Any) -> dict[str, Any]:
    """The machine, Python, OS and runtime library a run was made on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "machine": platform.machine(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": _os_name(),
        "kernel": platform.release(),
        "runtime": "rkllm-py host runtime (scripted engine), not an NPU",
        "runtime_family": lib.family.key,
        "runtime_library": str(lib.path),
        "commit": _git_commit(),
    }
