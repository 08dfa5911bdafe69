"""CPU threads for a loop of blocks of work when `--threads` is not given: torch's count or one, whichever
measures faster, and measured again when the speed jumps. `charnn sample` times its blocks of tokens; `eval`
(and `eval --dynamic`), `sample --adapt`, `classify` and `transduce` time their chunks, segments and blocks of rows
(`measuring` and `block`).

On a 2-core Xeon with another process holding one core, one fp32 LSTM stream sampled at 1,324 chars/s on torch's
two threads and 6,701 on one (quiet: 12,901 and 6,870; benchmarks/SAMPLING.md), and `charnn eval` of the default
model over tinyshakespeare took 190 s on two threads and 17 s on one (quiet: 10 s and 17 s): each of a step's small
matrix products waits for the thread whose core is taken. No rule on core counts knows whether a core is busy, and
it changes while a command runs, so (as training's charnn.training.threads, scaled to a loop's blocks):

1. the first block that makes text runs on one thread and is left out (warm-ups; under load a block on the most
   threads can take a second), as is every block that makes none (a long prompt's prefill); then blocks take turns
   at the most threads and at one, ROUNDS each (fewer where one is DROP times slower), and the one with the lower
   median time per character wins (more threads only where MIN_GAIN faster);
2. then every block's time per character is watched. The chosen count's speed is its measured median, or the
   median of its first WINDOW blocks after the choice where that is lower (blocks that took turns with the other
   count can run slower than blocks run one after another). When the median of the last WINDOW is RECHECK_RATIO
   times slower (a core was taken), it measures again, but not sooner than JUMP_SHARE of the wait below after a
   choice: a noisy load must not keep it measuring, each measurement a block on the slow count. While the choice
   is one thread it also measures again after RECHECK_SECS (on one thread a freed core shows no jump; a load that
   comes and goes can fool one measurement), the wait doubling while the choice stays, up to RECHECK_MAX_SECS; on
   the most threads a core taken shows as the jump above, so no clock (as training's watch: each measurement's
   blocks on one thread cost a quiet machine 10% of an eval). A faster median needs nothing: the choice runs
   faster.

Every block is real work (part of the sample, of the score); measuring only chooses the threads it runs on. The
thread count changes the order of some floating-point sums, so a seeded sample is repeatable to the character, and
a score to the last digit, only with `--threads`.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import deque
from contextvars import ContextVar
from typing import Callable, Dict, Iterator, List, Optional

import torch

ROUNDS = 3  # timed blocks per candidate in a measurement
MIN_GAIN = 1.05  # more threads must be this much faster than one to be chosen
DROP = 3.0  # a candidate whose median is this many times the other's: decided without more rounds
WINDOW = 8  # blocks in the rolling median the watch compares with the measured one
RECHECK_RATIO = 1.6  # a rolling median this many times slower: measure again
RECHECK_SECS = 2.0  # on one thread: measure again after this long, doubling while the choice stays
RECHECK_MAX_SECS = 60.0
JUMP_SHARE = 0.25  # a slower median measures again only this share of the wait after a choice


class ThreadWatch:
    """Runs each block of a loop on the threads chosen as above (`block`); `threads` is the current choice,
    `choices` every choice made and `current` the count it last gave torch. `clock` and `set_threads` are for
    tests."""

    def __init__(self, most: int, clock: Callable[[], float] = time.perf_counter,
                 set_threads: Optional[Callable[[int], None]] = None):
        self.most, self.clock = most, clock
        self._set = set_threads or torch.set_num_threads
        self.threads, self.choices, self.current = most, [], most
        self.plan: List[int] = []
        self.times: Dict[int, List[float]] = {}
        self.window: deque = deque(maxlen=WINDOW)
        self.baseline, self.settled = 0.0, False  # the chosen count's median time per character; its first window
        self.chosen_at, self.wait = 0.0, RECHECK_SECS
        self.skip = 1  # the first block that makes text: warm-ups

    def set_threads(self, n: int) -> None:
        self.current = n
        self._set(n)

    def block(self, run: Callable[[], object], made: Callable[[object], int]):
        """run() one block on the threads due, time it by what it made (`made(result)`: characters or tokens; a
        block that made none, a prompt's prefill, is not timed), and return its result."""
        self.set_threads(self.plan[0] if self.plan else 1 if self.skip else self.threads)
        start = self.clock()
        out = run()
        seconds, chars = self.clock() - start, made(out)
        if chars <= 0:
            return out
        per_char = seconds / chars
        if self.skip:
            self.skip -= 1
            if not self.skip:
                self._measure()
            return out
        if self.plan:
            self.times[self.plan.pop(0)].append(per_char)
            if not self.plan or self._clear():
                self._choose()
        else:
            self._watch(per_char)
        return out

    def _measure(self) -> None:
        self.plan = [t for _ in range(ROUNDS) for t in (self.most, 1)]
        self.times = {self.most: [], 1: []}

    def _clear(self) -> bool:
        """Whether one candidate is already DROP times slower than the other (a busy core: its blocks are long)."""
        if not all(self.times.values()):
            return False
        many, one = (statistics.median(self.times[t]) for t in (self.most, 1))
        return max(many, one) >= DROP * min(many, one)

    def _choose(self) -> None:
        self.plan = []
        many, one = (statistics.median(self.times[t]) for t in (self.most, 1))
        before = self.threads
        self.threads = self.most if one > many * MIN_GAIN else 1
        self.baseline, self.settled = many if self.threads == self.most else one, False
        if self.choices and self.threads == before:
            self.wait = min(2 * self.wait, RECHECK_MAX_SECS)  # the same again: look less often
        else:
            self.wait = RECHECK_SECS
        self.choices.append(self.threads)
        self.window.clear()
        self.chosen_at = self.clock()
        self.set_threads(self.threads)

    def _watch(self, per_char: float) -> None:
        self.window.append(per_char)
        since = self.clock() - self.chosen_at
        slower = False
        if len(self.window) == WINDOW:
            median = statistics.median(self.window)
            if not self.settled:
                self.baseline, self.settled = min(self.baseline, median), True
            slower = median >= RECHECK_RATIO * self.baseline and since >= JUMP_SHARE * self.wait
        if slower or (since >= self.wait and self.threads < self.most):  # (on the most threads a jump tells)
            self._measure()


def watching(threads: Optional[int], device: torch.device) -> Optional[ThreadWatch]:
    """A ThreadWatch where sampling's threads are measured: on a CPU, no `--threads`, torch on more than one."""
    most = torch.get_num_threads()
    return ThreadWatch(most) if threads is None and device.type == "cpu" and most > 1 else None


_ACTIVE: ContextVar[Optional[ThreadWatch]] = ContextVar("charnn_thread_watch", default=None)


@contextlib.contextmanager
def measuring(threads: Optional[int], device: torch.device) -> Iterator[Optional[ThreadWatch]]:
    """Inside, the loops that run their work through `block` do it on measured threads (`watching`), or on
    `threads` where given; torch's count is put back after. The watch is per context (a ContextVar), but torch's
    thread count is the process's: this is for a command's loops, not for the server or a library call."""
    before = torch.get_num_threads()
    watch = watching(threads, device)
    if threads is not None:
        torch.set_num_threads(threads)
    token = _ACTIVE.set(watch)
    try:
        yield watch
    finally:
        _ACTIVE.reset(token)
        torch.set_num_threads(before)


def block(run: Callable[[], object], made: Callable[[object], int]):
    """run() one block of a loop: on the threads `measuring` chose (timed by `made(result)`, the characters or
    tokens it covered), or as it is outside `measuring`."""
    watch = _ACTIVE.get()
    return run() if watch is None else watch.block(run, made)
