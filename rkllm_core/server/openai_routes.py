"""The OpenAI-compatible routes of ``rkllm serve`` (``/v1/...``), with the request and response
types of the ``openai`` package: the models, embeddings and reranking here; chat completions
in :mod:`~rkllm_core.server.openai_chat`, the Responses API in
:mod:`~rkllm_core.server.openai_responses`, text completions in
:mod:`~rkllm_core.server.openai_completions`.

``POST /v1/rerank`` (also ``/rerank``) is the Jina / Cohere-style route that llama.cpp's server
and Open WebUI use: ``{model, query, documents, top_n}`` in, ``{results: [{index,
relevance_score}]}`` out, best first, for models of the ``rerank`` role.

Example:
    >>> import tempfile, pathlib
    >>> from fastapi.testclient import TestClient
    >>> from rkllm_core.server import ModelConfig, ServerConfig, create_app
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\nhidden_size = 8\\ndefault reply "Hi."\\n')
    >>> config = ServerConfig(models=[ModelConfig(path=str(path), library="host",
    ...                                           params={"max_context_len": 512})])
    >>> with TestClient(create_app(config)) as client:
    ...     listed = client.get("/v1/models").json()
    ...     vectors = client.post("/v1/embeddings", json={"model": "tiny",
    ...                                                   "input": ["a cat", "a dog"]}).json()
    >>> [m["id"] for m in listed["data"]], listed["object"]
    (['tiny'], 'list')
    >>> len(vectors["data"]), len(vectors["data"][0]["embedding"])
    (2, 8)
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from rkllm_core.errors import InvalidParameterError
from rkllm_core.server import openai_chat, openai_completions, openai_responses
from rkllm_core.server.app import note_model, server_of
from rkllm_core.server.openai_convert import dump, new_id, validate
from rkllm_core.server.registry import ServedModel, WrongRoleError
from rkllm_core.server.wire import parse, read_json, until_disconnect

router = APIRouter()
router.include_router(openai_chat.router)
router.include_router(openai_responses.router)
router.include_router(openai_completions.router)


def _model(served: ServedModel) -> dict[str, Any]:
    from openai.types import Model

    return dump(Model(id=served.id, created=served.created, object="model",
                      owned_by="rkllm-py"))


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """Every served model, as OpenAI's ``GET /v1/models`` lists them."""
    return {"object": "list", "data": [_model(m) for m in server_of(request).registry]}


@router.get("/v1/models/{model}")
async def retrieve_model(request: Request, model: str) -> dict[str, Any]:
    """One served model (``GET /v1/models/{model}``); 404 for a model not served here."""
    served = server_of(request).registry.get(model)
    note_model(request, served.id)
    return _model(served)


# -- embeddings ------------------------------------------------------------------------------------

def embedding_texts(value: Any) -> list[str]:
    """The texts of an embeddings ``input``: one string or a list of strings; token ids (a list
    of ints, or of lists of ints) are refused: the runtime embeds text here.

    Example:
        >>> from rkllm_core.server.openai_routes import embedding_texts
        >>> embedding_texts("a cat"), embedding_texts(["a", "b"])
        (['a cat'], ['a', 'b'])
    """
    if value is None:
        raise InvalidParameterError("input is required: a string or a list of strings")
    texts = [value] if isinstance(value, str) else list(value) if isinstance(value, list) \
        else [value]
    if not texts:
        raise InvalidParameterError("input is empty: give a string or a list of strings")
    if not all(isinstance(t, str) for t in texts):
        raise InvalidParameterError(
            "input: token ids are not supported for embeddings; send the text (a string or a "
            "list of strings)")
    return texts


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> dict[str, Any]:
    """OpenAI's embeddings, from a ``chat`` or ``embedding`` model (float or base64)."""
    from openai.types import CreateEmbeddingResponse, Embedding
    from openai.types.create_embedding_response import Usage
    from openai.types.embedding_create_params import EmbeddingCreateParams

    body = await read_json(request)
    texts = embedding_texts(body.get("input"))
    params = validate(EmbeddingCreateParams, {"model": "", **body, "input": texts})
    state = server_of(request)
    served = state.registry.get(params["model"])
    if served.config.role not in ("chat", "embedding"):
        raise WrongRoleError(f"model {served.id!r} is a {served.config.role} model and makes "
                             "no embeddings; name a chat or embedding model")
    note_model(request, served.id)

    async def embed() -> Any:
        return await served.embed(texts, timeout=state.config.request_timeout)

    vectors = await until_disconnect(request, embed())
    wanted = params.get("dimensions")
    if wanted is not None and wanted != vectors.shape[1]:
        raise InvalidParameterError(
            f"dimensions: model {served.id!r} makes {vectors.shape[1]}-dimensional embeddings; "
            "leave dimensions unset or give that number")
    as_base64 = params.get("encoding_format") == "base64"
    data = [Embedding(object="embedding", index=i,
                      embedding=[] if as_base64 else [float(x) for x in v])
            for i, v in enumerate(vectors)]
    body = dump(CreateEmbeddingResponse(object="list", data=data, model=served.id,
                                        usage=Usage(prompt_tokens=0, total_tokens=0)))
    if as_base64:  # little-endian float32, as OpenAI sends and its client decodes
        for item, vector in zip(body["data"], vectors, strict=True):
            item["embedding"] = base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return body


