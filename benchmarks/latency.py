"""Suite 2: delay from the runtime's callback to the consumer, with tokens paced like an NPU.

Each token is stamped (``time.perf_counter_ns``) when the runtime's callback reaches Python and
again when the consumer receives it; the difference is the delivery latency.

- ``RKLLM.stream`` / ``RKLLM.astream``: the stamp is taken by a probe placed in front of the
  model's per-result handler (the first Python frame after the ctypes trampoline).
- The polling pattern of existing RKLLM servers, written anew here: the ctypes callback
  appends the text to a global list, ``rkllm_run`` runs on a thread, and the serving loop drains
  the list and sleeps 5 ms between looks.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
import time
from typing import Any

from benchmarks._common import (
    Context,
    RawSession,
    percentiles,
    quiet_stderr,
    quote,
    stamp_tokens,
    words,
)

POLL_INTERVAL_S = 0.005


def _core_stream(llm: Any, stamps: list[int]) -> list[float]:
    stamps.clear()
    received = []
    for chunk in llm.stream("go"):
        if chunk.token_id is not None:
            received.append(time.perf_counter_ns())
    return [(r - s) / 1000.0 for s, r in zip(stamps, received, strict=True)]


def _core_astream(llm: Any, stamps: list[int]) -> list[float]:
    async def consume() -> list[int]:
        received = []
        async for chunk in llm.astream("go"):
            if chunk.token_id is not None:
                received.append(time.perf_counter_ns())
        return received

    stamps.clear()
    received = asyncio.run(consume())
    return [(r - s) / 1000.0 for s, r in zip(stamps, received, strict=True)]


def _polling(ctx: Context, model: Any, max_ctx: int) -> list[float]:
    global_text: list[tuple[str, int]] = []  # what the servers call global_text

    def callback(result: Any, state: int) -> int:
        if state == 0:
            r = ctypes.cast(result, session.result_type)[0]
            text = ctypes.string_at(r.text).decode("utf-8", "replace") if r.text else ""
            global_text.append((text, time.perf_counter_ns()))
        return 0

    session = RawSession(ctx.library, model, max_ctx, callback)
    inp, keep = session.make_input("go")
    infer = session.make_infer()
    latencies = []
    try:
        worker = threading.Thread(target=session.run, args=(inp, infer), daemon=True)
        worker.start()
        while worker.is_alive() or global_text:
            while global_text:
                _text, stamp = global_text.pop(0)
                latencies.append((time.perf_counter_ns() - stamp) / 1000.0)
            time.sleep(POLL_INTERVAL_S)
        worker.join()
    finally:
        session.close()
        del keep
    return latencies


def run(ctx: Context) -> dict[str, Any]:
    """p50 / p99 delivery latency per consumer; see the module docstring."""
    rate = 200.0 if ctx.quick else 25.0
    n_tokens = 40 if ctx.quick else 300
    max_ctx = n_tokens + 256
    model = ctx.scripted_model("latency", (
        f"max_context_limit = {max_ctx}\ndecode_tokens_per_second = {rate:g}\n"
        f"default reply {quote(words(n_tokens))}\n"))

    from rkllm_core import RKLLM

    with quiet_stderr():
        llm = RKLLM(model, library=ctx.library, max_context_len=max_ctx, max_new_tokens=-1)
    stamps: list[int] = []
    stamp_tokens(llm, stamps)
    try:
        llm.generate("go", max_new_tokens=2)  # warm-up
        samples = {
            "stream": _core_stream(llm, stamps),
            "astream": _core_astream(llm, stamps),
            "polling_5ms": _polling(ctx, model, max_ctx),
        }
    finally:
        llm.close()
    labels = {
        "stream": "RKLLM.stream",
        "astream": "RKLLM.astream",
        "polling_5ms": "global list + 5 ms polling loop (server pattern)",
    }
    rows = [{"variant": name, "label": labels[name], "latency_us": percentiles(values)}
            for name, values in samples.items()]
    return {
        "description": "Delivery latency, runtime callback to consumer, tokens paced",
        "decode_tokens_per_second": rate,
        "tokens_per_variant": n_tokens,
        "rows": rows,
        "notes": [],
    }
