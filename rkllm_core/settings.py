"""The model settings every adapter class accepts, declared once, and the two steps they drive.

LangChain's ``ChatRKLLM``, ``RKLLM``, ``RKLLMEmbeddings``, ``RKLLMReranker`` and LlamaIndex's
``RKLLM``, ``RKLLMEmbedding``, ``RKLLMRerank`` inherit :class:`ModelSettings` (which model, where
it runs, how it loads) and the generating ones :class:`SamplingDefaults` too (the sampling each
run starts from). Two functions turn them into what a call needs: :func:`load_backend` (the
loaded model; the one place a backend is chosen) and :func:`run_sampling` (the run's
:class:`~rkllm_core.params.SamplingParams`). The frameworks' own conventions (LangChain's
``model`` alias, LlamaIndex's ``metadata``...) stay in the adapters.

Example:
    >>> import tempfile, pathlib
    >>> from rkllm_core.settings import ModelSettings, SamplingDefaults
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi."\\n')
    >>> class Assistant(ModelSettings, SamplingDefaults):
    ...     "An adapter class: settings in, a loaded model in ``client``."
    >>> bot = Assistant(model_path=str(path), library="host", max_context_len=512, top_k=1)
    >>> bot.client.params.top_k, bot.client.generate("Hello").text
    (1, 'Hi.')
    >>> Assistant(model_path=str(path), library="host", max_context_len=512,
    ...           top_k=1).client is bot.client  # one loaded model per file and settings
    True
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic.fields import FieldInfo

from rkllm_core.backend import Backend, is_backend
from rkllm_core.errors import InvalidParameterError
from rkllm_core.params import SAMPLING_FIELDS, SamplingParams


def _unless_given(name: str) -> Any:
    """``SamplingParams``'s field ``name`` (description and bounds) with the default None."""
    return FieldInfo.merge_field_infos(SamplingParams.model_fields[name], default=None)


class SamplingDefaults(BaseModel):
    """The sampling every run of an adapter starts from: :class:`~rkllm_core.params.
    SamplingParams`'s fields, each None (the model's own value) unless given.

    The values given are load-time settings (on every runtime release), and each call may
    override them (per-run sampling needs runtime 1.3.0). Values are checked on construction.

    Example:
        >>> from rkllm_core.settings import SamplingDefaults
        >>> SamplingDefaults(temperature=0.2, top_k=1).given()
        {'top_k': 1, 'temperature': 0.2}
        >>> SamplingDefaults(top_p=1.5)
        Traceback (most recent call last):
        ...
        pydantic_core._pydantic_core.ValidationError: 1 validation error for SamplingDefaults
        top_p
          Input should be less than or equal to 1 ...
    """

    top_k: int | None = _unless_given("top_k")
    top_p: float | None = _unless_given("top_p")
    temperature: float | None = _unless_given("temperature")
    repeat_penalty: float | None = _unless_given("repeat_penalty")
    frequency_penalty: float | None = _unless_given("frequency_penalty")
    presence_penalty: float | None = _unless_given("presence_penalty")
    mirostat: Literal[0, 1, 2] | None = _unless_given("mirostat")
    mirostat_tau: float | None = _unless_given("mirostat_tau")
    mirostat_eta: float | None = _unless_given("mirostat_eta")

    def given(self) -> dict[str, Any]:
        """The sampling fields that were set (not None), by name.

        Example:
            >>> from rkllm_core.settings import SamplingDefaults
            >>> SamplingDefaults().given()
            {}
        """
        values = {name: getattr(self, name) for name in SAMPLING_FIELDS}
        return {name: value for name, value in values.items() if value is not None}


