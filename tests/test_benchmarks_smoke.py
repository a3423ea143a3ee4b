"""``python -m benchmarks --quick`` runs every suite and writes numbers for each.

A smoke test: it pins that the benchmarks still run against the current API, never how fast
anything is (no timing thresholds here; the targets live in the benchmark's own report).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SUITES = ("overhead", "latency", "multiturn", "embeddings", "imports", "tokenizer", "server")


def _smollm2_is_installed() -> bool:
    from rkllm_core.host.models import smollm2_path

    try:
        smollm2_path()
    except Exception:
        return False
    return True


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "quick.json").read_text()), out


def test_quick_run_reports_every_suite_with_numbers(
        quick_run: tuple[dict[str, Any], Path]) -> None:
    results, _ = quick_run
    assert results["errors"] == {}
    for suite in SUITES:
        numbers = _numbers(results["suites"][suite])
        assert numbers, suite
        assert all(math.isfinite(n) for n in numbers), suite


def test_quick_run_measures_each_consumer(quick_run: tuple[dict[str, Any], Path]) -> None:
    suites = quick_run[0]["suites"]
    overhead = {r["variant"]: r for r in suites["overhead"]["rows"]}
    assert {"c", "ctypes", "stream", "astream"} <= set(overhead)
    assert all(r["us_per_token"]["median"] > 0 for r in overhead.values())
    latency = {r["variant"] for r in suites["latency"]["rows"]}
    assert latency == {"stream", "astream", "polling_5ms"}
    for workload in ("conversation", "agent"):
        modes = suites["multiturn"]["workloads"][workload]
        assert len(modes["reuse_on"]) == len(modes["reuse_off"]) > 1
    assert {r["variant"] for r in suites["embeddings"]["rows"]} >= {"runtime_loop",
                                                                     "core_embed"}
    assert [r["package"] for r in suites["imports"]["rows"]] == ["rkllm_core", "rkllm_core.RKLLM"]
    tokenizer = suites["tokenizer"]
    if _smollm2_is_installed():
        assert [r["engine"] for r in tokenizer["rows"]] == ["llama.cpp", "rebuilt"]
        assert tokenizer["same_ids"] is True
        assert all(r["load_ms"]["median"] > 0 for r in tokenizer["rows"])
    else:
        assert tokenizer["rows"] == [] and "skipped" in tokenizer["notes"][0]
    server = suites["server"]
    # one conversation keeps its cache through the server; 8 interleaved ones replace it
    assert server["reuse"]["1_conversations"]["turns_with_reuse"] == \
        server["reuse"]["1_conversations"]["later_turns"]
    assert server["reuse"]["8_conversations"]["later_turns"] == 8 * (
        server["reuse"]["turns"] - 1)


def test_quick_run_writes_markdown_next_to_the_json(
        quick_run: tuple[dict[str, Any], Path]) -> None:
    _, out = quick_run
    report = (out / "quick.md").read_text()
    assert "## Targets" in report and "## 5. Import time and memory" in report
    assert "## 6. Tokenizer load (tokens mode)" in report
    assert "## 7. `rkllm serve` over the in-process stream" in report
