"""A real ``rkllm serve`` on 127.0.0.1 (uvicorn in a thread, a free port) for the server tests.

``serve_models(config)`` (:func:`rkllm_core.server.serving`) starts one and yields its base URL;
every wait is bounded, and the server is stopped (its models closed) when the test ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest

pytest.importorskip("fastapi", reason="the server tests need rkllm-py[server]")

from rkllm_core.server import ServerConfig, serving


@pytest.fixture
def serve_models() -> Callable[[ServerConfig], contextlib.AbstractContextManager[str]]:
    """``with serve_models(config) as base_url: ...``: a real server for this test."""
    return serving
