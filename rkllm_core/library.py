"""Find and open ``librkllmrt.so``, detect its runtime release, and bind its functions.

Search order: an explicit path, then ``RKLLM_LIBRARY_PATH``, then the system loader
(``ldconfig`` and ``LD_LIBRARY_PATH``), then the usual install locations. ``host`` in place of
a path means the host runtime (built on first use). The release is ``runtime_version`` or
``RKLLM_RUNTIME_VERSION`` when given; otherwise the exported symbols separate 1.1, 1.2.0 and
>= 1.2.1, and a cached probe reads the release the runtime reports (its binary's version
string, else the log line it prints at ``rkllm_init``) to separate 1.2.x from 1.3.0.

Example:
    >>> from rkllm_core.library import load_library
    >>> lib = load_library("host", runtime_version="1.2.1")
    >>> lib.family.key, lib.detection.method
    ('1.2.1', 'explicit')
    >>> lib.is_host_runtime
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import logging
import os
import platform
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rkllm_core.abi import FAMILIES, AbiFamily, family_for_release
from rkllm_core.errors import (
    LibraryArchitectureError,
    LibraryLoadError,
    LibraryNotFoundError,
    MissingSymbolError,
    RuntimeVersionError,
    UnsupportedFeatureError,
)

logger = logging.getLogger("rkllm_core")

LIBRARY_NAME = "librkllmrt.so"
HOST = "host"

#: Where Rockchip's instructions and board images put the runtime.
USUAL_LOCATIONS = (
    "/usr/lib",
    "/usr/local/lib",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/arm-linux-gnueabihf",
    "/lib",
    "/lib64",
    "/opt/rkllm/lib",
    "~/.local/lib",
    "~/rknn-llm/rkllm-runtime/Linux/librkllm_api/aarch64",
    "~/rknn-llm/rkllm-runtime/Linux/librkllm_api/armhf",
)

_ELF_MACHINES = {3: "i386", 40: "arm (32-bit)", 62: "x86_64", 183: "aarch64", 243: "riscv64"}
_PY_MACHINES = {
    "x86_64": 62, "amd64": 62, "aarch64": 183, "arm64": 183, "armv7l": 40, "armv8l": 40,
    "armv6l": 40, "i686": 3, "i386": 3, "riscv64": 243,
}
_VERSION_RE = re.compile(rb"rkllm-runtime version:? *v?(\d+\.\d+\.\d+)")


@dataclass(frozen=True)
class Detection:
    """How the runtime release was found.

    ``method`` is ``explicit`` (argument), ``environment`` (``RKLLM_RUNTIME_VERSION``),
    ``symbols`` (the exported functions settle it), ``binary`` (the version string in the
    file) or ``probe`` (the version the runtime logs at ``rkllm_init``, run in a subprocess).
    """

    family: str
    release: str
    method: str
    detail: str = ""


def _candidates(path: str | os.PathLike[str] | None) -> list[tuple[str, Path | None]]:
    """Places to try, in order, as (description, path); path None means 'the system loader'."""
    tried: list[tuple[str, Path | None]] = []

    def add(origin: str, value: str) -> None:
        p = Path(os.path.expanduser(value))
        tried.append((origin, p / LIBRARY_NAME if p.is_dir() else p))

    if path is not None:
        add("explicit path", os.fspath(path))
        return tried
    env = os.environ.get("RKLLM_LIBRARY_PATH")
    if env:
        add("RKLLM_LIBRARY_PATH", env)
        return tried
    found = ctypes.util.find_library("rkllmrt")
    if found:
        tried.append(("ldconfig", Path(found)))
    tried.append(("system loader (LD_LIBRARY_PATH, ld.so.cache)", None))
    for location in USUAL_LOCATIONS:
        add("usual location", location)
    return tried


def _not_found_message(tried: list[tuple[str, Path | None]]) -> str:
    lines = [f"{LIBRARY_NAME} was not found. Looked in:"]
    lines += [f"  - {origin}: {p if p else LIBRARY_NAME}" for origin, p in tried]
    arch = "armhf" if platform.machine().startswith("arm") and "64" not in platform.machine() \
        else "aarch64"
    lines += [
        "Rockchip ships it in the airockchip/rknn-llm repository under "
        f"rkllm-runtime/Linux/librkllm_api/{arch}/{LIBRARY_NAME}: copy it to /usr/lib (and run "
        "ldconfig) or point RKLLM_LIBRARY_PATH at it.",
        "No Rockchip board here? Use the host runtime: RKLLM_LIBRARY_PATH=host, or "
        "load_library('host').",
    ]
    return "\n".join(lines)


def check_elf(path: Path) -> None:
    """Raise a clear error when ``path`` is not a shared library for this machine."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
    except OSError as exc:
        raise LibraryLoadError(f"cannot read {path}: {exc.strerror}") from exc
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise LibraryLoadError(
            f"{path} is not a shared library (no ELF header): it may be truncated or a text "
            "file; download librkllmrt.so again from airockchip/rknn-llm"
        )
    bits = 64 if header[4] == 2 else 32
    machine = int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
    here = _PY_MACHINES.get(platform.machine().lower())
    py_bits = ctypes.sizeof(ctypes.c_void_p) * 8
    if (here is not None and machine != here) or bits != py_bits:
        built = f"{_ELF_MACHINES.get(machine, f'machine {machine}')} ({bits}-bit)"
        raise LibraryArchitectureError(
            f"{path} is built for {built}, but this Python runs on {platform.machine()} "
            f"({py_bits}-bit). On the board use the build for its architecture (aarch64 for "
            "64-bit OS images, armhf for 32-bit); on a PC use the host runtime "
            "(RKLLM_LIBRARY_PATH=host)."
        )


