"""ctypes declarations of ``librkllmrt.so``, one module per layout family.

Each module holds only what its family changes and imports the rest from the one before.
Nothing here loads a library: a family is data, bound to a library by :mod:`rkllm_core.library`.

Example:
    >>> from rkllm_core.abi import get_family, family_for_release
    >>> family_for_release("1.2.2").key
    '1.2.1'
    >>> sorted(get_family("1.1").functions)[:2]
    ['rkllm_abort', 'rkllm_createDefaultParam']
"""

from __future__ import annotations

from rkllm_core.abi import v1_1, v1_2_0, v1_2_1, v1_2_3, v1_3_0
from rkllm_core.abi._spec import AbiFamily, Capabilities, FunctionSpec, LLMHandle
from rkllm_core.abi.enums import LLMCallState, RKLLMInferMode, RKLLMInputType
from rkllm_core.errors import RuntimeVersionError

#: Every supported family, oldest first.
FAMILIES: dict[str, AbiFamily] = {
    f.key: f for f in (v1_1.FAMILY, v1_2_0.FAMILY, v1_2_1.FAMILY, v1_2_3.FAMILY, v1_3_0.FAMILY)
}


def get_family(key: str) -> AbiFamily:
    """The family called ``key`` (``"1.1"``, ``"1.2.0"``, ``"1.2.1"``, ``"1.2.3"``, ``"1.3.0"``)."""
    try:
        return FAMILIES[key]
    except KeyError:
        raise RuntimeVersionError(
            f"unknown runtime family {key!r}; supported families: {', '.join(FAMILIES)}"
        ) from None


def first_release_with(capability: str) -> str:
    """The first runtime release that has ``capability`` (a :class:`Capabilities` field), for
    messages that tell a user which runtime to install.

    Example:
        >>> from rkllm_core.abi import first_release_with
        >>> first_release_with("keep_history"), first_release_with("per_run_sampling")
        ('1.2.0', '1.3.0')
    """
    for family in FAMILIES.values():
        if getattr(family.capabilities, capability):
            return family.releases[0]
    raise RuntimeVersionError(f"no supported runtime release has {capability!r}")


def family_for_release(release: str) -> AbiFamily:
    """The family whose layout a runtime release (``"1.2.2"``, ``"1.1"``, ...) uses."""
    release = release.strip().lstrip("v")
    for family in FAMILIES.values():
        if release in family.releases or release == family.key:
            return family
    parts = release.split(".")
    if len(parts) >= 2 and parts[:2] == ["1", "1"]:
        return FAMILIES["1.1"]
    raise RuntimeVersionError(
        f"runtime release {release!r} is not supported; supported releases: "
        + ", ".join(r for f in FAMILIES.values() for r in f.releases)
        + ". Set RKLLM_RUNTIME_VERSION to the nearest release with the same header."
    )


__all__ = [
    "FAMILIES",
    "AbiFamily",
    "Capabilities",
    "FunctionSpec",
    "LLMCallState",
    "LLMHandle",
    "RKLLMInferMode",
    "RKLLMInputType",
    "family_for_release",
    "first_release_with",
    "get_family",
]
