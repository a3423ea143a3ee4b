"""The OpenAI-compatible routes of ``rkllm serve`` (``/v1/...``), with the request and response
types of the ``openai`` package.

Example:
    >>> import tempfile, pathlib
    >>> from fastapi.testclient import TestClient
    >>> from rkllm_core.server import ModelConfig, ServerConfig, create_app
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi."\\n')
    >>> config = ServerConfig(models=[ModelConfig(path=str(path), library="host",
    ...                                           params={"max_context_len": 512})])
    >>> with TestClient(create_app(config)) as client:
    ...     listed = client.get("/v1/models").json()
    >>> [m["id"] for m in listed["data"]], listed["object"]
    (['tiny'], 'list')
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from rkllm_core.server.app import server_of

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """Every served model, as OpenAI's ``GET /v1/models`` lists them."""
    from openai.types import Model

    models = [Model(id=m.id, created=m.created, object="model", owned_by="rkllm-py")
              for m in server_of(request).registry]
    return {"object": "list", "data": [m.model_dump() for m in models]}
