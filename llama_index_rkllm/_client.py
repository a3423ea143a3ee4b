"""What the three public classes share about the loaded model they hold."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rkllm_core.backend import Backend, is_backend
from rkllm_core.errors import InvalidParameterError


def resolve_client(owner: str, client: Any, model_path: str | None, library: str | None,
                   runtime_version: str | None, params: dict[str, Any],
                   isolated: bool = False) -> tuple[Backend, str]:
    """(the loaded model, its file): ``client`` when given, else the process's shared model
    for ``model_path`` and these settings (in a child process with ``isolated``)."""
    if client is None:
        if not model_path:
            raise InvalidParameterError(f"{owner} needs model_path= (a .rkllm file) or client= "
                                        "(a loaded rkllm_core.RKLLM)")
        from rkllm_core.shared import shared_model

        params = {k: v for k, v in params.items() if v is not None}
        return shared_model(model_path, library=library, runtime_version=runtime_version,
                            isolated=isolated, **params), model_path
    if not is_backend(client):
        raise InvalidParameterError(
            f"client must be an rkllm_core.RKLLM or IsolatedRKLLM, got {type(client).__name__}")
    loaded: Backend = client
    return loaded, model_path or str(loaded.params.model_path)


class SharesLoadedModel:
    """A deep copy shares the loaded model: a native handle is never copied, and the process
    holds one model per file and settings anyway (:mod:`rkllm_core.shared`)."""

    if TYPE_CHECKING:
        def model_copy(self, *, update: Any = None, deep: bool = False) -> Any: ...

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Any:
        return self.model_copy()