def _open(path: Path | None) -> ctypes.CDLL:
    # CDLL (not PyDLL): calls release the GIL, so abort and other threads run during rkllm_run.
    # RTLD_LOCAL (ctypes' default) keeps the runtime's embedded ggml apart from other copies.
    return ctypes.CDLL(str(path) if path else LIBRARY_NAME, mode=os.RTLD_LOCAL)


def find_and_open(path: str | os.PathLike[str] | None = None) -> tuple[Path, ctypes.CDLL]:
    """Locate and dlopen the runtime; raise a typed error that says where we looked."""
    tried = _candidates(path)
    for origin, candidate in tried:
        if candidate is None:
            try:
                cdll = _open(None)
            except OSError:
                continue
            return Path(_loaded_path(cdll) or LIBRARY_NAME), cdll
        if not candidate.exists():
            if origin in ("explicit path", "RKLLM_LIBRARY_PATH"):
                raise LibraryNotFoundError(
                    f"{candidate} does not exist ({origin}).\n" + _not_found_message(tried)
                )
            continue
        check_elf(candidate)
        try:
            return candidate.resolve(), _open(candidate)
        except OSError as exc:
            raise LibraryLoadError(
                f"the system loader refused {candidate}: {exc}. If it names a missing library "
                "(libomp.so on some boards), put that next to librkllmrt.so or install it."
            ) from exc
    raise LibraryNotFoundError(_not_found_message(tried))


def _loaded_path(cdll: ctypes.CDLL) -> str | None:
    """The file a library handle came from, read from /proc/self/maps."""
    try:
        func = cdll["rkllm_init"]
    except AttributeError:
        return None
    address = ctypes.cast(func, ctypes.c_void_p).value or 0
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split()
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if lo <= address < hi and len(parts) >= 6:
                    return parts[5]
    except OSError:
        return None
    return None


def exported(cdll: ctypes.CDLL, names: list[str] | tuple[str, ...]) -> set[str]:
    """Which of ``names`` the library exports."""
    present = set()
    for name in names:
        try:
            cdll[name]
        except AttributeError:
            continue
        present.add(name)
    return present


def _all_function_names() -> list[str]:
    return sorted({n for f in FAMILIES.values() for n in f.functions})


def family_from_symbols(symbols: set[str]) -> str:
    """``'1.1'``, ``'1.2.0'`` or ``'1.2.1+'`` from the exported functions."""
    if "rkllm_set_function_tools" in symbols:
        return "1.2.1+"
    if "rkllm_clear_kv_cache" in symbols:
        return "1.2.0"
    if "rkllm_init" in symbols:
        return "1.1"
    raise MissingSymbolError(
        "this library does not export rkllm_init: it is not the RKLLM runtime "
        "(librkllmrt.so from airockchip/rknn-llm)"
    )


