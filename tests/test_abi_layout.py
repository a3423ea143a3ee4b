"""Our ctypes declarations against the layouts a C compiler computed from Rockchip's headers.

LP64 is checked through ctypes itself; ILP32 (armhf) by laying out the same ``_fields_`` with
4-byte pointers and ``size_t``, which fails if any field uses a fixed-width type for them.
"""

from __future__ import annotations

import ctypes
import re
from typing import Any

import pytest

from rkllm_core.abi import FAMILIES, get_family
from rkllm_core.abi._spec import AbiFamily

# c_size_t is c_ulong: 4 bytes on armhf, like every pointer.
POINTER_TYPES = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_ssize_t)


def _ilp32_size_align(ctype: Any) -> tuple[int, int]:
    """Size and alignment of a ctypes type under the armhf (ILP32, AAPCS) C ABI."""
    if isinstance(ctype, type) and issubclass(ctype, (ctypes.Structure, ctypes.Union)):
        layout = _ilp32_layout(ctype)
        return layout["sizeof"], layout["alignof"]
    if isinstance(ctype, type) and issubclass(ctype, ctypes.Array):
        size, align = _ilp32_size_align(ctype._type_)
        return size * ctype._length_, align
    if ctype in POINTER_TYPES or issubclass(ctype, (ctypes._Pointer, ctypes._CFuncPtr)):  # type: ignore[attr-defined]
        return 4, 4
    size = ctypes.sizeof(ctype)
    return size, size  # armhf aligns 1/2/4/8-byte scalars to their size


def _ilp32_layout(struct: Any) -> dict[str, Any]:
    offsets: dict[str, int] = {}
    nested: dict[str, Any] = {}
    offset = 0
    max_align = 1
    is_union = issubclass(struct, ctypes.Union)
    for name, ctype in struct._fields_:
        size, align = _ilp32_size_align(ctype)
        max_align = max(max_align, align)
        field_offset = 0 if is_union else (offset + align - 1) // align * align
        offsets[name] = field_offset
        nested[name] = ctype
        offset = max(offset, size) if is_union else field_offset + size
    size = (offset + max_align - 1) // max_align * max_align
    return {"sizeof": size, "alignof": max_align, "offsets": offsets, "types": nested}


def _field_offset(struct: Any, dotted: str, abi: str) -> int:
    """Offset of ``a.b`` (nested) or of a member of the anonymous union."""
    offset = 0
    current = struct
    for part in dotted.split("."):
        if abi == "lp64":
            fields = dict(current._fields_)
            if part not in fields and "_u" in fields:  # member of the anonymous union
                offset += current._u.offset
                current = fields["_u"]
                fields = dict(current._fields_)
            offset += getattr(current, part).offset
            current = fields[part]
        else:
            layout = _ilp32_layout(current)
            if part not in layout["offsets"] and "_u" in layout["offsets"]:
                offset += layout["offsets"]["_u"]
                current = layout["types"]["_u"]
                layout = _ilp32_layout(current)
            offset += layout["offsets"][part]
            current = layout["types"][part]
    return offset


@pytest.mark.parametrize("family_key", list(FAMILIES))
def test_every_struct_of_abi_json_is_declared_with_its_size_alignment_and_offsets(
    family_key: str, abi_facts: dict[str, Any]
) -> None:
    family = get_family(family_key)
    facts = abi_facts[family_key]["structs"]
    assert set(family.structs) == set(facts), "struct names differ from the header's"
    for name, fact in facts.items():
        struct = family.structs[name]
        assert ctypes.sizeof(struct) == fact["sizeof"]["lp64"], f"{name} LP64 size"
        assert ctypes.alignment(struct) == fact["alignof"]["lp64"], f"{name} LP64 alignment"
        ilp32 = _ilp32_layout(struct)
        assert ilp32["sizeof"] == fact["sizeof"]["ilp32"], f"{name} ILP32 size"
        assert ilp32["alignof"] == fact["alignof"]["ilp32"], f"{name} ILP32 alignment"
        for field in fact["fields"]:
            for abi in ("lp64", "ilp32"):
                got = _field_offset(struct, field["name"], abi)
                assert got == field["offset"][abi], f"{name}.{field['name']} {abi} offset"


