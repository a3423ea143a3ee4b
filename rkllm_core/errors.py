"""The exceptions rkllm-py raises, all rooted at :class:`RKLLMError`.

Every message says what went wrong and what to do about it.

Example:
    >>> from rkllm_core.errors import RKLLMError, LibraryNotFoundError
    >>> issubclass(LibraryNotFoundError, RKLLMError)
    True
"""

from __future__ import annotations


class RKLLMError(Exception):
    """Base class of every error rkllm-py raises."""


class LibraryError(RKLLMError):
    """The runtime library could not be used."""


class LibraryNotFoundError(LibraryError):
    """No ``librkllmrt.so`` was found where we looked."""


class LibraryLoadError(LibraryError):
    """A library file exists but the system loader refused it."""


class LibraryArchitectureError(LibraryLoadError):
    """The library was built for another CPU architecture than this Python."""


class MissingSymbolError(LibraryError):
    """The library lacks functions that its runtime release must export."""


class RuntimeVersionError(RKLLMError):
    """The runtime release could not be determined, or does not match what was asked for."""


class ModelLoadError(RKLLMError):
    """``rkllm_init`` failed: the model could not be loaded."""


class HostBuildError(RKLLMError):
    """The host runtime could not be compiled."""


class InvalidParameterError(RKLLMError, ValueError):
    """An argument is out of range or of the wrong form."""


class UnsupportedFeatureError(RKLLMError):
    """The loaded runtime release lacks a feature; the message names the release that added it."""


class RunError(RKLLMError):
    """A run failed in the runtime (``RKLLM_RUN_ERROR`` or a non-zero return)."""

    def __init__(self, message: str, partial_text: str = "") -> None:
        super().__init__(message)
        self.partial_text = partial_text

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # keeps partial_text across processes
        return type(self), (str(self), self.partial_text)


class BusyError(RKLLMError):
    """The model is busy with another run and the wait timed out."""


class RunTimeoutError(BusyError, TimeoutError):
    """A run did not finish (or start) within its timeout; ``partial_text`` is what it produced."""

    def __init__(self, message: str, partial_text: str = "") -> None:
        super().__init__(message)
        self.partial_text = partial_text

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (str(self), self.partial_text)


class ModelWedgedError(RunTimeoutError):
    """The runtime did not return from ``rkllm_run`` after ``rkllm_abort`` (a wedged NPU).

    The model cannot run anything until that run returns: close it and load it again, or use
    :class:`rkllm_core.IsolatedRKLLM`, which kills and restarts a wedged runtime.
    """


class RuntimeCrashedError(RKLLMError):
    """The process running the runtime died (a crash inside ``librkllmrt`` or a kill).

    Raised by :class:`rkllm_core.IsolatedRKLLM`; its next call starts a fresh runtime process
    (with an empty KV cache). ``partial_text`` is what the run in flight had produced.
    """

    def __init__(self, message: str, partial_text: str = "") -> None:
        super().__init__(message)
        self.partial_text = partial_text

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (str(self), self.partial_text)


class ModelClosedError(RKLLMError):
    """The model was closed (or is closing): create a new :class:`rkllm_core.RKLLM`."""


class StaleKVCacheError(RKLLMError):
    """The KV cache no longer holds what the caller counted (cleared or trimmed behind its
    back); the run did not start. The chat engine replays the conversation when it sees it."""


class RemoteUnavailableError(RKLLMError):
    """The ``rkllm serve`` a :class:`rkllm_core.RemoteRKLLM` talks to cannot be reached, refused
    this client (no or a wrong API key), or is not an ``rkllm serve``; the message names the URL
    and what to check. ``partial_text`` is what a run in flight had produced when it was lost.
    """

    def __init__(self, message: str, partial_text: str = "") -> None:
        super().__init__(message)
        self.partial_text = partial_text

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (str(self), self.partial_text)
