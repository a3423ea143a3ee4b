"""One loaded model per file and settings per process, shared by every adapter object.

An NPU holds a model once; loading it twice costs memory the board may not have (and a failed
second init can crash runtime 1.3.0, rknn-llm issue 522). ``ChatRKLLM``, ``RKLLM`` (LLM) and the
embeddings classes of both adapters ask here, so objects that name the same file and settings
share one :class:`~rkllm_core.RKLLM`. A model is freed when no object uses it any more.
:func:`shared_remote` does the same for a model served by ``rkllm serve``: objects naming the
same server, model and key share one :class:`~rkllm_core.RemoteRKLLM` (one client, so one KV
cache they take turns on, as they would in process).

Example:
    >>> import tempfile, pathlib
    >>> from rkllm_core.shared import shared_model
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\n')
    >>> a = shared_model(path, library="host", max_context_len=512)
    >>> b = shared_model(str(path), library="host", max_context_len=512)
    >>> a is b
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import weakref
from pathlib import Path
from typing import Any

from rkllm_core.backend import Backend

_models: weakref.WeakValueDictionary[str, Backend] = weakref.WeakValueDictionary()
_lock = threading.Lock()


def _key(model_path: str | os.PathLike[str], library: Any, runtime_version: str | None,
         params: dict[str, Any]) -> str:
    path = str(Path(model_path).expanduser().resolve())
    lib = library if isinstance(library, str) or library is None else str(library)
    return json.dumps([path, lib, runtime_version, params], sort_keys=True, default=str)


def shared_model(model_path: str | os.PathLike[str], *, library: Any = None,
                 runtime_version: str | None = None, isolated: bool = False,
                 **params: Any) -> Backend:
    """The process's :class:`~rkllm_core.RKLLM` for this file and these settings, or with
    ``isolated=True`` its :class:`~rkllm_core.IsolatedRKLLM` (the runtime in a child process:
    a crash in it fails the calls in flight and the next call starts a new one).

    ``params`` are :class:`~rkllm_core.ModelParams` fields (``max_context_len``, ``top_k``...)
    and ``extend`` (an :class:`~rkllm_core.ExtendParams`).
    """
    clean = {k: v for k, v in params.items() if v is not None}
    key = _key(model_path, library, runtime_version,
               {k: (v.model_dump() if hasattr(v, "model_dump") else v) for k, v in clean.items()}
               | {"isolated": bool(isolated)})
    with _lock:
        model = _models.get(key)
        if model is None or model.closed:
            model = _load(model_path, library, runtime_version, bool(isolated), clean)
            _models[key] = model
        return model


def _load(model_path: str | os.PathLike[str], library: Any, runtime_version: str | None,
          isolated: bool, params: dict[str, Any]) -> Backend:
    if isolated:
        from rkllm_core.isolated import IsolatedRKLLM

        return IsolatedRKLLM(model_path, library=library, runtime_version=runtime_version,
                             **params)
    from rkllm_core.model import RKLLM

    return RKLLM(model_path, library=library, runtime_version=runtime_version, **params)


def shared_remote(base_url: str, model: str | None = None, *, api_key: str | None = None,
                  timeout: float | None = None) -> Backend:
    """The process's :class:`~rkllm_core.RemoteRKLLM` for this server, model and key: the
    model served by ``rkllm serve`` at ``base_url`` (needs ``pip install "rkllm-py[remote]"``).

    Example:
        >>> import tempfile, pathlib
        >>> from rkllm_core.server import ModelConfig, ServerConfig
        >>> from rkllm_core.server import serving
        >>> from rkllm_core.shared import shared_remote
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi."\\n')
        >>> config = ServerConfig(models=[ModelConfig(path=str(path), library="host",
        ...                                           params={"max_context_len": 512})])
        >>> with serving(config) as url:
        ...     a = shared_remote(url, "tiny")
        ...     same = shared_remote(url + "/", "tiny:latest") is a
        ...     answer = a.generate("Hello").text
        ...     a.close()
        >>> same, answer
        (True, 'Hi.')
    """
    from rkllm_core.remote import RemoteRKLLM

    name = None if model is None else model.removesuffix(":latest")
    secret = None if api_key is None else hashlib.sha256(api_key.encode()).hexdigest()
    key = json.dumps(["remote", str(base_url).rstrip("/"), name, secret, timeout])
    with _lock:
        found = _models.get(key)
        if found is None or found.closed:
            found = RemoteRKLLM(base_url, name, api_key=api_key, timeout=timeout)
            _models[key] = found
        return found