@pytest.mark.parametrize("family_key", list(FAMILIES))
def test_enums_match_the_header(family_key: str, abi_facts: dict[str, Any]) -> None:
    assert dict(get_family(family_key).enums) == abi_facts[family_key]["enums"]


def _ctype_for(c_decl: str, family: AbiFamily) -> Any:
    """The ctypes type a C parameter or return type must be declared as."""
    c_type = re.sub(r"\s+\w+$", "", c_decl.strip()) if " " in c_decl.strip() else c_decl.strip()
    c_type = c_type.replace("const ", "").replace(" *", "*").strip()
    scalars: dict[str, Any] = {
        "int": ctypes.c_int,
        "int32_t": ctypes.c_int32,
        "uint64_t": ctypes.c_uint64,
        "void*": ctypes.c_void_p,
        "LLMHandle": ctypes.c_void_p,
        "char*": ctypes.c_char_p,
        "void": None,
        "LLMCallState": ctypes.c_int,
    }
    if c_type in scalars:
        return scalars[c_type]
    if c_type == "LLMHandle*":
        return ctypes.POINTER(ctypes.c_void_p)
    if c_type == "int*":
        return ctypes.POINTER(ctypes.c_int)
    if c_type == "int32_t*":
        return ctypes.POINTER(ctypes.c_int32)
    if c_type in family.callbacks:
        return family.callbacks[c_type]
    if c_type.endswith("*") and c_type[:-1] in family.structs:
        return ctypes.POINTER(family.structs[c_type[:-1]])
    if c_type in family.structs:
        return family.structs[c_type]
    raise AssertionError(f"no mapping for C type {c_decl!r}")


def _param_decl(param: str) -> str:
    """``'RKLLMParam* param'`` -> ``'RKLLMParam*'``."""
    return param.rsplit(" ", 1)[0] if not param.endswith("*") else param


@pytest.mark.parametrize("family_key", list(FAMILIES))
def test_function_list_and_signatures_match_the_header(
    family_key: str, abi_facts: dict[str, Any]
) -> None:
    family = get_family(family_key)
    facts = abi_facts[family_key]["functions"]
    assert sorted(family.functions) == sorted(f["name"] for f in facts)
    for fact in facts:
        spec = family.functions[fact["name"]]
        assert spec.restype is _ctype_for(fact["returns"], family), f"{fact['name']} return"
        expected = tuple(_ctype_for(_param_decl(p), family) for p in fact["params"])
        assert spec.argtypes == expected, f"{fact['name']} arguments"


@pytest.mark.parametrize("family_key", list(FAMILIES))
def test_callback_types_match_the_header(family_key: str, abi_facts: dict[str, Any]) -> None:
    family = get_family(family_key)
    facts = abi_facts[family_key]["callbacks"]
    assert sorted(family.callbacks) == sorted(f["name"] for f in facts)
    for fact in facts:
        cb = family.callbacks[fact["name"]]
        assert cb._restype_ is _ctype_for(fact["returns"], family)
        expected = [_ctype_for(_param_decl(p), family) for p in fact["params"]]
        got = list(cb._argtypes_)
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            # text arguments are declared as raw bytes (POINTER(c_char)), read with their length
            if e is ctypes.c_char_p:
                assert g in (ctypes.c_char_p, ctypes.POINTER(ctypes.c_char)), (fact["name"], i)
            else:
                assert g is e, (fact["name"], i)


