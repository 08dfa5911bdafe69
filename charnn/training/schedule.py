"""The schedule and the budget: the optimiser and its learning rate over the run, how far the run has come, when a
limit is reached, and what --max-time must keep in reserve (the final evaluation and saves), foreseen from what
the run measured of its steps, evaluations and saves.

Nothing here reads a clock: the trainer measures and passes seconds (or a clock) in, so one clock drives it all.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from dataclasses import replace
from typing import Callable, Optional, Tuple

import torch

from charnn.config import TrainConfig
from charnn.device import autocast
from charnn.scoring.evaluate import stream_layout

EVAL_PROBE_STEPS = 64  # --max-time: time steps of the forward that foresees an evaluation's cost
# --max-time without --eval-tokens (a new run): a validation pass scores the val tokens it can in this share of the
# time, and no fewer than EVAL_FLOOR (a 2x2048 LSTM scored 111,540 tokens in 65 s on a 2-core EPYC: a 30-s run
# trained no step and took 98 s)
EVAL_SHARE = 0.1
EVAL_FLOOR = 2048  # (one stream: fewer tokens than two streams are a shorter stream, and a shorter pass)
EVAL_CUTS = 4  # cuts tried at most, each foreseen before it is taken


def lr_at(step: int, progress: float, cfg: TrainConfig) -> float:
    """1) linear warm-up over `warmup` steps, 2) cosine decay from lr to lr*min_lr_frac as progress
    goes 0 -> 1 (progress is steps, time or epochs used, whichever limit is nearest), 3) constant
    when training is open-ended (it stops on patience instead)."""
    warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else 1.0
    if cfg.open_ended:
        return cfg.lr * warm
    p = min(1.0, max(0.0, progress))
    decay = cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p))
    return cfg.lr * warm * decay


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the groups the model declares (weight decay on its matrices, not its biases or embeddings), as
    one fused kernel where torch has one for the device (CUDA; the CPU since torch 2.4: 0.7 ms a step for the
    default minGRU against 3.4 for the foreach form, benchmarks/PARALLEL.md), else the foreach form."""
    groups = model.optimizer_groups(cfg.weight_decay)
    if device.type in ("cuda", "cpu"):
        try:
            return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99), fused=True)
        except (RuntimeError, TypeError, ValueError):  # an older torch without the fused CPU kernel
            groups = model.optimizer_groups(cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99), foreach=True)


def progress(cfg: TrainConfig, step: int, epochs_done: Callable[[], float], elapsed: Callable[[], float],
             reserve: Callable[[], float], since: float = 0.0) -> float:
    """Fraction of the run done by the nearest limit (0 when open-ended); `since`: the seconds of --max-time
    before training began, not counted (the learning-rate schedule's: its decay starts at the first step)."""
    parts = [0.0]
    if cfg.max_steps:
        parts.append(step / cfg.max_steps)
    if cfg.max_time:
        parts.append((elapsed() - since) / max(1e-9, cfg.max_time - reserve() - since))
    if cfg.epochs:
        parts.append(epochs_done() / cfg.epochs)
    return max(parts)


def schedule_progress(cfg: TrainConfig, step: int, epochs_done: Callable[[], float],
                      run_progress: Callable[[], float]) -> float:
    """What the learning-rate schedule follows. Steps and epochs are deterministic; elapsed time is
    not, so time drives the schedule only when --max-time is the sole limit. That keeps the schedule
    a function of the step alone, and a resumed run bitwise-identical to an uninterrupted one."""
    if cfg.max_steps or cfg.epochs:
        parts = [0.0]
        if cfg.max_steps:
            parts.append(step / cfg.max_steps)
        if cfg.epochs:
            parts.append(epochs_done() / cfg.epochs)
        return max(parts)
    return run_progress()


