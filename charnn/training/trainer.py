"""The training loop: stateful truncated BPTT over contiguous streams, AdamW, warm-up then cosine decay.

The trainer is the loop alone (minGPT's): what the data is, how it is batched, what the loss adds and how it is
validated belong to the run's task (charnn.tasks); the saved state to charnn.training.runstate; the schedule and
the --max-time budget to charnn.training.schedule. The model's carried state goes through its `state_ops`.

Library code: it never prints. It reports through `on_event(kind, info)`; the CLI draws progress from it.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from charnn.config import ModelConfig, TrainConfig
from charnn.data.batches import IGNORE
from charnn.data.corpus import Corpus
from charnn.data.files import interrupts_held
from charnn.device import autocast, keep_freed_memory, resolve_device
from charnn.errors import CharnnError, first_line
from charnn.models import fusedblock
from charnn.tasks import task_for
from charnn.tasks.base import Callback, fingerprint
from charnn.training import runstate
from charnn.training.distributed import Dist
from charnn.training.choices import run_precision, run_threads
from charnn.training.precision import PrecisionChoice, choose_precision
from charnn.training.runlock import RunLock
from charnn.training.schedule import (MIN_GAIN, Budget, foresee_eval, limit_reached, lr_at, make_optimizer,
                                     patience_after, progress, schedule_progress)
from charnn.training.metrics import StepMeter, start_info
from charnn.training.stopping import (STOP_REASONS, StopRequest, TrainingInterrupted, TrainResult, graceful_signals,
                                      non_finite)
from charnn.training.threads import ThreadChoice, Watch

__all__ = ["Trainer", "TrainResult", "StopRequest", "TrainingInterrupted", "graceful_signals", "lr_at", "train"]


class Trainer:
    def __init__(self, corpus: Corpus, model_cfg: ModelConfig, cfg: TrainConfig, on_event: Optional[Callback] = None,
                 resume: bool = False, stop: Optional[StopRequest] = None, encoding: str = "utf-8",
                 explicit: Optional[set] = None, dist: Optional[Dist] = None, started: Optional[float] = None):
        self.t0 = time.perf_counter() if started is None else started  # the run's clock (--max-time) starts here
        self.dist = dist or Dist.from_env()
        self.cfg, self.on_event = cfg.validate(resuming=resume), on_event or (lambda kind, info: None)
        self.stop = stop or StopRequest()
        self.task = task_for(corpus, model_cfg.kind)  # the run's kind, decided here once
        self.run_dir = runstate.run_dir_for(cfg, corpus)
        self.lock, self._lock_error = RunLock.take(self.run_dir, resume, self.dist)  # one training a folder
        self._threads_before = torch.get_num_threads()  # fit puts it back, and so does a setup that fails (it was left)
        try:
            self._setup(model_cfg, cfg, resume, encoding, explicit)
        except BaseException:
            torch.set_num_threads(self._threads_before)
            self.release()
            raise

    def release(self) -> None:  # another training may have the run folder (fit does this when it ends)
        if self.lock is not None:
            self.lock.release()

    @property
    def tokenizer(self):
        return self.task.tokenizer

    @property
    def val_ids(self):
        return self.task.val_ids

    def _setup(self, model_cfg: ModelConfig, cfg: TrainConfig, resume: bool, encoding: str,
               explicit: Optional[set]) -> None:
        cfg, resumed, parent = runstate.begin(self.run_dir, cfg, model_cfg, resume, explicit)
        self.cfg = cfg
        self.resumed = resumed is not None
        self._fit_eval = not self.resumed and explicit is not None and "eval_tokens" not in explicit
        self.device = self.dist.start(resolve_device(cfg.device))  # joins the process group under torchrun
        self.dist.raise_together(self._lock_error)  # (under torchrun: rank 0's, once every rank is here)
        self.dist.check_batch_size(cfg.batch_size)  # a --batch-size that cannot work fails before data is read
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if self.device.type == "cpu":
            keep_freed_memory()
        torch.manual_seed(cfg.seed)
        if resumed:
            self.task.check_resume(resumed, self.run_dir.name)
        self.task.prepare(cfg, resumed, parent, encoding, self.on_event)
        self.replaces = runstate.text_and_folder(resumed, self.task.data_record, self.run_dir, cfg, explicit)
        if cfg.batch_size is None:  # per process (a task may size it for its data); --batch-size is the global batch
            self.cfg = cfg = replace(cfg, batch_size=self.task.default_batch_size(self.device, cfg, self.dist.world))
        self.batches = self.task.make_batches(cfg, self.device)
        self.batches.shard(*self.dist.part)
        if self.dist.active:
            self.dist.check_same(fingerprint(self.task), "the tokenized text")
        self._build_model(model_cfg, resumed, parent, cfg.seed)
        self._start(resumed)

    def _build_model(self, model_cfg: ModelConfig, resumed: Optional[dict], parent, seed: int) -> None:
        """The model (charnn.training.runstate.model_for), then its training forward and optimiser."""
        self.model_cfg, self.model, self.parent = runstate.model_for(self.task, model_cfg, resumed, parent, seed,
                                                                     self.on_event)
        self.model.to(self.device)
        # the training forward: DDP under torchrun, else the model; --compile: its compiled twin (same weights)
        self.net = self.dist.wrap(self.model)
        if self.cfg.compile:
            self.net = fusedblock.compiled(self.net)  # (charnn's C calls left out of the trace)
        self._compile_pending = self.cfg.compile  # the first compiled call gets its own error message
        self.opt = make_optimizer(self.model, self.cfg, self.device)

    def _start(self, resumed: Optional[dict]) -> None:
        """Progress (a resumed run's), then the measured choices and the budget, all inside the run's clock."""
        cfg = self.cfg
        self.step, self.epoch, self.window, self.offset = 0, 0, 0, 0
        self.best_val, self.last_val, self.bad_evals, self.chars_seen = math.inf, math.inf, 0, 0
        self.best_score = self.last_score = math.inf  # what picks best.pt: the task's selects_by (val loss, WER)
        self.patience_mark = math.inf  # the best score at --patience's last reset
        self.elapsed_before, self.state = 0.0, None
        if resumed:
            runstate.restore(self, resumed)
        self._probe_batch = next(iter(self.batches.epoch(0, 0)))  # one batch for the probes
        self.threads_choice = self._choose_threads("fp32", resumed)  # before precision: its cache key holds them
        self.precision_choice = self._choose_precision(resumed)
        self.precision, self._recheck = self.precision_choice.precision, False
        self.watch = Watch(fewer=self.threads_choice.fewer) if self.threads_choice.how == "measured" else None
        self.budget = (foresee_eval(self, self._fit_eval, time.perf_counter) if cfg.max_time  # (the final evaluation
                       else Budget(self.task.val_units))  # foreseen, validation cut to fit: schedule.foresee_eval)
        self.start_step, self._saved_once, self._last_save = self.step, False, time.perf_counter()
        self.schedule_from = self.schedule_from if resumed else self.elapsed()  # (--max-time spent setting up)
        if self.dist.is_main:
            runstate.check_writable(self.run_dir)

    def _probe_extra(self) -> dict:
        return self.task.forward_extra(self._probe_batch[2] if len(self._probe_batch) > 2 else None)

    def _choose_precision(self, resumed: Optional[dict] = None) -> PrecisionChoice:
        return run_precision(self.cfg, resumed, self.model, *self._probe_batch[:2], self._probe_extra(), self.device,
                             self.threads_choice, self.dist, choose=choose_precision)

    def _choose_threads(self, precision: str, resumed: Optional[dict] = None) -> ThreadChoice:
        t = time.perf_counter()
        choice = run_threads(self.cfg, self.model, *self._probe_batch[:2], self._probe_extra(), self.device, precision,
                             self.dist, resumed)
        self._measure_cost = time.perf_counter() - t
        return choice

    def _rechoose_threads(self) -> None:
        """The step time jumped (or RECHECK_SECS passed): measure the thread counts again."""
        before = self.threads_choice.threads
        self.threads_choice = self._choose_threads(self.precision)
        changed = self.threads_choice.threads != before
        self.watch.restart(changed, fewer=self.threads_choice.fewer)
        if changed:
            self.budget.forget_steps()
        self.on_event("threads", {**self.threads_choice.to_dict(), "step": self.step, "before": before})

    # -- bookkeeping --------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def epochs_done(self) -> float:
        """Epochs completed, with the current one counted by the fraction of its windows done."""
        return self.epoch + self.window / max(1, self.batches.steps_per_epoch(self.offset))

    def progress(self) -> float:
        return progress(self.cfg, self.step, self.epochs_done, self.elapsed, self.budget.reserve)

    def schedule_progress(self) -> float:  # (by time: from the first step; the setup before it is not decay)
        return schedule_progress(self.cfg, self.step, self.epochs_done, lambda: progress(
            self.cfg, self.step, self.epochs_done, self.elapsed, self.budget.reserve, self.schedule_from))

    def save(self, names: Tuple[str, ...], val_loss: float) -> Path:
        """Write the checkpoints in order, then announce each: a callback that raises leaves them all written."""
        paths = [self.run_dir / name for name in names]
        if not self._saved_once and self.dist.is_main:  # an older run of this name: into previous/ first
            runstate.keep_previous(self.run_dir, self.resumed)
        with interrupts_held():  # (a second Ctrl-C waits for the files and the records of them: config.json...)
            for path in paths:
                t = time.perf_counter()
                runstate.write(self, path, val_loss)  # a collective under torchrun
                self._last_save = time.perf_counter()
                self.budget.save_cost = self._last_save - t
            self._saved_once = True
            for path in paths:
                self.on_event("saved", {"path": str(path), "step": self.step})
        return paths[-1]

    def evaluate(self) -> Tuple[float, float]:
        """(val nats/char, the score that picks best.pt): the task's validation (it may keep more, such as a value
        per label), and its own score where it selects by one (--pairs: WER), else the val loss again."""
        t = time.perf_counter()
        val = self.task.evaluate(self.model, self.device, self.precision, self.dist)
        score = (self.task.select_score(self.model, self.device, self.dist)
                 if self.task.selects_by != "loss" and math.isfinite(val) else val)
        self.budget.eval_took(time.perf_counter() - t)
        return val, score

    def _eval_and_save(self) -> None:
        try:
            val, score = self.evaluate()
        except Exception as e:  # (out of memory: last.pt takes the steps since the last save, one line)
            raise runstate.on_eval_error(self, e)
        if not math.isfinite(val):  # weights went bad in the last step: keep the checkpoints from before
            raise non_finite("validation", val, self.step, self.run_dir, self._saved_once or self.resumed)
        self.last_val, self.last_score = val, score
        self.best_val = min(self.best_val, val)
        improved = score < self.best_score
        self.best_score, self.patience_mark, self.bad_evals = patience_after(
            score, self.best_score, self.patience_mark, self.bad_evals, MIN_GAIN[self.task.selects_by])
        self.save(("best.pt", "last.pt") if improved else ("last.pt",), val)  # best first: last.pt records it
        self.on_event("eval", {"step": self.step, "val_loss": val, "best_val_loss": self.best_val,
                               "improved": improved, "elapsed": self.elapsed(), "by": self.task.selects_by,
                               "score": score, "best_score": self.best_score})

    # -- the loop -----------------------------------------------------------------------------------
    def _should_stop(self) -> Tuple[Optional[str], Optional[int], bool]:
        """(limit reached, signal received, measure the threads again), agreed by all ranks under torchrun: elapsed
        time, signals and step times differ per process; a rank that stops (or measures) alone leaves the others."""
        stopped = limit_reached(self.cfg, self.step, self.epochs_done, self.elapsed, self.budget, self.bad_evals,
                                self.stop.asked)
        signum, recheck = self.stop.signum, self._recheck_wanted()
        if not self.dist.active:
            return stopped, signum, recheck
        code, sig, again = self.dist.max_ints([STOP_REASONS.index(stopped) + 1 if stopped else 0, signum or 0,
                                               int(recheck)])
        return (STOP_REASONS[code - 1] if code else None), (sig or None), bool(again)

    def _recheck_wanted(self) -> bool:
        """The watch saw the step time jump, and the budget has room for a measurement (20x its cost)."""
        if not self._recheck:
            return False
        self._recheck = False
        if self.cfg.max_time and self.cfg.max_time - self.elapsed() < 20 * self._measure_cost:
            self.watch.restart(changed=False, fewer=self.threads_choice.fewer)
            return False
        return True

    def _budget_spares_eval(self) -> bool:
        """--max-time: whether an evaluation now still leaves time for another step and the final evaluation;
        if not, training stops here and the final evaluation is this one. Agreed by all ranks."""
        if not self.cfg.max_time:
            return True
        return not self.dist.any(self.elapsed() + self.budget.eval_now_needs() >= self.cfg.max_time)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, cond=None) -> float:
        """One optimiser step on inputs x and targets y; `cond` is what else the batch holds, which only the
        task reads (it turns the batch into the forward's inputs, and may add to the loss)."""
        lr = lr_at(self.step, self.schedule_progress(), self.cfg)
        for g in self.opt.param_groups:
            g["lr"] = lr
        if self.dist.active and not self.dist.is_main:  # its dropout masks: its own, a function of the step (rank
            torch.manual_seed((self.cfg.seed * 1_000_003 + self.dist.rank * 7919 + self.step) % 2**63)  # 0's are saved)
        ops = self.model.state_ops
        x, targets, extra, self.state, ctx = self.task.step_inputs(x, y, cond, self.state, ops, self.cfg)
        with autocast(self.device, self.precision):
            logits, self.state = self._forward(x, extra)
        penalty = getattr(self.model, "training_penalty", lambda: None)()  # the model's own (AR/TAR), if any
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none",
                              ignore_index=IGNORE).view(x.shape[0], -1)
        self.step_tokens = self.task.real_tokens(y, self.dist)
        # the mean over every rank's real targets (padding ignored; a rank's share of a window may hold none):
        # DDP averages the ranks' gradients, so each rank divides its sum by the global count / world
        real = max(1.0, self.step_tokens / self.dist.world)
        loss = value = nll[: y.shape[0]].sum() / real
        added, self.state = self.task.step_loss(nll, y, real, ctx, self.state, ops, self.cfg)
        for extra_loss in (added, penalty):
            loss = loss if extra_loss is None else loss + extra_loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        value = self.dist.mean(value)  # the global mean under torchrun: every rank sees the same value
        if not math.isfinite(value):
            raise non_finite("training", value, self.step + 1, self.run_dir, self._saved_once or self.resumed)
        self.opt.step()
        self.state = ops.detach(self.state)
        self.step += 1
        return value

    def _forward(self, x: torch.Tensor, extra: dict):
        if not self._compile_pending:
            return self.net(x, self.state, **extra)
        try:  # the first call compiles: inductor needs a working C++ (CPU) or Triton (GPU) toolchain
            out = self.net(x, self.state, **extra)
            self._compile_pending = False
            return out
        except Exception as e:
            raise CharnnError(f"--compile failed ({type(e).__name__}: {first_line(e)}); train without --compile") from None

    def _observe_step(self, seconds: float, tokens: int) -> None:
        self.budget.observe_step(seconds, tokens)
        if self.watch is not None and self.watch.observe(seconds / max(1, tokens)):
            self._recheck = True

    def fit(self) -> TrainResult:
        try:
            return self._fit()
        finally:  # drop the DDP (and compiled) wrapper: it holds the process group, which must be destroyed
            self.net = self.model  # while the interpreter is alive (Dist.close), not with a leftover at exit
            self.release()
            torch.set_num_threads(self._threads_before)

    def _fit(self) -> TrainResult:
        cfg = self.cfg
        self.model.train()
        self.on_event("start", start_info(self))
        stopped, last_eval_step, meter = None, -1, StepMeter(time.perf_counter())
        while stopped is None:
            if self.window == 0:  # a new epoch: pick its offset (deterministic from seed + epoch)
                self.offset = random.Random(cfg.seed * 100003 + self.epoch).randint(0, self.batches.max_offset())
            for batch in self.batches.epoch(self.offset, self.window):
                stopped, signum, recheck = self._should_stop()
                if stopped:
                    break
                if signum is not None:
                    raise TrainingInterrupted(signum, runstate.save_on_stop(self))
                if recheck:
                    self._rechoose_threads()
                if self.batches.fresh(self.offset, self.window):
                    self.state = None
                t_step = time.perf_counter()
                loss, tokens = self._train_step(*batch), self.step_tokens
                self._observe_step(time.perf_counter() - t_step, tokens)
                self.window += 1
                self.chars_seen += int(tokens * self.task.chars_per_token)
                loss_ema, rate = meter.add(loss, tokens, time.perf_counter(), self.task.chars_per_token)
                # loss is per token; loss_per_char divides by the training text's mean characters per token
                self.on_event("step", {"step": self.step, "loss": loss, "loss_avg": loss_ema,
                                       "loss_per_char": loss_ema / self.task.chars_per_token,
                                       "lr": self.opt.param_groups[0]["lr"], "chars_per_sec": rate,
                                       "elapsed": self.elapsed(), "progress": self.progress(),
                                       "epoch": self.epochs_done()})
                if self.step % cfg.eval_every == 0:
                    if not self._budget_spares_eval():
                        stopped = "max_time"
                        break
                    self._eval_and_save()
                    last_eval_step = self.step
                elif cfg.save_every_secs and self.dist.any(time.perf_counter() - self._last_save >= cfg.save_every_secs):
                    self.save(("last.pt",), self.last_val)  # a crash loses at most this interval of work
            else:
                self.epoch, self.window, self.state = self.epoch + 1, 0, None
                continue
        if runstate.end_save_due(self, last_eval_step):
            self._eval_and_save()
        result = TrainResult(self.run_dir, self.step, self.best_val, self.last_val, self.elapsed(), self.chars_seen,
                             stopped, self.task.selects_by, self.best_score, not runstate.older_run_kept(self))
        self.on_event("done", {**asdict(result), "run_dir": str(self.run_dir)})  # (JSON as every other event)
        return result


def train(corpus: Corpus, model_cfg: ModelConfig, cfg: TrainConfig, on_event: Optional[Callback] = None,
          resume: bool = False, stop: Optional[StopRequest] = None) -> TrainResult:
    """Train a model on `corpus` and write best.pt / last.pt into out/name."""
    return Trainer(corpus, model_cfg, cfg, on_event, resume, stop).fit()
