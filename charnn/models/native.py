"""The sampler's fused recurrent cells in C (`cells_native.c`), compiled on first use, else none.

A token of one stream costs the two layers' matrix products and, around them, about twenty small tensor
operations whose dispatch (a few microseconds each on a CPU) adds a quarter to the products' time. The C file
does a whole LSTM or GRU cell in one pass (and the int8 codes of its output), and one stream's head and plain
draw (argmax of logits + noise). It is built once per machine with
the C compiler already there (`$CC`, else `cc`; -O3 for this CPU, so the cache key names the CPU), kept in
charnn's cache folder, and loaded with ctypes: no build step at install, no torch headers (it only sees raw
float arrays, so it compiles in well under a second). Where there is no compiler, or it fails, or
CHARNN_NATIVE=0, `library()` returns None and the stepper keeps its tensor operations: the same results to
float rounding (exp is a polynomial here: see the C file), at their speed.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

SOURCE = Path(__file__).with_name("cells_native.c")
FLAGS = (["-O3", "-march=native"], ["-O3"])  # the second where the compiler does not know -march=native
I64, PTR, F32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float


def enabled() -> bool:
    return os.environ.get("CHARNN_NATIVE", "1") != "0"


@functools.lru_cache(maxsize=None)
def library() -> Optional[ctypes.CDLL]:
    """The compiled cells (lstm_cell, gru_cell, and head_draw), or None where they cannot be built here. Built at most once
    per process; a built library is reused across runs."""
    if not enabled():
        return None
    try:
        try:
            lib = ctypes.CDLL(str(_build()))
        except OSError:  # a cached file that does not load (cut short by a full disk, say): build it again, once
            _build().unlink(missing_ok=True)
            lib = ctypes.CDLL(str(_build()))
    except (OSError, subprocess.SubprocessError):
        return None
    lib.lstm_cell.restype, lib.gru_cell.restype = ctypes.c_int, None
    lib.lstm_cell.argtypes = [I64, I64, PTR, I64, PTR, PTR, PTR, PTR, PTR, I64, PTR, I64, F32, I64, PTR]
    lib.gru_cell.argtypes = [I64, I64, PTR, I64, PTR, PTR, PTR, I64, PTR, PTR, PTR, PTR, I64, PTR, I64, F32]
    lib.head_draw.restype = None
    lib.head_draw.argtypes = [I64, I64, PTR, I64, PTR, PTR, PTR, I64, PTR, PTR]
    return lib


def _build() -> Path:
    """The shared library for this source, compiler and CPU: from the cache, else compiled into it (written
    under a temporary name and renamed, so two processes building at once both end with a whole file)."""
    compiler = os.environ.get("CC") or "cc"
    if not shutil.which(compiler):
        raise OSError(f"no C compiler ({compiler})")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, compiler.encode(), _cpu().encode()])).hexdigest()[:16]
    folder = Path(os.environ.get("CHARNN_CACHE") or Path.home() / ".cache" / "charnn").expanduser() / "native"
    target = folder / f"cells-{key}{'.dll' if os.name == 'nt' else '.so'}"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=target.suffix)
    os.close(fd)
    try:
        for flags in FLAGS:
            r = subprocess.run([compiler, *flags, "-shared", "-fPIC", "-fno-math-errno", "-o", tmp, str(SOURCE)],
                               capture_output=True, timeout=120)
            if r.returncode == 0:
                os.replace(tmp, target)
                return target
        raise OSError(r.stderr.decode(errors="replace").strip()[:200])
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cpu() -> str:
    """What -march=native compiled for: the CPU's model and feature flags (a cache shared by several machines
    must not hand one CPU's instructions to another)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [x for x in info.splitlines() if x.startswith(("model name", "flags", "Features", "CPU part"))]
        return platform.machine() + "\n" + "\n".join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()