def read_version_string(path: Path) -> str | None:
    """The release in a ``rkllm-runtime version: X.Y.Z`` string inside the binary, if any."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    match = _VERSION_RE.search(data)
    return match.group(1).decode() if match else None


def _probe_cache_file() -> Path:
    from rkllm_core.host.build import cache_dir

    return cache_dir().parent / "runtime-probe.json"


_PROBE_SCRIPT = r"""
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
init = lib.rkllm_init
init.restype = ctypes.c_int
init.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_void_p]
param = ctypes.create_string_buffer(512)   # zeroed; larger than any family's RKLLMParam
path = ctypes.c_char_p(b"/nonexistent/rkllm-py-release-probe.rkllm")
ctypes.memmove(param, ctypes.byref(path), ctypes.sizeof(ctypes.c_void_p))  # model_path: offset 0
handle = ctypes.c_void_p()
init(ctypes.byref(handle), param, None)
"""


def probe_release(path: Path, timeout: float = 60.0) -> str | None:
    """Ask the runtime which release it is, in a child process, and cache the answer.

    The runtime logs ``rkllm-runtime version: X.Y.Z`` at ``rkllm_init`` before it reads the
    model file, so an init with a path that does not exist prints it and fails harmlessly;
    a child process keeps a runtime that crashes on that from taking this one down. The answer
    is cached per file (path, size, modification time).
    """
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    cache_file = _probe_cache_file()
    cache: dict[str, str] = {}
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    try:
        result = subprocess.run(
            [sys.executable, "-c", _PROBE_SCRIPT, str(path)],
            capture_output=True, timeout=timeout, check=False,
        )
        output = result.stderr + result.stdout
    except subprocess.TimeoutExpired as exc:
        output = (exc.stderr or b"") + (exc.stdout or b"")
    match = _VERSION_RE.search(output)
    if not match:
        return None
    release = match.group(1).decode()
    cache[key] = release
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, cache_file)
    except OSError:
        logger.debug("could not write the runtime probe cache %s", cache_file)
    return release


def detect_release(
    path: Path, cdll: ctypes.CDLL, runtime_version: str | None = None, *, probe: bool = True
) -> Detection:
    """Decide which layout family ``cdll`` uses (see the module docstring for the rules)."""
    symbols = exported(cdll, _all_function_names())
    by_symbols = family_from_symbols(symbols)
    forced, method = runtime_version, "explicit"
    if forced is None and os.environ.get("RKLLM_RUNTIME_VERSION"):
        forced, method = os.environ["RKLLM_RUNTIME_VERSION"], "environment"
    if forced is not None:
        family = family_for_release(forced)
        _require_symbols(family, symbols, path, f"runtime_version {forced!r} ({method})")
        written = read_version_string(path)
        if written and family_for_release(written).key not in _same_layout(family.key):
            raise RuntimeVersionError(
                f"{path} says it is runtime {written}, but {forced} was asked for ({method}); "
                f"their layouts differ and every call would corrupt memory. Use "
                f"runtime_version={written!r} or unset RKLLM_RUNTIME_VERSION."
            )
        return Detection(family.key, forced.strip().lstrip("v"), method)
    if by_symbols in ("1.1", "1.2.0"):
        family = FAMILIES[by_symbols]
        _require_symbols(family, symbols, path, "its exported symbols")
        release = read_version_string(path) or family.releases[0]
        return Detection(family.key, release, "symbols",
                         f"{len(symbols)} exported functions match family {family.key}")
    written = read_version_string(path)
    if written:
        family = family_for_release(written)
        _require_symbols(family, symbols, path, f"the version string {written}")
        return Detection(family.key, written, "binary", "version string in the library file")
    reported = probe_release(path) if probe else None
    if reported:
        family = family_for_release(reported)
        _require_symbols(family, symbols, path, f"the reported release {reported}")
        return Detection(family.key, reported, "probe", "logged by rkllm_init in a child process")
    raise RuntimeVersionError(
        f"{path} exports the functions of runtime >= 1.2.1, which 1.2.x and 1.3.0 share, and "
        "its release could not be read (no version string in the file; the init probe printed "
        "none). The layouts differ, so guessing could crash: set RKLLM_RUNTIME_VERSION (or "
        "runtime_version=) to the release printed in the runtime's 'rkllm-runtime version' "
        "log line, e.g. 1.2.3 or 1.3.0."
    )


def _same_layout(key: str) -> set[str]:
    return {"1.2.1", "1.2.3"} if key in ("1.2.1", "1.2.3") else {key}


def _require_symbols(family: AbiFamily, symbols: set[str], path: Path, why: str) -> None:
    missing = sorted(set(family.functions) - symbols)
    if missing:
        raise MissingSymbolError(
            f"{path} lacks {', '.join(missing)}, which runtime {family.releases[0]} exports "
            f"(chosen from {why}). The library is older than that release or damaged: use the "
            "librkllmrt.so of the toolkit release your model was converted with, or set "
            "RKLLM_RUNTIME_VERSION to the release it really is."
        )


class RuntimeLibrary:
    """A loaded ``librkllmrt.so`` (or host runtime) with one family's signatures bound.

    Methods mirror the C functions one to one and hold no behaviour beyond refusing a function
    the family lacks (:class:`UnsupportedFeatureError`, before anything reaches C).
    Use :func:`load_library` rather than the constructor.

    Example:
        >>> lib = load_library("host", runtime_version="1.3.0")
        >>> param = lib.create_default_param()
        >>> param.top_k, round(param.top_p, 2)
        (40, 0.9)
    """

    def __init__(self, path: Path, cdll: ctypes.CDLL, detection: Detection) -> None:
        self.path = path
        self.detection = detection
        self.family: AbiFamily = FAMILIES[detection.family]
        self._cdll = cdll
        self._functions: dict[str, Any] = {}
        for name, spec in self.family.functions.items():
            fn = cdll[name]  # a fresh function object: argtypes of one binding never leak
            fn.restype = spec.restype
            fn.argtypes = list(spec.argtypes)
            self._functions[name] = fn

    @property
    def release(self) -> str:
        """The runtime release, e.g. ``"1.2.3"``."""
        return self.detection.release

    @property
    def is_host_runtime(self) -> bool:
        """True for rkllm-py's host runtime (it exports ``rkllm_host_version_string``)."""
        try:
            self._cdll["rkllm_host_version_string"]
        except AttributeError:
            return False
        return True

    def function(self, name: str) -> Any:
        """The bound ctypes function ``name``; UnsupportedFeatureError if the family lacks it."""
        try:
            return self._functions[name]
        except KeyError:
            added = next((f.releases[0] for f in FAMILIES.values() if name in f.functions), None)
            if added is None:
                raise UnsupportedFeatureError(f"{name} is not an RKLLM runtime function") from None
            raise UnsupportedFeatureError(
                f"{name} needs runtime {added} or newer; this library is runtime {self.release}"
            ) from None

    # One typed method per C function, so callers get checked names and real signatures.
    def create_default_param(self) -> Any:
        """``rkllm_createDefaultParam()``: an ``RKLLMParam`` filled with the runtime's defaults."""
        return self.function("rkllm_createDefaultParam")()

    def init(self, handle: Any, param: Any, callback: Any) -> int:
        """``rkllm_init(&handle, &param, callback)``; callback is an RKLLMCallback* on 1.3.0."""
        return int(self.function("rkllm_init")(handle, param, callback))

    def destroy(self, handle: Any) -> int:
        """``rkllm_destroy(handle)``."""
        return int(self.function("rkllm_destroy")(handle))

    def run(self, handle: Any, input_: Any, infer: Any, userdata: Any = None) -> int:
        """``rkllm_run``: blocks, calling the result callback per token."""
        return int(self.function("rkllm_run")(handle, input_, infer, userdata))

    def abort(self, handle: Any) -> int:
        """``rkllm_abort(handle)``."""
        return int(self.function("rkllm_abort")(handle))

    def is_running(self, handle: Any) -> bool:
        """``rkllm_is_running(handle) != 0`` (1 while running, whatever old headers say)."""
        return int(self.function("rkllm_is_running")(handle)) != 0

    def load_lora(self, handle: Any, adapter: Any) -> int:
        """``rkllm_load_lora(handle, &adapter)``."""
        return int(self.function("rkllm_load_lora")(handle, adapter))

    def load_prompt_cache(self, handle: Any, path: bytes) -> int:
        """``rkllm_load_prompt_cache(handle, path)``."""
        return int(self.function("rkllm_load_prompt_cache")(handle, path))

    def release_prompt_cache(self, handle: Any) -> int:
        """``rkllm_release_prompt_cache(handle)``."""
        return int(self.function("rkllm_release_prompt_cache")(handle))

    def clear_kv_cache(self, handle: Any, keep_system_prompt: bool,
                       start_pos: Any = None, end_pos: Any = None) -> int:
        """``rkllm_clear_kv_cache``: ranges (per batch) exist from 1.2.1 on."""
        fn = self.function("rkllm_clear_kv_cache")
        if len(self.family.functions["rkllm_clear_kv_cache"].argtypes) == 2:
            if start_pos is not None or end_pos is not None:
                raise UnsupportedFeatureError(
                    "clearing KV-cache ranges needs runtime 1.2.1 or newer; this library is "
                    f"runtime {self.release}"
                )
            return int(fn(handle, int(keep_system_prompt)))
        return int(fn(handle, int(keep_system_prompt), start_pos, end_pos))

    def get_kv_cache_size(self, handle: Any, sizes: Any) -> int:
        """``rkllm_get_kv_cache_size(handle, sizes)``: one int per batch."""
        return int(self.function("rkllm_get_kv_cache_size")(handle, sizes))

    def set_chat_template(self, handle: Any, system: bytes, prefix: bytes, postfix: bytes) -> int:
        """``rkllm_set_chat_template``: also clears the KV cache and disables tools/thinking."""
        return int(self.function("rkllm_set_chat_template")(handle, system, prefix, postfix))

    def set_function_tools(self, handle: Any, system: bytes, tools: bytes,
                           tool_response: bytes) -> int:
        """``rkllm_set_function_tools``: fails when the model has no chat template."""
        return int(self.function("rkllm_set_function_tools")(handle, system, tools, tool_response))

    def set_cross_attn_params(self, handle: Any, params: Any) -> int:
        """``rkllm_set_cross_attn_params(handle, &params)``."""
        return int(self.function("rkllm_set_cross_attn_params")(handle, params))


