"""Suite 3: prefill per turn with and without KV-cache reuse, paced like an RK3588.

The scripted model prefills and decodes at Rockchip's published RK3588 rates for Qwen2.5-1.5B
w8a8 (see :mod:`benchmarks._common`). Two workloads go through :class:`ChatEngine`:

- a 10-turn conversation (every call gets the whole history, as LangChain and LlamaIndex send
  it);
- a 6-step agent loop: the user's task, then tool call, tool result, tool call, ... final answer.

"Reuse on" is ChatEngine as it is; "reuse off" calls ``ChatEngine.reset()`` before every turn, so
each turn replays the conversation, which is what a server that resends everything pays.

Per turn: the prefill tokens the runtime reports; the time to first token, from the call to the
runtime's first token callback (the first visible chunk is recorded too: a tool call is held
back until it parses); and, with reuse on, the tokens the conversation grew by since the
previous turn ended, measured from the runtime's KV-cache size: a cache that is really reused
prefills exactly those.
"""

from __future__ import annotations

import json
import time
from typing import Any

from benchmarks._common import (
    RK3588_QWEN25_15B_DECODE_TPS,
    RK3588_QWEN25_15B_PREFILL_TPS,
    RK3588_QWEN25_15B_TTFT_MS,
    Context,
    quiet_stderr,
    quote,
    stamp_tokens,
    summary,
    words,
)

SYSTEM = "You are a concise assistant for a travel agency. Answer in two sentences."
QUESTIONS = [
    "I want to visit Lisbon in spring, what should I know about the weather there?",
    "Which neighbourhoods are good for a first visit with a family of four?",
    "How do we get from the airport to the city centre without a car?",
    "What are three day trips we could take by train?",
    "Are there any local dishes the children might like?",
    "How much should we budget per day for food and transport?",
    "Which museums are open on Mondays?",
    "Is it easy to find a pharmacy late in the evening?",
    "What is the best way to pay in small shops and cafes?",
    "Can you summarise the plan for us in a few lines?",
]
AGENT_TASK = "Plan the trip: check flights, hotels, weather, trains and museums for Lisbon."
AGENT_TOOLS = ["search_flights", "search_hotels", "get_weather", "train_times", "museum_hours"]


def _tool_call(name: str, step: int) -> str:
    call = {"name": name, "arguments": {"city": "Lisbon", "step": step}}
    return "<tool_call>\n" + json.dumps(call) + "\n</tool_call>"


def _model_body(max_ctx: int, prefill_tps: float, decode_tps: float, reply_words: int) -> str:
    rules = []
    # with reuse off the whole transcript is one input, holding every earlier result marker:
    # the latest step must match first
    n = len(AGENT_TOOLS)
    rules.append(f'when contains "result-{n}" reply '
                 f'{quote("Your trip is planned: " + words(reply_words, 3))}')
    for step in range(n - 1, 0, -1):
        rules.append(f'when contains "result-{step}" reply '
                     f'{quote(_tool_call(AGENT_TOOLS[step], step + 1))}')
    rules.append(f'when contains "plan the trip" reply {quote(_tool_call(AGENT_TOOLS[0], 1))}')
    return (f"max_context_limit = {max_ctx}\nhidden_size = 16\n"
            f"prefill_tokens_per_second = {prefill_tps:g}\n"
            f"decode_tokens_per_second = {decode_tps:g}\n"
            + "\n".join(rules)
            + f"\ndefault reply {quote(words(reply_words))}\n")


def _turn(engine: Any, messages: list[Any], tools: list[Any], reuse: bool,
          llm: Any, stamps: list[int]) -> tuple[Any, dict[str, Any]]:
    if not reuse:
        engine.reset()
    stamps.clear()
    start = time.perf_counter_ns()
    first_chunk: int | None = None
    stream = engine.stream(messages, tools=tools)
    for chunk in stream:
        if first_chunk is None and (chunk.content or chunk.reasoning or chunk.tool_calls):
            first_chunk = time.perf_counter_ns()
    end = time.perf_counter_ns()
    result = stream.result
    usage = result.usage
    return result, {
        "prefill_tokens": usage.prefill_tokens,
        "ttft_ms": ((stamps[0] if stamps else end) - start) / 1e6,
        "first_chunk_ms": ((first_chunk or end) - start) / 1e6,
        "runtime_prefill_ms": usage.prefill_ms,
        "output_tokens": usage.output_tokens,
        "kv_cache_after": llm.kv_cache_size,
        "reused_cache": result.reused_cache,
    }


def _conversation(engine: Any, llm: Any, stamps: list[int], turns: int,
                  reuse: bool) -> list[dict[str, Any]]:
    from rkllm_core.chat import ChatMessage

    messages = [ChatMessage.system(SYSTEM)]
    rows = []
    for i in range(turns):
        messages.append(ChatMessage.user(QUESTIONS[i % len(QUESTIONS)]))
        result, row = _turn(engine, messages, [], reuse, llm, stamps)
        messages.append(result.message)
        rows.append(row)
    return rows


