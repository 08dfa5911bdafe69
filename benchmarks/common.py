"""Helpers the benchmark scripts share."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from charnn.device import cpu_name  # noqa: E402  the CPU model name, for the hardware line of a table

__all__ = ["cpu_name"]
