"""The Ollama-compatible routes of ``rkllm serve`` (``/api/...``), with the request and response
types of the ``ollama`` package.

Example:
    >>> import tempfile, pathlib
    >>> from fastapi.testclient import TestClient
    >>> from rkllm_core.server import ModelConfig, ServerConfig, create_app
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi."\\n')
    >>> config = ServerConfig(models=[ModelConfig(path=str(path), library="host",
    ...                                           params={"max_context_len": 512})])
    >>> with TestClient(create_app(config)) as client:
    ...     version = client.get("/api/version").json()
    >>> "version" in version
    True
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

router = APIRouter()

#: The Ollama API version this server answers as (clients check it for features).
OLLAMA_API_VERSION = "0.12.0"


@router.get("/api/version")
async def version() -> dict[str, Any]:
    """The Ollama version clients see (the API this server follows)."""
    return {"version": OLLAMA_API_VERSION}
