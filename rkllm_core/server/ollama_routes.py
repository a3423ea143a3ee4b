"""The Ollama-compatible routes of ``rkllm serve`` (``/api/...``), with the request and response
types of the ``ollama`` package.

Here: the version, the model list (``/api/tags``), the loaded models (``/api/ps``), a model's
description (``/api/show``), embeddings (``/api/embed`` and the older ``/api/embeddings``) and
the model-management calls, which this server does not do (see :func:`pull`). The chat and
completion calls are in :mod:`rkllm_core.server.ollama_chat`, the translation to and from the
chat engine in :mod:`rkllm_core.server.ollama_convert`.

Example:
    >>> import tempfile, pathlib
    >>> from fastapi.testclient import TestClient
    >>> from rkllm_core.server import ModelConfig, ServerConfig, create_app
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "Qwen3-0.6B_W8A8.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\nhidden_size = 8\\ndefault reply "Hi."\\n')
    >>> config = ServerConfig(models=[ModelConfig(path=str(path), library="host",
    ...                                           params={"max_context_len": 512})])
    >>> with TestClient(create_app(config)) as client:
    ...     version = client.get("/api/version").json()
    ...     tags = client.get("/api/tags").json()
    ...     shown = client.post("/api/show", json={"model": "Qwen3-0.6B_W8A8"}).json()
    ...     embedded = client.post("/api/embed", json={"model": "Qwen3-0.6B_W8A8",
    ...                                                "input": ["a cat", "a dog"]}).json()
    ...     pulled = client.post("/api/pull", json={"model": "llama3.2", "stream": False})
    >>> "version" in version, tags["models"][0]["name"], tags["models"][0]["details"]["family"]
    (True, 'Qwen3-0.6B_W8A8:latest', 'qwen3')
    >>> shown["model_info"]["qwen3.context_length"], shown["capabilities"]
    (512, ['completion', 'tools', 'thinking'])
    >>> len(embedded["embeddings"]), len(embedded["embeddings"][0])
    (2, 8)
    >>> pulled.status_code, "local .rkllm files" in pulled.json()["error"]
    (400, True)
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from ollama._types import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbedRequest,
    EmbedResponse,
    ListResponse,
    ProcessResponse,
    PullRequest,
    ShowRequest,
    ShowResponse,
    StatusResponse,
)
from pydantic import ByteSize

from rkllm_core.errors import InvalidParameterError
from rkllm_core.server import ollama_chat
from rkllm_core.server.app import note_model, server_of
from rkllm_core.server.ollama_convert import describe_file, dump, file_facts
from rkllm_core.server.registry import ModelRegistry, ServedModel, ServerError, WrongRoleError
from rkllm_core.server.wire import ndjson, ndjson_response, parse, read_json, until_disconnect

logger = logging.getLogger("rkllm_core.server")

router = APIRouter()
router.include_router(ollama_chat.router)

#: The Ollama API version this server answers as (clients check it for features).
OLLAMA_API_VERSION = "0.12.0"

#: ``expires_at`` of a loaded model: models stay loaded as long as the server runs.
_STAYS_LOADED = timedelta(days=365 * 100)


class ModelManagementError(ServerError):
    """Pull, push, create, copy and delete: this server serves local files and manages none.

    400, not 501: the request asks for something the user must do differently (give the file
    to ``rkllm serve``), and a 5xx would read as a server fault: it is logged with a traceback,
    counted by alerts on the 5xx rate, and retried by some proxies and clients.
    """

    status = 400
    code = "model_management_not_supported"
    kind = "invalid_request_error"


@router.get("/api/version")
async def version() -> dict[str, Any]:
    """The Ollama version clients see (the API this server follows)."""
    return {"version": OLLAMA_API_VERSION}


# -- models ------------------------------------------------------------------------------------

def _listed(served: ServedModel) -> dict[str, Any]:
    """One model as ``/api/tags`` lists it: ``name`` and ``model`` are ``id:latest`` (the
    ``ollama`` package's ``ListResponse.Model`` leaves out ``name``, which Ollama sends and Open
    WebUI reads)."""
    size, modified, digest = file_facts(served.config.path)
    entry = ListResponse.Model(model=f"{served.id}:latest", modified_at=modified,
                               digest=digest, size=ByteSize(size),
                               details=describe_file(served.config.path))
    return {"name": f"{served.id}:latest", **dump(entry)}


@router.get("/api/tags")
async def tags(request: Request) -> dict[str, Any]:
    """Every served model, with its file's size, modification time and details."""
    return {"models": [_listed(m) for m in server_of(request).registry]}


