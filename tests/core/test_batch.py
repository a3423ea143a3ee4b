"""Batched runs (n_batch > 1, runtime 1.2.1+): one run answers several prompts side by side."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rkllm_core import RKLLM, ExtendParams
from rkllm_core.errors import InvalidParameterError, UnsupportedFeatureError

MODEL = """RKLLM-SCRIPTED 1
when contains "capital of france" reply "The capital of France is Paris."
when contains "unicode" reply "Grüße 你好 🙂!"
when contains "long" reply "one two three four five six seven eight nine ten"
default reply "Hello there!"
"""


@pytest.fixture(params=["1.2.1", "1.2.3", "1.3.0"])
def batched(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RKLLM]:
    path = tmp_path / "m.scripted"
    path.write_text(MODEL)
    with RKLLM(path, library="host", runtime_version=request.param, max_context_len=512,
               extend=ExtendParams(n_batch=3)) as llm:
        yield llm


def test_each_prompt_gets_its_own_answer_text_tokens_and_perf(batched: RKLLM) -> None:
    answers = batched.generate_batch(["What is the capital of France?", "unicode please",
                                      "Hi"])
    assert [a.text for a in answers] == ["The capital of France is Paris.", "Grüße 你好 🙂!",
                                         "Hello there!"]
    assert all(a.finish_reason == "stop" and a.token_ids for a in answers)
    assert len({tuple(a.token_ids) for a in answers}) == 3
    assert all(a.perf.prefill_tokens and a.perf.decode_tokens for a in answers)


def test_fewer_prompts_than_lanes_and_the_model_stays_usable(batched: RKLLM) -> None:
    [only] = batched.generate_batch(["something long"])
    assert only.text == "one two three four five six seven eight nine ten"
    again = batched.generate_batch(["Hi", "What is the capital of France?"])
    assert [a.text for a in again] == ["Hello there!", "The capital of France is Paris."]


def test_single_input_runs_are_refused_on_a_batched_model(batched: RKLLM) -> None:
    # one input where the runtime reads n_batch would make it read past our struct
    with pytest.raises(UnsupportedFeatureError, match="generate_batch"):
        batched.generate("Hi")
    with pytest.raises(InvalidParameterError, match="1 to 3 prompts"):
        batched.generate_batch(["a", "b", "c", "d"])
    with pytest.raises(InvalidParameterError, match="list of strings"):
        batched.generate_batch("Hi")


def test_per_run_max_new_tokens_in_a_batch(batched: RKLLM) -> None:
    if batched.lib.family.key != "1.3.0":
        with pytest.raises(UnsupportedFeatureError, match=r"1\.3\.0"):
            batched.generate_batch(["something long"], max_new_tokens=3)
        return
    [short] = batched.generate_batch(["something long"], max_new_tokens=3)
    assert short.text == "one two three" and short.finish_reason == "length"


def test_generate_batch_needs_a_batched_model(tmp_path: Path) -> None:
    path = tmp_path / "m.scripted"
    path.write_text(MODEL)
    with RKLLM(path, library="host", max_context_len=512) as llm, \
            pytest.raises(UnsupportedFeatureError, match="n_batch"):
        llm.generate_batch(["Hi", "Hello"])
