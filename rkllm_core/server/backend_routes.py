"""The backend routes of ``rkllm serve`` (``/rkllm/v1/...``): what
:class:`~rkllm_core.remote.RemoteRKLLM` calls, so the chat engine and both adapters run on a
model served by another machine.

Example:
    >>> import tempfile, pathlib
    >>> from fastapi.testclient import TestClient
    >>> from rkllm_core.server import ModelConfig, ServerConfig, create_app
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi."\\n')
    >>> config = ServerConfig(models=[ModelConfig(path=str(path), library="host",
    ...                                           params={"max_context_len": 512})])
    >>> with TestClient(create_app(config)) as client:
    ...     info = client.get("/rkllm/v1/models/tiny").json()
    >>> info["runtime_info"]["release"]
    '1.3.0'
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Request

from rkllm_core.server.app import note_model, server_of

router = APIRouter()


@router.get("/rkllm/v1/models/{model}")
async def model_info(request: Request, model: str) -> dict[str, Any]:
    """What a remote backend needs to know of a model: runtime, capabilities, parameters."""
    served = server_of(request).registry.get(model)
    note_model(request, served.id)
    backend = served.backend
    return {"id": served.id, "role": served.config.role,
            "runtime_info": dataclasses.asdict(backend.runtime_info),
            "capabilities": dataclasses.asdict(backend.capabilities),
            "params": backend.params.model_dump(mode="json")}
