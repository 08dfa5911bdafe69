"""Threads for training when `--threads` is not given: measured, and measured again when the step time jumps.

torch's default, one thread per core, is the fastest on an idle machine. On a busy one it can be many times
the slowest: every parallel region waits for its slowest thread, and a thread whose core another process
holds stalls them all. On a 2-core Xeon with one core busy, a 30-s run made 38 steps with torch's default and
500+ with one thread (benchmarks/TRAINING.md). Whether a machine is busy, and how much, changes while a run
trains, so no rule on core counts gets it right; timing a few steps does. So:

1. the candidates are 1, 2, 4, ... and the cores this process may use (under torchrun, its share of them);
2. each candidate is warmed up with one real training step (a copy of the model with its own AdamW, on the
   run's first batch cut to PROBE_STEPS time steps, as the precision probe does: the run's weights and RNG
   are untouched), then the candidates take turns, one timed step each per round, so a change in load hits
   every one of them, for about MEASURE_BUDGET seconds (at least one round, at most MAX_ROUNDS); a candidate
   DROP times slower than the best is out at once (on a busy core one such step can take a second). A
   candidate's median step counts, and the fewest threads within MIN_GAIN of the fastest win (fewer threads
   suffer less from a busy core). Under --max-time all of it, warm-ups included, keeps to a share of the time
   (charnn.training.choices.SHARE): where the steps are too long to time every count in it, training takes all
   the cores it may use (torch's own choice), unmeasured;
3. training then watches its own steps (`Watch`): when the median of the last WINDOW steps differs from the
   median of the first WINDOW after the choice by RECHECK_RATIO or more (slower: another process took a
   core; faster: one left), or RECHECK_SECS passed, it measures again. A re-measure that keeps the same
   count doubles the steps the next jump must wait (hysteresis), so a machine whose load flickers does not
   spend its time measuring. While the choice is fewer threads than the most measured (a core was busy), it
   measures again after RECHECK_FEWER_SECS, doubling while the choice stays: the fewer threads' step time does
   not change when the other process leaves, so no jump would show it.

Each measurement takes about MEASURE_BUDGET seconds plus one warm-up step per candidate, inside the run's
clock. The thread count changes the order of floating-point sums, so a seeded run (or an exact resume) is
bitwise repeatable across machines and loads only with a fixed `--threads`.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import torch

from charnn.config import MAX_THREADS
from charnn.training.precision import StepProbe, rng_kept

MEASURE_BUDGET = 1.0  # seconds of timed steps per measurement, warm-ups not counted
MAX_ROUNDS = 7  # rounds of one timed step per candidate
MIN_GAIN = 1.05  # more threads must be at least this much faster than fewer to be chosen
DROP = 3.0  # a count whose step takes this many times the best one's is out without further steps
PROBE_STEPS = 32  # time steps of the probe batch: the per-step work of the run's batch, a quarter of its length
WINDOW = 16  # steps in the baseline and in the rolling window the watch compares with it
RECHECK_RATIO = 1.6  # a rolling median this many times slower (or faster) than the baseline: measure again
RECHECK_SECS = 300.0  # and measure again after this long anyway (a load that left does not slow anything down)
# ... but sooner while training runs on fewer threads than the cores it may use: a load that took a core and left
# does not change the step time of the fewer threads it caused, so only a clock can notice. This long after such a
# choice, then twice as long after each re-measure that keeps it, up to RECHECK_SECS.
RECHECK_FEWER_SECS = 30.0


@dataclass
class ThreadChoice:
    threads: int  # what training runs with
    how: str  # forced (the flag), measured, single (one core: nothing to choose), rule (not the CPU: torch's),
    # resumed (the run's own count, training.choices)
    seconds: Dict[int, float] = field(default_factory=dict)  # median seconds per probe step, by thread count
    reason: str = ""

    def to_dict(self) -> dict:
        return {**asdict(self), "seconds": {str(k): round(v, 5) for k, v in self.seconds.items()}}

    @property
    def fewer(self) -> bool:
        """Fewer threads than the most it measured: what a busy core leads to (Watch rechecks sooner)."""
        return bool(self.seconds) and self.threads < max(self.seconds)


def usable_cores(local_processes: int = 1) -> int:
    """Cores this process may run on (its affinity mask where the OS has one), shared by `local_processes`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cores // max(1, local_processes)))


