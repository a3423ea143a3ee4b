"""rkllm-py: run Rockchip RKLLM models from Python.

The public API is :class:`RKLLM` with its parameter models and results. Importing the package
is light; the model API (numpy and pydantic) loads when first used, and the runtime library is
opened when an RKLLM is created.

Example:
    >>> import tempfile, pathlib
    >>> from rkllm_core import RKLLM, SamplingParams
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hello from the host runtime."\\n')
    >>> with RKLLM(path, library="host", max_context_len=512) as llm:
    ...     print(llm.generate("Hi", sampling=SamplingParams(top_k=1)).text)
    Hello from the host runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rkllm_core.errors import (
    BusyError,
    HostBuildError,
    InvalidParameterError,
    LibraryArchitectureError,
    LibraryError,
    LibraryLoadError,
    LibraryNotFoundError,
    MissingSymbolError,
    ModelClosedError,
    ModelLoadError,
    ModelWedgedError,
    RemoteUnavailableError,
    RKLLMError,
    RunError,
    RuntimeCrashedError,
    RunTimeoutError,
    RuntimeVersionError,
    StaleKVCacheError,
    UnsupportedFeatureError,
)

# The model API pulls in numpy and pydantic (about 0.3 s); it is imported when first used, so
# `import rkllm_core`, the errors and the `rkllm` command start fast (PEP 562).
_LAZY = {
    "IsolatedRKLLM": "rkllm_core.isolated",
    "RemoteRKLLM": "rkllm_core.remote",  # needs httpx: imported only when asked for
    "RKLLM": "rkllm_core.model",
    "AsyncTextStream": "rkllm_core.model",
    "GenerationResult": "rkllm_core.model",
    "ImageInput": "rkllm_core.model",
    "PerfStats": "rkllm_core.model",
    "RuntimeInfo": "rkllm_core.model",
    "StreamChunk": "rkllm_core.model",
    "TextStream": "rkllm_core.model",
    "ExtendParams": "rkllm_core.params",
    "ModelParams": "rkllm_core.params",
    "SamplingParams": "rkllm_core.params",
}

if TYPE_CHECKING:
    from rkllm_core.isolated import IsolatedRKLLM
    from rkllm_core.model import (
        RKLLM,
        AsyncTextStream,
        GenerationResult,
        ImageInput,
        PerfStats,
        RuntimeInfo,
        StreamChunk,
        TextStream,
    )
    from rkllm_core.params import ExtendParams, ModelParams, SamplingParams
    from rkllm_core.remote import RemoteRKLLM


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rkllm_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "RKLLM",
    "AsyncTextStream",
    "BusyError",
    "ExtendParams",
    "GenerationResult",
    "HostBuildError",
    "ImageInput",
    "InvalidParameterError",
    "IsolatedRKLLM",
    "LibraryArchitectureError",
    "LibraryError",
    "LibraryLoadError",
    "LibraryNotFoundError",
    "MissingSymbolError",
    "ModelClosedError",
    "ModelLoadError",
    "ModelParams",
    "ModelWedgedError",
    "PerfStats",
    "RKLLMError",
    "RemoteRKLLM",
    "RemoteUnavailableError",
    "RunError",
    "RunTimeoutError",
    "RuntimeCrashedError",
    "RuntimeInfo",
    "RuntimeVersionError",
    "SamplingParams",
    "StaleKVCacheError",
    "StreamChunk",
    "TextStream",
    "UnsupportedFeatureError",
]
