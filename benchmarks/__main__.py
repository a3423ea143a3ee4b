"""``python -m benchmarks [--suite NAME ...] [--quick] [--out DIR] [--name STEM]``.

Runs the suites on the host runtime and writes ``STEM.json``, ``STEM.md`` and ``STEM-*.png``
(when matplotlib is installed) into ``benchmarks/results/``. ``--render JSON`` rewrites the
markdown and plots of a finished run without measuring again.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import (
    cluster,
    embeddings,
    imports,
    latency,
    multiturn,
    overhead,
    report,
    server,
    tokenizer,
)
from benchmarks._common import Context, machine_info

SUITES: dict[str, Callable[[Context], dict[str, Any]]] = {
    "overhead": overhead.run,
    "latency": latency.run,
    "multiturn": multiturn.run,
    "embeddings": embeddings.run,
    "imports": imports.run,
    "tokenizer": tokenizer.run,
    "server": server.run,
    "cluster": cluster.run,
}
#: Run only when named with --suite: they need an extra (ray[serve]) and take minutes.
OPT_IN = {"cluster"}
RESULTS = Path(__file__).resolve().parent / "results"


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _render(json_path: Path) -> int:
    results = json.loads(json_path.read_text())
    stem = json_path.stem
    md_path = json_path.with_suffix(".md")
    md_path.write_text(report.markdown(results))
    for path in (md_path, *report.plots(results, json_path.parent, stem)):
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the chosen suites and write the results; 1 if a suite failed."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--suite", action="append", choices=list(SUITES),
                        help="run this suite (repeat for several); default: all but "
                             "the opt-in ones (cluster)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and faster pacing: a smoke run, not a measurement")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--name", help="file stem (default: 'latest' for all suites, else the "
                        "suites' names; 'quick' with --quick)")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only rewrite the markdown and plots of an earlier run's JSON")
    args = parser.parse_args(argv)
    if args.render is not None:
        return _render(args.render)
    chosen = args.suite or [name for name in SUITES if name not in OPT_IN]
    # a partial run must not overwrite the full run's files
    default = "latest" if set(chosen) == set(SUITES) - OPT_IN else "-".join(chosen)
    stem = args.name or ("quick" if args.quick else default)
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    load_start = _load()
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "suites": {},
        "errors": {},
    }
    with tempfile.TemporaryDirectory(prefix="rkllm-bench-") as workdir:
        ctx = Context(quick=args.quick, workdir=Path(workdir))
        results["machine"] = machine_info(ctx.library)
        for name in chosen:
            print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
            suite_start = time.perf_counter()
            try:
                results["suites"][name] = SUITES[name](ctx)
            except Exception:
                results["errors"][name] = traceback.format_exc()
                print(results["errors"][name], file=sys.stderr)
            print(f"[benchmarks] {name}: {time.perf_counter() - suite_start:.1f} s",
                  file=sys.stderr, flush=True)
    results["machine"]["load_start"] = load_start
    results["machine"]["load_end"] = _load()
    results["seconds"] = time.perf_counter() - started
    results["targets"] = report.targets(results)

    json_path = args.out / f"{stem}.json"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path = args.out / f"{stem}.md"
    md_path.write_text(report.markdown(results))
    pngs = report.plots(results, args.out, stem)
    for path in (json_path, md_path, *pngs):
        print(path)
    if not pngs:
        print("[benchmarks] no plots: pip install matplotlib", file=sys.stderr)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
