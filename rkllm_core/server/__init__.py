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


__all__ = ["ModelConfig", "ServerConfig", "create_app", "load_config", "serve"]
