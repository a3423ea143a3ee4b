"""The model settings both adapters share (rkllm_core.settings): the same keyword arguments
load the same model from either framework, sampling defaults reach each run, and a bad value
is refused on construction with the field named."""

from __future__ import annotations

import copy
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.llms import ChatMessage
from pydantic import ValidationError

import langchain_rkllm as lc
import llama_index_rkllm as li
from rkllm_core import RKLLM as CoreRKLLM
from rkllm_core import IsolatedRKLLM
from rkllm_core.errors import InvalidParameterError, UnsupportedFeatureError
from rkllm_core.shared import shared_model

MODEL = 'RKLLM-SCRIPTED 1\nhidden_size = 16\ndefault reply "Hello there."\n'
#: What the host runtime logs (RKLLM_LOG_LEVEL=2) for a run given its own sampling.
PER_RUN = re.compile(r"per-run sampling: top_k (\d+), top_p ([\d.]+), temperature ([\d.]+)")


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "assistant.scripted"
    path.write_text(MODEL)
    return path


def per_run_sampling(capfd: pytest.CaptureFixture[str]) -> list[tuple[int, float, float]]:
    """(top_k, top_p, temperature) of each run since the last call that had its own sampling."""
    return [(int(k), float(p), float(t)) for k, p, t in PER_RUN.findall(capfd.readouterr().err)]


def test_the_same_keyword_arguments_load_one_model_for_every_class_of_both_adapters(
        model_file: Path, backend: str) -> None:
    common: dict[str, Any] = {"model_path": str(model_file), "library": "host",
                              "max_context_len": 1024, "isolated": backend == "isolated",
                              "model_kwargs": {"n_keep": 8}}
    objects = [lc.ChatRKLLM(**common), lc.RKLLM(**common), lc.RKLLMEmbeddings(**common),
               lc.RKLLMReranker(**common), li.RKLLM(**common), li.RKLLMEmbedding(**common),
               li.RKLLMRerank(**common)]
    assert len({id(o.client) for o in objects}) == 1
    model = objects[0].client
    assert isinstance(model, IsolatedRKLLM) == (backend == "isolated")
    assert (model.params.max_context_len, model.params.n_keep) == (1024, 8)
    # sampling defaults are load-time settings, the same from either framework
    greedy = lc.ChatRKLLM(**common, top_k=1, temperature=0.0)
    assert li.RKLLM(**common, top_k=1, temperature=0.0).client is greedy.client is not model
    assert (greedy.client.params.top_k, greedy.client.params.temperature) == (1, 0.0)


def test_a_given_model_is_used_and_its_settings_are_read_back_by_both_adapters(
        model_file: Path) -> None:
    with CoreRKLLM(model_file, library="host", max_context_len=512) as core:
        for obj in (lc.RKLLMEmbeddings(client=core), li.RKLLMEmbedding(client=core)):
            assert obj.client is core
            assert (obj.model_path, obj.library, obj.runtime_version, obj.isolated) == (
                str(model_file), "host", "1.3.0", False)


