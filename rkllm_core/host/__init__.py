"""The host runtime: a librkllmrt-compatible library for machines without an NPU."""

from __future__ import annotations

from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
