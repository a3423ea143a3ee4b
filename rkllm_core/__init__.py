"""rkllm-py: run Rockchip RKLLM models from Python.

The public API is :class:`RKLLM` with its parameter models and results; everything here imports
only numpy and pydantic (the runtime library is opened when an RKLLM is created).

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

from rkllm_core.errors import (
    AbortedError,
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
    RKLLMError,
    RunError,
    RuntimeCrashedError,
    RunTimeoutError,
    RuntimeVersionError,
    UnsupportedFeatureError,
)
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

__all__ = [
    "RKLLM",
    "AbortedError",
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
    "RunError",
    "RunTimeoutError",
    "RuntimeCrashedError",
    "RuntimeInfo",
    "RuntimeVersionError",
    "SamplingParams",
    "StreamChunk",
    "TextStream",
    "UnsupportedFeatureError",
]
