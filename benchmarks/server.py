"""Suite 7: what ``rkllm serve`` adds over the in-process stream, and KV reuse through it.

A real ``rkllm serve`` (a process of its own, on 127.0.0.1) over the host runtime; the client
is httpx in the benchmark's process reading the raw SSE of ``POST /v1/chat/completions`` (the
openai package would add its own parsing to the server's share). Three measurements:

1. **Per token**: one unpaced reply of N tokens streamed by ``ChatEngine.astream`` in this
   process and through the server; (server - in-process) / N is what HTTP, JSON and SSE add to
   each token. Rounds alternate the two, medians reported.
2. **Time to first token** (unpaced, a short prompt): from the call (the request) to the first
   content chunk (SSE event), in process and through the server; the difference is the
   server's share.
3. **Later turns with KV reuse, 1 and 8 concurrent conversations**, the scripted model paced at
   Rockchip's RK3588 rates for Qwen2.5-1.5B w8a8: each client holds a 4-turn conversation
   (streamed, the whole history sent each turn as clients do); per later turn the time to
   first token and ``usage.prompt_tokens_details.cached_tokens``. One model holds one
   conversation in its KV cache, so 8 interleaved conversations replace each other's cache:
   this measures what that costs (see ``--slots`` and ``--ray`` for more caches).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks._common import (
    RK3588_QWEN25_15B_DECODE_TPS,
    RK3588_QWEN25_15B_PREFILL_TPS,
    Context,
    quiet_stderr,
    quote,
    summary,
    words,
)

#: The id the benchmark's server serves its model under (the scripted file's name).
MODEL_ID = "bench"


@contextmanager
def _server(ctx: Context, model: Any, max_context_len: int) -> Iterator[str]:
    """``rkllm serve`` for ``model`` in a process of its own (as on a board: the client's work
    does not share the server's interpreter), on a free loopback port."""
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "rkllm_core.cli", "serve", str(model), "--port", str(port),
         "--library", "host", "--runtime-version", ctx.runtime_version,
         "--max-context-len", str(max_context_len), "--max-queue", "64",
         "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the benchmark's rkllm serve did not start")
            try:
                if httpx.get(url + "/", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


async def http_turn(client: Any, url: str, messages: list[dict[str, Any]],
                    max_tokens: int | None = None, model: str = MODEL_ID) -> dict[str, Any]:
    """One streamed chat turn through ``POST /v1/chat/completions``, read as raw SSE: time to
    the first content piece and in all, the text, the usage, the replica that served it and
    when it ended (``perf_counter`` seconds)."""
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True,
                            "stream_options": {"include_usage": True}}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    start = time.perf_counter_ns()
    first: int | None = None
    text: list[str] = []
    usage: dict[str, Any] = {}
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        replica = response.headers.get("x-rkllm-replica", "")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            for choice in event.get("choices", []):
                piece = choice.get("delta", {}).get("content")
                if piece:
                    if first is None:
                        first = time.perf_counter_ns()
                    text.append(piece)
            if event.get("usage"):
                usage = event["usage"]
    end = time.perf_counter_ns()
    return {"ttft_ms": ((first or end) - start) / 1e6, "total_ms": (end - start) / 1e6,
            "text": "".join(text), "usage": usage, "replica": replica, "end": end / 1e9}


async def _engine_turn(engine: Any, messages: list[Any]) -> dict[str, Any]:
    start = time.perf_counter_ns()
    first: int | None = None
    async for chunk in engine.astream(messages):
        if first is None and chunk.content:
            first = time.perf_counter_ns()
    end = time.perf_counter_ns()
    return {"ttft_ms": ((first or end) - start) / 1e6, "total_ms": (end - start) / 1e6}


