"""Turn a run's results into a markdown report, target checks and PNG plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# The targets of issues 9 and 14, checked against numbers measured in the same run.
STREAM_TARGET_US = 5.0
STREAM_OVER_TEXT_CALLBACK_US = 5.0  # issue 14: over a bare ctypes callback reading the text
ADAPTER_TARGET_US = 100.0
P99_TARGET_US = 1000.0
REUSE_SLACK = 1.05
IMPORT_TARGET_MS = 100.0


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not math.isfinite(value):
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _spread(s: dict[str, float], digits: int = 1) -> str:
    return f"{_f(s['median'], digits)} ({_f(s['min'], digits)}-{_f(s['max'], digits)})"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue: what was measured and whether it was met."""
    checks: list[dict[str, Any]] = []
    suites = results.get("suites", {})
    overhead = suites.get("overhead")
    if overhead:
        for row in overhead["rows"]:
            limit = {"stream": STREAM_TARGET_US, "langchain": ADAPTER_TARGET_US,
                     "llamaindex": ADAPTER_TARGET_US}.get(row["variant"])
            if limit is not None:
                added = row["us_added_per_token"]
                checks.append({"target": f"{row['label']} adds ≤ {limit:g} µs/token over the C "
                                         "harness",
                               "measured": f"{added:.1f} µs/token", "met": added <= limit})
            over_text = row.get("us_over_text_callback")
            if row["variant"] == "stream" and over_text:
                over = over_text["median"]
                checks.append({
                    "target": f"{row['label']} adds ≤ {STREAM_OVER_TEXT_CALLBACK_US:g} µs/token "
                              "over the raw ctypes callback reading the text",
                    "measured": f"{over:.1f} µs/token",
                    "met": over <= STREAM_OVER_TEXT_CALLBACK_US})
    latency = suites.get("latency")
    if latency:
        for row in latency["rows"]:
            p99 = row["latency_us"]["p99"]
            if row["variant"] in ("stream", "astream"):
                checks.append({"target": f"{row['label']} p99 delivery ≤ 1 ms",
                               "measured": f"{p99 / 1000:.2f} ms", "met": p99 <= P99_TARGET_US})
    multiturn = suites.get("multiturn")
    if multiturn:
        for name, total in multiturn["totals"].items():
            ratio = total["max_prefill_over_new_after_first"]
            checks.append({
                "target": f"{name}: with reuse, turns after the first prefill only their new "
                          "tokens (within 5%)",
                "measured": f"worst prefill/new = {_f(ratio, 3)}",
                "met": ratio is not None and ratio <= REUSE_SLACK})
            ttft = total["ttft_ms_after_first_reuse_on"]
            if ttft:
                flat = ttft["max"] <= 1.25 * ttft["min"]
                checks.append({
                    "target": f"{name}: with reuse, time to first token flat across turns "
                              "(max ≤ 1.25 x min after the first turn)",
                    "measured": f"{ttft['min']:.0f}-{ttft['max']:.0f} ms", "met": flat})
    imports = suites.get("imports")
    if imports:
        for row in imports["rows"]:
            if row["package"] == "rkllm_core":
                ms = row["in_process_ms"]["median"]
                checks.append({"target": "rkllm_core imports in ≤ 100 ms",
                               "measured": f"{ms:.0f} ms", "met": ms <= IMPORT_TARGET_MS})
    return checks


