"""Choosing the device, the default batch size, what the device can do (native bf16), and the autocast context
(auto precision: training/precision.py for training, generation/precision.py for decoding)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import torch

from charnn.errors import CharnnError, ConfigError


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """auto: CUDA when present, then Apple MPS, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise CharnnError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
        return torch.device("cuda")
    if name == "mps":
        if not _mps_available():
            raise CharnnError("--device mps was asked for but Apple MPS is not available; use --device cpu or auto")
        return torch.device("mps")
    raise ConfigError(f"unknown --device {name!r}; choose auto, cpu, cuda or mps")


def cpuinfo() -> Optional[str]:
    """Linux's /proc/cpuinfo (the CPU's model, flags or Arm's Features), or None where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def mac_cpu_name() -> str:
    """macOS's name for the CPU ("Apple M2", an Intel model), where there is no /proc/cpuinfo; '' elsewhere."""
    if sys.platform != "darwin":
        return ""
    try:
        return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC 7B13"), for results tables and for keys of per-machine decisions."""
    for line in (cpuinfo() or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return mac_cpu_name() or platform.processor() or platform.machine()


@dataclass
class PrecisionChoice:
    precision: str  # what training (or a decode) autocasts to: fp32, bf16 or fp16
    how: str  # forced (the flag), measured (just now), cached (by an earlier run), rule (no contest), resumed
    speedup: Optional[float] = None  # bf16 steps per fp32 step, as measured (None where nothing was timed)
    reason: str = ""  # why, in words

    def to_dict(self) -> dict:
        return asdict(self)


def native_bf16(device: torch.device) -> Tuple[bool, str]:
    """Whether `device` does bf16 arithmetic in hardware (else autocast to bf16 cannot beat fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(), "this GPU has no bf16"
    if device.type == "cpu":
        probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
        try:  # (torch's probes know x86 only: an Arm CPU's bf16, Graviton 3's or Apple M2's, is read or measured)
            has = bool((probe and probe()) or (amx and amx())) if x86 and (probe or amx) else _cpuinfo_bf16()
        except RuntimeError:
            has = False
        return has, ("this CPU has no native bf16 (no AVX512-BF16 or AMX), so bf16 would be emulated" if x86 else
                     "this CPU has no native bf16 (no BF16 in its features), so bf16 would be emulated")
    return False, f"bf16 autocast is not measured on {device.type}"


def _cpuinfo_bf16() -> bool:
    """Where torch's probes cannot say (torch before 2.5, a CPU other than x86): Linux's CPU flags (x86's
    avx512_bf16 or amx_bf16, Arm's bf16), and where they cannot be read (macOS), True: the measurement decides."""
    lines = (cpuinfo() or "").splitlines()
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith(("flags", "Features"))), None)
    return flags is None or any(f in flags for f in ("avx512_bf16", "amx_bf16", "bf16"))


def machine_key(device: torch.device, threads: Optional[int] = None) -> str:
    """The machine a measured decision (auto precision, training's or decoding's) holds for: processor, cores,
    torch threads, torch and the device kind, as the cache's keys begin."""
    return (f"{machine_name(device)} | {os.cpu_count()} cpus | {threads or torch.get_num_threads()} threads | "
            f"torch {torch.__version__} | {device.type}")


def model_key(model) -> str:
    """A model as a measured decision's key names it: its class and its parameters' shapes."""
    return f"{type(model).__name__} " + ",".join(f"{tuple(p.shape)}" for p in model.parameters())


def machine_name(device: torch.device) -> str:
    """The processor that runs training or decoding: the GPU's name, or the CPU's model name."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


CGROUP_MEMORY = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # (limit, usage): v2, v1
                 ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def available_memory() -> Optional[int]:
    """Bytes of memory this process can take now without swapping: Linux's MemAvailable, or less where a container's
    memory limit (cgroup v2 or v1) leaves less; None where neither can be read. Linux grants big allocations and
    kills the process later when they are touched (overcommit), so what would not fit must be refused before it is
    asked for."""
    room = []
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
            room += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage in CGROUP_MEMORY:
        try:
            with open(limit, encoding="ascii") as f, open(usage, encoding="ascii") as g:
                most = f.read().strip()
                if most != "max" and int(most) < 1 << 60:  # (v1 writes no limit as about 2**63)
                    room.append(max(0, int(most) - int(g.read().strip())))
                break
        except (OSError, ValueError):
            continue
    return min(room) if room else None


def default_batch_size(device: torch.device) -> int:
    """Streams per batch when --batch-size is not given (a --pairs run on the CPU: charnn.tasks.pairs.PAIR_BATCHES).

    CPU: 8. On 2 cores a 2x256 LSTM trains at about the same chars/s with 8 streams as with 64 (36-40k), and
    at equal characters smaller batches learn more, because they take more optimiser steps: val 1.429 (8),
    1.444 (16), 1.470 (32), 1.500 (64) after 11M characters of tinyshakespeare (benchmarks/TRAINING.md).
    CUDA: 256 (streams, or pairs of a --pairs run). The recurrence is sequential in time, so a GPU is mostly idle
    at CPU batch sizes and more streams use its width at almost no cost per step."""
    return 256 if device.type == "cuda" else 8


def autocast(device: torch.device, precision: str):
    """An autocast context for the forward pass; weights, loss and optimiser stay fp32."""
    dtype: Optional[torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


@contextlib.contextmanager
def torch_threads(n: Optional[int]):
    """torch on n CPU threads inside the block (None: as it is), the caller's count put back after."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n is not None:
            torch.set_num_threads(previous)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory instead of handing big blocks back to the OS at every step.

    A training step allocates and frees activations of tens of MB (2x256 LSTM, batch 64 x 128: the gate
    buffer alone is 33 MB); glibc serves blocks that size with mmap and returns them with munmap, so every
    step page-faults its memory in again. Measured on the 2-core CI machine: 29k -> 44k chars/s, system time
    6.2 s -> 0.4 s over 35 steps (benchmarks/TRAINING.md). Peak memory is unchanged; it is just not returned.
    Returns whether it took effect (only on glibc Linux).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False
