"""What ``rkllm serve`` serves and how: one :class:`ModelConfig` per model file, one
:class:`ServerConfig` for the process, from the command line or a TOML / JSON file.

A model is served under its file name without extension unless the config names it; its role
says which routes take it (``chat`` models answer chat, completions and embeddings; an
``embedding`` model only embeddings; a ``rerank`` model only reranking).

Example:
    >>> from rkllm_core.server.config import ModelConfig, ServerConfig
    >>> model = ModelConfig(path="/models/Qwen2.5-1.5B-Instruct_W8A8_RK3588.rkllm")
    >>> model.id
    'Qwen2.5-1.5B-Instruct_W8A8_RK3588'
    >>> ServerConfig(models=[model]).host
    '127.0.0.1'
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rkllm_core.errors import InvalidParameterError

Role = Literal["chat", "embedding", "rerank"]


class ModelConfig(BaseModel):
    """One served model: its file, the id clients name it by, its role and its settings.

    ``params`` are :class:`~rkllm_core.ModelParams` fields (``max_context_len``, ``top_k``,
    ``temperature``...), given once at load; ``mode``, ``preset``, ``tokenizer`` and
    ``tool_format`` go to the :class:`~rkllm_core.chat.ChatEngine`.

    Example:
        >>> from rkllm_core.server.config import ModelConfig
        >>> m = ModelConfig(path="/m/qwen3.rkllm", id="qwen3", params={"max_context_len": 4096})
        >>> m.id, m.role, m.params["max_context_len"]
        ('qwen3', 'chat', 4096)
    """

    model_config = ConfigDict(extra="forbid")

    path: str
    id: str = ""
    role: Role = "chat"
    library: str | None = None
    runtime_version: str | None = None
    isolated: bool | None = None
    mode: Literal["native", "tokens", "raw"] | None = None
    preset: str | None = None
    tokenizer: str | None = None
    tool_format: str | None = None
    #: yes/no token ids of a reranker (else found from its vocabulary or tokenizer)
    yes_token_id: int | None = None
    no_token_id: int | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _default_id(self) -> ModelConfig:
        if not self.id:
            self.id = Path(self.path).stem
        if ":" in self.id.removesuffix(":latest"):
            raise ValueError(f"model id {self.id!r}: ':' is kept for Ollama tags; choose an id "
                             "without it")
        self.id = self.id.removesuffix(":latest")
        return self


class ServerConfig(BaseModel):
    """The server: where it listens, who may call it, how much it queues, and its models.

    Example:
        >>> from rkllm_core.server.config import ModelConfig, ServerConfig
        >>> cfg = ServerConfig(models=[ModelConfig(path="/m/a.rkllm")], max_queue=4)
        >>> cfg.port, cfg.max_queue, cfg.api_key is None
        (8080, 4, True)
    """

    model_config = ConfigDict(extra="forbid")

    models: list[ModelConfig]
    host: str = "127.0.0.1"
    port: int = 8080
    #: Bearer key every route but ``/`` requires (``Authorization: Bearer KEY``); None: open.
    api_key: str | None = None
    #: Requests that may wait for one model beyond the one it runs; more answer 429.
    max_queue: int = Field(default=32, ge=0)
    #: Seconds one request's run may take (the runtime is aborted after it); None: no limit.
    request_timeout: float | None = Field(default=600.0, gt=0)
    #: Run every model's runtime in a child process (a crash fails one request, not the server).
    isolated: bool = False
    #: Origins allowed by CORS; empty: no CORS headers at all.
    cors_origins: list[str] = Field(default_factory=list)
    #: Largest request body accepted, in bytes (413 above it).
    max_request_bytes: int = Field(default=8 * 1024 * 1024, gt=0)

    @model_validator(mode="after")
    def _unique_ids(self) -> ServerConfig:
        if not self.models:
            raise ValueError("no model to serve: give at least one model file")
        ids = [m.id for m in self.models]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"two models share the id {', '.join(repeated)}: set `id` for one "
                             "of them in the config file")
        return self


def load_config(path: str | os.PathLike[str], **overrides: Any) -> ServerConfig:
    """A :class:`ServerConfig` from a ``.toml`` or ``.json`` file; ``overrides`` (the command
    line's options that were given) win over the file.

    Example:
        >>> import json, tempfile, pathlib
        >>> from rkllm_core.server.config import load_config
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "serve.json"
        >>> _ = f.write_text(json.dumps({"port": 9000, "models": [
        ...     {"path": "/m/qwen.rkllm", "id": "qwen", "preset": "qwen2"}]}))
        >>> cfg = load_config(f, port=8081)
        >>> cfg.port, cfg.models[0].preset
        (8081, 'qwen2')
    """
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidParameterError(f"cannot read the config file {file}: {exc}") from None
    if file.suffix == ".json":
        data = json.loads(text)
    elif file.suffix == ".toml":
        try:
            import tomllib  # type: ignore[import-not-found, unused-ignore]
        except ImportError:  # Python 3.10
            raise InvalidParameterError(
                "TOML config files need Python 3.11+; use a .json file") from None
        data = tomllib.loads(text)
    else:
        raise InvalidParameterError(f"config file {file}: give a .toml or .json file")
    if not isinstance(data, dict):
        raise InvalidParameterError(f"config file {file}: the top level must be a table/object")
    base = file.parent
    for model in data.get("models", []):
        # relative model and tokenizer paths are relative to the config file
        for key in ("path", "tokenizer"):
            if isinstance(model.get(key), str) and not Path(model[key]).is_absolute():
                model[key] = str(base / model[key])
    models = list(data.pop("models", [])) + list(overrides.pop("models", []))
    return ServerConfig(**{**data, **overrides, "models": models})
