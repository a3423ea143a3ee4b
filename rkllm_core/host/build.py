"""Compile the host runtime for one ABI family into a user cache directory.

The library is never shipped as a binary: it is built from the C sources beside this file with
the system compiler, on first use or by ``rkllm host build``, and rebuilt when the sources,
the family, the compiler or llama.cpp change.

Example:
    >>> from rkllm_core.host.build import build_host_runtime
    >>> path = build_host_runtime("1.3.0")  # doctest: +SKIP
    >>> path.name  # doctest: +SKIP
    'librkllmrt-host-1.3.0-scripted-3f2a9c1d0b.so'
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rkllm_core.errors import HostBuildError, RuntimeVersionError

logger = logging.getLogger("rkllm_core")

SOURCE_DIR = Path(__file__).resolve().parent
SOURCES = ("runtime.c", "engine_scripted.c")
GGUF_SOURCE = "engine_gguf.c"
HEADERS = ("rkllm_abi.h", "host_internal.h")
#: engine_gguf.c follows this release's llama.h (pyproject's `host` extra pins it).
TESTED_LLAMA_CPP_PYTHON = "0.3.36"
FAMILY_MACRO = {"1.1": 110, "1.2.0": 120, "1.2.1": 121, "1.2.3": 123, "1.3.0": 130}


def cache_dir() -> Path:
    """Where built host runtimes live: ``$RKLLM_HOST_CACHE``, else ``~/.cache/rkllm-py/host``."""
    env = os.environ.get("RKLLM_HOST_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rkllm-py" / "host"


@dataclass(frozen=True)
class LlamaCpp:
    """Where the ``llama-cpp-python`` package keeps ``llama.h`` and ``libllama.so``."""

    include_dir: Path
    lib_dir: Path
    version: str

    @property
    def tested(self) -> bool:
        """True for the llama-cpp-python release engine_gguf.c was written and tested against."""
        return self.version == TESTED_LLAMA_CPP_PYTHON


def find_llama_cpp() -> LlamaCpp | None:
    """The llama.cpp that the ``host`` extra installs, or None when it is not installed."""
    try:
        from importlib.metadata import PackageNotFoundError, distribution
    except ImportError:  # pragma: no cover
        return None
    try:
        dist = distribution("llama-cpp-python")
    except PackageNotFoundError:
        return None
    root = Path(str(dist.locate_file("")))
    lib_dir = root / "llama_cpp" / "lib"
    include_dir = root / "include"
    if not (include_dir / "llama.h").exists() or not any(lib_dir.glob("libllama.so*")):
        return None
    return LlamaCpp(include_dir=include_dir, lib_dir=lib_dir, version=dist.version)


def _compiler() -> str:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise HostBuildError(
        "no C compiler found (tried $CC, cc, gcc, clang): install one, e.g. "
        "`apt-get install gcc`, then run `rkllm host build`"
    )


def _fingerprint(family: str, flags: list[str], compiler: str, llama: LlamaCpp | None) -> str:
    h = hashlib.sha256()
    for name in (*SOURCES, *HEADERS, GGUF_SOURCE):
        path = SOURCE_DIR / name
        if path.exists():
            h.update(name.encode())
            h.update(path.read_bytes())
    h.update(family.encode())
    h.update(" ".join(flags).encode())
    h.update(compiler.encode())
    if llama:
        h.update(llama.version.encode())
        h.update(str(llama.lib_dir).encode())
    return h.hexdigest()[:10]


def build_host_runtime(
    family: str = "1.3.0",
    *,
    gguf: bool | None = None,
    force: bool = False,
    directory: Path | None = None,
    sanitize: bool | None = None,
) -> Path:
    """Build (or reuse) the host runtime for ``family`` and return the library's path.

    Args:
        family: the ABI family to export (``"1.1"``, ``"1.2.0"``, ``"1.2.1"``, ``"1.2.3"``,
            ``"1.3.0"``).
        gguf: link the GGUF engine against llama.cpp. None: when ``llama-cpp-python`` is
            installed. True: fail with a clear message when it is not.
        force: rebuild even when a library with the same fingerprint exists.
        directory: where to put it (default :func:`cache_dir`).
        sanitize: build with AddressSanitizer and UndefinedBehaviorSanitizer (None: when
            ``RKLLM_HOST_SANITIZE=1``; the process must then preload libasan).
    """
    if sanitize is None:
        sanitize = os.environ.get("RKLLM_HOST_SANITIZE") == "1"
    if family not in FAMILY_MACRO:
        raise RuntimeVersionError(
            f"unknown runtime family {family!r}; choose one of {', '.join(FAMILY_MACRO)}"
        )
    llama = find_llama_cpp()
    if gguf and llama is None:
        raise HostBuildError(
            "the GGUF engine needs llama.cpp from the llama-cpp-python package: "
            "pip install 'rkllm-py[host]'"
        )
    use_gguf = bool(llama) if gguf is None else gguf
    use_gguf = use_gguf and (SOURCE_DIR / GGUF_SOURCE).exists()
    compiler = _compiler()
    flags = ["-std=c11", "-O2", "-g", "-fPIC", "-shared", "-pthread", "-fvisibility=hidden",
             "-Wall", f"-DRKLLM_HOST_FAMILY={FAMILY_MACRO[family]}"]
    if sanitize:
        flags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                  "-fno-omit-frame-pointer"]
    sources = [str(SOURCE_DIR / s) for s in SOURCES]
    link: list[str] = ["-lm"]
    if use_gguf and llama:
        flags += ["-DRKLLM_HOST_WITH_GGUF", f"-I{llama.include_dir}"]
        sources.append(str(SOURCE_DIR / GGUF_SOURCE))
        link = [f"-L{llama.lib_dir}", "-lllama", f"-Wl,-rpath,{llama.lib_dir}", "-lm"]
    fingerprint = _fingerprint(family, flags + link, compiler, llama if use_gguf else None)
    engines = "gguf" if use_gguf else "scripted"
    out_dir = directory or cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"librkllmrt-host-{family}-{engines}-{fingerprint}.so"
    if target.exists() and not force:
        return target
    with open(out_dir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers build once
        if target.exists() and not force:
            return target
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        cmd = [compiler, *flags, *sources, "-o", str(tmp), *link]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tmp.unlink(missing_ok=True)
            if gguf is None and use_gguf and llama and not llama.tested:
                logger.warning(
                    "llama-cpp-python %s does not match the GGUF engine (written for %s); the "
                    "host runtime is built with the scripted engine only", llama.version,
                    TESTED_LLAMA_CPP_PYTHON)
                return build_host_runtime(family, gguf=False, force=force, directory=directory,
                                          sanitize=sanitize)
            hint = ""
            if use_gguf and llama and not llama.tested:
                hint = (f"\nllama-cpp-python {llama.version} is installed, but the GGUF engine "
                        f"is written for {TESTED_LLAMA_CPP_PYTHON}: pip install "
                        f"'llama-cpp-python=={TESTED_LLAMA_CPP_PYTHON}' (or build with "
                        "gguf=False / `rkllm host build --no-gguf`)")
            raise HostBuildError(
                f"compiling the host runtime failed:\n$ {' '.join(cmd)}\n"
                f"{result.stderr[-4000:]}{hint}"
            )
        os.replace(tmp, target)
    return target


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - thin CLI shim
    """``python -m rkllm_core.host.build [FAMILY...]``."""
    for family in argv or sys.argv[1:] or list(FAMILY_MACRO):
        print(build_host_runtime(family, force=True))
    return 0