def candidates(cores: int) -> List[int]:
    """1, 2, 4, ... below `cores`, and `cores` itself."""
    counts, n = [], 1
    while n < cores:
        counts.append(n)
        n *= 2
    return counts + [cores]


def measure(step: Callable[[], object], counts: List[int], budget: float = MEASURE_BUDGET,
            set_threads: Optional[Callable[[int], None]] = None,
            clock: Callable[[], float] = time.perf_counter, limit: float = math.inf) -> Dict[int, float]:
    """Median seconds of `step()` at each thread count in `counts` (see the module doc, point 2). A count whose
    step takes DROP times the best one's is out at once: on a busy machine one such step can cost a second.
    `set_threads`: torch.set_num_threads unless given. `limit`: seconds for all of it, warm-ups included (a share
    of --max-time): a count whose steps would not fit, foreseen from the last step, is left out of the result,
    and rounds stop where the next would not fit."""
    set_threads = set_threads or torch.set_num_threads
    stop_at = clock() + limit
    times: Dict[int, List[float]] = {}
    out: Dict[int, float] = {}
    last = 0.0  # the last step's seconds: what the next one is foreseen to take
    for n in counts:
        if clock() + 2 * last > stop_at:
            break
        set_threads(n)
        first = _timed(step, clock)  # warm-up: oneDNN primitives, the allocator, the thread pool at its new size
        if times and first > DROP * _best(times):
            out[n] = first  # (out: its step foretells nothing of the next count's)
            continue
        last = first
        if clock() + first > stop_at:
            break
        times[n] = [_timed(step, clock)]
        last = times[n][0]
    end = clock() + budget
    for _ in range(MAX_ROUNDS - 1):
        if clock() > end or clock() + sum(ts[-1] for ts in times.values()) > stop_at:
            break
        for n in list(times):
            set_threads(n)
            t = _timed(step, clock)
            times[n].append(t)
            if len(times) > 1 and t > DROP * _best(times):
                out[n] = statistics.median(times.pop(n))
    return {**out, **{n: statistics.median(ts) for n, ts in times.items()}}


def _timed(step: Callable[[], object], clock: Callable[[], float]) -> float:
    t0 = clock()
    step()
    return clock() - t0


def _best(times: Dict[int, List[float]]) -> float:
    return min(statistics.median(ts) for ts in times.values())


def pick(seconds: Dict[int, float]) -> int:
    """The fewest threads within MIN_GAIN of the fastest median."""
    best = min(seconds.values())
    return min(n for n, s in seconds.items() if s <= best * MIN_GAIN)


def timings(seconds: Dict[int, float]) -> str:
    """'1: 12 ms, 2: 798 ms'."""
    return ", ".join(f"{n}: {s * 1000:.0f} ms" for n, s in sorted(seconds.items()))


def describe(seconds: Dict[int, float], chosen: int) -> str:
    return f"{chosen} thread{'s' if chosen > 1 else ''}, the fastest per step measured ({timings(seconds)})"


def cut_along_time(x: torch.Tensor, extra: dict) -> bool:
    """Whether the probe's batch is the run's cut to PROBE_STEPS time steps: where all the forward takes beside x
    runs along time as x does (an encoder's inputs stay whole, and so does the batch)."""
    return all(isinstance(v, torch.Tensor) and v.shape == x.shape for v in extra.values())