MIN_IMPROVEMENT = 1e-3  # nats/char the best val loss must drop by, in all, to reset --patience
# per score a task selects by (charnn.tasks.base.Task.selects_by): WER counts whole words, so any drop is one
MIN_GAIN = {"loss": MIN_IMPROVEMENT, "wer": 0.0}


def patience_after(val: float, best: float, mark: float, bad: int,
                   min_gain: float = MIN_IMPROVEMENT) -> Tuple[float, float, int]:
    """(best, mark, evaluations without a real gain) after an evaluation scoring `val` (lower is better). The
    count resets when the best score has dropped more than `min_gain` below `mark`, the best at the last reset:
    steady small gains that add up (a regularised model improving by crumbs) keep a run going, noise around a
    plateau does not."""
    best = min(best, val)
    if best < mark - min_gain:
        return best, best, 0
    return best, mark, bad + 1


def limit_reached(cfg: TrainConfig, step: int, epochs_done: Callable[[], float], elapsed: Callable[[], float],
                  budget: "Budget", bad_evals: int, asked: bool = False) -> Optional[str]:
    if asked:  # a callback raised StopTraining
        return "callback"
    if cfg.max_steps and step >= cfg.max_steps:
        return "max_steps"
    if cfg.epochs and epochs_done() >= cfg.epochs:
        return "epochs"
    if cfg.max_time and elapsed() + budget.next_step_estimate() + budget.reserve() >= cfg.max_time:
        return "max_time"  # the next step would leave too little for the final evaluation and saves
    if cfg.stop_patience and bad_evals >= cfg.stop_patience:
        return "patience"
    return None