_loaded: dict[tuple[str, str], RuntimeLibrary] = {}
_loaded_lock = threading.Lock()


def load_library(
    path: str | os.PathLike[str] | None = None,
    *,
    runtime_version: str | None = None,
    probe: bool = True,
) -> RuntimeLibrary:
    """Find, open and bind the runtime once per (file, family); see the module docstring.

    Args:
        path: a file, a directory holding ``librkllmrt.so``, or ``"host"`` for the host runtime
            (then ``runtime_version`` picks the family to build, default 1.3.0).
        runtime_version: the release (``"1.2.3"``) when detection should not decide.
        probe: allow the child-process probe when the symbols and the file are not enough.
    """
    spec = os.fspath(path) if path is not None else os.environ.get("RKLLM_LIBRARY_PATH")
    if spec == HOST:
        from rkllm_core.host.build import build_host_runtime

        release = runtime_version or os.environ.get("RKLLM_RUNTIME_VERSION") or "1.3.0"
        family = family_for_release(release)
        path = build_host_runtime(family.key)
        runtime_version = release
    with _loaded_lock:
        lib_path, cdll = find_and_open(path)
        detection = detect_release(lib_path, cdll, runtime_version, probe=probe)
        key = (str(lib_path), detection.family)
        if key not in _loaded:
            _loaded[key] = RuntimeLibrary(lib_path, cdll, detection)
            logger.info("loaded %s: runtime %s (family %s, detected by %s)", lib_path,
                        detection.release, detection.family, detection.method)
        return _loaded[key]
