"""The ``rkllm`` command: chat, inspect and check a board, benchmark a model, build the host
runtime, serve models over HTTP.

Examples (shell)::

    rkllm chat                          # RKLLM_MODEL_PATH on a board, else SmolLM2 on the CPU
    rkllm chat qwen2.5-1.5b.rkllm -p "What is the capital of France?"
    rkllm info                          # library, runtime release and how it was detected
    rkllm doctor qwen2.5-1.5b.rkllm     # each requirement checked, with the fix for a failure
    rkllm bench qwen2.5-1.5b.rkllm --json
    rkllm host build --family 1.2.1 --force
    rkllm serve qwen2.5-1.5b.rkllm --port 8080   # OpenAI + Ollama HTTP API (rkllm_core.serve_cli)

Exit codes: 0 success; 1 a check failed (``doctor``, ``info`` without a usable library);
2 an error (bad arguments, a model that cannot load, a failed run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rkllm_core.errors import RKLLMError

FAMILIES = ["1.1", "1.2.0", "1.2.1", "1.2.3", "1.3.0"]


# ---------------------------------------------------------------------------------------------
# host build


def _cmd_host_build(args: argparse.Namespace) -> int:
    from rkllm_core.host.build import FAMILY_MACRO, build_host_runtime, find_llama_cpp

    families = args.family or list(FAMILY_MACRO)
    llama = find_llama_cpp()
    engines = "scripted + gguf" if (llama and args.gguf is not False) else "scripted"
    print(f"building the host runtime ({engines} engines) for: {', '.join(families)}")
    if llama is None:
        print("  llama.cpp not found: .gguf models need `pip install 'rkllm-py[host]'`")
    for family in families:
        path = build_host_runtime(family, gguf=args.gguf, force=args.force)
        print(f"  {family}: {path}")
    return 0


# ---------------------------------------------------------------------------------------------
# info


def _print_machine() -> dict[str, Any]:
    from rkllm_core.system import machine_summary

    m = machine_summary()
    board = m["platform"] or "not a Rockchip board (no rockchip SoC in the device tree)"
    npu = f"rknpu driver {m['npu_driver']}" if m["npu_driver"] else "no NPU driver found"
    print(f"platform:  {board}")
    print(f"npu:       {npu}")
    print(f"cpu:       {m['cpu_cores']} cores{', ' + m['cpu_model'] if m['cpu_model'] else ''}")
    if m["memory_total_mb"]:
        print(f"memory:    {m['memory_available_mb']} MB available of {m['memory_total_mb']} MB")
    return m


def _cmd_info(args: argparse.Namespace) -> int:
    from rkllm_core.library import load_library

    _print_machine()
    try:
        lib = load_library(args.library, runtime_version=args.runtime_version)
    except RKLLMError as exc:
        print(f"library:   none usable: {type(exc).__name__}: {exc}")
        return 1
    d = lib.detection
    print(f"library:   {lib.path}")
    print(f"runtime:   {lib.release} (layout family {lib.family.key})")
    print(f"detected:  {d.method}{': ' + d.detail if d.detail else ''}")
    print(f"host:      {'yes (rkllm-py host runtime, CPU)' if lib.is_host_runtime else 'no'}")
    print(f"functions: {', '.join(sorted(lib.family.functions))}")
    return 0


# ---------------------------------------------------------------------------------------------
# doctor


class _Checks:
    def __init__(self) -> None:
        self.failed = 0

    def ok(self, what: str) -> None:
        print(f"[ ok ] {what}")

    def fail(self, what: str, fix: str) -> None:
        self.failed += 1
        print(f"[FAIL] {what}\n       fix: {fix}")

    def note(self, what: str) -> None:
        print(f"[info] {what}")


def _cmd_doctor(args: argparse.Namespace) -> int:
    from rkllm_core import system
    from rkllm_core.library import load_library

    checks = _Checks()
    board = system.platform()
    if board in ("RK3566", "RK3568"):
        checks.fail(f"platform {board}", "RKLLM runs on RK3588, RK3576, RK3562 and RV1126B only")
    elif board:
        checks.ok(f"platform {board}")
    else:
        checks.note("not a Rockchip board: only the host runtime (library 'host') can run here")
    driver = system.npu_driver_version()
    want = ".".join(map(str, system.REQUIRED_DRIVER))
    if driver is None:
        if board:
            checks.fail("NPU driver version unreadable",
                        "run as root (the version is in /sys/kernel/debug/rknpu/version), or "
                        "install a system image with the rknpu driver")
        else:
            checks.note("no NPU driver (expected off a board)")
    elif driver < system.REQUIRED_DRIVER:
        checks.fail(f"rknpu driver {'.'.join(map(str, driver))} is older than {want}",
                    f"update the board's system image, or build the kernel with Rockchip's "
                    f"rknpu driver {want} (rknn-llm repository, rknpu-driver/)")
    else:
        checks.ok(f"rknpu driver {'.'.join(map(str, driver))} (>= {want})")
    for node, usable in system.npu_device_access():
        if usable:
            checks.ok(f"NPU device {node} is readable and writable")
        else:
            checks.fail(f"NPU device {node} is not accessible to this user",
                        f"add the user to the group owning {node} (often 'render' or 'video'), "
                        "or run as root")
    lib = None
    try:
        lib = load_library(args.library, runtime_version=args.runtime_version)
        where = "host runtime (CPU)" if lib.is_host_runtime else str(lib.path)
        checks.ok(f"runtime {lib.release} found: {where} (detected by {lib.detection.method})")
    except RKLLMError as exc:
        checks.fail(f"runtime library: {type(exc).__name__}", str(exc).splitlines()[0] +
                    " (see `rkllm info` for where it looked)")
    if args.model:
        _check_model(checks, Path(args.model), lib)
    mem = system.meminfo_mb()
    if args.model and Path(args.model).is_file() and mem.get("MemAvailable"):
        need = Path(args.model).stat().st_size // (1024 * 1024) * 12 // 10
        if mem["MemAvailable"] < need:
            checks.fail(f"{mem['MemAvailable']} MB available, the model needs about {need} MB",
                        "close other programs or models, or use a smaller model")
        else:
            checks.ok(f"{mem['MemAvailable']} MB available for a model of about {need} MB")
    print(f"\n{checks.failed} problem(s) found" if checks.failed else "\nall checks passed")
    return 1 if checks.failed else 0


def _check_model(checks: _Checks, path: Path, lib: Any) -> None:
    if not path.is_file():
        checks.fail(f"model {path} does not exist", "check the path")
        return
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        checks.fail(f"model {path} is not readable ({exc.strerror})",
                    "fix its permissions (chmod a+r)")
        return
    if head.startswith(b"GGUF") or head.startswith(b"RKLLM-SCRIPTED"):
        if lib is not None and not lib.is_host_runtime:
            checks.fail(f"{path.name} is a host-runtime model, the library is the NPU runtime",
                        "use a .rkllm model converted with rkllm-toolkit, or --library host")
        else:
            checks.ok(f"{path.name} is a host-runtime model")
    elif lib is not None and lib.is_host_runtime:
        checks.fail(f"{path.name} looks like an NPU model; the host runtime cannot run it",
                    "run it on a board with librkllmrt.so, or use a .gguf model here")
    else:
        checks.ok(f"{path.name}: {path.stat().st_size // (1024 * 1024)} MB")
        checks.note("the toolkit release and target platform of a .rkllm file are printed by "
                    "the runtime at load; they must match this runtime and board")


# ---------------------------------------------------------------------------------------------
# chat


HELP = ("commands: /reset (forget the conversation), /system TEXT (new system prompt), "
        "/stats (numbers of the last reply), /exit; Ctrl-C stops a reply")


def _cmd_chat(args: argparse.Namespace) -> int:
    from rkllm_core.chat import ChatEngine, ChatMessage, ChatResult
    from rkllm_core.model import RKLLM
    from rkllm_core.quickstart import pick_model

    env = dict(os.environ)
    if args.model:
        env["RKLLM_MODEL_PATH"] = args.model
    if args.library:
        env["RKLLM_LIBRARY_PATH"] = args.library
    choice = pick_model(env)
    print(choice.note, file=sys.stderr)
    with RKLLM(choice.model_path, library=args.library or choice.library,
               runtime_version=args.runtime_version, max_context_len=args.max_context_len,
               max_new_tokens=args.max_new_tokens) as llm:
        engine = ChatEngine(llm)
        system = args.system
        history: list[ChatMessage] = []
        last: ChatResult | None = None
        interactive = args.prompt is None
        if interactive:
            print(HELP, file=sys.stderr)
        prompts = [args.prompt] if args.prompt is not None else None
        while True:
            if prompts is not None:
                if not prompts:
                    return 0
                text = prompts.pop(0)
            else:
                try:
                    text = input("> ")
                except EOFError:
                    return 0
                except KeyboardInterrupt:
                    print("\n(/exit or Ctrl-D to quit)", file=sys.stderr)
                    continue
            command, _, rest = text.strip().partition(" ")
            if command == "/exit":
                return 0
            if command == "/reset":
                history = []
                print("[conversation forgotten]", file=sys.stderr)
                continue
            if command == "/system":
                system, history = (rest or None), []
                print(f"[system prompt {'set' if system else 'cleared'}; new conversation]",
                      file=sys.stderr)
                continue
            if command == "/stats":
                print(json.dumps(last.metadata() | {"input_tokens": last.usage.input_tokens,
                                                    "output_tokens": last.usage.output_tokens},
                                 indent=1) if last else "[no reply yet]")
                continue
            if command in ("/help", "/?"):
                print(HELP, file=sys.stderr)
                continue
            if not text.strip():
                continue
            messages = ([ChatMessage.system(system)] if system else []) + history
            messages.append(ChatMessage.user(text))
            stream = engine.stream(messages, enable_thinking=args.think)
            try:
                for chunk in stream:
                    if chunk.reasoning and args.think:
                        print(chunk.reasoning, end="", flush=True, file=sys.stderr)
                    print(chunk.content, end="", flush=True)
            except KeyboardInterrupt:
                print("\n[stopped]", file=sys.stderr)
                continue  # the run was aborted; the model is ready for the next question
            last = stream.result
            print()
            u = last.usage
            print(f"[{last.finish_reason}; prefill {u.prefill_tokens} tokens in "
                  f"{u.prefill_ms:.0f} ms, {u.tokens_per_second:.1f} tokens/s]", file=sys.stderr)
            history += [messages[-1], last.message]


# ---------------------------------------------------------------------------------------------
# bench


def _cmd_bench(args: argparse.Namespace) -> int:
    from rkllm_core.model import RKLLM

    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    longest = max(lengths) + args.new_tokens + 64
    rows: list[dict[str, Any]] = []
    with RKLLM(args.model, library=args.library, runtime_version=args.runtime_version,
               max_context_len=max(args.max_context_len, longest), top_k=1) as llm:
        for length in lengths:
            prompt = " ".join(["word"] * length)  # about one token a word for most tokenizers
            for rep in range(args.repeat):
                started = time.perf_counter()
                first: float | None = None
                stream = llm.stream(prompt, max_new_tokens=args.new_tokens)
                for chunk in stream:
                    if first is None and chunk.text:
                        first = time.perf_counter() - started
                result = stream.result
                perf = result.perf
                prefill_tokens = perf.prefill_tokens
                rows.append({
                    "prompt_words": length, "repeat": rep,
                    "prefill_tokens": prefill_tokens,
                    "prefill_tokens_per_second": (prefill_tokens / perf.prefill_ms * 1000
                                                  if prefill_tokens and perf.prefill_ms else None),
                    "decode_tokens": perf.decode_tokens,
                    "decode_tokens_per_second": perf.tokens_per_second,
                    "time_to_first_token_ms": first * 1000 if first is not None else None,
                    "peak_memory_mb": perf.peak_memory_mb,
                })
        info = llm.runtime_info
    if args.json:
        print(json.dumps({"model": str(args.model), "runtime": info.release,
                          "host_runtime": info.is_host_runtime, "rows": rows}, indent=1))
        return 0
    print(f"model {Path(args.model).name} on runtime {info.release}"
          f"{' (host runtime, CPU)' if info.is_host_runtime else ''}")
    head = ("words", "prefill tok", "prefill tok/s", "decode tok", "decode tok/s", "TTFT ms",
            "peak MB")
    print(" | ".join(f"{h:>13}" for h in head))
    for r in rows:
        cells = (r["prompt_words"], r["prefill_tokens"], r["prefill_tokens_per_second"],
                 r["decode_tokens"], r["decode_tokens_per_second"], r["time_to_first_token_ms"],
                 r["peak_memory_mb"])
        print(" | ".join(f"{c:>13.1f}" if isinstance(c, float) else f"{c!s:>13}" for c in cells))
    return 0


# ---------------------------------------------------------------------------------------------
# the parser


def _library_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--library", default=None,
                   help="librkllmrt.so path, or 'host' (default: RKLLM_LIBRARY_PATH, then the "
                        "system loader and the usual install locations)")
    p.add_argument("--runtime-version", default=None,
                   help="runtime release when detection should not decide (e.g. 1.2.3)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``rkllm`` (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="rkllm", description="Run and inspect RKLLM models on Rockchip NPUs (or the host "
        "runtime).", epilog="exit codes: 0 ok, 1 a check failed, 2 an error")
    sub = parser.add_subparsers(dest="command", required=True)

    chat = sub.add_parser("chat", help="chat in the terminal, streamed, with history")
    chat.add_argument("model", nargs="?", default=None,
                      help="model file (default: RKLLM_MODEL_PATH, else SmolLM2 on the host "
                           "runtime)")
    chat.add_argument("-p", "--prompt", default=None, help="answer one question and exit")
    chat.add_argument("--system", default=None, help="a system prompt")
    chat.add_argument("--think", action="store_true", help="enable thinking (shown on stderr)")
    chat.add_argument("--max-context-len", type=int, default=2048)
    chat.add_argument("--max-new-tokens", type=int, default=256)
    _library_args(chat)
    chat.set_defaults(func=_cmd_chat)

    info = sub.add_parser("info", help="the machine, the runtime library, its release and how "
                                       "it was detected (no model needed)")
    _library_args(info)
    info.set_defaults(func=_cmd_info)

    doctor = sub.add_parser("doctor", help="check every requirement and print the fix for each "
                                           "failure")
    doctor.add_argument("model", nargs="?", default=None, help="also check this model file")
    _library_args(doctor)
    doctor.set_defaults(func=_cmd_doctor)

    bench = sub.add_parser("bench", help="prefill and decode speed, time to first token and "
                                         "peak memory over several prompt lengths")
    bench.add_argument("model", help="model file")
    bench.add_argument("--lengths", default="32,128,512", help="prompt lengths in words")
    bench.add_argument("--new-tokens", type=int, default=32, help="tokens to generate")
    bench.add_argument("--repeat", type=int, default=2, help="runs per length")
    bench.add_argument("--max-context-len", type=int, default=1024)
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _library_args(bench)
    bench.set_defaults(func=_cmd_bench)

    host = sub.add_parser("host", help="the host runtime (librkllmrt for machines without NPU)")
    host_sub = host.add_subparsers(dest="host_command", required=True)
    build = host_sub.add_parser("build", help="compile the host runtime into the user cache")
    build.add_argument("--family", action="append", choices=FAMILIES,
                       help="ABI family to build (repeatable; default: all)")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.add_argument("--gguf", dest="gguf", action="store_true", default=None,
                       help="require the llama.cpp (GGUF) engine")
    build.add_argument("--no-gguf", dest="gguf", action="store_false",
                       help="build the scripted engine only")
    build.set_defaults(func=_cmd_host_build)

    from rkllm_core.serve_cli import add_serve_parser

    add_serve_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rkllm`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except RKLLMError as exc:
        print(f"rkllm: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
