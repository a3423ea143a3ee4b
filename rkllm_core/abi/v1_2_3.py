"""Runtime 1.2.3: the 1.2.1 layout; only the multimodal struct's name is corrected.

Example:
    >>> from rkllm_core.abi import v1_2_3
    >>> "RKLLMMultiModalInput" in v1_2_3.FAMILY.structs
    True
"""

from __future__ import annotations

from rkllm_core.abi import v1_2_1
from rkllm_core.abi._spec import AbiFamily


class RKLLMMultiModalInput(v1_2_1.RKLLMMultiModelInput):
    """Same layout as 1.2.1's ``RKLLMMultiModelInput``."""


_structs = {k: v for k, v in v1_2_1.FAMILY.structs.items() if k != "RKLLMMultiModelInput"}

FAMILY = AbiFamily(
    key="1.2.3",
    capabilities=v1_2_1.CAPABILITIES,
    releases=("1.2.3",),
    structs={**_structs, "RKLLMMultiModalInput": RKLLMMultiModalInput},
    enums=v1_2_1.FAMILY.enums,
    callbacks=v1_2_1.FAMILY.callbacks,
    functions=v1_2_1.FAMILY.functions,
)