def markdown(results: dict[str, Any]) -> str:
    """The whole report as markdown tables."""
    m = results["machine"]
    out = [f"# rkllm-py benchmarks ({'quick' if results['quick'] else 'full'} run)", "",
           f"- date: {results['date']}; commit: {m.get('commit') or '—'}",
           f"- machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs "
           f"({m['usable_cpus']} usable), {m['machine']}; {m['os']} (kernel {m['kernel']}); "
           f"{m['python']}",
           f"- load average (1 min) at start / end: {_f(m.get('load_start'), 2)} / "
           f"{_f(m.get('load_end'), 2)}",
           f"- runtime: {m['runtime']}, family {m['runtime_family']}",
           f"- command: `{results['command']}`; total {results['seconds']:.0f} s", ""]
    suites = results["suites"]
    checks = targets(results)
    if checks:
        out += ["## Targets", "", "| target | measured | met |", "|---|---:|:---:|"]
        out += [f"| {c['target']} | {c['measured']} | {'yes' if c['met'] else '**no**'} |"
                for c in checks]
        out.append("")
    if "overhead" in suites:
        s = suites["overhead"]
        out += ["## 1. Per-token overhead (unpaced)", "",
                f"{s['tokens_per_run']} tokens per run, {s['rounds']} rounds; µs/token as "
                "median (min-max).", "",
                "| consumer | µs/token | tokens/s | x C | µs added/token | µs over (b') |",
                "|---|---:|---:|---:|---:|---:|"]
        for r in s["rows"]:
            over = r.get("us_over_text_callback")
            out.append(f"| {r['label']} | {_spread(r['us_per_token'], 2)} | "
                       f"{r['tokens_per_second']:,.0f} | {r['ratio_to_c']:.1f} | "
                       f"{r['us_added_per_token']:.2f} | "
                       f"{_f(over['median'], 2) if over else '—'} |")
        handler = s.get("stream_handler_us_per_token")
        if handler:
            out += ["", f"Of RKLLM.stream's cost, {_spread(handler, 2)} µs/token is spent in "
                        "RKLLM's own result handler on the runtime's thread (timed in separate "
                        "runs); the rest is the hand-over to the consuming thread."]
        cpu = s.get("thread_cpu_us_per_token")
        if cpu:
            out += ["", "CPU time per token of each thread (separate runs), µs, median (min-max):",
                    "", "| thread | CPU µs/token |", "|---|---:|",
                    f"| (b') the thread running the raw text callback | "
                    f"{_spread(cpu['ctypes_text_thread'], 2)} |",
                    f"| `RKLLM.stream`: the runtime's thread (trampoline, handler, GIL) | "
                    f"{_spread(cpu['stream_runtime_thread'], 2)} |",
                    f"| `RKLLM.stream`: the consuming thread | "
                    f"{_spread(cpu['stream_consumer_thread'], 2)} |"]
        out += [f"- note: {n}" for n in s["notes"]] + [""]
    if "latency" in suites:
        s = suites["latency"]
        out += ["## 2. Delivery latency (paced)", "",
                f"{s['decode_tokens_per_second']:g} tokens/s, {s['tokens_per_variant']} tokens "
                "per consumer; from the runtime's callback to the consumer, µs.", "",
                "| consumer | p50 | p90 | p99 | max |", "|---|---:|---:|---:|---:|"]
        for r in s["rows"]:
            lat = r["latency_us"]
            out.append(f"| {r['label']} | {lat['p50']:,.0f} | {lat['p90']:,.0f} | "
                       f"{lat['p99']:,.0f} | {lat['max']:,.0f} |")
        out += [f"- note: {n}" for n in s["notes"]] + [""]
    if "multiturn" in suites:
        s = suites["multiturn"]
        p = s["pacing"]
        out += ["## 3. Multi-turn prefill (RK3588 pacing)", "",
                f"Prefill {p['prefill_tokens_per_second']:g} tokens/s, decode "
                f"{p['decode_tokens_per_second']:g} tokens/s ({p['source']}"
                + (f"; x{p['speedup_for_quick_run']:g} for the quick run" if
                   p["speedup_for_quick_run"] != 1 else "") + ").", ""]
        for name, modes in s["workloads"].items():
            on, off = modes["reuse_on"], modes["reuse_off"]
            out += [f"### {name}", "",
                    "| turn | prefill, reuse on | new tokens | TTFT ms, reuse on | "
                    "prefill, reuse off | TTFT ms, reuse off |",
                    "|---:|---:|---:|---:|---:|---:|"]
            for i, (a, b) in enumerate(zip(on, off, strict=False), start=1):
                out.append(f"| {i} | {a['prefill_tokens']} | {a.get('new_tokens', '—')} | "
                           f"{a['ttft_ms']:,.0f} | {b['prefill_tokens']} | {b['ttft_ms']:,.0f} |")
            t = s["totals"][name]
            out.append(f"| total | {t['prefill_tokens_reuse_on']} | | "
                       f"{t['ttft_ms_total_reuse_on']:,.0f} | {t['prefill_tokens_reuse_off']} | "
                       f"{t['ttft_ms_total_reuse_off']:,.0f} |")
            out.append("")
        out += [f"- note: {n}" for n in s["notes"]]
    if "embeddings" in suites:
        s = suites["embeddings"]
        out += ["## 4. Embedding throughput", "",
                f"{s['documents']} short documents, hidden size {s['hidden_size']}, "
                f"{s['rounds']} rounds; documents/s as median (min-max).", "",
                "| path | docs/s | x runtime loop | µs added/doc |", "|---|---:|---:|---:|"]
        for r in s["rows"]:
            out.append(f"| {r['label']} | {_spread(r['docs_per_second'], 0)} | "
                       f"{r['ratio_to_runtime_loop']:.2f} | {r['us_added_per_doc']:.0f} |")
        out += [f"- note: {n}" for n in s["notes"]] + [""]
    if "imports" in suites:
        s = suites["imports"]
        bare = s["bare_interpreter"]
        out += ["## 5. Import time and memory", "",
                f"Fresh interpreter each time, {s['repeats']} repeats, median (min-max). A bare "
                f"interpreter starts in {bare['wall_ms']['median']:.0f} ms with "
                f"{bare['rss_mib']['median']:.1f} MiB resident.", "",
                "| package | import ms (in process) | wall ms minus bare | RSS added MiB | "
                "heaviest top-level imports (cumulative ms) |", "|---|---:|---:|---:|---|"]
        for r in s["rows"]:
            heavy = ", ".join(f"{h['module']} {h['cumulative_ms']:.0f}"
                              for h in r["heaviest_imports"]) or "—"
            out.append(f"| {r['package']} | {_spread(r['in_process_ms'], 0)} | "
                       f"{_spread(r['wall_minus_bare_ms'], 0)} | "
                       f"{r['rss_added_mib']['median']:.1f} | {heavy} |")
        out += [f"- note: {n}" for n in s["notes"]] + [""]
    if "tokenizer" in suites:
        s = suites["tokenizer"]
        out += ["## 6. Tokenizer load (tokens mode)", "",
                f"`ChatTokenizer.from_gguf` on {s.get('model', 'the GGUF')}, a fresh interpreter "
                f"each time, {s['repeats']} repeats, median (min-max); the two engines take "
                "turns. Same ids for the test prompt on both: "
                f"{'yes' if s.get('same_ids') else 'no' if s.get('same_ids') is False else '—'}.",
                "", "| engine | load ms | first encode ms | prompt tokens |",
                "|---|---:|---:|---:|"]
        for r in s["rows"]:
            out.append(f"| {r['engine']} ({r['tokenizer_class']}) | {_spread(r['load_ms'], 0)} | "
                       f"{_spread(r['first_encode_ms'], 2)} | {r['prompt_tokens']} |")
        out += [f"- note: {n}" for n in s["notes"]] + [""]
    if "server" in suites:
        out += _server_section(suites["server"])
    if "cluster" in suites:
        out += _cluster_section(suites["cluster"])
    for name, error in results.get("errors", {}).items():
        out += [f"## {name}: failed", "", "```", error.rstrip(), "```", ""]
    return "\n".join(out).rstrip() + "\n"


