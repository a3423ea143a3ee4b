"""Checks of what callers pass to RKLLM, each refusing bad input with the fix in its message.

Text for C strings (:func:`check_text`), timeouts, files, the arguments of one run
(:func:`check_run_arguments`), what the loaded runtime release can do
(:func:`require_capability`) and the return codes of its calls (:func:`check_return_code`).
Nothing here touches the runtime.

Example:
    >>> from rkllm_core.validation import check_run_arguments, check_timeout
    >>> check_timeout(2.5)
    >>> check_run_arguments(prompt="Hi", role="user", enable_thinking=False, tokens=None,
    ...                     embeddings=None, image=None, keep_history=False,
    ...                     max_new_tokens=None, sampling=None, lora=None,
    ...                     save_prompt_cache=None, stop="User:")
    ['User:']
    >>> check_timeout(0)
    Traceback (most recent call last):
    ...
    rkllm_core.errors.InvalidParameterError: timeout must be None or a positive number of ...
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rkllm_core.abi import first_release_with
from rkllm_core.errors import InvalidParameterError, RKLLMError, UnsupportedFeatureError
from rkllm_core.library import RuntimeLibrary
from rkllm_core.params import SamplingParams
from rkllm_core.results import ImageInput


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_text(text: Any, name: str) -> None:
    """Refuse text the runtime cannot take: not a str, empty, NUL bytes, lone surrogates.

    C strings end at the first NUL, so a NUL would silently cut the text; a lone surrogate
    (from a bad decode upstream) cannot be encoded as UTF-8.

    Example:
        >>> from rkllm_core.validation import check_text
        >>> check_text("Hello", "prompt")
        >>> check_text("a\\x00b", "prompt")
        Traceback (most recent call last):
        ...
        rkllm_core.errors.InvalidParameterError: prompt contains a NUL character at index 1; ...
    """
    if not isinstance(text, str):
        raise InvalidParameterError(f"{name} must be a str, got {type(text).__name__}")
    if not text:
        raise InvalidParameterError(f"{name} is empty: give the text to send")
    nul = text.find("\x00")
    if nul >= 0:
        raise InvalidParameterError(
            f"{name} contains a NUL character at index {nul}; the runtime takes C strings, which "
            "end there: remove it (e.g. text.replace('\\x00', ''))")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidParameterError(
            f"{name} contains a lone surrogate {text[exc.start]!r} at index {exc.start}, which "
            "is not valid Unicode (a bad decode upstream): decode the source with "
            "errors='replace', or text.encode('utf-8', 'replace').decode()") from None


def _c_text(text: Any, name: str) -> bytes:
    """``text`` as UTF-8 for a C string parameter that may be empty."""
    if isinstance(text, str) and not text:
        return b""
    check_text(text, name)
    return str(text).encode()


def check_timeout(timeout: Any) -> None:
    """``None`` or a positive number of seconds."""
    if timeout is not None and (not _is_number(timeout) or not 0 < timeout < math.inf):
        raise InvalidParameterError(
            f"timeout must be None or a positive number of seconds, got {timeout!r}")


def _readable_file(path: Any, what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidParameterError(f"{what} must be a path, got {type(path).__name__}")
    file = Path(path).expanduser()
    if not file.exists():
        raise InvalidParameterError(f"{what} {file} does not exist: check the path")
    if not file.is_file():
        raise InvalidParameterError(f"{what} {file} is not a file")
    if not os.access(file, os.R_OK):
        raise InvalidParameterError(
            f"{what} {file} cannot be read (permissions): chmod it or run as its owner")
    return file


def check_run_arguments(
    *,
    prompt: str | None,
    role: str,
    enable_thinking: bool,
    tokens: Sequence[int] | None,
    embeddings: np.ndarray | None,
    image: ImageInput | None,
    keep_history: bool,
    max_new_tokens: int | None,
    sampling: SamplingParams | None,
    lora: str | None,
    save_prompt_cache: str | os.PathLike[str] | None,
    stop: Sequence[str] | None,
) -> list[str]:
    """Refuse arguments of one run that no runtime could take; returns the stop strings.

    What the loaded release can do is checked by :class:`~rkllm_core.inputs.RunBuilder`.
    """
    given = [x is not None for x in (prompt, tokens, embeddings)]
    if sum(given) != 1:
        raise InvalidParameterError(
            "give exactly one input: prompt (text), tokens (ids) or embeddings (array)")
    if prompt is not None:
        check_text(prompt, "prompt")
    if role not in ("user", "tool"):
        raise InvalidParameterError(f"role must be 'user' or 'tool', got {role!r}")
    for name, flag in (("enable_thinking", enable_thinking), ("keep_history", keep_history)):
        if not isinstance(flag, (bool, np.bool_)):
            raise InvalidParameterError(
                f"{name} must be True or False, got {type(flag).__name__} {flag!r}")
    if max_new_tokens is not None and (isinstance(max_new_tokens, bool)
                                       or not isinstance(max_new_tokens, (int, np.integer))):
        raise InvalidParameterError(
            f"max_new_tokens must be an int, got {type(max_new_tokens).__name__} "
            f"{max_new_tokens!r}")
    if sampling is not None and not isinstance(sampling, SamplingParams):
        raise InvalidParameterError(
            f"sampling must be a SamplingParams (e.g. SamplingParams(top_k=1)), got "
            f"{type(sampling).__name__}")
    if image is not None and not isinstance(image, ImageInput):
        raise InvalidParameterError(
            f"image must be an ImageInput(embed, ...), got {type(image).__name__}")
    if lora is not None:
        check_text(lora, "lora (the adapter name given to load_lora)")
    if save_prompt_cache is not None:
        folder = Path(save_prompt_cache).expanduser().resolve().parent
        if not folder.is_dir():
            raise InvalidParameterError(
                f"save_prompt_cache: the folder {folder} does not exist: create it first or "
                "choose a path in an existing folder")
    stops = [stop] if isinstance(stop, str) else list(stop or ())
    for item in stops:
        if not isinstance(item, str):
            raise InvalidParameterError(
                f"stop must be a string or a list of strings, got an item {item!r}")
    if image is not None and prompt is None:
        raise InvalidParameterError("image needs a prompt with an <image> tag per image")
    return stops


def require_capability(lib: RuntimeLibrary, capability: str, what: str) -> None:
    """Refuse ``what`` when the loaded release lacks ``capability`` (an
    :class:`~rkllm_core.abi.Capabilities` field)."""
    if not getattr(lib.family.capabilities, capability):
        raise unsupported(lib, what, capability)


def unsupported(lib: RuntimeLibrary, what: str, capability: str) -> UnsupportedFeatureError:
    """The error for ``what`` on a release without ``capability``, naming the first with it."""
    return UnsupportedFeatureError(
        f"{what} needs runtime {first_release_with(capability)} or newer; this library is "
        f"runtime {lib.release}")


def check_return_code(code: int, what: str, hint: str) -> None:
    """Raise when a runtime call returned non-zero; ``hint`` says what usually causes it."""
    if code != 0:
        raise RKLLMError(f"{what} failed (returned {code}): {hint}")
