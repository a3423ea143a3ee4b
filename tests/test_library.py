"""Finding and opening the runtime: every failure a user meets is a typed, actionable error."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from rkllm_core.abi import FAMILIES
from rkllm_core.errors import (
    LibraryArchitectureError,
    LibraryLoadError,
    LibraryNotFoundError,
    MissingSymbolError,
    RKLLMError,
    RuntimeVersionError,
)
from rkllm_core.library import detect_release, family_from_symbols, find_and_open, load_library


def _fake_runtime(tmp_path: Path, functions: list[str], extra: str = "") -> Path:
    """A shared library that exports ``functions`` (each returning -1) and nothing else."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("needs a C compiler")
    source = tmp_path / "fake.c"
    body = "\n".join(f"int {name}(void) {{ return -1; }}" for name in functions)
    source.write_text(body + "\n" + extra)
    out = tmp_path / "librkllmrt.so"
    subprocess.run(["cc", "-shared", "-fPIC", str(source), "-o", str(out)], check=True)
    return out


def test_a_path_that_does_not_exist_names_itself_and_where_rockchip_ships_the_library(
    tmp_path: Path,
) -> None:
    with pytest.raises(LibraryNotFoundError) as info:
        load_library(tmp_path / "nowhere" / "librkllmrt.so")
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "librkllmrt.so") in message
    assert "rkllm-runtime/Linux/librkllm_api" in message
    assert "host" in message  # the way out on a PC


def test_a_directory_without_the_library_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(LibraryNotFoundError, match=r"librkllmrt\.so"):
        find_and_open(tmp_path)


def test_the_environment_variable_is_used_and_named_when_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RKLLM_LIBRARY_PATH", str(tmp_path / "missing.so"))
    with pytest.raises(LibraryNotFoundError, match="RKLLM_LIBRARY_PATH"):
        load_library()


def test_a_truncated_or_text_file_is_a_load_error_not_a_crash(tmp_path: Path) -> None:
    bogus = tmp_path / "librkllmrt.so"
    bogus.write_text("version https://git-lfs.github.com/spec/v1\n")  # an LFS pointer
    with pytest.raises(LibraryLoadError, match="no ELF header"):
        load_library(bogus)


def test_a_library_for_another_architecture_says_which_build_to_use(tmp_path: Path) -> None:
    real = _fake_runtime(tmp_path, ["rkllm_init"])
    data = bytearray(real.read_bytes())
    here = int.from_bytes(data[18:20], "little")
    data[18:20] = (40 if here != 40 else 183).to_bytes(2, "little")  # arm or aarch64
    foreign = tmp_path / "foreign" / "librkllmrt.so"
    foreign.parent.mkdir()
    foreign.write_bytes(bytes(data))
    with pytest.raises(LibraryArchitectureError, match="aarch64 for 64-bit"):
        load_library(foreign)


def test_a_library_that_is_not_the_rkllm_runtime_is_refused(tmp_path: Path) -> None:
    lib = _fake_runtime(tmp_path, ["something_else"])
    with pytest.raises(MissingSymbolError, match="not the RKLLM runtime"):
        load_library(lib)


def test_a_runtime_that_lacks_a_symbol_of_its_release_names_the_symbol(tmp_path: Path) -> None:
    names = sorted(FAMILIES["1.2.1"].functions)
    names.remove("rkllm_get_kv_cache_size")
    lib = _fake_runtime(tmp_path, names)
    with pytest.raises(MissingSymbolError, match="rkllm_get_kv_cache_size"):
        load_library(lib, runtime_version="1.2.1")


def test_symbols_separate_the_old_families(tmp_path: Path) -> None:
    for key in ("1.1", "1.2.0"):
        d = tmp_path / key
        d.mkdir()
        lib = _fake_runtime(d, sorted(FAMILIES[key].functions))
        loaded = load_library(lib)
        assert (loaded.family.key, loaded.detection.method) == (key, "symbols")
    assert family_from_symbols(set(FAMILIES["1.3.0"].functions)) == "1.2.1+"


def test_a_version_string_in_the_binary_settles_1_2_x_against_1_3_0(tmp_path: Path) -> None:
    lib = _fake_runtime(
        tmp_path, sorted(FAMILIES["1.3.0"].functions),
        extra='const char rkllm_banner[] = "rkllm-runtime version: 1.3.0";',
    )
    loaded = load_library(lib)
    assert (loaded.family.key, loaded.release, loaded.detection.method) == (
        "1.3.0", "1.3.0", "binary")


def test_forcing_a_release_that_contradicts_the_binary_is_refused(tmp_path: Path) -> None:
    lib = _fake_runtime(
        tmp_path, sorted(FAMILIES["1.3.0"].functions),
        extra='const char rkllm_banner[] = "rkllm-runtime version: 1.3.0";',
    )
    with pytest.raises(RuntimeVersionError, match="layouts differ"):
        load_library(lib, runtime_version="1.2.3")


def test_an_undecidable_release_is_reported_never_guessed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RKLLM_HOST_CACHE", str(tmp_path / "cache" / "host"))
    lib = _fake_runtime(tmp_path, sorted(FAMILIES["1.2.1"].functions))  # prints no version
    path, cdll = find_and_open(lib)
    with pytest.raises(RuntimeVersionError, match="RKLLM_RUNTIME_VERSION"):
        detect_release(path, cdll)


def test_the_host_runtime_is_found_by_its_name_and_reports_its_release() -> None:
    lib = load_library("host", runtime_version="1.2.3")
    assert lib.is_host_runtime
    assert (lib.family.key, lib.release) == ("1.2.3", "1.2.3")


def test_the_init_probe_reads_the_release_a_runtime_logs_at_init(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No version string in the file: the child-process probe reads the init log line."""
    monkeypatch.setenv("RKLLM_HOST_CACHE", str(tmp_path / "cache" / "host"))
    names = sorted(set(FAMILIES["1.3.0"].functions) - {"rkllm_init"})
    lib = _fake_runtime(tmp_path, names, extra=(
        "#include <stdio.h>\n"
        "int rkllm_init(void **h, void *p, void *cb) {\n"
        '  fprintf(stderr, "I rkllm: rkllm-runtime version: %d.%d.%d, platform: RK3588\\n",'
        " 1, 3, 0);\n"
        "  return -1;\n}\n"))
    path, cdll = find_and_open(lib)
    detection = detect_release(path, cdll)
    assert (detection.family, detection.release, detection.method) == ("1.3.0", "1.3.0", "probe")
    # the answer is cached per file: a second detection does not start a child process
    monkeypatch.setattr("subprocess.run", None)
    assert detect_release(path, cdll).release == "1.3.0"


def test_every_library_error_is_an_rkllm_error() -> None:
    for cls in (LibraryNotFoundError, LibraryLoadError, LibraryArchitectureError,
                MissingSymbolError, RuntimeVersionError):
        assert issubclass(cls, RKLLMError)