def _server_section(s: dict[str, Any]) -> list[str]:
    o, r = s["overhead"], s["reuse"]
    out = ["## 7. `rkllm serve` over the in-process stream", "",
           f"Unpaced, {o['tokens_per_reply']} tokens per reply, {o['rounds']} rounds (the two "
           "take turns); the client reads the raw SSE with httpx in the same process. Median "
           "(min-max).", "", "| path | µs/token | time to first token, ms |", "|---|---:|---:|",
           f"| ChatEngine.astream (in process) | {_spread(o['engine_us_per_token'])} | "
           f"{_spread(o['engine_ttft_ms'], 2)} |",
           f"| rkllm serve, /v1/chat/completions SSE | {_spread(o['server_us_per_token'])} | "
           f"{_spread(o['server_ttft_ms'], 2)} |",
           f"| **server adds** | {_spread(o['server_added_us_per_token'])} | "
           f"{o['server_added_ttft_ms']:.2f} |", "",
           f"Later turns of {r['turns']}-turn conversations, paced at {r['prefill_tps']:g} "
           f"prefill / {r['decode_tps']:g} decode tokens/s, {r['reply_words']}-word replies, "
           "every turn sending the whole history:", "",
           "| concurrent conversations | later-turn TTFT ms, median (min-max) | "
           "turns that reused the cache | prompt tokens from the cache |", "|---:|---:|---:|---:|"]
    for n in (1, 8):
        c = r[f"{n}_conversations"]
        out.append(f"| {n} | {_spread(c['later_turn_ttft_ms'], 0)} | {c['turns_with_reuse']} of "
                   f"{c['later_turns']} | {c['cached_fraction']:.0%} |")
    return [*out, ""]


