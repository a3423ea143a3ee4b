"""Suite 8: ``rkllm serve --ray`` on simulated boards — aggregate throughput for 1, 2 and 3
boards, and later-turn time to first token with KV-cache affinity against round-robin.

Boards are Ray nodes of a ``ray.cluster_utils.Cluster`` on this machine (each ``npu: 1``, all on
127.0.0.1), one :class:`~rkllm_core.cluster.replica.Board` replica each, running the host
runtime's scripted model paced at Rockchip's published RK3588 rates for Qwen2.5-1.5B w8a8
(``benchmark.md`` of airockchip/rknn-llm: 378.31 ms to first token for a 128-token prompt,
16.69 tokens/s decode; see :mod:`benchmarks._common`). Clients stream
``POST /v1/chat/completions`` through Serve's HTTP proxy with httpx, sending the whole history
each turn as clients do.

1. **Throughput**: 12 concurrent clients, each a multi-turn conversation, on 1, 2 and 3 boards
   (affinity routing; and round-robin on 3): completion tokens of all turns / wall time from the
   first request to the last reply. Ideal: boards x 16.69 tokens/s; prefill (of the new turn
   with a cache hit, of the whole history without) takes the rest.
2. **Affinity against round-robin**: as many conversations as boards (3 on 3), longer
   histories; per later turn the time to first token and the prompt tokens served from the KV
   cache. With affinity each conversation keeps its board; round-robin sends each turn to the
   next board, which mostly holds another conversation, so the turn replays the whole history.

Clients read each reply for a random time (seeded; 0-1 s in 1, 0-3 s in 2) before they
answer, so their turns do not arrive in lockstep: in lockstep, round-robin hands each
conversation the same board every round by accident (a first run with no reading time had all
15 later turns of round-robin on their previous board).

The boards are simulated: a paced scripted engine sleeps instead of computing, so the 2-core
machine is not the limit; Ray, the proxy, the ingress and the clients share its cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import socket
import statistics
import sys
import time
from collections.abc import Iterator
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
from benchmarks.server import http_turn

#: The id the benchmark serves its model under (the scripted file's name).
MODEL_ID = "bench"
CLIENTS = 12
LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def _boards(count: int) -> Iterator[str]:
    """``count`` simulated boards on 127.0.0.1 with Serve's proxy on a free port; its URL."""
    if "ray" not in sys.modules:  # Ray reads it at import: keep the driver on the loopback
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray import serve
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    ray_constants.ENABLE_RAY_CLUSTER = False  # same, if Ray was imported before
    node = {"node_ip_address": LOOPBACK, "num_cpus": 1, "resources": {"npu": 1},
            "object_store_memory": 80 * 1024 * 1024}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        for _ in range(count - 1):
            cluster.add_node(**node)
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        with socket.socket() as probe:
            probe.bind((LOOPBACK, 0))
            port = probe.getsockname()[1]
        serve.start(http_options={"host": LOOPBACK, "port": port}, proxy_location="HeadOnly")
        yield f"http://{LOOPBACK}:{port}"
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def _deploy(model: Any, replicas: int, routing: str) -> None:
    from ray import serve

    from rkllm_core.cluster import APP_NAME, build_app
    from rkllm_core.server import ModelConfig, ServerConfig

    config = ServerConfig(models=[ModelConfig(path=str(model), library="host",
                                              runtime_version="1.3.0",
                                              params={"max_context_len": 8192})],
                          max_queue=64, request_timeout=600)
    serve.run(build_app(config, replicas=replicas, routing=routing),  # type: ignore[arg-type]
              name=APP_NAME, route_prefix="/")


async def _turn(client: Any, url: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    row = await http_turn(client, url, messages, model=MODEL_ID)
    messages.append({"role": "assistant", "content": row["text"]})
    usage = row["usage"]
    return {"ttft_ms": row["ttft_ms"], "end": row["end"], "replica": row["replica"],
            "completion_tokens": usage.get("completion_tokens", 0),
            "prompt_tokens": usage.get("prompt_tokens", 0),
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)}


