"""Building the host runtime: cached by fingerprint, and clear when llama.cpp is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from rkllm_core.errors import HostBuildError, ModelLoadError
from rkllm_core.host import build
from tests.host.harness import Session


def test_a_build_is_reused_until_forced(tmp_path: Path) -> None:
    first = build.build_host_runtime("1.2.0", gguf=False, directory=tmp_path)
    stamp = first.stat().st_mtime_ns
    assert build.build_host_runtime("1.2.0", gguf=False, directory=tmp_path) == first
    assert first.stat().st_mtime_ns == stamp
    again = build.build_host_runtime("1.2.0", gguf=False, directory=tmp_path, force=True)
    assert again == first and again.stat().st_mtime_ns != stamp


def test_requiring_the_gguf_engine_without_llama_cpp_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(build, "find_llama_cpp", lambda: None)
    with pytest.raises(HostBuildError, match=r"rkllm-py\[host\]"):
        build.build_host_runtime("1.3.0", gguf=True, directory=tmp_path)


def test_a_gguf_model_on_a_runtime_without_llama_cpp_names_the_extra_and_scripted_still_works(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    scripted_only = build.build_host_runtime("1.3.0", gguf=False, directory=tmp_path)
    monkeypatch.setenv("RKLLM_LIBRARY_PATH", str(scripted_only))
    monkeypatch.setenv("RKLLM_RUNTIME_VERSION", "1.3.0")
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF" + bytes(64))
    from rkllm_core.library import load_library

    lib = load_library()
    assert lib.path == scripted_only.resolve()
    monkeypatch.setattr("tests.host.harness.load_library", lambda *a, **k: lib)
    with pytest.raises(ModelLoadError, match=r"rkllm-py\[host\]"):
        Session("1.3.0", model=model)
    s = Session("1.3.0")
    assert s.run("What is the capital of France?").text() == "The capital of France is Paris."
    s.close()


def test_an_unknown_family_is_refused() -> None:
    from rkllm_core.errors import RuntimeVersionError

    with pytest.raises(RuntimeVersionError, match=r"1\.3\.0"):
        build.build_host_runtime("2.0")
