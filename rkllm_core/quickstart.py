"""Pick the model a demo should run: the NPU when a board is set up, else the host CPU.

Rules: ``RKLLM_MODEL_PATH`` names the model (``.rkllm`` on a board; ``.gguf`` or scripted runs
on the host runtime). Without it, SmolLM2-135M-Instruct from the ``host`` extra runs on the host
runtime. ``RKLLM_LIBRARY_PATH`` picks the library as everywhere else.

Example:
    >>> from rkllm_core.quickstart import pick_model
    >>> choice = pick_model({})  # no RKLLM_MODEL_PATH: SmolLM2 on the host runtime
    >>> choice.library, choice.on_npu
    ('host', False)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

HOST_SUFFIXES = (".gguf", ".scripted")


@dataclass(frozen=True)
class ModelChoice:
    """Which model and library a demo uses, and a sentence that says so."""

    model_path: Path
    library: str | None
    on_npu: bool
    note: str


def pick_model(environ: Mapping[str, str] | None = None) -> ModelChoice:
    """The model to run, from ``RKLLM_MODEL_PATH`` / ``RKLLM_LIBRARY_PATH`` (see module doc)."""
    env = os.environ if environ is None else environ
    given = env.get("RKLLM_MODEL_PATH")
    library = env.get("RKLLM_LIBRARY_PATH")
    if given:
        path = Path(given).expanduser()
        if path.suffix in HOST_SUFFIXES or library == "host":
            return ModelChoice(path, "host", False,
                               f"Running {path.name} on the host CPU (rkllm-py host runtime).")
        return ModelChoice(path, library, True,
                           f"Running {path.name} on the NPU through librkllmrt.so.")
    from rkllm_core.host.models import smollm2_path

    return ModelChoice(
        smollm2_path(), "host", False,
        "No NPU model given (RKLLM_MODEL_PATH is not set): running SmolLM2-135M-Instruct on the "
        "host CPU with rkllm-py's host runtime (llama.cpp), not on an NPU.")
