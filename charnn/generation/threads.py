"""`charnn sample`'s CPU threads when `--threads` is not given: torch's count or one, whichever measures faster, and
measured again when the speed jumps.

On a 2-core Xeon with another process holding one core, one fp32 LSTM stream sampled at 1,324 chars/s on torch's
two threads and 6,701 on one (quiet: 12,901 and 6,870; benchmarks/SAMPLING.md): each of a token's small matrix
products waits for the thread whose core is taken. No rule on core counts knows whether a core is busy, and it
changes while a sample runs, so (as training's charnn.training.threads, scaled to sampling's blocks):

1. the first block is left out (the prompt's prefill, warm-ups); then blocks take turns at the most threads and at
   one, ROUNDS each (fewer where one is DROP times slower), and the one with the lower median time per token wins
   (more threads only where MIN_GAIN faster);
2. then every block's time per token is watched: when the median of the last WINDOW differs from the winner's by
   RECHECK_RATIO or more (a core was taken or freed), it measures again; while on one thread (where a freed core
   shows no jump) it measures again after RECHECK_FEWER_SECS, doubling while one thread keeps winning.

Every block is a real part of the sample; measuring only chooses the threads it runs on. The thread count changes
the order of some floating-point sums, so a seeded sample is repeatable to the character only with `--threads`.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from typing import Callable, Dict, List, Optional

import torch

ROUNDS = 3  # timed blocks per candidate in a measurement
MIN_GAIN = 1.05  # more threads must be this much faster than one to be chosen
DROP = 3.0  # a candidate this many times slower than the other in its fastest block: decided without more rounds
WINDOW = 8  # blocks in the rolling median the watch compares with the measured one
RECHECK_RATIO = 1.6  # a rolling median this many times slower or faster: measure again
RECHECK_FEWER_SECS = 2.0  # on one thread: measure again after this long, doubling while one thread wins
RECHECK_MAX_SECS = 60.0


class ThreadWatch:
    """Runs each block of a sample on the threads chosen as above (`block`); `threads` is the current choice and
    `choices` every choice made. `clock` and `set_threads` are for tests."""

    def __init__(self, most: int, clock: Callable[[], float] = time.perf_counter,
                 set_threads: Optional[Callable[[int], None]] = None):
        self.most, self.clock = most, clock
        self.set_threads = set_threads or torch.set_num_threads
        self.threads, self.choices = most, []
        self.plan: List[int] = []
        self.times: Dict[int, List[float]] = {}
        self.window: deque = deque(maxlen=WINDOW)
        self.baseline, self.chosen_at, self.wait = 0.0, 0.0, RECHECK_FEWER_SECS
        self.skip = 1  # the first block: prefill and warm-ups

    def block(self, run: Callable[[], object], tokens: int):
        """run() one block of about `tokens` tokens on the threads due, time it, and return what it returned."""
        threads = self.plan[0] if self.plan else self.threads
        self.set_threads(threads)
        start = self.clock()
        out = run()
        per_token = (self.clock() - start) / max(1, tokens)
        if self.skip:
            self.skip -= 1
            if not self.skip:
                self._measure()
            return out
        if self.plan:
            self.times[self.plan.pop(0)].append(per_token)
            if not self.plan or self._clear():
                self._choose()
        else:
            self._watch(per_token)
        return out

    def _measure(self) -> None:
        self.plan = [t for _ in range(ROUNDS) for t in (self.most, 1)]
        self.times = {self.most: [], 1: []}

    def _clear(self) -> bool:
        """Whether one candidate is already DROP times slower than the other (a busy core: its blocks are long)."""
        if not all(self.times.values()):
            return False
        many, one = (min(self.times[t]) for t in (self.most, 1))
        return max(many, one) >= DROP * min(many, one)

    def _choose(self) -> None:
        self.plan = []
        many, one = (statistics.median(self.times[t]) for t in (self.most, 1))
        before = self.threads
        self.threads = self.most if one > many * MIN_GAIN else 1
        self.baseline = many if self.threads == self.most else one
        self.choices.append(self.threads)
        if self.threads == 1 and before == 1 and len(self.choices) > 1:
            self.wait = min(2 * self.wait, RECHECK_MAX_SECS)  # one thread kept winning: look less often
        elif self.threads != before:
            self.wait = RECHECK_FEWER_SECS
        self.window.clear()
        self.chosen_at = self.clock()
        self.set_threads(self.threads)

    def _watch(self, per_token: float) -> None:
        self.window.append(per_token)
        jumped = len(self.window) == WINDOW and not (
            1 / RECHECK_RATIO < statistics.median(self.window) / max(self.baseline, 1e-12) < RECHECK_RATIO)
        late = self.threads < self.most and self.clock() - self.chosen_at >= self.wait
        if jumped or late:
            self._measure()


def watching(threads: Optional[int], device: torch.device, graphs: bool = False) -> Optional[ThreadWatch]:
    """A ThreadWatch where sampling's threads are measured: on a CPU, no `--threads`, torch on more than one."""
    most = torch.get_num_threads()
    return ThreadWatch(most) if threads is None and device.type == "cpu" and most > 1 and not graphs else None
