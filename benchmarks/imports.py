"""Suite 5: import time and resident memory of the three packages, each in a fresh interpreter.

Three numbers per package: the time ``import pkg`` takes measured inside the child
(``time.perf_counter`` around the statement), the wall time of ``python -c "import pkg"`` minus
that of ``python -c "pass"``, and the resident memory the import adds (``VmRSS`` before and
after it, in the child). One ``python -X importtime`` run names the heaviest top-level modules
each import pulls in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from benchmarks._common import REPO, Context, summary

#: what is timed: the package (its model API loads lazily), the model API itself, the adapters
PACKAGES = {
    "rkllm_core": "import rkllm_core",
    "rkllm_core.RKLLM": "from rkllm_core import RKLLM",
    "langchain_rkllm": "import langchain_rkllm",
    "llama_index_rkllm": "import llama_index_rkllm",
}
TARGET_MS = {"rkllm_core": 100.0}

# VmRSS from /proc, not ru_maxrss: Linux carries ru_maxrss across exec, so a child reports
# the parent's peak
_CHILD = """
import json, time
def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
before = rss_kib()
start = time.perf_counter()
{statement}
elapsed = time.perf_counter() - start
print(json.dumps({{"seconds": elapsed, "rss_before_kib": before, "rss_after_kib": rss_kib()}}))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("PYTHONSTARTUP", None)
    return env


def _child(statement: str) -> tuple[dict[str, float], float]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CHILD.format(statement=statement)],
                         capture_output=True, text=True, check=True, env=_env(), cwd=REPO)
    wall = time.perf_counter() - start
    return json.loads(out.stdout.strip().splitlines()[-1]), wall


def heaviest_imports(package: str, top: int = 6) -> list[dict[str, Any]]:
    """The modules with the largest cumulative time in ``python -X importtime -c ...``."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", PACKAGES[package]],
                         capture_output=True, text=True, check=True, env=_env(), cwd=REPO)
    rows: list[dict[str, Any]] = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self_us, cumulative_us, name = (part.strip() for part in
                                         line.split(":", 1)[1].split("|"))
        # top-level modules only (their cumulative time says enough), not the package itself
        if "." not in name and name != package.split(".")[0]:
            rows.append({"module": name, "cumulative_ms": int(cumulative_us) / 1000.0})
    rows.sort(key=lambda r: -float(r["cumulative_ms"]))
    return rows[:top]


def run(ctx: Context) -> dict[str, Any]:
    """Import time and memory per package; see the module docstring."""
    # quick runs time only rkllm_core: the adapters' imports (langchain, llama-index) take
    # seconds each, which a smoke test should not pay
    packages = list(PACKAGES)[:2] if ctx.quick else list(PACKAGES)
    repeats = 2 if ctx.quick else 7
    bare_wall: list[float] = []
    bare_rss: list[float] = []
    measured: dict[str, dict[str, list[float]]] = {
        p: {"in_process_ms": [], "wall_minus_bare_ms": [], "rss_added_mib": []}
        for p in packages}
    notes: list[str] = []
    available = list(packages)
    for _ in range(repeats):  # interleaved, so drifts of the machine hit every package alike
        bare, wall = _child("pass")
        bare_wall.append(wall)
        bare_rss.append(bare["rss_after_kib"])
        for package in list(available):
            try:
                got, wall = _child(PACKAGES[package])
            except subprocess.CalledProcessError as exc:
                notes.append(f"{package} skipped: it does not import "
                             f"({exc.stderr.strip()[-300:]})")
                available.remove(package)
                continue
            m = measured[package]
            m["in_process_ms"].append(got["seconds"] * 1000.0)
            m["wall_minus_bare_ms"].append((wall - bare_wall[-1]) * 1000.0)
            m["rss_added_mib"].append((got["rss_after_kib"] - got["rss_before_kib"]) / 1024.0)
    rows = []
    for package in available:
        m = measured[package]
        rows.append({
            "package": package,
            "in_process_ms": summary(m["in_process_ms"]),
            "wall_minus_bare_ms": summary(m["wall_minus_bare_ms"]),
            "rss_added_mib": summary(m["rss_added_mib"]),
            "target_ms": TARGET_MS.get(package),
            "heaviest_imports": [] if ctx.quick else heaviest_imports(package),
        })
    return {
        "description": "Import time and resident memory in a fresh interpreter",
        "repeats": repeats,
        "bare_interpreter": {"wall_ms": summary([w * 1000.0 for w in bare_wall]),
                             "rss_mib": summary([r / 1024.0 for r in bare_rss])},
        "rows": rows,
        "notes": notes,
    }