@router.get("/api/ps")
async def ps(request: Request) -> dict[str, Any]:
    """The loaded models: every served model (each is loaded at start and stays loaded).

    ``size_vram`` is the file's size on a board (the weights live in the NPU's memory) and 0 on
    the host runtime, which runs on the CPU.
    """
    models = []
    for served in server_of(request).registry:
        size, _modified, digest = file_facts(served.config.path)
        on_npu = not served.backend.runtime_info.is_host_runtime
        models.append(ProcessResponse.Model(
            model=f"{served.id}:latest", name=f"{served.id}:latest", digest=digest,
            expires_at=datetime.now(timezone.utc) + _STAYS_LOADED, size=ByteSize(size),
            size_vram=ByteSize(size if on_npu else 0), details=describe_file(served.config.path),
            context_length=served.context_length))
    return dump(ProcessResponse(models=models))


@router.post("/api/show")
async def show(request: Request) -> dict[str, Any]:
    """A model's details, context length (``model_info``), template, parameters and
    capabilities; the model by ``model`` or the older ``name``."""
    data = await read_json(request)
    body = parse(ShowRequest, {**data, "model": data.get("model") or data.get("name") or ""})
    served = server_of(request).registry.get(body.model)
    note_model(request, served.id)
    details = describe_file(served.config.path)
    _size, modified, _digest = file_facts(served.config.path)
    family = details.family or "rkllm"
    backend = served.backend
    info: dict[str, Any] = {
        "general.architecture": family, "general.name": served.id,
        "general.basename": served.id, "general.type": "model",
        f"{family}.context_length": served.context_length,
        "rkllm.runtime_release": backend.runtime_info.release,
        "rkllm.model_platform": backend.runtime_info.model_platform,
        "rkllm.role": served.config.role}
    if details.parameter_size:
        info["general.size_label"] = details.parameter_size
    shown = ShowResponse(
        model_info={k: v for k, v in info.items() if v is not None},
        modified_at=modified, details=details, template=_template(served),
        modelfile=f"# served by rkllm serve\nFROM {Path(served.config.path).name}\n",
        parameters=_parameters(served), capabilities=_capabilities(served))
    return dump(shown)


def _template(served: ServedModel) -> str:
    if served.config.role != "chat":
        return ""
    preset = served.chat.preset
    if preset is not None:
        return str(preset.template)
    if served.config.tokenizer:
        return (f"# the chat template of the tokenizer {Path(served.config.tokenizer).name}, "
                "rendered by rkllm serve")
    return "# the runtime applies the chat template baked into the .rkllm file"


def _parameters(served: ServedModel) -> str:
    """The model's load-time settings in a Modelfile's ``PARAMETER`` style."""
    params = served.backend.params
    lines = [f"num_ctx {served.context_length}"]
    for name in ("temperature", "top_k", "top_p", "repeat_penalty", "presence_penalty",
                 "frequency_penalty"):
        value = getattr(params, name, None)
        if value is not None:
            lines.append(f"{name} {value}")
    return "\n".join(lines)


def _capabilities(served: ServedModel) -> list[str]:
    role = served.config.role
    if role == "embedding":
        return ["embedding"]
    if role != "chat":
        return []
    capabilities = ["completion", "tools"]
    preset = served.chat.preset
    if preset is None:
        from rkllm_core.chat.templates import preset_for

        try:
            preset = preset_for(served.config.path)
        except InvalidParameterError:
            preset = None
    if preset is not None and preset.supports_thinking:
        capabilities.append("thinking")
    return capabilities


# -- embeddings --------------------------------------------------------------------------------

def _embedder(registry: ModelRegistry, name: str) -> ServedModel:
    served = registry.get(name)
    if served.config.role == "rerank":
        raise WrongRoleError(
            f"model {name!r} is a rerank model and does not make embeddings; embedding and "
            "chat models here: " + ", ".join(m.id for m in registry if m.config.role != "rerank"))
    return served


async def _embed(served: ServedModel, texts: list[str], *, normalize: bool,
                 timeout: float | None) -> list[list[float]]:
    vectors = await served.embed(texts, normalize=normalize, timeout=timeout)
    return [[float(x) for x in row] for row in vectors]


@functools.lru_cache(maxsize=8)
def _tokenizer(path: str) -> Any:
    from rkllm_core.chat.tokenizer import ChatTokenizer

    file = Path(path)
    if file.is_dir():
        return ChatTokenizer.from_pretrained_dir(file)
    return ChatTokenizer.from_gguf(file) if file.suffix == ".gguf" else ChatTokenizer.from_file(
        file)


