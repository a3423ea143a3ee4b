"""What this machine offers the runtime: NPU driver, platform, CPUs, memory, NPU device nodes.

Every function reads the files a Rockchip board exposes and returns None (or an empty value)
on other machines; nothing here raises.

Example:
    >>> from rkllm_core.system import machine_summary
    >>> summary = machine_summary()
    >>> sorted(summary)
    ['cpu_cores', 'cpu_model', 'memory_available_mb', 'memory_total_mb', 'npu_driver', 'platform']
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

#: The driver every runtime release since 1.1.0 asks for.
REQUIRED_DRIVER = (0, 9, 8)
DRIVER_FILES = ("/sys/kernel/debug/rknpu/version", "/proc/debug/rknpu/version")
#: The NPU's device nodes: a DRM render node on mainline-style kernels, /dev/rknpu on others.
NPU_DEVICES = ("/dev/dri/renderD129", "/dev/rknpu")
PLATFORMS = ("rk3588", "rk3576", "rk3562", "rv1126b", "rk3566", "rk3568")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def npu_driver_version() -> tuple[int, int, int] | None:
    """The rknpu driver's version (``RKNPU driver: v0.9.8``), or None when it cannot be read."""
    for path in DRIVER_FILES:
        text = _read(path)
        if text:
            match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text)
            if match:
                return (int(match[1]), int(match[2]), int(match[3]))
    return None


def platform() -> str | None:
    """The SoC from the device tree (``RK3588``...), or None off a Rockchip board."""
    text = _read("/proc/device-tree/compatible") or ""
    for name in PLATFORMS:
        if f"rockchip,{name}" in text:
            return name.upper()
    return None


def meminfo_mb() -> dict[str, int]:
    """``MemTotal`` and ``MemAvailable`` in MB (empty when unreadable)."""
    out: dict[str, int] = {}
    for line in (_read("/proc/meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            out[key] = int(value.split()[0]) // 1024
    return out


def cpu_model() -> str | None:
    """The CPU's model name (x86), or its implementer/part lines on ARM."""
    text = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
        if match:
            return match[1].strip()
    return None


def machine_summary() -> dict[str, Any]:
    """Everything above in one dict (``rkllm info`` prints it)."""
    mem = meminfo_mb()
    driver = npu_driver_version()
    return {
        "npu_driver": ".".join(map(str, driver)) if driver else None,
        "platform": platform(),
        "cpu_cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_total_mb": mem.get("MemTotal"),
        "memory_available_mb": mem.get("MemAvailable"),
    }


def npu_device_access() -> list[tuple[str, bool]]:
    """The NPU device nodes that exist, and whether this user may open them read-write."""
    return [(p, os.access(p, os.R_OK | os.W_OK)) for p in NPU_DEVICES if os.path.exists(p)]
