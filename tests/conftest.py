"""Shared fixtures: the ABI facts, host runtimes built once per test session, and the backends
a model runs on (``backend``, ``load_model``, ``place``)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
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
BACKENDS = ["in_process", "isolated", "remote"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs once per backend (the chat layer and the adapters must
    behave the same on each)."""
    return str(request.param)


def _served(stack: contextlib.ExitStack, path: str | os.PathLike[str],
            settings: dict[str, Any]) -> Any:
    """A RemoteRKLLM of a real ``rkllm serve`` on 127.0.0.1 (a thread of this process) that
    loaded ``path`` with RKLLM's ``settings``; both end with ``stack``."""
    pytest.importorskip("fastapi", reason="the remote backend's tests need rkllm-py[server]")
    from rkllm_core.remote import RemoteRKLLM
    from rkllm_core.server import ModelConfig, ServerConfig, serving

    library = settings.pop("library", None)
    runtime_version = settings.pop("runtime_version", None)
    config = ServerConfig(models=[ModelConfig(path=str(path), id="m", library=library,
                                              runtime_version=runtime_version,
                                              params=settings)])
    url = stack.enter_context(serving(config))
    return stack.enter_context(RemoteRKLLM(url, "m"))


@pytest.fixture
def load_model(backend: str, request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``load_model(path, **settings)``: the model file at ``path``, loaded with RKLLM's
    ``settings`` on this test's backend (in this process, in a child process, or served by a
    real ``rkllm serve`` on 127.0.0.1 and reached over HTTP); closed when the test ends."""
    stack = contextlib.ExitStack()
    request.addfinalizer(stack.close)

    def load(path: str | os.PathLike[str], **settings: Any) -> Any:
        if backend == "remote":
            return _served(stack, path, settings)
        from rkllm_core import RKLLM, IsolatedRKLLM

        kind = IsolatedRKLLM if backend == "isolated" else RKLLM
        return stack.enter_context(kind(path, **settings))

    return load


@pytest.fixture
def place(backend: str, request: pytest.FixtureRequest) -> Callable[..., dict[str, Any]]:
    """``place(model_path=..., library=..., max_context_len=..., **more)``: an adapter's
    settings that run that model on this test's backend: the same settings with ``isolated=``,
    or for the remote backend ``client=`` a RemoteRKLLM whose server loaded the model with the
    load settings (the rest stay the adapter's)."""
    from rkllm_core.params import SAMPLING_FIELDS

    stack = contextlib.ExitStack()
    request.addfinalizer(stack.close)

    def settings(**given: Any) -> dict[str, Any]:
        if backend != "remote":
            return {**given, "isolated": backend == "isolated"}
        load: dict[str, Any] = {name: given.pop(name) for name in (
            "library", "runtime_version", "max_context_len") if name in given}
        load.update(given.pop("model_kwargs", {}))
        # the adapter's sampling values are load settings too (older runtimes take no others)
        load.update({name: given[name] for name in SAMPLING_FIELDS
                     if given.get(name) is not None})
        path = given.pop("model_path")
        return {**given, "client": _served(stack, path, load)}

    return settings