def test_sampling_defaults_are_what_each_run_starts_from(
        model_file: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RKLLM_LOG_LEVEL", "2")
    loaded = lc.ChatRKLLM(model_path=str(model_file), library="host", max_context_len=512,
                          temperature=0.3)
    assert loaded.client.params.temperature == 0.3
    capfd.readouterr()
    loaded.invoke("Hi")
    assert per_run_sampling(capfd) == []  # the model loaded with them: nothing to override
    loaded.invoke("Hi", top_k=1)
    assert per_run_sampling(capfd) == [(1, 0.9, 0.3)]  # the call's field, the others kept
    # a model loaded elsewhere (runtime defaults: top_k 40, temperature 0.8) runs with the
    # object's defaults, in both adapters
    with CoreRKLLM(model_file, library="host", max_context_len=512) as core:
        chat = lc.ChatRKLLM(client=core, temperature=0.3)
        llm = li.RKLLM(client=core, temperature=0.3)
        capfd.readouterr()
        assert chat.invoke("Hi").content == "Hello there."
        assert llm.chat([ChatMessage(role="user", content="Hi")]).message.content == (
            "Hello there.")
        assert llm.complete("Hi", top_k=2).text == "Hello there."
        assert lc.RKLLM(client=core, top_p=0.5).invoke("Hi") == "Hello there."
        assert per_run_sampling(capfd) == [(40, 0.9, 0.3), (40, 0.9, 0.3), (2, 0.9, 0.3),
                                           (40, 0.5, 0.8)]


def test_defaults_a_runtime_cannot_apply_per_run_are_refused_with_the_fields_named(
        model_file: Path) -> None:
    with CoreRKLLM(model_file, library="host", runtime_version="1.2.3",
                   max_context_len=512) as core:
        assert lc.ChatRKLLM(client=core, temperature=0.8).invoke("Hi").content  # = loaded
        with pytest.raises(UnsupportedFeatureError, match="temperature"):
            lc.ChatRKLLM(client=core, temperature=0.3).invoke("Hi")
        with pytest.raises(UnsupportedFeatureError, match="top_k"):
            li.RKLLM(client=core, top_k=1).complete("Hi")


@pytest.mark.parametrize(("cls", "field", "value", "message"), [
    (lc.ChatRKLLM, "top_p", 1.5, "less than or equal to 1"),
    (li.RKLLM, "temperature", -0.1, "greater than or equal to 0"),
    (lc.RKLLM, "mirostat", 3, "Input should be 0, 1 or 2"),
    (li.RKLLMEmbedding, "max_context_len", 0, "greater than 0"),
    (lc.RKLLMReranker, "isolated", "sometimes", "valid boolean"),
])
def test_a_bad_value_is_refused_on_construction_naming_the_field(
        model_file: Path, cls: type, field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=rf"(?s){field}\n.*{message}"):
        cls(model_path=str(model_file), library="host", **{field: value})


def test_a_bad_per_call_value_names_the_field(model_file: Path) -> None:
    chat = lc.ChatRKLLM(model_path=str(model_file), library="host", max_context_len=512)
    with pytest.raises(ValidationError, match=r"(?s)top_p\n.*less than or equal to 1"):
        chat.invoke("Hi", top_p=2.0)


@pytest.mark.parametrize("cls", [lc.ChatRKLLM, lc.RKLLMEmbeddings, li.RKLLM, li.RKLLMRerank])
def test_no_model_and_a_wrong_client_say_what_to_pass(cls: type) -> None:
    with pytest.raises(InvalidParameterError, match=rf"{cls.__name__} needs model_path= .* or "
                       "client="):
        cls(library="host")
    with pytest.raises(InvalidParameterError, match=r"client must be an rkllm_core\.RKLLM"):
        cls(client="model.rkllm")


def test_a_call_naming_another_file_loads_it_with_the_same_settings(
        model_file: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.scripted"
    other.write_text(MODEL.replace("Hello there.", "Other model."))
    chat = lc.ChatRKLLM(model_path=str(model_file), library="host", max_context_len=512,
                        top_k=1, isolated=True)
    assert chat.invoke("Hi", model=str(other)).content == "Other model."
    assert isinstance(shared_model(other, library="host", max_context_len=512, top_k=1,
                                   isolated=True), IsolatedRKLLM)


@pytest.mark.parametrize("cls", [lc.ChatRKLLM, li.RKLLM, li.RKLLMEmbedding])
def test_copies_share_the_loaded_model_and_never_carry_the_native_handle(
        model_file: Path, cls: type) -> None:
    obj = cls(model_path=str(model_file), library="host", max_context_len=512)
    assert copy.deepcopy(obj).client is obj.client
    fields, private = dict(obj.__dict__), dict(obj.__pydantic_private__ or {})
    data = pickle.dumps(obj)
    assert b"RKLLMHandle" not in data and b"c_void_p" not in data
    assert (obj.__dict__, obj.__pydantic_private__ or {}) == (fields, private)  # left whole
    back = pickle.loads(data)
    assert back is not obj and back.client is obj.client
