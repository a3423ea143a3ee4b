"""What a run gives back, and what is known about the loaded runtime.

:class:`GenerationResult` (with its :class:`PerfStats` and :data:`FinishReason`) is what a finished
run produced; :class:`StreamChunk` is one streamed piece of it; :class:`ImageInput` is the image
part of a multimodal prompt; :class:`RuntimeInfo` describes the loaded runtime, partly from
:func:`parse_init_log`. All are plain data: nothing here touches the runtime.

Example:
    >>> from rkllm_core import GenerationResult, PerfStats
    >>> perf = PerfStats(None, 12.0, 3, 30.0, 100.0, None)
    >>> GenerationResult("Hi there", [1, 2, 3], "stop", perf).finish_reason
    'stop'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from rkllm_core.errors import InvalidParameterError

FinishReason = Literal["stop", "length", "abort", "error"]


@dataclass(frozen=True)
class PerfStats:
    """Timings of one run.

    From runtime 1.2.1 the numbers are the runtime's own (``RKLLMPerfStat``); before that the
    times are measured around the callbacks and ``prefill_tokens`` / ``peak_memory_mb`` are
    ``None``.

    Example:
        >>> from rkllm_core import PerfStats
        >>> PerfStats(10, 5.0, 20, 1000.0, 20.0, 512.0).tokens_per_second
        20.0
    """

    prefill_tokens: int | None
    prefill_ms: float
    decode_tokens: int
    decode_ms: float
    tokens_per_second: float
    peak_memory_mb: float | None


@dataclass(frozen=True)
class StreamChunk:
    """One streamed piece: the text it adds (may be ``""`` while a character is incomplete or
    a stop string is being checked) and the token that produced it (``None`` for the tail
    released at the end).

    Example:
        >>> from rkllm_core import StreamChunk
        >>> StreamChunk("Hi", 1234).text
        'Hi'
    """

    text: str
    token_id: int | None


@dataclass
class GenerationResult:
    """What a finished run produced.

    ``finish_reason`` is ``"stop"`` (end of reply or a stop string), ``"length"``
    (``max_new_tokens`` reached), ``"abort"`` (aborted, or the consumer went away) or
    ``"error"``.

    Example:
        >>> from rkllm_core import GenerationResult, PerfStats
        >>> r = GenerationResult("Hi", [1], "stop", PerfStats(None, 0.0, 1, 0.0, 0.0, None))
        >>> r.text, r.finish_reason
        ('Hi', 'stop')
    """

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    perf: PerfStats
    #: the KV-cache size the run started from, when ``setup`` asked (:mod:`rkllm_core.backend`)
    kv_cache_size_before: int | None = None
    #: the ``stop`` string that ended the run, if one did
    stop_sequence: str | None = None


@dataclass(frozen=True)
class ImageInput:
    """Image embeddings for a multimodal prompt (one ``<image>`` tag in the prompt per image).

    ``embed`` is float32 from the model's vision encoder: ``(n_images, n_image_tokens, dim)``,
    or 2-D ``(n_images * n_image_tokens, dim)`` with ``n_images`` saying how many images it
    holds (default 1). ``width``/``height`` are the encoder's input size (for mrope models).
    ``start``/``end``/``content`` are the model's image tags on runtime 1.3.0 (older runtimes
    take them as ModelParams.img_*).

    Example:
        >>> import numpy as np
        >>> from rkllm_core import ImageInput
        >>> ImageInput(np.zeros((2, 16, 32), dtype=np.float32)).n_image_tokens
        16
        >>> ImageInput(np.zeros((32, 8), dtype=np.float32), n_images=2).n_image_tokens
        16
    """

    embed: np.ndarray
    width: int = 0
    height: int = 0
    start: str | None = None
    end: str | None = None
    content: str | None = None
    n_images: int = 0
    n_image_tokens: int = 0

    def __post_init__(self) -> None:
        embed = np.asarray(self.embed)
        if embed.dtype.kind not in "fiu":
            raise InvalidParameterError(
                f"image embed must hold real numbers (float32), got dtype {embed.dtype}")
        object.__setattr__(self, "embed", embed)
        shape = self.embed.shape
        if len(shape) == 3:
            n_images, n_tokens = int(shape[0]), int(shape[1])
        elif len(shape) == 2:
            n_images = self.n_images or 1
            n_tokens = self.n_image_tokens or int(shape[0]) // n_images
        else:
            raise InvalidParameterError(
                "image embed must be float32 (n_images, n_image_tokens, dim) or "
                "(n_images * n_image_tokens, dim)")
        if n_images <= 0 or n_tokens <= 0 or n_images * n_tokens * int(shape[-1]) \
                != int(self.embed.size) or (self.n_images and self.n_images != n_images):
            raise InvalidParameterError(
                f"image embed of shape {shape} does not hold n_images={self.n_images or n_images} "
                f"x n_image_tokens={self.n_image_tokens or n_tokens} rows")
        object.__setattr__(self, "n_images", n_images)
        object.__setattr__(self, "n_image_tokens", n_tokens)


@dataclass(frozen=True)
class RuntimeInfo:
    """What is known about the loaded runtime and model.

    ``platform`` (the SoC the runtime found; ``HOST`` for the host runtime), ``driver_version``
    (the NPU driver), ``model_platform`` (the SoC the model was converted for),
    ``toolkit_version`` and ``max_context_limit`` are parsed from the runtime's init log
    (``None`` when it did not print them).

    Example:
        >>> from rkllm_core.results import parse_init_log
        >>> parse_init_log("I rkllm: rkllm-runtime version: 1.2.1, rknpu driver version: 0.9.8, "
        ...                "platform: RK3588")["driver_version"]
        '0.9.8'
    """

    library_path: str
    family: str
    release: str
    detection_method: str
    is_host_runtime: bool
    platform: str | None
    driver_version: str | None
    model_platform: str | None
    toolkit_version: str | None
    max_context_limit: int | None


def parse_init_log(log: str) -> dict[str, Any]:
    """Platform, NPU driver, toolkit release and context limit from ``rkllm_init``'s log."""

    def find(pattern: str) -> str | None:
        match = re.search(pattern, log)
        return match.group(1).strip() if match else None

    limit = find(r"max_context_limit:\s*(\d+)")
    return {
        "platform": find(r"\bplatform:\s*([^,\s]+)"),  # not target_platform: no \b after _
        "model_platform": find(r"target_platform:\s*([^,\s]+)"),
        "driver_version": find(r"rknpu driver version:\s*([^,]+?)(?:,|$)"),
        "toolkit_version": find(r"rkllm-toolkit version:\s*([^,\s]+)"),
        "max_context_limit": int(limit) if limit else None,
    }
