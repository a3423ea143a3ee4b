"""Memory: hundreds of runs on one model leave resident memory, ctypes objects and per-run
Python objects where they were after a warm-up."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import weakref
from pathlib import Path

import numpy as np
import pytest

from rkllm_core import RKLLM
from tests.reliability.conftest import ModelFile, paced

pytestmark = pytest.mark.stress

RUNS = 300
RSS_BOUND_KB = 4096  # generous: the allocator's own slack, never a per-run leak


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    pytest.skip("no /proc/self/status on this system")


_CTYPES_BASES = (ctypes._SimpleCData, ctypes.Structure, ctypes.Union, ctypes.Array,
                 ctypes._Pointer, ctypes._CFuncPtr)  # type: ignore[attr-defined]


def ctypes_objects() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, _CTYPES_BASES))


def one_round(llm: RKLLM, n: int) -> None:
    kind = n % 4
    if kind == 0:
        assert llm.generate(f"echo {n}").text == f"You said: echo {n}"
    elif kind == 1:
        for i, _ in enumerate(llm.stream("long story")):
            if i == 3:
                break
    elif kind == 2:
        assert llm.embed([f"text {n}", "another"]).shape == (2, 32)
    else:
        assert llm.generate(embeddings=np.ones((4, 32), np.float32), max_new_tokens=3).text


def test_hundreds_of_runs_keep_resident_memory_and_ctypes_objects_flat(
        model_file: ModelFile) -> None:
    llm = RKLLM(model_file(paced(0)), library="host", runtime_version="1.3.0",
                max_context_len=512)
    for n in range(60):  # warm-up: allocator pools, lazily built structs, caches
        one_round(llm, n)
    gc.collect()
    rss_before, objects_before = rss_kb(), ctypes_objects()
    for n in range(RUNS):
        one_round(llm, n)

    async def some_async() -> None:
        for n in range(40):
            assert (await llm.agenerate(f"echo {n}")).text == f"You said: echo {n}"

    asyncio.run(some_async())
    gc.collect()
    growth = rss_kb() - rss_before
    assert growth < RSS_BOUND_KB, f"RSS grew by {growth} kB over {RUNS + 40} runs"
    assert ctypes_objects() - objects_before <= 5
    llm.close()


def test_no_run_object_outlives_its_run(model_file: ModelFile) -> None:
    with RKLLM(model_file(paced(0)), library="host", max_context_len=512) as llm:
        stream = llm.stream("echo one")
        assert "".join(c.text for c in stream) == "You said: echo one"
        run = weakref.ref(stream._run)
        broken = llm.stream("long story")
        next(broken)
        broken_run = weakref.ref(broken._run)
        del stream, broken
        llm.generate("short")  # the engine has moved on
        gc.collect()
        assert run() is None and broken_run() is None


def test_ten_thousand_runs_grow_resident_memory_by_less_than_2_mb(
        model_file: ModelFile) -> None:
    llm = RKLLM(model_file(paced(0)), library="host", runtime_version="1.3.0",
                max_context_len=512)
    for n in range(500):  # warm-up
        one_round(llm, n)
    gc.collect()
    rss_before = rss_kb()
    for n in range(10_000):
        if n % 10 == 9:
            one_round(llm, n)  # a stream, an embedding or an embedding input now and then
        else:  # few distinct words: the scripted engine's small vocabulary hashes words
            assert llm.generate(f"echo {n % 97}").text == f"You said: echo {n % 97}"
    gc.collect()
    growth = rss_kb() - rss_before
    assert growth < 2048, f"RSS grew by {growth} kB over 10,000 runs"
    llm.close()
