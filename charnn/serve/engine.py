"""The generation loop behind the server: one thread per model steps every in-flight choice as a row of one batch.

Requests join between steps (their prompts are conditioned then), rows leave the moment they finish or their
client goes away, and text reaches each request's asyncio queue in small batches: a row's first piece at
once, then everything made in the last FLUSH_SECONDS, so the event loop is not woken once per character.
Past `max_batch` rows, requests wait in a queue of at most `max_queue`; past that, `submit` raises Busy.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from typing import Deque, Dict, List, Optional, Tuple

import torch

from charnn.api.model import Model
from charnn.api.params import ParamError
from charnn.sampling import SamplingParams
from charnn.generation.batcher import BLOCK, MAX_STOPS, PrefillFailed, Row, RowSpec

FLUSH_SECONDS = 0.02  # hand each request the text made in at most this long
Update = Tuple[int, str, Optional[str]]  # (choice index, new text, finish_reason or None)
FAILED = "error"  # the finish_reason of an update (index -1) that says generation failed; its text says why
SHUTTING_DOWN = "the server is shutting down; retry shortly"  # the text of a FAILED update that `shut` sent


class Busy(Exception):
    """Every row is taken and the queue is full: the client should retry later (HTTP 503)."""


class Job:
    """One request's choices on their way through the engine; `updates` is read on the event loop."""

    def __init__(self, specs: List[RowSpec], loop: asyncio.AbstractEventLoop):
        self.specs, self.loop = specs, loop
        self.updates: asyncio.Queue = asyncio.Queue()
        self.rows: List[Row] = []
        self.outbox: List[Update] = []
        self.first_sent, self.cancelled, self.open = False, False, len(specs)
        self.tokens = 0  # tokens drawn over all choices (usage)

    def deliver(self) -> None:
        """Hand the outbox to the event loop (from the engine thread)."""
        if self.outbox and not self.cancelled:
            batch, self.outbox = self.outbox, []
            try:
                self.loop.call_soon_threadsafe(self.updates.put_nowait, batch)
            except RuntimeError:  # the event loop is closed: the server is shutting down
                self.cancelled = True