class Budget:
    """What --max-time foresees: the next step's, an evaluation's and a save's seconds."""

    def __init__(self, val_tokens: int):
        self.val_tokens = val_tokens
        self.step_secs: deque = deque(maxlen=8)  # the last steps' wall time: the next one is foreseen from them
        self.step_spt: deque = deque(maxlen=16)  # ... and per token, to scale a measured evaluation to the load now
        self.eval_cost: Optional[float] = None
        self.select_cost: Optional[float] = None  # what the task's own score (pairs: WER) adds, foreseen at the start
        self.eval_spt: Optional[float] = None
        self.save_cost: Optional[float] = None

    def observe_step(self, seconds: float, tokens: int) -> None:
        self.step_secs.append(seconds)
        self.step_spt.append(seconds / max(1, tokens))

    def forget_steps(self) -> None:
        """The thread count changed: the old threads' step times foretell nothing now."""
        self.step_secs.clear()
        self.step_spt.clear()

    def eval_took(self, seconds: float) -> None:
        self.eval_cost = seconds
        self.eval_spt = statistics.median(self.step_spt) if len(self.step_spt) >= 4 else None

    def reserve(self) -> float:
        """Seconds to keep for the final evaluation and its saves (last.pt and best.pt), so --max-time counts
        everything."""
        return self.eval_estimate() * 1.2 + self.save_estimate() * 2 + 0.5

    def eval_now_needs(self) -> float:
        """Seconds an evaluation now needs to leave time for another step and the final evaluation."""
        return self.eval_estimate() + 2 * self.save_estimate() + self.next_step_estimate() + self.reserve()

    def save_estimate(self) -> float:
        return 0.25 if self.save_cost is None else self.save_cost

    def eval_estimate(self) -> float:
        """Seconds an evaluation will take now: the last one's (or the start's probe's) time, scaled by how much
        slower a training step per token has become since (another process took a core, say)."""
        recent = self.step_spt
        now = statistics.median(recent) if len(recent) >= 4 else None
        if self.eval_cost is None:  # no evaluation or probe yet: a forward per val token at half a step's cost
            return (0.5 * self.val_tokens * now if now is not None else 0.0) + (self.select_cost or 0.0)
        if self.eval_spt is None:  # the probe ran before any step: the first steps are its reference
            self.eval_spt = now
        return self.eval_cost * (max(0.5, now / self.eval_spt) if now is not None and self.eval_spt else 1.0)

    def next_step_estimate(self) -> float:
        """Seconds the next step may take: the slowest of the last few."""
        return max(self.step_secs) if self.step_secs else 0.0

    def probe_eval(self, model: torch.nn.Module, world: int, device: torch.device, precision: str,
                   clock: Callable[[], float] = time.perf_counter) -> None:
        """--max-time before any evaluation: foresee the final one, which on a big validation split can take
        longer than all of a short run's training. Evaluation scores the val ids as `streams` rows in forward
        calls of chunk_steps time steps (charnn.scoring.evaluate); time a forward of EVAL_PROBE_STEPS of them and
        scale."""
        streams, length = stream_layout(self.val_tokens)
        rows = max(1, -(-streams // world))  # this rank's share (evaluate splits the rows by rank)
        steps = min(EVAL_PROBE_STEPS, length)
        model.eval()
        with torch.no_grad(), autocast(device, precision):
            for warm in (True, False):
                x = torch.zeros(rows, 4 if warm else steps, dtype=torch.long, device=device)
                t = clock()
                model(x)[0].float().sum().item()
        model.train()
        self.eval_cost = (clock() - t) * length / steps

    def tokens_that_fit(self, max_time: float) -> Optional[int]:
        """After probe_eval: the val tokens a pass scores in EVAL_SHARE of `max_time` (at least EVAL_FLOOR), or
        None where all of them do."""
        if self.eval_cost is None or self.eval_cost <= EVAL_SHARE * max_time:
            return None
        n = max(EVAL_FLOOR, int(self.val_tokens * EVAL_SHARE * max_time / self.eval_cost))
        return n if n < self.val_tokens else None


def foresee_eval(t, fit: bool, clock: Callable[[], float] = time.perf_counter) -> Budget:
    """--max-time before any evaluation: trainer `t`'s budget with its final evaluation foreseen (probe_eval). With
    `fit` (a new run without --eval-tokens), validation is cut to the tokens that fit (tokens_that_fit; under torchrun
    the fewest any rank foresaw), and the cut is the run's --eval-tokens: a resume scores the same ones."""
    budget = Budget(t.task.val_units)
    budget.select_cost = t.task.probe_select(t.model, t.device, t.dist, clock)  # (an evaluation that also decodes)
    if not (t.task.probes_eval and len(t.val_ids) >= 2):
        return budget
    budget.probe_eval(t.model, t.dist.world, t.device, t.precision, clock)
    whole, whole_cost = budget.val_tokens, budget.eval_cost
    floor = False
    for _ in range(EVAL_CUTS if fit else 0):  # (fewer tokens are fewer streams, and longer ones: a pass of a big
        # model, bound by reading its weights each time step, can cost more cut than whole; so each cut is foreseen
        # before it is taken, and taken only where it costs less; where it does not, one stream is the last try)
        n = min(EVAL_FLOOR, budget.val_tokens) if floor else budget.tokens_that_fit(t.cfg.max_time) or budget.val_tokens
        if t.dist.active:
            n = -t.dist.max_ints([-n])[0]
        if n >= budget.val_tokens:
            break
        cut = Budget(n)
        cut.select_cost = budget.select_cost
        cut.probe_eval(t.model, t.dist.world, t.device, t.precision, clock)
        if not t.dist.any(cut.eval_cost >= budget.eval_cost):  # (every rank decides together)
            budget, floor = cut, False
        elif floor or n <= EVAL_FLOOR or budget.val_tokens < whole:  # (a cut taken already: kept as it is)
            break
        else:
            floor = True
    if budget.val_tokens < whole:
        t.task.keep_validation(budget.val_tokens)
        t.cfg = replace(t.cfg, eval_tokens=budget.val_tokens)
        t.val_cut = {"tokens": budget.val_tokens, "of": whole, "seconds": whole_cost, "cut_seconds": budget.eval_cost,
                     "max_time": t.cfg.max_time}
    return budget
