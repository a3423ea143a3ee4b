"""ModelParams, ExtendParams and SamplingParams: defaults, validation, and per-family filling."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from rkllm_core import (
    ExtendParams,
    InvalidParameterError,
    ModelParams,
    SamplingParams,
    UnsupportedFeatureError,
)
from rkllm_core.library import load_library
from tests.core.conftest import ASSISTANT, FAMILIES, open_model


def test_defaults_are_rockchips_documented_ones() -> None:
    s = SamplingParams()
    assert (s.top_k, s.top_p, s.temperature, s.repeat_penalty) == (40, 0.9, 0.8, 1.1)
    assert (s.frequency_penalty, s.presence_penalty, s.mirostat) == (0.0, 0.0, 0)
    assert (s.mirostat_tau, s.mirostat_eta) == (5.0, 0.1)
    assert ModelParams(model_path=ASSISTANT).sampling == s


def test_every_field_has_a_description() -> None:
    for model in (ModelParams, ExtendParams, SamplingParams):
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name}"


def test_a_missing_model_file_is_rejected_with_the_path(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"nope\.rkllm does not exist"):
        ModelParams(model_path=tmp_path / "nope.rkllm")


def test_n_keep_must_be_smaller_than_the_context() -> None:
    with pytest.raises(ValidationError, match="n_keep \\(512\\) must be smaller"):
        ModelParams(model_path=ASSISTANT, max_context_len=512, n_keep=512)


@pytest.mark.parametrize(("field", "value"), [
    ("top_p", 1.5), ("top_k", -1), ("temperature", -0.1), ("frequency_penalty", 2.5),
    ("presence_penalty", -3.0), ("mirostat", 3), ("mirostat_tau", 0.0), ("repeat_penalty", 0.0),
])
def test_sampling_values_out_of_range_are_rejected(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        SamplingParams(**{field: value})  # type: ignore[arg-type]


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="topk"):
        SamplingParams(topk=3)  # type: ignore[call-arg]


def test_cpu_list_becomes_the_rkllm_h_bitmask_and_sets_the_core_count() -> None:
    ext = ExtendParams(enabled_cpus_mask=[4, 5, 6, 7])
    assert ext.enabled_cpus_mask == 0xF0
    assert ext.enabled_cpus_num == 4
    assert ExtendParams(enabled_cpus_mask=[0]).enabled_cpus_mask == 1
    assert ExtendParams(enabled_cpus_mask=0x0F, enabled_cpus_num=2).enabled_cpus_num == 2


@pytest.mark.parametrize(("mask", "message"), [
    ([8], "not a CPU index"), ([1, 1], "twice"), ([], "at least one"), (0x100, "CPU0-CPU7"),
    (0, "CPU0-CPU7"), ("0xF0", "int bitmask or a list"),
])
def test_malformed_cpu_masks_are_rejected(mask: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ExtendParams(enabled_cpus_mask=mask)  # type: ignore[arg-type]


def test_more_cpus_than_the_mask_names_is_rejected() -> None:
    with pytest.raises(ValidationError, match="more than the 2 cores"):
        ExtendParams(enabled_cpus_mask=[0, 1], enabled_cpus_num=4)


def test_cpu_masks_are_not_checked_against_this_machine() -> None:
    # a board's big cores are accepted on any machine; the host runtime records them
    llm = open_model("1.3.0", extend=ExtendParams(enabled_cpus_mask=[4, 5, 6, 7],
                                                  base_domain_id=1))
    assert llm.generate("Hello").text == "I am a scripted model."
    llm.close()


@pytest.mark.parametrize("n_batch", [0, 9])
def test_n_batch_must_be_1_to_8(n_batch: int) -> None:
    with pytest.raises(ValidationError, match="n_batch"):
        ExtendParams(n_batch=n_batch)


@pytest.mark.parametrize("family", FAMILIES)
def test_fill_native_writes_every_field_the_family_has(family: str) -> None:
    lib = load_library("host", runtime_version=family)
    param = lib.create_default_param()
    params = ModelParams(model_path=ASSISTANT, max_context_len=300, max_new_tokens=7, top_k=3,
                         temperature=0.25, mirostat=2, skip_special_token=False)
    extend = ExtendParams(base_domain_id=1)
    params.fill_native(param, lib.release, extend)
    assert param.model_path == str(ASSISTANT).encode()
    assert (param.max_context_len, param.max_new_tokens, param.top_k) == (300, 7, 3)
    assert param.temperature == pytest.approx(0.25)
    assert (param.mirostat, param.skip_special_token, param.is_async) == (2, False, False)
    assert param.extend_param.base_domain_id == 1


@pytest.mark.parametrize(("family", "params", "extend", "release"), [
    ("1.1", {"n_keep": 16}, {}, "1.2.0"),
    ("1.1", {}, {"embed_flash": True}, "1.2.0"),
    ("1.1", {}, {"enabled_cpus_mask": [4, 5]}, "1.2.0"),
    ("1.2.0", {}, {"use_cross_attn": True}, "1.2.1"),
    ("1.2.3", {"ignore_eos_token": True}, {}, "1.3.0"),
])
def test_a_field_the_family_lacks_names_the_release_that_added_it(
    family: str, params: dict[str, object], extend: dict[str, object], release: str
) -> None:
    expected = f"needs runtime {re.escape(release)} or newer"
    with pytest.raises(UnsupportedFeatureError, match=expected):
        open_model(family, params=ModelParams(model_path=ASSISTANT, max_context_len=512,
                                              **params),  # type: ignore[arg-type]
                   extend=ExtendParams(**extend))  # type: ignore[arg-type]


def test_image_tags_in_model_params_are_refused_on_1_3_0() -> None:
    with pytest.raises(UnsupportedFeatureError, match="with each image"):
        open_model("1.3.0", img_start="<|vision_start|>")


def test_image_tags_in_model_params_reach_older_runtimes() -> None:
    lib = load_library("host", runtime_version="1.2.3")
    param = lib.create_default_param()
    ModelParams(model_path=ASSISTANT, img_content="<|image_pad|>").fill_native(param, "1.2.3")
    assert (param.img_start, param.img_content) == (b"", b"<|image_pad|>")


def test_rkllm_reports_bad_overrides_as_invalid_parameter_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match="max_context_len"):
        open_model("1.3.0", max_context_len=0)
    with pytest.raises(InvalidParameterError, match="temprature"):
        open_model("1.3.0", temprature=0.5)
    with pytest.raises(InvalidParameterError, match="does not exist"):
        open_model("1.3.0", tmp_path / "missing.rkllm")


def test_overrides_apply_on_top_of_params() -> None:
    base = ModelParams(model_path=ASSISTANT, max_context_len=256, temperature=0.1)
    llm = open_model("1.3.0", params=base, top_k=5)
    assert (llm.params.max_context_len, llm.params.temperature, llm.params.top_k) == (512, 0.1, 5)
    llm.close()