class ModelSettings(BaseModel):
    """Which model an adapter object runs, where and how it loads: a pydantic mixin.

    On construction the object gets its model in ``client``: the one given, else the process's
    shared model for ``model_path`` and these settings (:func:`load_backend`). A subclass builds
    on it in ``_on_connect``. With ``client=`` given, ``model_path``, ``library``,
    ``runtime_version`` and ``isolated`` are read back from it, so a copy made from the
    settings alone (unpickling) loads the same model. Copies never carry the native handle: a
    deep copy shares the loaded model, an unpickled one asks for the shared model again.

    Example:
        >>> import tempfile, pathlib
        >>> from rkllm_core import RKLLM
        >>> from rkllm_core.settings import ModelSettings
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\n')
        >>> with RKLLM(path, library="host", max_context_len=512) as core:
        ...     given = ModelSettings(client=core)
        ...     given.client is core, given.library, given.runtime_version, given.isolated
        (True, 'host', '1.3.0', False)
        >>> ModelSettings(library="host")
        Traceback (most recent call last):
        ...
        rkllm_core.errors.InvalidParameterError: ModelSettings needs model_path= ...
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    model_path: str | None = Field(
        default=None,
        description="The model file: .rkllm on a board; .gguf or scripted on the host runtime.")
    library: str | None = Field(
        default=None, description="librkllmrt.so path, or 'host' for the host runtime; default: "
        "RKLLM_LIBRARY_PATH, then the system loader and the usual install locations.")
    runtime_version: str | None = Field(
        default=None, description="The runtime release (e.g. '1.2.3') when detection should not "
        "decide.")
    max_context_len: int | None = Field(
        default=None, gt=0, description="Context size in tokens; at most what the model was "
        "converted with.")
    isolated: bool = Field(
        default=False, description="Run the runtime in a child process (rkllm_core."
        "IsolatedRKLLM): a crash in librkllmrt fails the calls in flight with "
        "RuntimeCrashedError and the next call starts a new process, instead of ending yours.")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="More rkllm_core.ModelParams fields, applied at load "
        "time (n_keep, skip_special_token, ...).")
    base_url: str | None = Field(
        default=None, description="A board's `rkllm serve` (http://board:8080): run on the model "
        "it serves (rkllm_core.RemoteRKLLM) instead of loading one here; model_path then names "
        "the served model's id (None: the server's only chat model). Needs rkllm-py[remote].")
    api_key: SecretStr | None = Field(
        default=None, exclude=True, description="The server's API key (its --api-key), sent as "
        "a Bearer token with base_url; default: RKLLM_API_KEY.")
    client: Any = Field(
        default=None, exclude=True,
        description="An already loaded rkllm_core.RKLLM (or IsolatedRKLLM) to use instead of "
        "loading one.")

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        # loaded after validation, so that load errors keep their own types
        self._connect()

    def _connect(self) -> None:
        """Load (or share, or adopt) the model, then let the subclass build on it."""
        given = self.client is not None
        self.client = load_backend(self)
        if given and _is_remote(self.client):
            self.base_url = self.client.base_url
            self.model_path = self.client.model
            self.isolated = False
        elif given:
            from rkllm_core.isolated import IsolatedRKLLM

            info = self.client.runtime_info
            self.isolated = isinstance(self.client, IsolatedRKLLM)
            if self.model_path is None:
                self.model_path = str(self.client.params.model_path)
            if self.library is None:
                self.library = "host" if info.is_host_runtime else info.library_path
            if self.runtime_version is None:
                self.runtime_version = info.release
        self._on_connect()

    def _on_connect(self) -> None:
        """Subclasses build what they need over ``self.client`` here."""

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Any:
        # a native handle cannot be copied, and the process holds one model per file and
        # settings anyway: a deep copy shares the loaded model
        return self.model_copy()

    def __getstate__(self) -> dict[Any, Any]:
        # never pickle the native handle: the copy asks for the shared model again. pydantic's
        # own state, copied: LlamaIndex's __getstate__ deletes what it cannot pickle from the
        # live object (its client and engine included)
        state = dict(BaseModel.__getstate__(self))
        state["__dict__"] = {**state.get("__dict__", {}), "client": None}
        private = state.get("__pydantic_private__")
        if private:
            state["__pydantic_private__"] = dict.fromkeys(private)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        if self.client is None:  # LlamaIndex's __setstate__ constructs, and so connects
            self._connect()


def model_params(settings: ModelSettings) -> dict[str, Any]:
    """The :class:`~rkllm_core.params.ModelParams` fields ``settings`` load with: the context
    size, the sampling defaults (when the class has them) and ``model_kwargs``; None left out.

    Example:
        >>> from rkllm_core.settings import ModelSettings, SamplingDefaults, model_params
        >>> class Chat(ModelSettings, SamplingDefaults):
        ...     "Settings of a chat model."
        >>> settings = Chat.model_construct(max_context_len=1024, top_k=1,  # loads nothing
        ...                                 model_kwargs={"n_keep": 8})
        >>> model_params(settings)
        {'max_context_len': 1024, 'top_k': 1, 'n_keep': 8}
    """
    params: dict[str, Any] = {"max_context_len": settings.max_context_len}
    if isinstance(settings, SamplingDefaults):
        params.update(settings.given())
    params.update(settings.model_kwargs)
    return {name: value for name, value in params.items() if value is not None}


def load_backend(settings: ModelSettings, model_path: str | None = None) -> Backend:
    """The model ``settings`` name: their ``client`` when given, else the process's shared model
    (:func:`rkllm_core.shared.shared_model`) for their file and settings, in this process or,
    with ``isolated``, in a child. The one place an adapter's backend is chosen.

    ``model_path`` asks for another file with the same settings (LangChain's per-call
    ``model=``).

    Example:
        >>> import tempfile, pathlib
        >>> from rkllm_core import IsolatedRKLLM
        >>> from rkllm_core.settings import ModelSettings, load_backend
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi."\\n')
        >>> here = ModelSettings(model_path=str(path), library="host", max_context_len=512)
        >>> load_backend(here) is here.client
        True
        >>> there = ModelSettings(model_path=str(path), library="host", max_context_len=512,
        ...                       isolated=True)
        >>> isinstance(there.client, IsolatedRKLLM), there.client.generate("Hello").text
        (True, 'Hi.')
        >>> load_backend(here, model_path=str(path)) is here.client  # a file: shared again
        True
    """
    if model_path is None and settings.client is not None:
        if not is_backend(settings.client):
            raise InvalidParameterError(
                f"client must be an rkllm_core.RKLLM or IsolatedRKLLM, got "
                f"{type(settings.client).__name__}")
        given: Backend = settings.client
        return given
    path = model_path or settings.model_path
    if settings.base_url is not None:
        return _remote_backend(settings, path)
    if not path:
        raise InvalidParameterError(
            f"{type(settings).__name__} needs model_path= (a .rkllm file; .gguf or scripted "
            "with library='host') or client= (a loaded rkllm_core.RKLLM)")
    from rkllm_core.shared import shared_model

    return shared_model(path, library=settings.library,
                        runtime_version=settings.runtime_version, isolated=settings.isolated,
                        **model_params(settings))


def _is_remote(model: Any) -> bool:
    # without importing rkllm_core.remote (and so httpx) when nothing remote is in use
    remote = sys.modules.get("rkllm_core.remote")
    return remote is not None and isinstance(model, remote.RemoteRKLLM)


def _remote_backend(settings: ModelSettings, model: str | None) -> Backend:
    """The model a board's ``rkllm serve`` at ``settings.base_url`` serves; the settings that
    choose how a model loads belong to that server, so giving them here is an error."""
    loading = [name for name in ("library", "runtime_version", "max_context_len")
               if getattr(settings, name) is not None]
    loading += ["isolated"] if settings.isolated else []
    loading += ["model_kwargs"] if settings.model_kwargs else []
    if loading:
        raise InvalidParameterError(
            f"{', '.join(loading)} cannot be set with base_url: the server at "
            f"{settings.base_url} loads the model (set them in its `rkllm serve` options or "
            "config file), or drop base_url to load the model here")
    from rkllm_core.shared import shared_remote

    key = settings.api_key.get_secret_value() if settings.api_key is not None else \
        os.environ.get("RKLLM_API_KEY")
    return shared_remote(settings.base_url or "", model, api_key=key)


def run_sampling(defaults: SamplingDefaults, model: Backend,
                 overrides: Mapping[str, Any] | None = None) -> SamplingParams | None:
    """The sampling of one run on ``model``: its loaded values, then the ``defaults`` given,
    then the call's ``overrides`` (other keys and None values ignored). None when that is the
    model's own sampling, so runs on any runtime release take it; a run with other values needs
    runtime 1.3.0 (older ones raise :class:`~rkllm_core.errors.UnsupportedFeatureError`).

    Example:
        >>> import tempfile, pathlib
        >>> from rkllm_core import RKLLM
        >>> from rkllm_core.settings import SamplingDefaults, run_sampling
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\n')
        >>> with RKLLM(path, library="host", max_context_len=512, temperature=0.5) as core:
        ...     defaults = SamplingDefaults(temperature=0.5)
        ...     same = run_sampling(defaults, core, {"temperature": None, "max_tokens": 9})
        ...     greedy = run_sampling(defaults, core, {"top_k": 1})
        >>> same is None, greedy.top_k, greedy.temperature
        (True, 1, 0.5)
    """
    loaded: SamplingParams = model.params.sampling
    wanted = {**defaults.given(), **{name: value for name, value in (overrides or {}).items()
                                     if name in SAMPLING_FIELDS and value is not None}}
    if all(getattr(loaded, name) == value for name, value in wanted.items()):
        return None
    return SamplingParams(**{**loaded.model_dump(), **wanted})
