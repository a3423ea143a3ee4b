"""The runtime's enums. Values are identical in every release; 1.1 alone has state 4.

Example:
    >>> from rkllm_core.abi.enums import LLMCallState
    >>> int(LLMCallState.RKLLM_RUN_FINISH)
    2
"""

from __future__ import annotations

from enum import IntEnum


class LLMCallState(IntEnum):
    """The ``state`` argument of the result callback."""

    RKLLM_RUN_NORMAL = 0
    RKLLM_RUN_WAITING = 1
    RKLLM_RUN_FINISH = 2
    RKLLM_RUN_ERROR = 3
    #: Runtime 1.1 only: hidden states arrive in their own callback state.
    RKLLM_RUN_GET_LAST_HIDDEN_LAYER = 4


class RKLLMInputType(IntEnum):
    """Which member of ``RKLLMInput``'s union is set."""

    RKLLM_INPUT_PROMPT = 0
    RKLLM_INPUT_TOKEN = 1
    RKLLM_INPUT_EMBED = 2
    RKLLM_INPUT_MULTIMODAL = 3


class RKLLMInferMode(IntEnum):
    """What a run produces: tokens, last hidden layer, or logits (1.2.0+)."""

    RKLLM_INFER_GENERATE = 0
    RKLLM_INFER_GET_LAST_HIDDEN_LAYER = 1
    RKLLM_INFER_GET_LOGITS = 2


def members(enum: type[IntEnum], *, without: tuple[str, ...] = ()) -> dict[str, int]:
    """``{name: value}`` of an enum, leaving out ``without``."""
    return {m.name: int(m.value) for m in enum if m.name not in without}