def _cluster_section(s: dict[str, Any]) -> list[str]:
    p, a = s["pacing"], s["affinity"]
    out = ["## 8. `rkllm serve --ray` on simulated boards", "",
           f"Each board a Ray node on this machine with a scripted model paced at "
           f"{p['prefill_tokens_per_second']:g} prefill / {p['decode_tokens_per_second']:g} "
           f"decode tokens/s ({p['source']}"
           + (f"; x{p['speedup_for_quick_run']:g} for the quick run" if
              p["speedup_for_quick_run"] != 1 else "") + f"); {s['reply_words']}-word replies, "
           "streamed SSE through Serve's proxy, the whole history sent every turn, clients "
           f"reading each reply for 0-{s.get('think_s', 0):g} s before the next turn.", "",
           f"### Throughput: {s['clients']} concurrent clients, {s['turns']} turns each", "",
           "| boards | routing | tokens/s | ideal (boards x decode) | of ideal | wall s | "
           "later-turn TTFT ms, median (p25-p75) | later turns reusing the cache |",
           "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for t in s["throughput"]:
        ttft = t["later_turn_ttft_ms"]
        out.append(f"| {t['boards']} | {t['routing']} | {t['tokens_per_second']:.1f} | "
                   f"{t['ideal_tokens_per_second']:.1f} | "
                   f"{t['tokens_per_second'] / t['ideal_tokens_per_second']:.0%} | "
                   f"{t['wall_s']:.1f} | {ttft['median']:,.0f} ({ttft['p25']:,.0f}-"
                   f"{ttft['p75']:,.0f}) | {t['turns_with_reuse']} of {t['later_turns']} |")
    out += ["", f"### Affinity against round-robin: {a['conversations']} conversations on "
                f"{a['boards']} boards, {a['turns']} turns each, 0-{a.get('think_s', 0):g} s "
                "reading between turns", "",
            "| routing | later-turn TTFT ms, median (min-max) | mean | later turns reusing the "
            "cache | prompt tokens from the cache | turns on the previous turn's board |",
            "|---|---:|---:|---:|---:|---:|"]
    for routing in ("affinity", "round_robin"):
        r = a[routing]
        out.append(f"| {routing} | {_spread(r['later_turn_ttft_ms'], 0)} | "
                   f"{_f(r.get('later_turn_ttft_mean_ms'), 0)} | "
                   f"{r['turns_with_reuse']} of {r['later_turns']} | {r['cached_fraction']:.0%} "
                   f"| {r['same_board_turns']} of {r['later_turns']} |")
    out += [""] + [f"- note: {n}" for n in s["notes"]]
    return [*out, ""]


def plots(results: dict[str, Any], directory: Path, stem: str) -> list[Path]:
    """One PNG per suite that has a picture; none when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError:
        return []
    written: list[Path] = []
    suites = results["suites"]

    def save(fig: Any, name: str) -> None:
        path = directory / f"{stem}-{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    if "overhead" in suites:
        rows = suites["overhead"]["rows"]
        fig, ax = plt.subplots(figsize=(8, 4))
        labels = [r["label"] for r in rows]
        med = [r["us_per_token"]["median"] for r in rows]
        lo = [r["us_per_token"]["median"] - r["us_per_token"]["min"] for r in rows]
        hi = [r["us_per_token"]["max"] - r["us_per_token"]["median"] for r in rows]
        ax.barh(labels, med, xerr=[lo, hi], color="#4c72b0")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.invert_yaxis()
        ax.set_xlabel("µs per token (log scale; bars: median, whiskers: min-max)")
        ax.set_title("Per-token cost, unpaced scripted engine")
        save(fig, "overhead")
    if "latency" in suites:
        rows = suites["latency"]["rows"]
        fig, ax = plt.subplots(figsize=(8, 3.5))
        names = [r["label"] for r in rows]
        y = range(len(rows))
        for key, color in (("p50", "#4c72b0"), ("p99", "#dd8452")):
            ax.scatter([r["latency_us"][key] / 1000 for r in rows], list(y), label=key,
                       color=color, s=60)
        ax.set_yticks(list(y), names)
        ax.set_xlim(left=0)
        ax.grid(axis="x", alpha=0.3)
        ax.invert_yaxis()
        ax.set_xlabel("callback → consumer, ms")
        ax.set_title(f"Delivery latency at {suites['latency']['decode_tokens_per_second']:g} "
                     "tokens/s")
        ax.legend()
        save(fig, "latency")
    if "multiturn" in suites:
        work = suites["multiturn"]["workloads"]
        fig, axes = plt.subplots(2, len(work), figsize=(5 * len(work), 7), squeeze=False)
        for col, (name, modes) in enumerate(work.items()):
            for mode, style in (("reuse_on", "-o"), ("reuse_off", "--s")):
                rows = modes[mode]
                turns = range(1, len(rows) + 1)
                axes[0][col].plot(turns, [r["prefill_tokens"] for r in rows], style, label=mode)
                axes[1][col].plot(turns, [r["ttft_ms"] for r in rows], style, label=mode)
            axes[0][col].set_title(f"{name}: prefill tokens per turn")
            axes[1][col].set_title(f"{name}: time to first token, ms")
            axes[1][col].set_xlabel("turn")
            for ax in (axes[0][col], axes[1][col]):
                ax.legend()
                ax.grid(alpha=0.3)
        save(fig, "multiturn")
    if "embeddings" in suites:
        rows = suites["embeddings"]["rows"]
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.barh([r["label"] for r in rows], [r["docs_per_second"]["median"] for r in rows],
                color="#55a868")
        ax.invert_yaxis()
        ax.set_xlabel("documents per second (median)")
        ax.set_title(f"Embedding {suites['embeddings']['documents']} short documents")
        save(fig, "embeddings")
    if "imports" in suites:
        rows = suites["imports"]["rows"]
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.barh([r["package"] for r in rows], [r["in_process_ms"]["median"] for r in rows],
                color="#8172b3")
        ax.axvline(IMPORT_TARGET_MS, color="red", linestyle="--", label="rkllm_core target")
        ax.invert_yaxis()
        ax.set_xlabel("import time, ms (median, fresh interpreter)")
        ax.legend()
        save(fig, "imports")
    return written
