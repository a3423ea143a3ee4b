"""One owner for one ``LLMHandle``: init with typed errors, callbacks kept alive, destroy once.

This is the thin owning layer over :mod:`rkllm_core.library`; :class:`rkllm_core.RKLLM` builds
streaming, async and the rest on it.

Example:
    >>> import ctypes
    >>> from rkllm_core.library import load_library
    >>> from rkllm_core.native import NativeModel
    >>> lib = load_library("host", runtime_version="1.3.0")
    >>> param = lib.create_default_param()
    >>> param.model_path = b"/nonexistent.rkllm"
    >>> NativeModel(lib, param, lambda result, userdata, state: 0)
    Traceback (most recent call last):
    ...
    rkllm_core.errors.ModelLoadError: model file /nonexistent.rkllm does not exist: ...
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rkllm_core.errors import ModelLoadError, RKLLMError
from rkllm_core.library import RuntimeLibrary

logger = logging.getLogger("rkllm_core")

#: ``(address of the RKLLMResult or None, userdata, state) -> 0 | 1 | 2``; called from the
#: runtime.
ResultHandler = Callable[[int | None, int | None, int], int]


@contextlib.contextmanager
def capture_stderr() -> Iterator[list[bytes]]:
    """Collect what native code writes to fd 2 while still showing it (a tee).

    The runtime logs its reasons (``E rkllm: ...``) on stderr, not through its return value.
    """
    chunks: list[bytes] = []
    try:
        sys.stderr.flush()
        read_fd, write_fd = os.pipe()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters)
        yield chunks
        return

    def pump() -> None:
        while True:
            data = os.read(read_fd, 65536)
            if not data:
                return
            chunks.append(data)
            with contextlib.suppress(OSError):
                os.write(saved, data)

    reader = threading.Thread(target=pump, name="rkllm-stderr", daemon=True)
    reader.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield chunks
    finally:
        os.dup2(saved, 2)  # closes the pipe's last write end: the reader sees EOF
        reader.join(timeout=5)
        os.close(read_fd)
        os.close(saved)


_HINTS = (
    ("max_context", "max_context_len is larger than the model was converted for: lower it to "
                    "the max_context_limit the runtime printed"),
    ("magic", "the model was converted by another rkllm-toolkit release or for another platform "
              "(RK3588 vs RK3576 ...): convert it with the toolkit release matching this runtime"),
    ("driver", "the NPU driver is older than this runtime needs: update it to 0.9.8 or newer "
               "(cat /sys/kernel/debug/rknpu/version)"),
    ("malloc", "not enough (NPU) memory: close other models, choose a smaller model, or give "
               "each model its own base_domain_id"),
    ("memory", "not enough memory: close other models or choose a smaller model"),
    ("tokenizer", "the model has no built-in tokenizer: pass a tokenizer callback (1.3.0)"),
)

_GENERAL_HINT = (
    "likely causes: an NPU driver older than 0.9.8, max_context_len above the model's limit, a "
    "model converted for another platform or runtime release, or not enough memory"
)


def init_failure_message(model_path: str, log: str) -> str:
    """The ModelLoadError text: the runtime's own error lines plus what usually fixes them."""
    errors = [line.strip() for line in log.splitlines() if line.startswith("E ")]
    hints = [hint for key, hint in _HINTS if key in log.lower()]
    text = f"rkllm_init failed for {model_path}"
    if errors:
        text += ": " + " | ".join(errors)
    return text + ". " + ("; ".join(hints) if hints else _GENERAL_HINT) + "."


def make_result_callback(lib: RuntimeLibrary, handler: ResultHandler,
                         errors: list[BaseException]) -> Any:
    """Wrap ``handler`` as the family's ``LLMResultCallback``.

    The handler gets the result's address as an int (``None`` for NULL), not a ctypes pointer:
    building a pointer object costs time on every token, and the handler reads the fields it
    needs itself (``ctypes.cast(result, POINTER(RKLLMResult))`` gives the struct). The wrapper
    always returns a defined int (0 unless the handler asks for 1 or 2): a ctypes callback that
    raises or returns None hands the runtime garbage, which it may read as "pause". Exceptions
    are appended to ``errors`` for the caller to re-raise.
    """
    family_type = lib.family.result_callback
    returns_int = lib.family.callback_returns_int

    def trampoline(result: int | None, userdata: int | None, state: int) -> int | None:
        code = 0
        try:
            value = handler(result, userdata, state)
            code = value if value in (1, 2) else 0
        except BaseException as exc:
            errors.append(exc)
        return code if returns_int else None

    # the same C signature with the result as a plain address
    by_address = ctypes.CFUNCTYPE(family_type._restype_, ctypes.c_void_p, ctypes.c_void_p,
                                  ctypes.c_int)(trampoline)
    # cast keeps by_address (which owns the trampoline) alive in the object it returns
    return ctypes.cast(by_address, family_type)


class NativeModel:
    """Owns one initialised model handle and everything C may still touch.

    ``close()`` is idempotent; the ctypes callback objects live as long as this object.
    """

    def __init__(
        self,
        lib: RuntimeLibrary,
        param: Any,
        handler: ResultHandler,
        *,
        tokenizer_callback: Any = None,
    ) -> None:
        self.lib = lib
        self.callback_errors: list[BaseException] = []
        self.handle = ctypes.c_void_p()
        self._closed = False
        self._param = param  # keeps model_path and image tag strings alive
        model_path = param.model_path.decode() if param.model_path else ""
        if not model_path or not Path(model_path).is_file():
            self._closed = True
            raise ModelLoadError(
                f"model file {model_path or '(empty path)'} does not exist: check the path "
                "(models are .rkllm files converted with rkllm-toolkit; the host runtime also "
                "takes .gguf and scripted models)"
            )
        self._result_cb = make_result_callback(lib, handler, self.callback_errors)
        init_cb: Any = self._result_cb
        if lib.family.capabilities.init_callbacks:
            callbacks = lib.family.struct("RKLLMCallback")()
            callbacks.result_callback = self._result_cb
            if tokenizer_callback is not None:
                callbacks.tokenizer_callback = tokenizer_callback
            self._callbacks = callbacks  # the runtime keeps this pointer: it must outlive us
            self._tokenizer_callback = tokenizer_callback  # the runtime calls it: keep it alive
            init_cb = ctypes.byref(callbacks)
        with capture_stderr() as log:
            code = lib.init(ctypes.byref(self.handle), ctypes.byref(param), init_cb)
        text = b"".join(log).decode("utf-8", "replace")
        for line in text.splitlines():
            logger.debug("runtime: %s", line)
        # init can report success and leave the handle NULL (rknn-llm issue 156)
        if code != 0 or not self.handle.value:
            self._closed = True
            raise ModelLoadError(init_failure_message(model_path, text))
        self.init_log = text

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (or init failed)."""
        return self._closed

    def close(self) -> None:
        """Destroy the handle once; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        if self.lib.is_running(self.handle):
            self.lib.abort(self.handle)
        code = self.lib.destroy(self.handle)
        self.handle = ctypes.c_void_p()
        if code != 0:
            raise RKLLMError(f"rkllm_destroy returned {code}")

    def __enter__(self) -> NativeModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