async def _conversations(url: str, count: int, turns: int, system: str, question: str,
                         think_s: float) -> tuple[list[list[dict[str, Any]]], float]:
    """``count`` concurrent conversations of ``turns`` turns, each client reading for up to
    ``think_s`` seconds between turns (seeded); their rows and the wall time."""
    import httpx

    async def one(client: Any, who: int) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = [{"role": "system",
                                           "content": f"{system} You help client {who}."}]
        rows = []
        reading = random.Random(who)
        for turn in range(turns):
            if turn:
                await asyncio.sleep(reading.uniform(0, think_s))
            messages.append({"role": "user", "content": f"Step {turn}. {question}"})
            rows.append(await _turn(client, url, messages))
        return rows

    limits = httpx.Limits(max_connections=count + 4)
    async with httpx.AsyncClient(timeout=900, limits=limits) as client:
        await _turn(client, url, [{"role": "user", "content": "warm up"}])
        start = time.perf_counter()
        runs = list(await asyncio.gather(*(one(client, i) for i in range(count))))
    return runs, max(r["end"] for run in runs for r in run) - start


def _later(runs: list[list[dict[str, Any]]]) -> dict[str, Any]:
    later = [row for run in runs for row in run[1:]]
    return {"later_turn_ttft_ms": summary([r["ttft_ms"] for r in later]),
            "later_turn_ttft_mean_ms": statistics.fmean(r["ttft_ms"] for r in later),
            "turns_with_reuse": sum(1 for r in later if r["cached_tokens"] > 0),
            "later_turns": len(later),
            "cached_fraction": sum(r["cached_tokens"] for r in later) /
            max(1, sum(r["prompt_tokens"] for r in later)),
            "same_board_turns": sum(1 for run in runs for a, b in itertools.pairwise(run)
                                    if a["replica"] == b["replica"])}


def run(ctx: Context) -> dict[str, Any]:
    """Both measurements; see the module docstring."""
    speed = 10 if ctx.quick else 1
    prefill, decode = RK3588_QWEN25_15B_PREFILL_TPS * speed, RK3588_QWEN25_15B_DECODE_TPS * speed
    reply_words = 16 if ctx.quick else 32
    model = ctx.scripted_model(MODEL_ID, (
        f"max_context_limit = 8192\nprefill_tokens_per_second = {prefill:g}\n"
        f"decode_tokens_per_second = {decode:g}\ndefault reply {quote(words(reply_words))}\n"))
    system = "You are a travel assistant for a family visiting Portugal. " + words(40)
    question = "What should we see next along the coast, and how do we get there? " * 2
    board_counts = (1, 3) if ctx.quick else (1, 2, 3)
    turns = 2 if ctx.quick else 3
    think_s = 0.1 if ctx.quick else 1.0  # clients read a reply before they answer
    out: dict[str, Any] = {
        "pacing": {"prefill_tokens_per_second": prefill, "decode_tokens_per_second": decode,
                   "source": "airockchip/rknn-llm benchmark.md, RK3588 Qwen2.5-1.5B w8a8",
                   "speedup_for_quick_run": speed},
        "reply_words": reply_words, "clients": CLIENTS, "turns": turns, "think_s": think_s,
        "throughput": [],
        "notes": ["boards are Ray nodes on one machine running a paced scripted model: they "
                  "sleep instead of computing, so the numbers show the routing and Ray's "
                  "overhead, not an NPU's"]}
    with quiet_stderr(), _boards(max(board_counts)) as url:
        for boards, routing in [*((n, "affinity") for n in board_counts),
                                (max(board_counts), "round_robin")]:
            _deploy(model, boards, routing)
            runs, wall = asyncio.run(_conversations(url, CLIENTS, turns, system, question,
                                                    think_s))
            tokens = sum(r["completion_tokens"] for run in runs for r in run)
            out["throughput"].append({
                "boards": boards, "routing": routing, "wall_s": wall,
                "completion_tokens": tokens, "tokens_per_second": tokens / wall,
                "ideal_tokens_per_second": boards * decode,
                "boards_used": len({r["replica"] for run in runs for r in run}),
                **_later(runs)})
        long_system = system + " " + words(150, 7)
        affinity_turns = 3 if ctx.quick else 8
        boards = max(board_counts)
        # longer reading than the turns take, so the clients' order changes from turn to turn
        affinity_think_s = 0.3 if ctx.quick else 3.0
        out["affinity"] = {"conversations": boards, "boards": boards, "turns": affinity_turns,
                           "think_s": affinity_think_s}
        for routing in ("affinity", "round_robin"):
            _deploy(model, boards, routing)
            runs, wall = asyncio.run(_conversations(url, boards, affinity_turns, long_system,
                                                    question, affinity_think_s))
            out["affinity"][routing] = {"wall_s": wall, **_later(runs)}
    return out