def _overhead(ctx: Context) -> dict[str, Any]:
    import httpx

    from rkllm_core import RKLLM
    from rkllm_core.chat import ChatEngine, ChatMessage

    n_tokens = 200 if ctx.quick else 2000
    rounds = 2 if ctx.quick else 7
    body = (f"max_context_limit = 8192\nwhen contains \"long\" reply {quote(words(n_tokens))}\n"
            'default reply "ok"\n')
    model = ctx.scripted_model(MODEL_ID, body)
    rows: dict[str, list[float]] = {"engine_us": [], "server_us": [], "engine_ttft": [],
                                    "server_ttft": []}

    async def measure(url: str, engine: Any) -> None:
        async with httpx.AsyncClient(timeout=300) as client:
            # warm-up: the first request imports the routes' protocol types
            await http_turn(client, url, [{"role": "user", "content": "a long one"}])
            await _engine_turn(engine, [ChatMessage.user("a long one")])
            for _ in range(rounds):
                long_ask = [{"role": "user", "content": "a long one"}]
                served = await http_turn(client, url, long_ask)
                here = await _engine_turn(engine, [ChatMessage.user("a long one")])
                rows["server_us"].append(served["total_ms"] * 1000 / n_tokens)
                rows["engine_us"].append(here["total_ms"] * 1000 / n_tokens)
                for _ in range(5):
                    short = await http_turn(client, url, [{"role": "user", "content": "hi"}])
                    rows["server_ttft"].append(short["ttft_ms"])
                    local = await _engine_turn(engine, [ChatMessage.user("hi")])
                    rows["engine_ttft"].append(local["ttft_ms"])

    with quiet_stderr(), _server(ctx, model, 8192) as url, \
            RKLLM(model, library=ctx.library, max_context_len=8192) as llm:
        asyncio.run(measure(url, ChatEngine(llm)))
    per_token = [s - e for s, e in zip(rows["server_us"], rows["engine_us"], strict=True)]
    return {"tokens_per_reply": n_tokens, "rounds": rounds,
            "engine_us_per_token": summary(rows["engine_us"]),
            "server_us_per_token": summary(rows["server_us"]),
            "server_added_us_per_token": summary(per_token),
            "engine_ttft_ms": summary(rows["engine_ttft"]),
            "server_ttft_ms": summary(rows["server_ttft"]),
            "server_added_ttft_ms": statistics.median(rows["server_ttft"]) -
            statistics.median(rows["engine_ttft"])}


def _reuse(ctx: Context) -> dict[str, Any]:
    import httpx

    turns = 3 if ctx.quick else 4
    reply_words = 8 if ctx.quick else 24
    prefill = RK3588_QWEN25_15B_PREFILL_TPS * (20 if ctx.quick else 1)
    decode = RK3588_QWEN25_15B_DECODE_TPS * (20 if ctx.quick else 1)
    body = (f"max_context_limit = 8192\nprefill_tokens_per_second = {prefill:g}\n"
            f"decode_tokens_per_second = {decode:g}\n"
            f"default reply {quote(words(reply_words))}\n")
    model = ctx.scripted_model(MODEL_ID, body)
    question = "Tell me about the next stop of our trip along the river, please. " * 4
    results: dict[str, Any] = {"turns": turns, "reply_words": reply_words,
                               "prefill_tps": prefill, "decode_tps": decode}

    async def conversation(client: Any, url: str, who: int) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": f"You are guide number {who}."}]
        rows = []
        for turn in range(turns):
            messages.append({"role": "user", "content": f"{turn}: {question}"})
            row = await http_turn(client, url, messages)
            messages.append({"role": "assistant", "content": row["text"]})
            usage = row["usage"]
            rows.append({"turn": turn, "ttft_ms": row["ttft_ms"],
                         "prompt_tokens": usage.get("prompt_tokens", 0),
                         "cached_tokens": (usage.get("prompt_tokens_details") or {}).get(
                             "cached_tokens", 0)})
        return rows

    async def clients(url: str, n: int) -> list[list[dict[str, Any]]]:
        async with httpx.AsyncClient(timeout=600) as client:
            return list(await asyncio.gather(*(conversation(client, url, i)
                                               for i in range(n))))

    with quiet_stderr(), _server(ctx, model, 8192) as url:
        for n in (1, 8):
            later = [row for conv in asyncio.run(clients(url, n)) for row in conv[1:]]
            results[f"{n}_conversations"] = {
                "later_turn_ttft_ms": summary([r["ttft_ms"] for r in later]),
                "cached_fraction": sum(r["cached_tokens"] for r in later) /
                max(1, sum(r["prompt_tokens"] for r in later)),
                "turns_with_reuse": sum(1 for r in later if r["cached_tokens"] > 0),
                "later_turns": len(later)}
    return results


def run(ctx: Context) -> dict[str, Any]:
    """Both measurements; see the module docstring."""
    return {"overhead": _overhead(ctx), "reuse": _reuse(ctx)}
