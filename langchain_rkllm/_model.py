"""The loaded model behind every class of this package: construction, sharing and pickling.

``ChatRKLLM``, ``RKLLM``, ``RKLLMEmbeddings`` and ``RKLLMReranker`` take either a model file plus
typed settings, loaded once per process through :func:`rkllm_core.shared.shared_model` (objects
naming the same file and settings share one model, so one NPU copy), or ``client=``, an
``rkllm_core.RKLLM`` the caller already loaded. The native handle is never pickled: a copy
unpickles by asking for the shared model again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rkllm_core.backend import Backend, is_backend
from rkllm_core.errors import InvalidParameterError
from rkllm_core.params import SAMPLING_FIELDS, SamplingParams


class LoadedModel(BaseModel):
    """Fields and loading shared by the package's classes (a pydantic mixin)."""

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True,
                              protected_namespaces=())

    model_path: str | None = Field(
        default=None, alias="model",
        description="The model file: .rkllm on a board; .gguf or scripted on the host runtime.")
    library: str | None = Field(
        default=None, description="librkllmrt.so path, or 'host' for the host runtime; default: "
        "RKLLM_LIBRARY_PATH, then the system loader and the usual install locations.")
    runtime_version: str | None = Field(
        default=None, description="The runtime release (e.g. '1.2.3') when detection should not "
        "decide.")
    max_context_len: int | None = Field(
        default=None, description="Context size in tokens; at most what the model was "
        "converted with.")
    isolated: bool = Field(
        default=False, description="Run the runtime in a child process (rkllm_core."
        "IsolatedRKLLM): a crash in librkllmrt fails the calls in flight with "
        "RuntimeCrashedError and the next call starts a new process, instead of ending yours.")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="More rkllm_core.ModelParams fields, applied at load "
        "time (n_keep, skip_special_token, ...).")
    client: Any = Field(
        default=None, exclude=True,
        description="An already loaded rkllm_core.RKLLM (or IsolatedRKLLM) to use instead of "
        "loading one.")

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        # loaded after validation so that load errors keep their own types
        self._connect()

    def _load_params(self) -> dict[str, Any]:
        """The ModelParams this object loads with (None values left out)."""
        params: dict[str, Any] = {"max_context_len": self.max_context_len}
        for name in SAMPLING_FIELDS:
            if name in type(self).model_fields:
                params[name] = getattr(self, name)
        params.update(self.model_kwargs)
        return {k: v for k, v in params.items() if v is not None}

    def _connect(self) -> None:
        """Load (or share) the model, then let the subclass build on it."""
        if self.client is None:
            if not self.model_path:
                raise InvalidParameterError(
                    f"{type(self).__name__} needs model_path= (a .rkllm file; .gguf or scripted "
                    "with library='host') or client= (a loaded rkllm_core.RKLLM)")
            from rkllm_core.shared import shared_model

            self.client = shared_model(self.model_path, library=self.library,
                                       runtime_version=self.runtime_version,
                                       isolated=self.isolated, **self._load_params())
        elif not is_backend(self.client):
            raise InvalidParameterError(
                f"client must be an rkllm_core.RKLLM or IsolatedRKLLM, got "
                f"{type(self.client).__name__}")
        else:
            from rkllm_core.isolated import IsolatedRKLLM

            self.isolated = isinstance(self.client, IsolatedRKLLM)
            if self.model_path is None:
                self.model_path = str(self.client.params.model_path)
            info = self.client.runtime_info
            if self.library is None:  # what an unpickled copy loads with
                self.library = "host" if info.is_host_runtime else info.library_path
            if self.runtime_version is None:
                self.runtime_version = info.release
        self._on_connect()

    def _on_connect(self) -> None:
        """Subclasses build what they need over ``self.client`` here."""

    @property
    def _core(self) -> Backend:
        assert is_backend(self.client)
        client: Backend = self.client
        return client

    @property
    def _model_name(self) -> str:
        return Path(self.model_path or "rkllm").name

    def _sampling(self, overrides: dict[str, Any]) -> SamplingParams | None:
        """Per-call sampling: the loaded model's values with ``overrides`` on top."""
        wanted = {k: v for k, v in overrides.items() if k in SAMPLING_FIELDS and v is not None}
        if not wanted:
            return None
        loaded = {name: getattr(self._core.params, name) for name in SAMPLING_FIELDS}
        return SamplingParams(**{**loaded, **wanted})

    def __getstate__(self) -> dict[Any, Any]:
        # never pickle the native handle: the copy asks for the shared model again
        state = dict(super().__getstate__())
        fields = dict(state.get("__dict__", {}))
        fields["client"] = None
        state["__dict__"] = fields
        private = state.get("__pydantic_private__")
        if private:
            state["__pydantic_private__"] = {k: None for k in private}
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._connect()