class Engine:
    """Continuous batching over one model: `submit` a Job, read its `updates`, `cancel` it if the client left."""

    def __init__(self, model: Model, max_batch: int = 64, max_queue: int = 64):
        self.model, self.max_batch, self.max_queue = model, max_batch, max_queue
        self.batcher = model.batcher(max_batch)
        self.batcher.warm()
        self.cond = threading.Condition()
        self.waiting: Deque[Job] = deque()
        self.cancels: List[Job] = []
        self.live: Dict[int, Job] = {}  # id(job) -> job, for jobs with rows in the batch
        self.rows_reserved = 0  # rows of jobs in the batch or waiting
        self.stopping = False
        self.shutting = False  # `shut`: every request ends now, new ones are refused
        self.thread = threading.Thread(target=self._run, name=f"charnn-engine-{model.name}", daemon=True)
        self.thread.start()

    @property
    def active_rows(self) -> int:
        return self.batcher.active

    @property
    def queued(self) -> int:
        return len(self.waiting)

    def submit(self, job: Job) -> None:
        """Queue a job; raise Busy when neither the batch nor the queue has room for it, ParamError when a row
        asks for something the batch cannot draw (the rows share one step: one bad row would fail them all)."""
        for spec in job.specs:
            check_spec(spec)
        with self.cond:
            if self.shutting:
                raise Busy(SHUTTING_DOWN)
            need = len(job.specs)
            fits = not self.waiting and self.rows_reserved + need <= self.max_batch
            if not fits and len(self.waiting) >= self.max_queue:
                raise Busy(f"all {self.max_batch} rows are busy and {len(self.waiting)} requests are waiting")
            self.rows_reserved += need
            self.waiting.append(job)
            self.cond.notify()

    def cancel(self, job: Job) -> None:
        """The client went away: a queued job leaves the queue now (its place and rows are free for the next
        request), one in the batch frees its rows before the next step."""
        with self.cond:
            if job.cancelled:
                return
            job.cancelled = True
            if job in self.waiting:  # (Job compares by identity)
                self.waiting.remove(job)
                self.rows_reserved -= len(job.specs)
            else:
                self.cancels.append(job)
            self.cond.notify()

    def shut(self) -> None:
        """The server is stopping (SIGINT, SIGTERM): every request in the batch or waiting ends now, a stream with an
        error event and its end, the others with a 503 (they were cut mid-body or got a plain-text 500 after the
        3 s grace, each with a CancelledError traceback); new ones get Busy."""
        with self.cond:
            self.shutting = True
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        self.last_flush = time.perf_counter()
        with torch.inference_mode():
            while True:
                with self.cond:
                    while not (self.stopping or self.waiting or self.cancels or self.batcher.active
                               or (self.shutting and self.live)):
                        self.cond.wait()
                    if self.stopping:
                        return
                    cancels, self.cancels = self.cancels, []
                    joining = self._admit() if not self.shutting else list(self.waiting)
                    if self.shutting:
                        self.waiting.clear()
                if self.shutting:
                    self._fail(joining, SHUTTING_DOWN)
                    continue
                try:
                    self._turn(cancels, joining)
                except Exception as e:  # a bug, or memory ran out: fail the requests in flight, keep serving
                    self._fail(joining, f"generation failed: {type(e).__name__}: {e}")

    def _turn(self, cancels: List[Job], joining: List[Job]) -> None:
        """Drop the cancelled, start the joining, step the batch once, hand out what is due."""
        for job in cancels:
            self._drop(job)
        for job in joining:
            try:
                self._start(job)
            except Exception as e:  # its prompt, or memory for it: this job fails, the batch goes on
                self._fail_job(job, f"generation failed: {type(e).__name__}: {e}")
        try:
            done = self.batcher.step(BLOCK)
        except PrefillFailed as e:  # a long prompt could not load: its jobs fail, the others step next turn
            done = []
            for job in {id(r.tag[0]): r.tag[0] for r in e.rows}.values():
                self._fail_job(job, f"generation failed: {e}")
        for row, piece in done:
            self._record(row, piece)
        now = time.perf_counter()
        due = now - self.last_flush >= FLUSH_SECONDS
        for job in list(self.live.values()):
            if due or not job.first_sent or job.open == 0:
                job.first_sent = job.first_sent or bool(job.outbox)
                job.deliver()
            if job.open == 0 or job.cancelled:
                self._finish(job)
        if due:
            self.last_flush = now

    def _fail(self, joining: List[Job], message: str) -> None:
        """Tell every job in flight (FAILED as its finish_reason, the message as its text) and empty the batch."""
        for row in self.batcher.all_rows:
            self.batcher.remove(row)
        for job in {id(j): j for j in [*self.live.values(), *joining]}.values():
            self.live.setdefault(id(job), job)
            self._finish(job)  # its rows are free before it hears of the failure
            job.outbox = [(-1, message, FAILED)]
            job.deliver()

    def _fail_job(self, job: Job, message: str) -> None:
        """One job could not start: take out whatever rows of it got in (tagged with it), tell it why."""
        for row in [r for r in self.batcher.all_rows if isinstance(r.tag, tuple) and r.tag[0] is job]:
            self.batcher.remove(row)
        self.live.setdefault(id(job), job)
        self._finish(job)
        job.outbox = [(-1, message, FAILED)]
        job.deliver()

    def _admit(self) -> List[Job]:
        """Jobs that leave the queue now, in order, while the batch has room (`cancel` takes a job out of the queue)."""
        out, used = [], self.batcher.active
        while self.waiting and used + len(self.waiting[0].specs) <= self.max_batch:
            out.append(self.waiting.popleft())
            used += len(out[-1].specs)
        return out

    def _start(self, job: Job) -> None:
        self.live[id(job)] = job
        for i, spec in enumerate(job.specs):
            row = self.batcher.add(spec, tag=(job, i))
            job.rows.append(row)
            if row.finish_reason:  # nothing to generate (length 0)
                self._record(row, "")

    def _record(self, row: Row, piece: str) -> None:
        job, i = row.tag
        if row.finish_reason:
            job.open -= 1
            job.tokens += row.tokens
        job.outbox.append((i, piece, row.finish_reason))

    def _drop(self, job: Job) -> None:
        for row in job.rows:
            self.batcher.remove(row)
        if id(job) in self.live:
            self._finish(job)

    def _finish(self, job: Job) -> None:
        if self.live.pop(id(job), None) is None:
            return
        for row in job.rows:
            self.batcher.remove(row)
        with self.cond:
            self.rows_reserved -= len(job.specs)


def check_spec(spec: RowSpec) -> None:
    """ParamError unless every setting of a row is of the type and range the batch's step draws with (the server's
    parser checks requests first; this keeps any other caller's bad row out of the shared batch). The sampling
    settings go by their one set of rules (SamplingParams.validate), with a seed: a row's noise needs one."""
    sampling = spec.sampling
    if not isinstance(sampling, SamplingParams) or sampling.seed is None:
        raise ParamError("`sampling` must be SamplingParams with a seed", "sampling")
    sampling.validate()
    checks = [("prompt", isinstance(spec.prompt, str)),
              ("length", isinstance(spec.length, int) and not isinstance(spec.length, bool) and spec.length >= 0),
              ("stop", isinstance(spec.stop, tuple) and len(spec.stop) <= MAX_STOPS
               and all(isinstance(s, str) and s for s in spec.stop))]
    for name, ok in checks:
        if not ok:
            raise ParamError(f"`{name}` is not a value a row can be drawn with "
                             f"({type(getattr(spec, name)).__name__})", name)