def _count_tokens(served: ServedModel, texts: list[str]) -> int | None:
    """Tokens in ``texts`` by the model's tokenizer: the configured one, or the model file
    itself when it is a GGUF (host runtime); None without one (the runtime has no tokenizer
    API and reports no token counts for embedding runs)."""
    source = served.config.tokenizer or (
        served.config.path if served.config.path.endswith(".gguf") else None)
    if source is None:
        return None
    try:
        tokenizer = _tokenizer(source)
    except Exception as exc:  # counting is a courtesy: embeddings do not need it
        logger.debug("no token count for %s: %s", served.id, exc)
        return None
    return sum(len(tokenizer.encode(t, parse_special=False)) for t in texts)


@router.post("/api/embed")
async def embed(request: Request) -> dict[str, Any]:
    """Embeddings of ``input`` (a text or a list), L2-normalised as Ollama's are.

    ``dimensions`` must be the model's own (the runtime's hidden size; a smaller one would need
    a model trained for truncation). ``truncate`` is accepted but cannot be applied: the runtime
    has no tokenizer API to cut a text at a token count, so a text longer than the model's
    context fails with the runtime's error whatever ``truncate`` says.
    """
    arrived = time.monotonic()
    data = await read_json(request)
    body = parse(EmbedRequest, data)
    served = _embedder(server_of(request).registry, body.model)
    note_model(request, served.id)
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    if body.dimensions is not None and body.dimensions <= 0:
        raise InvalidParameterError(f"dimensions must be positive, got {body.dimensions}")
    vectors: list[list[float]] = []
    if texts:
        timeout = server_of(request).config.request_timeout
        vectors = await until_disconnect(request, _embed(served, texts, normalize=True,
                                                         timeout=timeout))
    if body.dimensions is not None and vectors and body.dimensions != len(vectors[0]):
        raise InvalidParameterError(
            f"dimensions: {served.id!r} makes embeddings of {len(vectors[0])} dimensions and "
            f"cannot give {body.dimensions}; omit `dimensions` or give {len(vectors[0])}")
    count = await asyncio.to_thread(_count_tokens, served, texts) if texts else 0
    return dump(EmbedResponse(model=body.model, embeddings=vectors, load_duration=0,
                              total_duration=int((time.monotonic() - arrived) * 1e9),
                              prompt_eval_count=count))


@router.post("/api/embeddings")
async def embeddings(request: Request) -> dict[str, Any]:
    """The older embeddings call: one ``prompt``, one ``embedding``, not normalised (as
    Ollama's); an empty prompt gives an empty embedding."""
    data = await read_json(request)
    body = parse(EmbeddingsRequest, data)
    served = _embedder(server_of(request).registry, body.model)
    note_model(request, served.id)
    if not body.prompt:
        return dump(EmbeddingsResponse(embedding=[]))
    timeout = server_of(request).config.request_timeout
    [vector] = await until_disconnect(request, _embed(served, [body.prompt], normalize=False,
                                                      timeout=timeout))
    return dump(EmbeddingsResponse(embedding=vector))


# -- model management: not here ------------------------------------------------------------------

def _not_managed(registry: ModelRegistry, what: str) -> ModelManagementError:
    return ModelManagementError(
        f"{what} is not supported: rkllm serve does not download or manage models; it serves "
        "local .rkllm files given to `rkllm serve MODEL_PATH ...` (or listed in its --config "
        f"file). Served here: {', '.join(m.id + ':latest' for m in registry) or '(none)'}")


@router.post("/api/pull")
async def pull(request: Request) -> Response:
    """Pull: ``{"status": "success"}`` when the name is already served (clients such as Open
    WebUI pull a model before they use it, and this one is ready); otherwise 400 saying models
    are local files given to ``rkllm serve`` (see :class:`ModelManagementError`). Streamed as
    one NDJSON line unless ``stream: false``."""
    data = await read_json(request)
    body = parse(PullRequest, {**data, "model": data.get("model") or data.get("name") or ""})
    registry = server_of(request).registry
    if body.model.removesuffix(":latest") not in registry.models:
        raise _not_managed(registry, f"pulling {body.model!r}")
    note_model(request, body.model.removesuffix(":latest"))
    done = StatusResponse(status="success")
    if body.stream is False:
        return JSONResponse(dump(done))

    async def line() -> Any:
        yield ndjson(done)

    return ndjson_response(line())


_MANAGEMENT = {"/api/push": "pushing a model", "/api/create": "creating a model",
               "/api/copy": "copying a model", "/api/delete": "deleting a model"}


@router.post("/api/push")
@router.post("/api/create")
@router.post("/api/copy")
@router.delete("/api/delete")
async def manage(request: Request) -> Response:
    """Push, create, copy and delete: not supported (400), see :func:`pull`."""
    raise _not_managed(server_of(request).registry, _MANAGEMENT[request.url.path])