def choose_threads(forced: Optional[int], model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                   device: torch.device, precision: str = "fp32", extra: Optional[dict] = None,
                   local_processes: int = 1, budget: float = MEASURE_BUDGET, limit: float = math.inf) -> ThreadChoice:
    """The thread count to train with: `forced` (--threads), or the fastest measured on training steps of a
    copy of `model` on the batch (x, y, `extra`) in `precision`. Sets torch's thread count to it. Where `limit`
    seconds (measure) cannot time every count, all the cores it may use (torch's own choice), unmeasured."""
    if forced:
        choice = ThreadChoice(forced, "forced", reason="--threads")
    elif device.type != "cpu":
        choice = ThreadChoice(torch.get_num_threads(), "rule", reason=f"training runs on {device.type}")
    elif usable_cores(local_processes) == 1:
        choice = ThreadChoice(1, "single", reason="one core to run on")
    else:
        extra = extra or {}
        if cut_along_time(x, extra):
            x, y, extra = x[:, :PROBE_STEPS], y[:, :PROBE_STEPS], {k: v[:, :PROBE_STEPS] for k, v in extra.items()}
        with rng_kept(device):
            probe = StepProbe(model, device, precision, extra)
            counts = candidates(usable_cores(local_processes))
            seconds = measure(lambda: probe.step(x, y), counts, budget, clock=time.perf_counter, limit=limit)
        choice = decide(seconds, counts)
    torch.set_num_threads(choice.threads)
    return choice


def decide(seconds: Dict[int, float], counts: List[int]) -> ThreadChoice:
    """The choice from what `measure` timed of `counts`: the fastest (pick); but where time ran out before every
    count was timed, and none was out as DROP times slower (a busy core would have shown so), all the cores, which
    an idle machine runs no slower, unmeasured."""
    best = min(seconds.values(), default=0.0)
    if len(seconds) < len(counts) and not any(t > DROP * best for t in seconds.values()):
        timed = f", {timings(seconds)}" if seconds else ""
        return ThreadChoice(counts[-1], "unmeasured", seconds, f"{counts[-1]} threads, all it may use, not measured "
                            f"(steps too long to compare in --max-time's share{timed})")
    n = pick(seconds)
    return ThreadChoice(n, "measured", seconds, describe(seconds, n))


class Watch:
    """Decides when to measure again, from the seconds per token of training's own steps (module doc, 3)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter, window: int = WINDOW,
                 ratio: float = RECHECK_RATIO, every: float = RECHECK_SECS, fewer: bool = False,
                 fewer_every: float = RECHECK_FEWER_SECS):
        self.clock, self.window, self.ratio, self.every, self.fewer_every = clock, window, ratio, every, fewer_every
        self.gap = 2 * window  # steps after a choice before a jump can call for another
        self.wait, self.fewer = every, False  # seconds before measuring again anyway; the choice was fewer threads
        self.restart(changed=True, fewer=fewer)

    def restart(self, changed: bool, fewer: bool = False) -> None:
        """A choice was (re)made: start a new baseline; a re-measure that changed nothing doubles the wait.
        `fewer`: the choice is fewer threads than the most measured (module doc, RECHECK_FEWER_SECS)."""
        self.gap = 2 * self.window if changed else min(self.gap * 2, 64 * self.window)
        fresh = changed or not self.fewer
        self.wait = self.every if not fewer else min(self.every, self.fewer_every if fresh else 2 * self.wait)
        self.fewer = fewer
        self.baseline: Optional[float] = None
        self.recent: deque = deque(maxlen=self.window)
        self.first: List[float] = []
        self.steps, self.since = 0, self.clock()

    def observe(self, seconds_per_token: float) -> bool:
        """Record one step; True when it is time to measure again."""
        self.steps += 1
        if self.baseline is None:
            self.first.append(seconds_per_token)
            if len(self.first) == self.window:
                self.baseline = statistics.median(self.first)
            return False
        self.recent.append(seconds_per_token)
        if self.clock() - self.since >= self.wait:
            return True
        if self.steps < self.gap or len(self.recent) < self.window:
            return False
        now = statistics.median(self.recent)
        return now >= self.baseline * self.ratio or now * self.ratio <= self.baseline
