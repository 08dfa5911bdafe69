"""`--precision auto`, decided by measuring: time real training steps of the model about to train.

Whether bf16 autocast pays depends on the machine, not on a CPU-flag rule: on a Xeon with AVX512-BF16 but
no AMX it trains a 2x512 LSTM at 0.6x fp32, on a Zen 4 EPYC with the same flags at 1.5x, and on an AVX2
CPU oneDNN cannot run a bf16 LSTM at all. So auto:

1. takes fp32 where bf16 cannot be the faster choice: no native bf16 on the CPU (it would be emulated),
   a GPU without bf16, Apple MPS;
2. otherwise copies the model, warms each candidate up with one step, then times alternating fp32 and
   bf16 steps (forward, backward, AdamW) on the run's first batch, and takes bf16 only when its best step
   is at least 5% faster and its loss is finite; a candidate that fails to run is out;
3. remembers the decision in the cache folder (`precision.json`), keyed by the machine, torch version,
   device, thread count and the model's and batch's shape, so later runs start at once.

The probe runs inside the trainer's clock (it counts in --max-time), keeps to about 3 seconds (under --max-time
to a share of it, charnn.training.choices.SHARE: where a step is too long for the share, fp32, unmeasured and not
cached), and leaves the RNG as it found it, so a seeded run trains the same whichever way the decision was reached.
--precision fp32|bf16|fp16 skips all this; a forced bf16 that this machine cannot run is one clear error.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from charnn.data.cache import decisions, remember_decision
from charnn.device import PrecisionChoice, autocast, machine_key, model_key, native_bf16
from charnn.errors import CharnnError, first_line
from charnn.models.cells import copy_model

MIN_GAIN = 1.05  # bf16 must be this much faster than fp32 to be chosen: below it is run-to-run noise
BUDGET = 2.5  # seconds of timed steps at most, warm-up not counted
MIN_ROUNDS, MAX_ROUNDS = 2, 8  # alternating (fp32, bf16) timed steps


def choose_precision(requested: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                     device: torch.device, threads: Optional[int] = None, extra: Optional[dict] = None,
                     limit: float = math.inf, step: Optional[float] = None) -> PrecisionChoice:
    """The precision to train in. `x`, `y`: the run's first batch (on `device`), `extra` what else the model's
    forward takes with it (labels, an encoder's inputs). `limit`: seconds the measurement may take, its first step
    included (a share of --max-time); where its steps would not fit, fp32, unmeasured. `step`: an fp32 step's
    seconds as already measured (the threads' probe, charnn.training.choices), to foresee that before any bf16
    step is taken. See the module doc."""
    extra = extra or {}
    if requested == "fp16" and device.type == "cpu":
        raise CharnnError("--precision fp16 is for GPUs; on the CPU use bf16 or fp32")
    if requested != "auto":
        if requested == "bf16":
            small = (x, y) if extra else (x[:1, :8], y[:1, :8])  # an encoder's inputs go with whole rows
            error = _runs(model, *small, device, "bf16", extra)
            if error:
                raise CharnnError(f"--precision bf16 cannot train this model on this {_device_kind(device)} "
                                  f"({error}); use --precision fp32 or auto")
        return PrecisionChoice(requested, "forced")
    native, why_not = native_bf16(device)
    if not native:
        return PrecisionChoice("fp32", "rule", None, why_not)
    key = _key(model, x, device, threads)
    cached = _load_cache().get(key)
    if cached and cached.get("precision") in ("fp32", "bf16"):
        return PrecisionChoice(cached["precision"], "cached", cached.get("speedup"),
                               f"{_ratio_words(cached.get('speedup'))}, measured {cached.get('date', 'earlier')}, cached")
    choice = _measure(model, x, y, device, extra, limit=limit, step=step)
    if choice.how == "measured":
        _store(key, choice)
    return choice


def _too_long(seconds: float) -> PrecisionChoice:
    return PrecisionChoice("fp32", "unmeasured", None, f"not measured: a step takes about {seconds:.1f} s, too long "
                           "to compare in --max-time's share")


def _measure(model, x, y, device, extra: dict, limit: float = math.inf, step: Optional[float] = None) -> PrecisionChoice:
    rounds = 1 + MIN_ROUNDS  # the warm-ups and the fewest timed rounds: each an fp32 and a bf16 step
    if step is not None and 2 * step * rounds + step > limit:  # (a bf16 step as long as an fp32 one, at best)
        return _too_long(step)
    t_start = time.perf_counter()
    error = _runs(model, x, y, device, "bf16", extra)
    if error:
        return PrecisionChoice("fp32", "measured", None, f"bf16 does not run here ({error})")
    first = time.perf_counter() - t_start  # a bf16 step's seconds and a first call's set-up: the foresight errs long
    if first + ((step or first) + first) * rounds > limit:  # (a bf16 step can be 5x an fp32 one on a CPU)
        return _too_long(max(first, step or 0.0))
    with rng_kept(device):
        times = {"fp32": [], "bf16": []}
        probes = {p: StepProbe(model, device, p, extra) for p in times}
        losses = {p: probes[p].step(x, y) for p in times}  # warm-up: oneDNN primitives, allocator, caches
        t_end = time.perf_counter() + BUDGET
        for i in range(MAX_ROUNDS):
            now = time.perf_counter()
            if i >= MIN_ROUNDS and (now > t_end or now + sum(t[-1] for t in times.values()) > t_start + limit):
                break
            for p in times:
                t0 = time.perf_counter()
                losses[p] = probes[p].step(x, y)
                times[p].append(time.perf_counter() - t0)
    if not all(math.isfinite(v) for v in losses.values()):
        return PrecisionChoice("fp32", "measured", None, "bf16 training steps were not finite")
    speedup = min(times["fp32"]) / min(times["bf16"])
    chosen = "bf16" if speedup >= MIN_GAIN else "fp32"
    return PrecisionChoice(chosen, "measured", round(speedup, 3), f"{_ratio_words(speedup)}, measured")


class StepProbe:
    """A copy of the model with its own AdamW: real training steps that leave the run's model alone."""

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str, extra: Optional[dict] = None):
        self.model = copy_model(model).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.device, self.precision, self.extra = device, precision, extra or {}

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        with autocast(self.device, self.precision):
            logits, _ = self.model(x, None, **self.extra)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()  # waits for the device, so the step is timed whole


_Probe = StepProbe  # the older name


def _runs(model, x, y, device, precision, extra: Optional[dict] = None) -> Optional[str]:
    """None if one training step in `precision` runs; else the first line of why not."""
    with rng_kept(device):
        try:
            StepProbe(model, device, precision, extra).step(x, y)
        except RuntimeError as e:
            return first_line(e, 300).split(". ")[0]  # oneDNN's first sentence says it
    return None


@contextmanager
def rng_kept(device: torch.device):
    """Restore the RNG (dropout draws from it) after the probe, so seeded runs do not depend on it."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _ratio_words(speedup: Optional[float]) -> str:
    return "bf16 did not run" if speedup is None else f"bf16 {speedup:.2f}x fp32"


def _device_kind(device: torch.device) -> str:
    return "CPU" if device.type == "cpu" else device.type.upper()


def remember(choice: PrecisionChoice, model: torch.nn.Module, x: torch.Tensor, device: torch.device,
             threads: Optional[int] = None) -> None:
    """Store `choice` as the decision for this model and batch: under torchrun, the ranks' agreed one (each
    rank stored its own measurement in the shared cache, and the last writer's would win)."""
    _store(_key(model, x, device, threads), choice)


def _key(model, x, device, threads) -> str:
    """What the decision depends on: machine, torch, device, threads, and the model's and batch's shape."""
    return f"{machine_key(device, threads)} | {model_key(model)} | batch {tuple(x.shape)}"


def _load_cache() -> Dict[str, dict]:
    return decisions()


def _store(key: str, choice: PrecisionChoice) -> None:
    """Remember a measured decision (a cache that cannot be written only means measuring again next time)."""
    remember_decision(key, {"precision": choice.precision, "speedup": choice.speedup})
