"""``rkllm serve``: an OpenAI- and Ollama-compatible HTTP server over the chat engine
(``pip install "rkllm-py[server]"``).

:func:`create_app` builds the ASGI app for a :class:`ServerConfig`; :func:`serve` runs it with
uvicorn (what the ``rkllm serve`` command does).

Example:
    >>> import tempfile, pathlib
    >>> from fastapi.testclient import TestClient
    >>> from rkllm_core.server import ModelConfig, ServerConfig, create_app
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi."\\n')
    >>> config = ServerConfig(models=[ModelConfig(path=str(path), library="host",
    ...                                           params={"max_context_len": 512})])
    >>> with TestClient(create_app(config)) as client:
    ...     client.get("/").text
    'Ollama is running'
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from rkllm_core.errors import InvalidParameterError
from rkllm_core.server.app import create_app
from rkllm_core.server.config import ModelConfig, ServerConfig, load_config


def serve(config: ServerConfig, *, log_level: str = "info") -> None:
    """Run the server in this process until it is stopped (Ctrl-C, SIGTERM).

    Example (not run here: it blocks):
        >>> from rkllm_core.server import ModelConfig, ServerConfig, serve
        >>> config = ServerConfig(models=[ModelConfig(path="/models/qwen.rkllm")], port=8080)
        >>> callable(serve)  # serve(config) listens on 127.0.0.1:8080
        True
    """
    import uvicorn

    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level=log_level,
                access_log=False)  # our own access log is structured


@contextlib.contextmanager
def serving(config: ServerConfig, start_timeout: float = 120.0) -> Iterator[str]:
    """Serve ``config`` from a thread of this process on a free port of 127.0.0.1 and yield
    its base URL; stops the server (and frees its models) on the way out. For examples, tests
    and notebooks; ``rkllm serve`` is the real thing.

    Example:
        >>> import tempfile, pathlib, httpx
        >>> from rkllm_core.server import ModelConfig, ServerConfig
        >>> from rkllm_core.server import serving
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi."\\n')
        >>> config = ServerConfig(models=[ModelConfig(path=str(path), library="host",
        ...                                           params={"max_context_len": 512})])
        >>> with serving(config) as url:
        ...     httpx.get(url).text
        'Ollama is running'
    """
    import uvicorn

    if config.host != "127.0.0.1":
        raise InvalidParameterError("serving() listens on 127.0.0.1 only: use `rkllm serve` "
                                    "to serve other machines")
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=0,
                                           log_level="warning", access_log=False,
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, name="rkllm-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server stopped while starting (see its log)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"the server did not start within {start_timeout} s")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


__all__ = ["ModelConfig", "ServerConfig", "create_app", "load_config", "serve", "serving"]
