"""The loaded model behind every class of this package, in LangChain's conventions.

``ChatRKLLM``, ``RKLLM``, ``RKLLMEmbeddings`` and ``RKLLMReranker`` take the settings of
:class:`rkllm_core.settings.ModelSettings`: a model file, loaded once per process (objects
naming the same file and settings share one model, so one NPU copy), or ``client=``, an
``rkllm_core.RKLLM`` the caller already loaded. Here they gain LangChain's ``model`` alias.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, Field

from rkllm_core.backend import Backend, is_backend
from rkllm_core.settings import ModelSettings


class LoadedModel(ModelSettings):
    """:class:`~rkllm_core.settings.ModelSettings` with ``model`` for ``model_path``."""

    model_config = ConfigDict(populate_by_name=True)

    model_path: str | None = Field(
        default=None, alias="model",
        description=ModelSettings.model_fields["model_path"].description)

    @property
    def _core(self) -> Backend:
        assert is_backend(self.client)
        client: Backend = self.client
        return client

    @property
    def _model_name(self) -> str:
        return Path(self.model_path or "rkllm").name
