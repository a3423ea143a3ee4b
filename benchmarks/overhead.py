"""Suite 1: what each layer adds per token when the runtime emits tokens as fast as it can.

The scripted engine replies with ``tokens`` plain words (one token each, no pacing). Every
variant runs the same reply on the same library file; the variants take turns within each
round, so slow drifts of a shared machine hit them all alike.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._common import REPO, Context, RawSession, quiet_stderr, quote, summary, words

HEADER_DIR = REPO / "rkllm_core" / "host"
HARNESS_SOURCE = Path(__file__).resolve().parent / "harness.c"

LABELS = {
    "c": "C harness, no-op callback (the floor)",
    "ctypes": "raw ctypes callback (counts tokens)",
    "ctypes_text": "raw ctypes callback reading the text",
    "stream": "RKLLM.stream",
    "astream": "RKLLM.astream",
    "langchain": "ChatRKLLM.stream (LangChain)",
    "llamaindex": "RKLLM.stream_chat (LlamaIndex)",
}


def compile_harness(workdir: Path) -> Path:
    """Build harness.c with the system compiler into ``workdir``."""
    compiler = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if compiler is None:
        raise RuntimeError("no C compiler (cc, gcc, clang) to build the C harness")
    out = workdir / "rkllm-bench-harness"
    cmd = [compiler, "-std=c11", "-O2", "-DRKLLM_HOST_FAMILY=130", f"-I{HEADER_DIR}",
           str(HARNESS_SOURCE), "-o", str(out), "-ldl"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"compiling the C harness failed:\n{' '.join(cmd)}\n{result.stderr}")
    return out


def run_harness(binary: Path, library: Path, model: Path, max_context_len: int,
                runs: int) -> list[tuple[int, int]]:
    """(tokens, nanoseconds) of each measured run of the C harness."""
    result = subprocess.run([str(binary), str(library), str(model), str(max_context_len),
                             str(runs)], capture_output=True, text=True, check=False, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"the C harness failed: {result.stderr[-2000:]}")
    pairs = []
    for line in result.stdout.split("\n"):
        if line.strip():
            tokens, ns = line.split()
            pairs.append((int(tokens), int(ns)))
    return pairs


def _handler_cost(llm: Any, n_tokens: int, rounds: int) -> list[float]:
    """µs per token RKLLM spends in its own result handler (on the runtime's thread, holding
    the GIL), timed by a wrapper around it: the part of RKLLM.stream's cost that is not the
    hand-over to the consumer. Measured in separate runs, since the wrapper costs time too."""
    worker = llm._worker
    handle_result = worker._on_result
    spent = [0]

    def timed(run: Any, result: Any, state: int) -> int:
        start = time.perf_counter_ns()
        try:
            return int(handle_result(run, result, state))
        finally:
            spent[0] += time.perf_counter_ns() - start

    worker._on_result = timed
    values = []
    try:
        for _ in range(rounds):
            spent[0] = 0
            for _chunk in llm.stream("go"):
                pass
            values.append(spent[0] / 1000.0 / n_tokens)
    finally:
        del worker._on_result  # back to the class's method
    return values


def _thread_cpu_ns(thread_id: int | None = None) -> int | None:
    """CPU time of a thread (this one by default); None where the OS cannot tell."""
    try:
        clock = (time.CLOCK_THREAD_CPUTIME_ID if thread_id is None
                 else time.pthread_getcpuclockid(thread_id))
        return time.clock_gettime_ns(clock)
    except (AttributeError, OSError):
        return None


def _cpu_split(llm: Any, n_tokens: int, rounds: int,
               text_run: Callable[[], tuple[int, float]]) -> dict[str, Any]:
    """CPU µs per token of each thread, the other measure of where the time goes: the bare
    text callback's thread, and for RKLLM.stream the runtime's thread (ctypes trampoline,
    RKLLM's handler, taking and dropping the GIL per callback) and the consuming thread
    (``next()``, ``Channel.get``, waiting for the GIL). CPU time counts what each thread did,
    not the waits, so it is steadier than wall time on a shared machine."""
    worker_thread = llm._worker._thread.ident
    if _thread_cpu_ns() is None or _thread_cpu_ns(worker_thread) is None:
        return {}
    text_cpu, worker_cpu, consumer_cpu = [], [], []
    for _ in range(rounds):
        before = _thread_cpu_ns()
        text_run()
        text_cpu.append((_thread_cpu_ns() or 0) - (before or 0))
        worker_before, before = _thread_cpu_ns(worker_thread), _thread_cpu_ns()
        for _chunk in llm.stream("go"):
            pass
        consumer_cpu.append((_thread_cpu_ns() or 0) - (before or 0))
        worker_cpu.append((_thread_cpu_ns(worker_thread) or 0) - (worker_before or 0))
    per_token = 1000.0 * n_tokens
    return {
        "ctypes_text_thread": summary([v / per_token for v in text_cpu]),
        "stream_runtime_thread": summary([v / per_token for v in worker_cpu]),
        "stream_consumer_thread": summary([v / per_token for v in consumer_cpu]),
    }


def run(ctx: Context) -> dict[str, Any]:
    """Per-token cost of each layer; see the module docstring."""
    n_tokens = 400 if ctx.quick else 5000
    rounds = 3 if ctx.quick else 15
    max_ctx = n_tokens + 512
    lib = ctx.library
    if lib.family.key != "1.3.0":
        raise RuntimeError("the overhead suite compiles its C harness for family 1.3.0")
    model = ctx.scripted_model("overhead", (
        f"max_context_limit = {max_ctx}\nhidden_size = 16\n"
        f"default reply {quote(words(n_tokens))}\n"))
    notes: list[str] = []

    from rkllm_core import RKLLM

    with quiet_stderr():
        llm = RKLLM(model, library=lib, max_context_len=max_ctx, max_new_tokens=-1)

    # -- the variants: each returns (tokens delivered, seconds) for one run -----------------
    harness_dir = Path(tempfile.mkdtemp(prefix="rkllm-bench-", dir=ctx.workdir))
    binary = compile_harness(harness_dir)

    def c_harness() -> tuple[int, float]:
        tokens, ns = run_harness(binary, lib.path, model, max_ctx, 1)[0]
        return tokens, ns / 1e9

    count = [0]

    def count_only(result: Any, state: int) -> int:
        if state in (0, 1):
            count[0] += 1
        return 0

    raw = RawSession(lib, model, max_ctx, count_only)
    raw_input, raw_keep = raw.make_input("go")
    raw_infer = raw.make_infer()

    def ctypes_noop() -> tuple[int, float]:
        count[0] = 0
        start = time.perf_counter()
        raw.run(raw_input, raw_infer)
        return count[0], time.perf_counter() - start

    import ctypes

    texts: list[str] = []

    def read_text(result: Any, state: int) -> int:
        if state in (0, 1):
            r = ctypes.cast(result, text_session.result_type)[0]
            texts.append(ctypes.string_at(r.text).decode("utf-8", "replace") if r.text else "")
        return 0

    text_session = RawSession(lib, model, max_ctx, read_text)

    def ctypes_text() -> tuple[int, float]:
        texts.clear()
        start = time.perf_counter()
        text_session.run(raw_input, raw_infer)
        return len(texts), time.perf_counter() - start

    def core_stream() -> tuple[int, float]:
        start = time.perf_counter()
        n = sum(1 for chunk in llm.stream("go") if chunk.token_id is not None)
        return n, time.perf_counter() - start

    async def consume_async() -> tuple[int, float]:
        start = time.perf_counter()
        n = 0
        async for chunk in llm.astream("go"):
            n += chunk.token_id is not None
        return n, time.perf_counter() - start

    loop = asyncio.new_event_loop()

    def core_astream() -> tuple[int, float]:
        return loop.run_until_complete(consume_async())

    variants: dict[str, Callable[[], tuple[int, float]]] = {
        "c": c_harness, "ctypes": ctypes_noop, "ctypes_text": ctypes_text,
        "stream": core_stream, "astream": core_astream,
    }
    try:
        from langchain_rkllm import ChatRKLLM

        chat_lc = ChatRKLLM(client=llm)

        def langchain_stream() -> tuple[int, float]:
            start = time.perf_counter()
            n = sum(1 for _ in chat_lc.stream("go"))
            return n, time.perf_counter() - start

        variants["langchain"] = langchain_stream
    except Exception as exc:  # an adapter still being written must not stop the others
        notes.append(f"ChatRKLLM skipped: {type(exc).__name__}: {exc}")
    try:
        from llama_index.core.llms import ChatMessage as LIChatMessage

        from llama_index_rkllm import RKLLM as LlamaIndexRKLLM

        chat_li = LlamaIndexRKLLM(client=llm)
        li_messages = [LIChatMessage(role="user", content="go")]

        def llamaindex_stream() -> tuple[int, float]:
            start = time.perf_counter()
            n = sum(1 for _ in chat_li.stream_chat(li_messages))
            return n, time.perf_counter() - start

        variants["llamaindex"] = llamaindex_stream
    except Exception as exc:
        notes.append(f"LlamaIndex RKLLM skipped: {type(exc).__name__}: {exc}")

    samples: dict[str, list[float]] = {name: [] for name in variants}
    delivered: dict[str, int] = {}
    try:
        for warm_up in variants.values():  # caches, lazy imports, first allocations
            warm_up()
        for _ in range(rounds):
            for name, fn in variants.items():
                n, seconds = fn()
                delivered[name] = n
                samples[name].append(seconds * 1e6 / n_tokens)
        handler_us = _handler_cost(llm, n_tokens, rounds)
        cpu_us = _cpu_split(llm, n_tokens, rounds, ctypes_text)
    finally:
        loop.close()
        raw.close()
        text_session.close()
        llm.close()
        del raw_keep

    floor = summary(samples["c"])["median"]
    rows = []
    for name, values in samples.items():
        s = summary(values)
        rows.append({
            "variant": name,
            "label": LABELS[name],
            "us_per_token": s,
            "tokens_per_second": 1e6 / s["median"],
            "ratio_to_c": s["median"] / floor,
            "us_added_per_token": s["median"] - floor,
            # issue 14's measure: paired within each round, so a slow stretch cancels out
            "us_over_text_callback": summary(
                [a - b for a, b in zip(values, samples["ctypes_text"], strict=True)]),
            "chunks_delivered": delivered.get(name),
        })
    return {
        "description": "Per-token cost with the scripted engine emitting tokens unpaced",
        "tokens_per_run": n_tokens,
        "rounds": rounds,
        "rows": rows,
        "stream_handler_us_per_token": summary(handler_us),
        "thread_cpu_us_per_token": cpu_us,
        "notes": notes,
    }
