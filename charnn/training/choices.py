"""What a run measures before its first step: the thread count and the precision, agreed by every rank under
torchrun (charnn.training.threads and charnn.training.precision do the measuring)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional

import torch

from charnn.config import TrainConfig
from charnn.training.precision import PrecisionChoice, choose_precision, native_bf16, remember
from charnn.training.threads import (MEASURE_BUDGET, PROBE_STEPS, ThreadChoice, choose_threads, cut_along_time,
                                     usable_cores)

# Under --max-time, each measurement (the threads', then the precision's) takes at most this share of it, its
# warm-up steps included: on a big model one step can take seconds, and a 30-s run spent 12 s measuring (2x1024
# LSTM, 2-core EPYC). What does not fit is not measured: all the cores, fp32.
SHARE = 0.05


def _limit(cfg: TrainConfig) -> float:
    return SHARE * cfg.max_time if cfg.max_time else math.inf


def run_threads(cfg: TrainConfig, model, x, y, extra: dict, device: torch.device, precision: str,
                dist, resumed: Optional[dict] = None) -> ThreadChoice:
    """--threads, or the count measured fastest on this model's training step (charnn.training.threads);
    under torchrun every rank takes the fewest any rank chose (the ranks share the machine's cores). A resumed
    run without --threads keeps the count it trained with where this machine has the cores (as it keeps its
    precision: on a big model another count rounds differently, and the resumed steps would not be the run's)."""
    saved = (resumed or {}).get("threads")
    if (isinstance(saved, int) and not cfg.threads and device.type == "cpu" and resumed.get("device") == "cpu"
            and 1 <= saved <= usable_cores(dist.local_world)):
        torch.set_num_threads(saved)
        return ThreadChoice(saved, "resumed", reason="the run's own thread count, kept on resume")
    budget = min(MEASURE_BUDGET, 0.02 * cfg.max_time) if cfg.max_time else MEASURE_BUDGET
    choice = choose_threads(cfg.threads, model, x, y, device, precision, extra, dist.local_world, budget,
                            limit=_limit(cfg))
    if dist.active and not cfg.threads and device.type == "cpu":  # the same on every rank
        agreed = -dist.max_ints([-choice.threads])[0]
        if agreed != choice.threads:
            choice = replace(choice, threads=agreed, reason=choice.reason + f"; another rank chose {agreed}")
            torch.set_num_threads(agreed)
    return choice


def run_precision(cfg: TrainConfig, resumed: Optional[dict], model, x, y, extra: dict, device: torch.device,
                  threads: ThreadChoice, dist, choose=choose_precision) -> PrecisionChoice:
    """--precision: forced, or auto's measured choice; under torchrun every rank takes the same one
    (bf16 only where every rank measured it faster). A resumed auto run keeps the precision it trained in
    on the same kind of device (a new measurement, or another rank's cache entry, could flip it, and the
    resumed steps would no longer be the ones the run would have taken)."""
    saved = (resumed or {}).get("precision")
    if (cfg.precision == "auto" and saved in ("fp32", "bf16") and resumed.get("device") == device.type
            and (saved == "fp32" or native_bf16(device)[0])):
        return PrecisionChoice(saved, "resumed", None, "the run's own precision, kept on resume")
    # an fp32 step of the threads' probe (PROBE_STEPS long) at the count chosen, else (all the cores, unmeasured) the
    # fastest count timed: on an idle machine more threads are no slower
    probe = threads.seconds.get(threads.threads) or min(threads.seconds.values(), default=None)
    step = probe * max(1.0, x.shape[1] / PROBE_STEPS) if probe and cut_along_time(x, extra) else probe
    choice = choose(cfg.precision, model, x, y, device, threads.threads, extra, limit=_limit(cfg), step=step)
    if dist.active and cfg.precision == "auto":
        order = ("fp32", "bf16")
        agreed = order[-dist.max_ints([-order.index(choice.precision)])[0]]
        if agreed != choice.precision:
            choice = replace(choice, precision=agreed, reason=choice.reason + "; another rank chose fp32")
        if dist.is_main and choice.how in ("measured", "cached"):  # after the collective: every rank
            remember(choice, model, x, device, threads.threads)  # has stored, this one goes last
    return choice
