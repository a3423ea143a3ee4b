"""The ``rkllm`` command: build the host runtime, inspect a runtime, chat with a model.

Examples (shell)::

    rkllm host build                 # every family, the GGUF engine when llama.cpp is installed
    rkllm host build --family 1.2.1 --force
    rkllm info --library /usr/lib/librkllmrt.so
    rkllm chat "What is the capital of France?"   # RKLLM_MODEL_PATH on a board, else SmolLM2
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rkllm_core.errors import RKLLMError


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


def _cmd_info(args: argparse.Namespace) -> int:
    from rkllm_core.library import load_library

    lib = load_library(args.library, runtime_version=args.runtime_version)
    d = lib.detection
    print(f"library:   {lib.path}")
    print(f"runtime:   {lib.release} (layout family {lib.family.key})")
    print(f"detected:  {d.method}{': ' + d.detail if d.detail else ''}")
    print(f"host:      {'yes (rkllm-py host runtime, CPU)' if lib.is_host_runtime else 'no'}")
    print(f"functions: {', '.join(sorted(lib.family.functions))}")
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from rkllm_core.chat import ChatEngine, ChatMessage
    from rkllm_core.model import RKLLM
    from rkllm_core.quickstart import pick_model

    choice = pick_model()
    if args.model:
        choice = pick_model({"RKLLM_MODEL_PATH": args.model,
                             **({"RKLLM_LIBRARY_PATH": args.library} if args.library else {})})
    print(choice.note, file=sys.stderr)
    with RKLLM(choice.model_path, library=args.library or choice.library,
               runtime_version=args.runtime_version, max_context_len=args.max_context_len,
               max_new_tokens=args.max_new_tokens) as llm:
        engine = ChatEngine(llm)
        history = [ChatMessage.system(args.system)] if args.system else []
        prompts = [args.prompt] if args.prompt else None
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
                if not text.strip():
                    continue
            history.append(ChatMessage.user(text))
            stream = engine.stream(history, enable_thinking=args.think)
            for chunk in stream:
                print(chunk.content, end="", flush=True)
            turn = stream.result
            u = turn.usage
            print()
            print(f"[{turn.finish_reason}; prefill {u.prefill_tokens} tokens, "
                  f"{u.tokens_per_second:.1f} tokens/s]", file=sys.stderr)
            history.append(turn.message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``rkllm`` (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="rkllm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    host = sub.add_parser("host", help="the host runtime (librkllmrt for machines without NPU)")
    host_sub = host.add_subparsers(dest="host_command", required=True)
    build = host_sub.add_parser("build", help="compile the host runtime into the user cache")
    build.add_argument("--family", action="append", choices=["1.1", "1.2.0", "1.2.1", "1.2.3",
                                                             "1.3.0"],
                       help="ABI family to build (repeatable; default: all)")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.add_argument("--gguf", dest="gguf", action="store_true", default=None,
                       help="require the llama.cpp (GGUF) engine")
    build.add_argument("--no-gguf", dest="gguf", action="store_false",
                       help="build the scripted engine only")
    build.set_defaults(func=_cmd_host_build)

    for name, func, text in (("info", _cmd_info, "show which runtime is found and its release"),
                             ("chat", _cmd_chat, "chat in the terminal (streamed)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--library", default=None,
                       help="librkllmrt.so path, or 'host' (default: RKLLM_LIBRARY_PATH, then "
                            "the system; chat falls back to the host runtime)")
        p.add_argument("--runtime-version", default=None,
                       help="runtime release when detection should not decide (e.g. 1.2.3)")
        p.set_defaults(func=func)
        if name == "chat":
            p.add_argument("prompt", nargs="?", default=None,
                           help="one question (default: an interactive chat)")
            p.add_argument("--model", default=None,
                           help="model file (default: RKLLM_MODEL_PATH, else SmolLM2 on the host "
                                "runtime)")
            p.add_argument("--system", default=None, help="a system prompt")
            p.add_argument("--think", action="store_true", help="enable thinking")
            p.add_argument("--max-context-len", type=int, default=2048)
            p.add_argument("--max-new-tokens", type=int, default=256)
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