def _agent(engine: Any, llm: Any, stamps: list[int], steps: int,
           reuse: bool) -> list[dict[str, Any]]:
    from rkllm_core.chat import ChatMessage, ToolSpec

    tools = [ToolSpec(name, f"{name.replace('_', ' ')} for a city",
                      {"type": "object", "properties": {"city": {"type": "string"},
                                                        "step": {"type": "integer"}}})
             for name in AGENT_TOOLS]
    messages = [ChatMessage.system(SYSTEM), ChatMessage.user(AGENT_TASK)]
    rows = []
    for step in range(1, steps + 1):
        result, row = _turn(engine, messages, tools, reuse, llm, stamps)
        row["finish_reason"] = result.finish_reason
        rows.append(row)
        messages.append(result.message)
        calls = result.message.tool_calls
        if not calls:
            break
        call = calls[0]
        messages.append(ChatMessage.tool(
            json.dumps({"tool": call.name, "status": "ok", "marker": f"result-{step}",
                        "items": [f"option {k} for {call.name}" for k in range(1, 4)]}),
            tool_call_id=call.id, name=call.name))
    return rows


def _growth(rows: list[dict[str, Any]]) -> None:
    """Per turn: the tokens the conversation grew by since the previous turn ended."""
    previous = 0
    for row in rows:
        context = row["kv_cache_after"] - row["output_tokens"]
        row["new_tokens"] = context - previous
        row["context_tokens"] = context
        row["prefill_over_new"] = (row["prefill_tokens"] / row["new_tokens"]
                                   if row["new_tokens"] > 0 else None)
        previous = row["kv_cache_after"]


def run(ctx: Context) -> dict[str, Any]:
    """Prefill tokens and TTFT per turn, reuse on and off; see the module docstring."""
    from rkllm_core import RKLLM
    from rkllm_core.chat import ChatEngine

    speedup = 20.0 if ctx.quick else 1.0  # quick runs keep the ratios, not the wall time
    prefill_tps = RK3588_QWEN25_15B_PREFILL_TPS * speedup
    decode_tps = RK3588_QWEN25_15B_DECODE_TPS * speedup
    turns, steps, reply_words = (3, 3, 12) if ctx.quick else (10, 6, 24)
    max_ctx = 4096
    model = ctx.scripted_model("multiturn", _model_body(max_ctx, prefill_tps, decode_tps,
                                                        reply_words))
    with quiet_stderr():
        llm = RKLLM(model, library=ctx.library, max_context_len=max_ctx, max_new_tokens=-1)
    stamps: list[int] = []
    stamp_tokens(llm, stamps)
    workloads: dict[str, dict[str, list[dict[str, Any]]]] = {}
    try:
        engine = ChatEngine(llm)
        for reuse in (True, False):
            key = "reuse_on" if reuse else "reuse_off"
            engine.reset()
            conversation = _conversation(engine, llm, stamps, turns, reuse)
            engine.reset()
            agent = _agent(engine, llm, stamps, steps, reuse)
            workloads.setdefault("conversation", {})[key] = conversation
            workloads.setdefault("agent", {})[key] = agent
    finally:
        llm.close()
    totals: dict[str, Any] = {}
    for name, modes in workloads.items():
        _growth(modes["reuse_on"])
        on, off = modes["reuse_on"], modes["reuse_off"]
        later = on[1:]
        ttft_later = [r["ttft_ms"] for r in later]
        totals[name] = {
            "turns": len(on),
            "prefill_tokens_reuse_on": sum(r["prefill_tokens"] for r in on),
            "prefill_tokens_reuse_off": sum(r["prefill_tokens"] for r in off),
            "ttft_ms_total_reuse_on": sum(r["ttft_ms"] for r in on),
            "ttft_ms_total_reuse_off": sum(r["ttft_ms"] for r in off),
            "ttft_ms_last_reuse_on": on[-1]["ttft_ms"],
            "ttft_ms_last_reuse_off": off[-1]["ttft_ms"],
            "ttft_ms_after_first_reuse_on": summary(ttft_later) if ttft_later else None,
            "max_prefill_over_new_after_first": max(
                (r["prefill_over_new"] for r in later if r["prefill_over_new"] is not None),
                default=None),
        }
    return {
        "description": "Multi-turn prefill and time to first token, KV-cache reuse on and off",
        "pacing": {
            "source": "rknn-llm benchmark.md v1.3.0, RK3588 Qwen2.5 1.5B w8a8: TTFT "
                      f"{RK3588_QWEN25_15B_TTFT_MS} ms for 128 prompt tokens, "
                      f"{RK3588_QWEN25_15B_DECODE_TPS} tokens/s decode",
            "prefill_tokens_per_second": prefill_tps,
            "decode_tokens_per_second": decode_tps,
            "speedup_for_quick_run": speedup,
        },
        "workloads": workloads,
        "totals": totals,
        "notes": [],
    }
