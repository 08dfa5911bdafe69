"""Helpers the benchmark scripts share."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from charnn.device import cpu_name  # noqa: E402  the CPU model name, for the hardware line of a table

import torch  # noqa: E402

__all__ = ["cpu_name", "cpu_features", "CORPORA"]

# the benchmark corpora (tinyshakespeare.txt, kjv/): ../shared/corpora beside the checkout, or $CHARNN_CORPORA
CORPORA = Path(os.environ.get("CHARNN_CORPORA") or Path(__file__).resolve().parents[2] / "shared" / "corpora")


def cpu_features() -> str:
    """What decides bf16 on this CPU, for a table's hardware line: `lscpu` often names only "AMD EPYC", and
    an AVX2 EPYC and a Zen 4 one train differently (`--precision auto` picks bf16 only on the second)."""
    bf16 = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    avx512 = bool(getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")().startswith("AVX512"))
    return ", ".join([("AVX-512" if avx512 else "no AVX-512"), ("AVX512-BF16" if bf16 else "no AVX512-BF16"),
                      ("AMX" if amx else "no AMX")])
