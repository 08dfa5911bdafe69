"""Data-parallel training under torchrun: which process this is, and the few collectives the loop needs.

`torchrun --nproc-per-node N -m charnn train ...` starts N copies of charnn with RANK, WORLD_SIZE and
LOCAL_RANK in their environment. `Dist.from_env()` reads them; `start()` joins the process group (gloo on
the CPU, NCCL on CUDA with one GPU per local rank). Outside torchrun a `Dist` is a single process: every
helper below returns its input untouched and no collective ever runs, so a plain run is unchanged bitwise.

Anything that decides control flow must be agreed by all ranks, or one of them waits forever in a
collective the others never join; `max_ints`, `any` and `sum` are how the trainer agrees.
"""

from __future__ import annotations

import datetime
import gc
import os
import re
import signal
import sys
from typing import List, Optional, Tuple

import torch

from charnn.errors import CharnnError, ConfigError, first_line

TIMEOUT_ENV = "CHARNN_DIST_TIMEOUT"  # seconds a rank waits in a collective before giving up
DEFAULT_TIMEOUT = 600.0


class PeerLost(CharnnError):
    """Another rank died or stopped answering; this one stops too (its last good checkpoint is kept)."""


class Dist:
    """This process's place in a torchrun job (rank 0 of 1 outside torchrun)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, local_world: int = 1):
        self.rank, self.world, self.local_rank, self.local_world = rank, world, local_rank, local_world
        self.comm_device = torch.device("cpu")  # where collective tensors live (the GPU under NCCL)
        self.started = False

    @classmethod
    def from_env(cls) -> "Dist":
        env = os.environ
        if "WORLD_SIZE" not in env or "RANK" not in env:
            return cls()
        def number(name: str, low: int, default=None) -> int:  # (a wrong value was a ValueError traceback, and
            text = env.get(name, default)  # WORLD_SIZE=0 a ZeroDivisionError)
            try:
                value = int(text)
            except (TypeError, ValueError):
                value = None
            if value is None or value < low:
                raise CharnnError(f"{name}={text!r} in the environment: torchrun sets it to a whole number, at "
                                  f"least {low}; run the command through torchrun, or unset it")
            return value

        world = number("WORLD_SIZE", 1)
        rank = number("RANK", 0)
        if rank >= world:
            raise CharnnError(f"RANK={rank} in the environment is not below WORLD_SIZE={world}: torchrun sets both")
        _timeout()
        return cls(rank, world, number("LOCAL_RANK", 0, "0"), number("LOCAL_WORLD_SIZE", 1, str(world)))

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def part(self) -> Tuple[int, int]:
        return self.rank, self.world

    # -- joining and leaving ------------------------------------------------------------------------
    def start(self, device: torch.device) -> torch.device:
        """Join the process group; returns the device this rank trains on (cuda:LOCAL_RANK under NCCL)."""
        if not self.active:
            return device
        import torch.distributed as td

        _stop_with_launcher()
        if device.type == "mps":
            raise CharnnError("torchrun with --device mps is not supported; use --device cpu or cuda")
        if device.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise CharnnError(f"local rank {self.local_rank} has no GPU: this machine has "
                                  f"{torch.cuda.device_count()}; lower --nproc-per-node")
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
            self.comm_device = device
        if not td.is_initialized():
            timeout = _timeout()
            kwargs = {"device_id": device} if device.type == "cuda" else {}
            try:
                td.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                      timeout=datetime.timedelta(seconds=timeout), **kwargs)
            except (ValueError, RuntimeError) as e:  # (MASTER_ADDR/MASTER_PORT wrong or missing, or no peer
                # came: tracebacks from torch's rendezvous)
                raise CharnnError(f"could not join the other torchrun processes: {first_line(e, 200)}") from None
            self.started = True
        return device

    def close(self) -> None:
        if self.started:
            import torch.distributed as td

            self.started = False
            if td.is_initialized():
                # Anything still holding the group (a DDP wrapper in a reference cycle) would keep it alive until
                # interpreter exit, where gloo's threads tear it down and can abort the process ("terminate
                # called without an active exception"): collect such leftovers so it is destroyed here.
                gc.collect()
                try:  # leave together: a rank tearing gloo down while its peer still talks can abort the peer
                    td.barrier()
                except RuntimeError:
                    pass  # the peer is already gone; nothing left to wait for
                td.destroy_process_group()

    def __enter__(self) -> "Dist":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or not issubclass(exc_type, PeerLost):  # after a lost peer, just leave
            self.close()

    # -- what the trainer needs ---------------------------------------------------------------------
    def check_batch_size(self, batch_size: Optional[int]) -> None:
        """A global --batch-size must divide among the processes (None: the default, which is made to)."""
        if batch_size is not None and batch_size % self.world:
            lower = batch_size - batch_size % self.world
            raise ConfigError(f"`--batch-size` {batch_size} is the global number of streams and must divide "
                              f"evenly among the {self.world} processes; try --batch-size "
                              f"{lower or self.world} or {lower + self.world}")

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel around the model under torchrun (it averages gradients in backward)."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.comm_device.index] if self.comm_device.type == "cuda" else None
        with self.guard():
            return DDP(model, device_ids=ids)

    def sum(self, x: float) -> float:
        """The sum of x over all ranks (float64)."""
        if not self.active:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self.comm_device)
        self._all_reduce(t, "sum")
        return t.item()

    def mean(self, t: torch.Tensor) -> float:
        """The mean of a scalar tensor over all ranks, as a Python float."""
        if not self.active:
            return t.item()
        return self.sum(t.detach().double().item()) / self.world

    def max_ints(self, values: List[int]) -> List[int]:
        """Element-wise maximum over ranks of a few small integers."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.int64, device=self.comm_device)
        self._all_reduce(t, "max")
        return [int(v) for v in t.tolist()]

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any rank."""
        return bool(self.max_ints([int(bool(flag))])[0]) if self.active else flag

    def raise_together(self, error: Optional[CharnnError]) -> None:
        """Raise `error` (one rank's) on every rank, once all have started: a rank that left alone before its
        first collective kept the others waiting in it until the timeout (a taken run folder: torchrun ended 30 s
        after rank 0 said why)."""
        if self.any(error is not None):
            raise error or CharnnError("another process stopped (it says why)")

    def check_same(self, value: int, what: str) -> None:
        """Fail on every rank (not hang on one) when ranks disagree about `value`."""
        if not self.active:
            return
        value &= (1 << 62) - 1
        high, neg_low = self.max_ints([value, -value])
        if high != value or -neg_low != value:
            raise CharnnError(f"the {self.world} processes disagree about {what}; every machine needs the "
                              "same corpus file and the same charnn version")

    def gather_rows(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """Every rank's slice of a tensor, put back together along `dim` in rank order."""
        if not self.active:
            return t
        import torch.distributed as td

        t = t.detach().to(self.comm_device).contiguous()
        parts = [torch.empty_like(t) for _ in range(self.world)]
        with self.guard():
            td.all_gather(parts, t)
        return torch.cat(parts, dim=dim)

    def rows(self, n: int) -> Tuple[int, int]:
        """(start, count) of this rank's share of n rows (n divides evenly)."""
        per = n // self.world
        return self.rank * per, per

    def _all_reduce(self, t: torch.Tensor, op: str) -> None:
        import torch.distributed as td

        with self.guard():
            td.all_reduce(t, op=td.ReduceOp.SUM if op == "sum" else td.ReduceOp.MAX)

    def guard(self):
        return _PeerGuard(self)


class _PeerGuard:
    """Turns a collective that failed because another rank died or timed out into one PeerLost line."""

    def __init__(self, dist: Dist):
        self.dist = dist

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None or not self.dist.active or not issubclass(exc_type, RuntimeError):
            return False
        if isinstance(exc, CharnnError) or not _is_comm_error(exc):
            return False
        first = re.sub(r"\[[^\]]*\]:?\s*", "", first_line(exc)).split(". ")[0][:120]
        raise PeerLost(f"another training process stopped or stopped answering ({first or type(exc).__name__}); "
                       "this one stops too, and the last good checkpoint is kept") from None


def _is_comm_error(exc: BaseException) -> bool:
    import torch.distributed as td

    kinds = tuple(k for k in (getattr(td, "DistError", None),) if k is not None)
    text = str(exc).lower()
    return isinstance(exc, kinds) or any(w in text for w in ("gloo", "nccl", "connection", "timed out", "timeout",
                                                              "broken pipe", "peer", "socket"))


def _stop_with_launcher() -> None:
    """Linux, under torchrun: a SIGTERM for this rank when torchrun dies, so that a `kill -9` of torchrun stops its
    ranks as Ctrl-C does (the last step saved, the run's lock let go): they trained on. Only under torchrun, which
    starts its ranks from its main thread (the signal comes when the thread that started a process ends: another
    launcher's ranks could be stopped while it lives). (A torchrun that dies before this call is not seen: its
    parent's pid cannot tell, as torchrun may itself be a container's pid 1.)"""
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _timeout() -> float:
    """Seconds a rank waits for the others (TIMEOUT_ENV, else DEFAULT_TIMEOUT): a positive, finite number ('abc'
    and inf were tracebacks, 0 failed the first collective at once)."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return float(DEFAULT_TIMEOUT)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 1 <= value < 1e7:  # (1e-320 passed "above 0" and failed the first collective at once)
        raise CharnnError(f"{TIMEOUT_ENV}={text!r}: it is the seconds a process waits for the others, a number from 1 "
                          "(below 10,000,000)")
    return value
