"""A real ``rkllm serve`` on 127.0.0.1 (uvicorn in a thread, a free port) for the server tests.

``serve_models(config)`` starts one and yields its base URL; every wait is bounded, and the
server is stopped (its models closed) when the test ends. The ``scripted`` fixture writes the
scripted assistant the server tests share.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server tests need rkllm-py[server]")

import uvicorn

from rkllm_core.server import ServerConfig, create_app

MODELS = Path(__file__).resolve().parent.parent / "models"

#: Seconds a server may take to start (it loads its models first).
START_TIMEOUT = 120.0


@contextlib.contextmanager
def running(config: ServerConfig) -> Iterator[str]:
    """Serve ``config`` on 127.0.0.1 on a free port; yields ``http://127.0.0.1:PORT``."""
    assert config.host == "127.0.0.1", "server tests listen on loopback only"
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, name="rkllm-serve-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the test server stopped while starting (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"the test server did not start in {START_TIMEOUT} s")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


@pytest.fixture
def serve_models() -> Callable[[ServerConfig], contextlib.AbstractContextManager[str]]:
    """``with serve_models(config) as base_url: ...``: a real server for this test."""
    return running