# -- reranking -------------------------------------------------------------------------------------

class RerankRequest(BaseModel):
    """The body of ``POST /v1/rerank`` (Jina / Cohere / llama.cpp style); documents are strings
    or ``{"text": ...}`` objects. Unknown fields are ignored.

    Example:
        >>> from rkllm_core.server.openai_routes import RerankRequest
        >>> r = RerankRequest(query="capital?", documents=["Paris", {"text": "Bananas"}], top_n=1)
        >>> r.texts(), r.top_n
        (['Paris', 'Bananas'], 1)
    """

    model_config = ConfigDict(extra="ignore")

    model: str = ""
    query: str
    documents: list[str | dict[str, Any]]
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    #: what the reranker is asked to judge (Qwen3-Reranker's instruction), else its default
    instruction: str | None = None

    def texts(self) -> list[str]:
        """The documents' texts."""
        out = []
        for i, doc in enumerate(self.documents):
            text = doc if isinstance(doc, str) else doc.get("text")
            if not isinstance(text, str):
                raise InvalidParameterError(
                    f"documents[{i}]: a document is a string or an object with a `text` string")
            out.append(text)
        return out


class RerankDocument(BaseModel):
    """A document echoed in a rerank result (``return_documents``)."""

    text: str


class RerankResult(BaseModel):
    """One document's relevance (0-1) and its index in the request's ``documents``."""

    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankResponse(BaseModel):
    """The answer of ``POST /v1/rerank``: results sorted by relevance, best first."""

    id: str
    object: str = "list"
    model: str
    results: list[RerankResult]
    usage: dict[str, int] = Field(default_factory=lambda: {"prompt_tokens": 0,
                                                           "total_tokens": 0})


@router.post("/v1/rerank")
@router.post("/rerank")
async def rerank(request: Request) -> dict[str, Any]:
    """Relevance of each document to the query, best first, from a ``rerank`` model."""
    ask = parse(RerankRequest, await read_json(request))
    texts = ask.texts()
    state = server_of(request)
    served = state.registry.get(ask.model, "rerank")
    note_model(request, served.id)
    cfg = served.config

    async def scores() -> list[float]:
        if not texts:
            return []
        return await served.rerank(
            ask.query, texts, instruction=ask.instruction, yes_token_id=cfg.yes_token_id,
            no_token_id=cfg.no_token_id, tokenizer=cfg.tokenizer,
            timeout=state.config.request_timeout)

    found = await until_disconnect(request, scores())
    ranked = sorted(range(len(texts)), key=lambda i: -found[i])[:ask.top_n]
    results = [RerankResult(index=i, relevance_score=found[i],
                            document=RerankDocument(text=texts[i]) if ask.return_documents
                            else None) for i in ranked]
    return RerankResponse(id=new_id("rerank-"), model=served.id,
                          results=results).model_dump(exclude_none=True)
