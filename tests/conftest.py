"""Shared fixtures: the ABI facts, and host runtimes built once per test session."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ABI_JSON = Path(os.environ.get("RKLLM_ABI_JSON", ROOT.parent / "shared" / "rkllm-abi" / "abi.json"))
MODELS = Path(__file__).resolve().parent / "models"


@pytest.fixture(scope="session")
def abi_facts() -> dict[str, Any]:
    """``abi.json``: the layouts computed by a C compiler from each release's official header."""
    if not ABI_JSON.exists():
        pytest.fail(f"{ABI_JSON} is missing: clone the repo with ../shared beside it")
    data: dict[str, Any] = json.loads(ABI_JSON.read_text())
    return data


@pytest.fixture(scope="session")
def host_build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache directory for every host runtime the session builds."""
    return tmp_path_factory.mktemp("host-runtime")


#: Where a model runs: rkllm_core.RKLLM in the test process, or IsolatedRKLLM in a child.
BACKENDS = ["in_process", "isolated"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs once per backend (the chat layer and the adapters must
    behave the same on both)."""
    return str(request.param)