def test_the_checker_fails_on_a_layout_a_careless_binding_would_write() -> None:
    """A pointer declared as two 32-bit ints passes on LP64 and is caught by the ILP32 layout."""

    class PairOfInts(ctypes.Structure):  # a pointer declared as two 32-bit ints
        _fields_ = [("input_ids", ctypes.c_int32 * 2), ("n_tokens", ctypes.c_size_t)]

    good = get_family("1.3.0").structs["RKLLMTokenInput"]
    assert ctypes.sizeof(PairOfInts) == ctypes.sizeof(good)  # LP64 cannot tell...
    assert _ilp32_layout(PairOfInts)["sizeof"] != _ilp32_layout(good)["sizeof"]  # ...ILP32 can


FIXED_WIDTH_64 = {"c_uint64", "c_int64", "c_ulonglong", "c_longlong", "c_ulong", "c_long"}


def test_no_struct_uses_a_64_bit_integer_where_the_header_has_size_t_or_a_pointer() -> None:
    """On LP64, ctypes makes c_uint64 and c_size_t the same class, so this is checked in source.

    The header has 64-bit integers only in 1.3.0's embedding callback (``uint64_t``).
    """
    import ast
    from pathlib import Path

    import rkllm_core.abi as abi_pkg

    offenders = []
    for path in Path(abi_pkg.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for stmt in tree.body:
            allowed = isinstance(stmt, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "LLMGetEmbedCallback" for t in stmt.targets
            )
            for node in ast.walk(stmt):
                name = (
                    node.id
                    if isinstance(node, ast.Name)
                    else (node.attr if isinstance(node, ast.Attribute) else None)
                )
                if name in FIXED_WIDTH_64 and not allowed:
                    offenders.append(f"{path.name}:{node.lineno} {name}")
    assert offenders == []


def _fields(family: AbiFamily, struct: str) -> set[str]:
    return {name for name, _ in family.struct(struct)._fields_}


def _layout_says(family: AbiFamily) -> dict[str, bool]:
    """Each capability as the family's own declarations (checked against abi.json above) show it."""
    multimodal = family.structs.get("RKLLMMultiModalInput") or family.struct("RKLLMMultiModelInput")
    mm_fields = {name for name, _ in multimodal._fields_}
    image = dict(multimodal._fields_).get("image")
    clear = family.functions.get("rkllm_clear_kv_cache")
    return {
        "keep_history": "keep_history" in _fields(family, "RKLLMInferParam"),
        "logits": "RKLLM_INFER_GET_LOGITS" in family.enums["RKLLMInferMode"],
        "embedding_flash": "embed_flash" in _fields(family, "RKLLMExtendParam"),
        "chat_template": family.has("rkllm_set_chat_template"),
        "kv_cache_clear": clear is not None,
        "kv_cache_size": family.has("rkllm_get_kv_cache_size"),
        "kv_cache_ranges": clear is not None and len(clear.argtypes) > 2,
        "function_tools": family.has("rkllm_set_function_tools"),
        "role_and_thinking": {"role", "enable_thinking"} <= _fields(family, "RKLLMInput"),
        "cross_attention": family.has("rkllm_set_cross_attn_params"),
        "batches": "n_batch" in _fields(family, "RKLLMExtendParam"),
        "perf_stats": "perf" in _fields(family, "RKLLMResult"),
        "several_images": "n_image" in mm_fields or (
            image is not None and "n_image" in {n for n, _ in image._fields_}),
        "per_run_sampling": {"sampling_params", "max_new_tokens"} <= _fields(
            family, "RKLLMInferParam"),
        "image_tags_per_input": image is not None and "image_start" in {
            n for n, _ in image._fields_},
        "init_callbacks": "RKLLMCallback" in family.structs,
    }


@pytest.mark.parametrize("family", list(FAMILIES.values()), ids=lambda f: f.key)
def test_declared_capabilities_match_what_the_family_declares(family: AbiFamily) -> None:
    declared = vars(family.capabilities)
    derived = _layout_says(family)
    assert {k: declared[k] for k in derived} == derived
    # not in any layout: from Rockchip's header comments (SEMANTICS.md, result callback codes)
    assert declared["callback_releases_buffers"] == (family.key == "1.3.0")
    assert set(declared) == set(derived) | {"callback_releases_buffers"}
