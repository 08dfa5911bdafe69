"""The training loop: stateful truncated BPTT over contiguous streams, AdamW, warm-up then cosine decay.

Library code: it never prints. It reports through `on_event(kind, info)`; the CLI draws progress from it.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import signal
import statistics
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from charnn.checkpoint import build_model, save_checkpoint, sweep_temp_files
from charnn.data.labels import log_prior
from charnn.config import ModelConfig, TrainConfig, from_dict
from charnn.data.batches import IGNORE, DocumentBatches, StreamBatches
from charnn.data.corpus import Corpus
from charnn.data.labels import LabelledText, prepare_labelled
from charnn.data.pairs import PairBatches, PairText, prepare_pairs
from charnn.data.encode import prepare_corpus
from charnn.device import autocast, default_batch_size, keep_freed_memory, resolve_device
from charnn.errors import CharnnError, ConfigError, first_line
from charnn.scoring.evaluate import evaluate_documents, evaluate_ids, evaluate_pairs, stream_layout
from charnn.models.lm import detach_state, map_state
from charnn.text.tokenizer import start_id
from charnn.training.distributed import Dist
from charnn.training.init_from import FINETUNE_LR, graft, load_parent
from charnn.training.precision import PrecisionChoice, choose_precision, native_bf16, remember
from charnn.training.resume import load_resume, resume_config
from charnn.training.runlock import RunLock
from charnn.training.threads import MEASURE_BUDGET, ThreadChoice, Watch, choose_threads

Callback = Callable[[str, dict], None]
STOP_REASONS = ("max_steps", "epochs", "max_time", "patience")
EVAL_PROBE_STEPS = 64  # --max-time: time steps of the forward that foresees an evaluation's cost
MIN_IMPROVEMENT = 1e-3  # nats/char a val loss must drop by to reset --patience


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving last.pt."""

    def __init__(self, signum: int, path: Optional[Path]):
        super().__init__(f"interrupted by signal {signum}")
        self.signum, self.path = signum, path


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_val_loss: float  # nats per character
    last_val_loss: float
    elapsed: float  # seconds, data preparation and final evaluation included
    chars_seen: int
    stopped: str  # why training ended


class StopRequest:
    """Set by a signal handler; the loop checks it between steps so a save never sees a half step."""

    def __init__(self):
        self.signum: Optional[int] = None


@contextmanager
def graceful_signals(stop: StopRequest):
    """SIGINT/SIGTERM ask the loop to stop after the current step; a second one quits at once."""

    def handler(signum, frame):
        if stop.signum is not None:
            raise KeyboardInterrupt
        stop.signum = signum

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in old:
            signal.signal(s, handler)
    except ValueError:  # not the main thread: leave signals alone
        old = {}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


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
    """AdamW over the groups the model declares (weight decay on its matrices, not its biases or embeddings)."""
    groups = model.optimizer_groups(cfg.weight_decay)
    extra = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99), **extra)


def run_dir_for(cfg: TrainConfig, corpus: Corpus) -> Path:
    return Path(cfg.out) / (cfg.name or corpus.name)


def _check_writable(run_dir: Path) -> None:
    """Fail before training, not after it, when the run folder cannot be written. Also sweeps away temp
    files that a killed save left behind (they never hold the only copy of anything)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CharnnError(f"cannot write to {str(run_dir)!r}: {e.strerror or e}; choose another --out") from None
    sweep_temp_files(run_dir)


class Trainer:
    def __init__(self, corpus: Corpus, model_cfg: ModelConfig, cfg: TrainConfig, on_event: Optional[Callback] = None,
                 resume: bool = False, stop: Optional[StopRequest] = None, encoding: str = "utf-8",
                 explicit: Optional[set] = None, dist: Optional[Dist] = None, started: Optional[float] = None):
        self.t0 = time.perf_counter() if started is None else started  # the run's clock (--max-time) starts here
        self.dist = dist or Dist.from_env()
        self.cfg, self.on_event = cfg.validate(), on_event or (lambda kind, info: None)
        self.stop = stop or StopRequest()
        self.run_dir = run_dir_for(cfg, corpus)
        # one training per run folder: a second one (or a --resume of this one) stops here, at once
        self.lock = RunLock.acquire(self.run_dir, resume) if self.dist.is_main else None
        try:
            self._setup(corpus, model_cfg, cfg, resume, encoding, explicit)
        except BaseException:
            self.release(failed=True)
            raise

    def release(self, failed: bool = False) -> None:
        """Let another training have the run folder (fit does this when it ends)."""
        if self.lock is not None:
            self.lock.release(failed)

    def _setup(self, corpus: Corpus, model_cfg: ModelConfig, cfg: TrainConfig, resume: bool, encoding: str,
               explicit: Optional[set]) -> None:
        if resume and cfg.init_from and (explicit is None or "init_from" in explicit):
            raise ConfigError("Can't provide both `--resume` and `--init-from`: a resumed run continues from its "
                              "own last.pt, which remembers its parent. Choose one")
        resumed = load_resume(self.run_dir, cfg.out) if resume else None
        if resumed:
            self.cfg = cfg = resume_config(resumed, cfg, model_cfg, explicit)
        parent = None
        if cfg.init_from and not resumed:
            parent = load_parent(cfg.init_from, model_cfg, cfg, explicit, self.run_dir)
            if explicit is not None and "lr" not in explicit:  # fine-tuning wants a gentler default
                self.cfg = cfg = replace(cfg, lr=FINETUNE_LR)
        self.resumed = resumed is not None
        self.device = self.dist.start(resolve_device(cfg.device))  # joins the process group under torchrun
        if cfg.batch_size is None:  # the default is per process; --batch-size is the global batch
            self.cfg = cfg = replace(cfg, batch_size=default_batch_size(self.device, cfg.pairs) * self.dist.world)
        self.dist.check_batch_size(cfg.batch_size)
        self._threads_before = torch.get_num_threads()  # fit puts it back: a library call leaves torch as it was
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if self.device.type == "cpu":
            keep_freed_memory()
        torch.manual_seed(cfg.seed)

        train_ids, data = self._prepare_data(corpus, cfg, resumed, parent, encoding)
        if self.pairs is not None:  # --pairs: batches of whole pairs of similar length
            self.batches = PairBatches(data.train_src, data.train_tgt, cfg.batch_size, start_id(self.tokenizer),
                                       self.device)
        elif data.train_doc_lengths is not None:  # --label-by line: every line its own text, from a zero state
            self.batches = DocumentBatches(train_ids, data.train_doc_lengths, cfg.batch_size, cfg.seq_len,
                                           start_id(self.tokenizer), data.train_labels, self.device)
        else:
            self.batches = StreamBatches(train_ids.to(self.device), cfg.batch_size, cfg.seq_len,
                                         None if data.train_labels is None else data.train_labels.to(self.device))
        self.batches.shard(*self.dist.part)
        if self.dist.active:
            self.dist.check_same(_fingerprint(self.tokenizer, len(train_ids), len(self.val_ids)), "the tokenized text")
        self._build_model(model_cfg, resumed, parent, cfg.seed)
        self.model.to(self.device)
        # the training forward: DistributedDataParallel under torchrun, else the model itself; with --compile,
        # its torch.compile'd twin (same weights; saves and evaluation use self.model)
        self.net = self.dist.wrap(self.model)
        if cfg.compile:
            self.net = torch.compile(self.net)
        self._compile_pending = cfg.compile  # the first compiled call gets its own error message
        self.opt = make_optimizer(self.model, cfg, self.device)
        self.step, self.epoch, self.window, self.offset = 0, 0, 0, 0
        self.best_val, self.last_val, self.bad_evals, self.chars_seen = math.inf, math.inf, 0, 0
        self.elapsed_before = 0.0
        self.state = None
        if resumed:
            self._restore(resumed)
        # one batch for the probes; both measure here, inside the run's clock
        self._probe_batch = next(iter(self.batches.epoch(0, 0)))
        self.threads_choice = self._choose_threads("fp32")  # before precision: its cache key holds the threads
        self.precision_choice = self._choose_precision(resumed)
        self.precision = self.precision_choice.precision
        self.watch = Watch() if self.threads_choice.how == "measured" else None
        self._recheck = False
        self._step_secs: deque = deque(maxlen=8)  # the last steps' wall time: the next one is foreseen from them
        self._step_spt: deque = deque(maxlen=16)  # ... and per token, to scale a measured evaluation to the load now
        self._eval_cost, self._eval_spt, self._save_cost = None, None, None
        if cfg.max_time:
            self._probe_eval_cost()
        if self.dist.active and not self.dist.is_main:  # dropout masks differ per rank, and follow the step
            torch.manual_seed((cfg.seed * 1_000_003 + self.dist.rank * 7919 + self.step) % 2**63)
        self.start_step, self._saved_once, self._last_save = self.step, False, time.perf_counter()
        if self.dist.is_main:
            _check_writable(self.run_dir)

    def _prepare_data(self, corpus, cfg: TrainConfig, resumed: Optional[dict], parent, encoding: str):
        """The training ids and the Prepared data: a corpus streamed and encoded once into the cache (the
        tokenizer sees the training split only), or a labelled corpus encoded in memory with its labels."""
        base_tokenizer = resumed["tokenizer"] if resumed else parent.tokenizer_state if parent else None
        if resumed:
            _check_same_labels(resumed.get("labels"), corpus, self.run_dir.name)
            _check_same_kind(resumed, corpus, self.run_dir.name)
        self.labels, self.val_doc_lengths, self.pairs = None, None, None
        if isinstance(corpus, PairText):
            if parent is not None:
                raise ConfigError("`--init-from` fine-tunes language models; a `--pairs` model trains from scratch")
            data = prepare_pairs(corpus, (resumed["source_tokenizer"], resumed["tokenizer"]) if resumed else None,
                                 cfg.eval_tokens)
            self.pairs = {**corpus.record(), "skipped_lines": corpus.skipped_lines}
            self.on_event("pairs", dict(self.pairs))
            self.tokenizer, self.source_tokenizer, self.pair_data = data.tokenizer, data.source_tokenizer, data
            train_ids = data.train_ids
            self.data_record = {"corpus": corpus.source, "cache_entry": None, "train_tokens": len(train_ids),
                                "train_chars": len(train_ids)}
            self.val_ids = np.concatenate(data.val_tgt)
            self.chars_per_token = 1.0
            return train_ids, data
        if isinstance(corpus, LabelledText):
            corpus = corpus.split(cfg.val_frac, cfg.seed)  # with the run's own settings (a resumed run's saved ones)
            data = prepare_labelled(corpus, cfg.tokenizer, cfg.vocab_size, base_tokenizer, parent is not None,
                                    self.on_event, cfg.threads)
            self.labels = corpus.record()
            # log p(label) by id (0: no label), for --label-contrast's Bayes' rule
            self._log_prior = torch.tensor(np.concatenate([[0.0], log_prior(self.labels)]), dtype=torch.float32,
                                           device=self.device)
            self.val_doc_lengths = data.val_doc_lengths
            if self.val_doc_lengths is not None and cfg.eval_tokens:  # whole documents, at least one
                keep = max(1, int(np.searchsorted(np.cumsum(self.val_doc_lengths), cfg.eval_tokens, side="right")))
                self.val_doc_lengths = self.val_doc_lengths[:keep]
                self.val_labels = data.val_labels[: sum(self.val_doc_lengths)]
            else:
                self.val_labels = data.val_labels[: cfg.eval_tokens or None]
            val_ids = data.val_ids[: len(self.val_labels)]
            self.val_label_chars = [data.tokenizer.token_chars(val_ids[self.val_labels == i])
                                    for i in range(1, len(corpus.names) + 1)]
            self.on_event("labels", {**self.labels, "skipped_lines": corpus.skipped_lines})
        else:
            data = prepare_corpus(corpus, cfg, base_tokenizer, encoding, self.on_event, extend=parent is not None)
        self.tokenizer = data.tokenizer
        # where the training ids live, so `charnn novelty` can find the run's own text again
        self.data_record = {"corpus": corpus.source, "cache_entry": data.path.name if data.path else None,
                            "train_tokens": len(data.train_ids), "train_chars": data.train_chars}
        # periodic evaluations score the first --eval-tokens validation ids (all of them when there are fewer)
        self.val_ids = data.val_ids[: cfg.eval_tokens or None] if self.val_doc_lengths is None else \
            data.val_ids[: len(self.val_labels)]
        self.chars_per_token = data.train_chars / max(1, len(data.train_ids))
        return data.train_ids, data

    def _build_model(self, model_cfg: ModelConfig, resumed: Optional[dict], parent, seed: int) -> None:
        """The model: the resumed run's, the parent's (fine-tuning, its vocabulary maybe grown) or a fresh one."""
        if resumed:
            model_cfg = from_dict(ModelConfig, resumed["model_config"])
        else:
            base = parent.model_cfg if parent else model_cfg
            model_cfg = replace(base, vocab_size=self.tokenizer.vocab_size,
                                labels=len(self.labels["names"]) if self.labels else 0, label_output=bool(self.labels))
            if self.pairs is not None:
                model_cfg = replace(model_cfg, kind="seq2seq", source_vocab=self.source_tokenizer.vocab_size)
        self.model_cfg = model_cfg.validate()
        self.model = build_model(self.model_cfg)
        self.parent = resumed.get("parent") if resumed else None
        if parent:
            graft(self.model, parent, seed, self.labels["names"] if self.labels else None)
            parent.added = list(self.tokenizer.decode(range(parent.model_cfg.vocab_size, self.tokenizer.vocab_size)))
            self.parent = parent.record()
            self.on_event("init_from", dict(self.parent))

    def _choose_precision(self, resumed: Optional[dict] = None):
        """--precision: forced, or auto's measured choice; under torchrun every rank takes the same one
        (bf16 only where every rank measured it faster). A resumed auto run keeps the precision it trained in
        on the same kind of device (a new measurement, or another rank's cache entry, could flip it, and the
        resumed steps would no longer be the ones the run would have taken)."""
        saved = (resumed or {}).get("precision")
        if (self.cfg.precision == "auto" and saved in ("fp32", "bf16") and resumed.get("device") == self.device.type
                and (saved == "fp32" or native_bf16(self.device)[0])):
            return PrecisionChoice(saved, "resumed", None, "the run's own precision, kept on resume")
        x, y, *cond = self._probe_batch
        choice = choose_precision(self.cfg.precision, self.model, x, y, self.device, self.threads_choice.threads,
                                  _forward_extra(cond[0] if cond else None))
        if self.dist.active and self.cfg.precision == "auto":
            order = ("fp32", "bf16")
            agreed = order[-self.dist.max_ints([-order.index(choice.precision)])[0]]
            if agreed != choice.precision:
                choice = replace(choice, precision=agreed, reason=choice.reason + "; another rank measured fp32")
            if self.dist.is_main and choice.how in ("measured", "cached"):  # after the collective: every rank
                remember(choice, self.model, x, self.device, self.threads_choice.threads)  # has stored, this one
        return choice  # goes last

    def _choose_threads(self, precision: str) -> ThreadChoice:
        """--threads, or the count measured fastest on this model's training step (charnn.training.threads);
        under torchrun every rank takes the fewest any rank chose (the ranks share the machine's cores)."""
        t = time.perf_counter()
        x, y, *cond = self._probe_batch
        budget = min(MEASURE_BUDGET, 0.02 * self.cfg.max_time) if self.cfg.max_time else MEASURE_BUDGET
        choice = choose_threads(self.cfg.threads, self.model, x, y, self.device, precision,
                                _forward_extra(cond[0] if cond else None), self.dist.local_world, budget)
        if self.dist.active and not self.cfg.threads and self.device.type == "cpu":  # the same on every rank
            agreed = -self.dist.max_ints([-choice.threads])[0]
            if agreed != choice.threads:
                choice = replace(choice, threads=agreed, reason=choice.reason + f"; another rank chose {agreed}")
                torch.set_num_threads(agreed)
        self._measure_cost = time.perf_counter() - t
        return choice

    def _rechoose_threads(self) -> None:
        """The step time jumped (or RECHECK_SECS passed): measure the thread counts again."""
        before = self.threads_choice.threads
        self.threads_choice = self._choose_threads(self.precision)
        changed = self.threads_choice.threads != before
        self.watch.restart(changed)
        if changed:  # the old threads' step times foretell nothing now
            self._step_secs.clear()
            self._step_spt.clear()
        self.on_event("threads", {**self.threads_choice.to_dict(), "step": self.step, "before": before})

    # -- resume -------------------------------------------------------------------------------------
    def _restore(self, data: dict) -> None:
        self.model.load_state_dict(data["model"])
        self.opt.load_state_dict(data["optimizer"])
        p = data["progress"]
        self.step, self.epoch, self.window, self.offset = p["step"], p["epoch"], p["window"], p["offset"]
        self.best_val, self.last_val = data.get("best_val_loss", math.inf), data.get("val_loss", math.inf)
        self.bad_evals, self.chars_seen = p.get("bad_evals", 0), data.get("chars_seen", 0)
        self.elapsed_before = data.get("elapsed", 0.0)
        hidden = p.get("hidden")
        if hidden is not None:
            if self.dist.active:  # last.pt holds every stream's state: take this rank's rows
                hidden = [h.narrow(1, *self.dist.rows(h.shape[1])) for h in hidden]
            self.state = tuple(h.to(self.device) for h in hidden) if len(hidden) == 2 else hidden[0].to(self.device)
        rng = data.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(list(rng["cuda"]))

    # -- bookkeeping --------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def progress(self) -> float:
        """Fraction of the run done by the nearest limit (0 when open-ended)."""
        cfg, parts = self.cfg, [0.0]
        if cfg.max_steps:
            parts.append(self.step / cfg.max_steps)
        if cfg.max_time:
            parts.append(self.elapsed() / max(1e-9, cfg.max_time - self._reserve()))
        if cfg.epochs:
            parts.append(self.epochs_done() / cfg.epochs)
        return max(parts)

    def epochs_done(self) -> float:
        """Epochs completed, with the current one counted by the fraction of its windows done."""
        return self.epoch + self.window / max(1, self.batches.steps_per_epoch(self.offset))

    def schedule_progress(self) -> float:
        """What the learning-rate schedule follows. Steps and epochs are deterministic; elapsed time is
        not, so time drives the schedule only when --max-time is the sole limit. That keeps the schedule
        a function of the step alone, and a resumed run bitwise-identical to an uninterrupted one."""
        cfg = self.cfg
        if cfg.max_steps or cfg.epochs:
            parts = [0.0]
            if cfg.max_steps:
                parts.append(self.step / cfg.max_steps)
            if cfg.epochs:
                parts.append(self.epochs_done() / cfg.epochs)
            return max(parts)
        return self.progress()

    def _reserve(self) -> float:
        """Seconds to keep for the final evaluation and its saves (last.pt and best.pt), so --max-time counts
        everything."""
        return self._eval_estimate() * 1.2 + self._save_estimate() * 2 + 0.5

    def _save_estimate(self) -> float:
        return 0.25 if getattr(self, "_save_cost", None) is None else self._save_cost

    def _eval_estimate(self) -> float:
        """Seconds an evaluation will take now: the last one's (or the start's probe's) time, scaled by how much
        slower a training step per token has become since (another process took a core, say)."""
        cost = getattr(self, "_eval_cost", None)
        recent = getattr(self, "_step_spt", ())
        now = statistics.median(recent) if len(recent) >= 4 else None
        if cost is None:  # no evaluation or probe yet: a forward per val token at half a training step's cost
            return 0.5 * len(self.val_ids) * now if now is not None else 0.0
        if self._eval_spt is None:  # the probe ran before any step: the first steps are its reference
            self._eval_spt = now
        return cost * (max(0.5, now / self._eval_spt) if now is not None and self._eval_spt else 1.0)

    def _next_step_estimate(self) -> float:
        """Seconds the next step may take: the slowest of the last few."""
        return max(self._step_secs) if getattr(self, "_step_secs", None) else 0.0

    def _probe_eval_cost(self) -> None:
        """--max-time before any evaluation: foresee the final one, which on a big validation split can take
        longer than all of a short run's training. Evaluation scores the val ids as `streams` rows in forward
        calls of CHUNK time steps (charnn.evaluate); time a forward of EVAL_PROBE_STEPS of them and scale. (Labels and
        pairs: the first steps' time per token stands in, see _eval_estimate.)"""
        if self.labels is not None or self.pairs is not None or len(self.val_ids) < 2:
            return
        streams, length = stream_layout(len(self.val_ids))
        rows = max(1, -(-streams // self.dist.world))  # this rank's share (evaluate splits the rows by rank)
        steps = min(EVAL_PROBE_STEPS, length)
        self.model.eval()
        with torch.no_grad(), autocast(self.device, self.precision):
            for warm in (True, False):
                x = torch.zeros(rows, 4 if warm else steps, dtype=torch.long, device=self.device)
                t = time.perf_counter()
                self.model(x)[0].float().sum().item()
        self.model.train()
        self._eval_cost = (time.perf_counter() - t) * length / steps

    def checkpoint_data(self, val_loss: float, with_training_state: bool) -> dict:
        data = {
            "model_config": asdict(self.model_cfg), "tokenizer": self.tokenizer.state(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "train_config": asdict(self.cfg), "step": self.step, "epoch": self.epoch,
            "chars_seen": self.chars_seen, "elapsed": self.elapsed(), "val_loss": val_loss,
            "best_val_loss": min(self.best_val, val_loss), "device": self.device.type, "precision": self.precision,
            "data": self.data_record,
        }
        if self.parent:
            data["parent"] = self.parent
        if self.labels:
            data["labels"] = self.labels
        if self.pairs is not None:
            data["pairs"] = self.pairs
            data["source_tokenizer"] = self.source_tokenizer.state()
        if with_training_state:
            state = self.state
            # under torchrun every rank must be here: the hidden state of all B streams is gathered
            hidden = None if state is None else [self.dist.gather_rows(h, dim=1).detach().cpu()
                                                 for h in (state if isinstance(state, tuple) else (state,))]
            data["optimizer"] = self.opt.state_dict()
            data["progress"] = {"step": self.step, "epoch": self.epoch, "window": self.window, "offset": self.offset,
                                "bad_evals": self.bad_evals, "hidden": hidden}
            data["rng"] = {"torch": torch.get_rng_state()}
            if self.device.type == "cuda":
                data["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        return data

    def save(self, name: str, val_loss: float) -> Path:
        t = time.perf_counter()
        path = self.run_dir / name
        data = self.checkpoint_data(val_loss, with_training_state=True)  # a collective under torchrun
        failed = None
        if self.dist.is_main:
            try:
                save_checkpoint(data, path)
            except CharnnError as e:
                failed = e
        # under torchrun: no rank goes on (or resumes from this file) before rank 0 has written it
        if self.dist.any(failed is not None):
            raise failed or CharnnError(f"the first process could not write {path}; see its error")
        self._save_cost = time.perf_counter() - t
        self._last_save = time.perf_counter()
        if not self._saved_once and self.dist.is_main:
            self._saved_once = True
            self._drop_stale_best(name)
        self.on_event("saved", {"path": str(path), "step": self.step})
        return path

    def _save_on_stop(self) -> Optional[Path]:
        """Save last.pt on a signal, unless this process has not trained a step: then an existing run of
        the same name stays exactly as it was (None when there is no last.pt at all)."""
        if self.step > self.start_step:
            return self.save("last.pt", self.last_val)
        existing = self.run_dir / "last.pt"
        return existing if self.resumed and existing.is_file() else None

    def _drop_stale_best(self, name: str) -> None:
        """The first save of a fresh run into the folder of an older run of the same name: that run's
        best.pt belongs to another model and would be picked over this run's last.pt, so remove it."""
        stale = self.run_dir / "best.pt"
        if not self.resumed and name == "last.pt" and stale.is_file():
            stale.unlink()

    def evaluate(self) -> float:
        """Val nats/char (with labels, each validation token under its own label; the per-label values go
        into the checkpoint's labels record)."""
        t = time.perf_counter()
        per = None if self.labels is None else np.zeros(len(self.labels["names"]) + 1)
        args = (self.device, self.precision, self.dist.part, self.dist.sum if self.dist.active else None,
                None if self.labels is None else self.val_labels, per)
        if self.pairs is not None:  # input -> target pairs: the targets' nats given their inputs, teacher-forced
            d = self.pair_data
            result = evaluate_pairs(self.model, d.val_src, d.val_tgt, start_id(self.tokenizer), *args[:4])
        elif self.val_doc_lengths is not None:  # line documents: each scored alone, as training and classify see them
            result = evaluate_documents(self.model, self.tokenizer, self.val_ids, self.val_doc_lengths, *args)
        else:
            result = evaluate_ids(self.model, self.tokenizer, self.val_ids, *args)
        if per is not None:
            chars = self.val_label_chars
            per = [self.dist.sum(float(v)) if self.dist.active else float(v) for v in per[1:]]
            self.labels["val_nats_per_char"] = [v / c if c else None for v, c in zip(per, chars)]
        self._eval_cost = time.perf_counter() - t
        self._eval_spt = statistics.median(self._step_spt) if len(self._step_spt) >= 4 else None
        return result.nats_per_char

    def _non_finite(self, what: str, value: float, step: int) -> CharnnError:
        kept = (f"the last good checkpoints in {self.run_dir} are kept" if (self.run_dir / "last.pt").is_file()
                else "no checkpoint had been saved yet")
        return CharnnError(f"{what} loss became {value} at step {step}; stopped, and {kept}. "
                           "Try a lower --lr or a --grad-clip such as 1.0")

    def _eval_and_save(self) -> None:
        val = self.evaluate()
        if not math.isfinite(val):  # weights went bad in the last step: keep the checkpoints from before
            raise self._non_finite("validation", val, self.step)
        self.last_val = val
        improved = val < self.best_val
        # patience counts evaluations without a real gain: creeping down by crumbs does not reset it
        self.bad_evals = 0 if val < self.best_val - MIN_IMPROVEMENT else self.bad_evals + 1
        if improved:
            self.best_val = val
        self.save("last.pt", val)
        if improved:
            self.save("best.pt", val)
        self.on_event("eval", {"step": self.step, "val_loss": val, "best_val_loss": self.best_val,
                               "improved": improved, "elapsed": self.elapsed()})

    # -- the loop -----------------------------------------------------------------------------------
    def _limit_reached(self) -> Optional[str]:
        cfg = self.cfg
        if cfg.max_steps and self.step >= cfg.max_steps:
            return "max_steps"
        if cfg.epochs and self.epochs_done() >= cfg.epochs:
            return "epochs"
        if cfg.max_time and self.elapsed() + self._next_step_estimate() + self._reserve() >= cfg.max_time:
            return "max_time"  # the next step would leave too little for the final evaluation and saves
        if cfg.open_ended and self.bad_evals >= cfg.patience:
            return "patience"
        return None

    def _should_stop(self) -> Tuple[Optional[str], Optional[int], bool]:
        """(limit reached, signal received, measure the threads again), agreed by all ranks under torchrun:
        elapsed time, signals and step times differ per process, and a rank that stops (or measures) alone
        leaves the others waiting in a collective."""
        stopped, signum, recheck = self._limit_reached(), self.stop.signum, self._recheck_wanted()
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
            self.watch.restart(changed=False)
            return False
        return True

    def _budget_spares_eval(self) -> bool:
        """--max-time: whether an evaluation now still leaves time for another step and the final evaluation;
        if not, training stops here and the final evaluation is this one. Agreed by all ranks."""
        if not self.cfg.max_time:
            return True
        need = self._eval_estimate() + 2 * self._save_estimate() + self._next_step_estimate() + self._reserve()
        return not self.dist.any(self.elapsed() + need >= self.cfg.max_time)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, cond=None) -> float:
        """One optimiser step on inputs x and targets y; `cond` is what else the batch holds: each row's
        labels (a tensor), or an encoder-decoder's inputs (padded ids and lengths)."""
        labels = cond if isinstance(cond, torch.Tensor) else None
        source = None if labels is not None else cond
        lr = lr_at(self.step, self.schedule_progress(), self.cfg)
        for g in self.opt.param_groups:
            g["lr"] = lr
        if labels is not None and self.cfg.label_dropout > 0:  # some windows without their label: the
            hide = torch.rand(labels.shape[0], 1, device=labels.device) < self.cfg.label_dropout  # unlabelled path
            labels = labels.masked_fill(hide, 0)
        contrast = labels is not None and self.cfg.label_contrast > 0
        if contrast:  # every row again under `copies - 1` other labels, in the same forward (rows stacked)
            copies = min(self.cfg.label_negatives, len(self.labels["names"]) - 1) + 1
            wrong = _other_labels(labels, len(self.labels["names"]), copies - 1)
            x, labels = x.repeat(copies, 1), torch.cat([labels, wrong])
            self.state = map_state(self.state, lambda h: h.repeat(1, copies, 1))
        with autocast(self.device, self.precision):
            logits, self.state = self._forward(x, labels, source)
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), (y.repeat(copies, 1) if contrast else y)
                              .reshape(-1), reduction="none", ignore_index=IGNORE).view(x.shape[0], -1)
        self.step_tokens = self._real_tokens(y)
        # the mean over every rank's real targets (padding ignored; a rank's share of a window may hold none):
        # DDP averages the ranks' gradients, so each rank divides its sum by the global count / world
        real = max(1.0, self.step_tokens / self.dist.world)
        loss = nll[: y.shape[0]].sum() / real
        value = loss
        if contrast:
            self.state = map_state(self.state, lambda h: h[:, : y.shape[0]])
            # Bayes' rule over the text's own label and `copies - 1` others, with the training-frequency prior
            # classify applies: -log of the own label's share of their prior x likelihood
            prior = self._log_prior[labels[:, 0]].view(copies, -1)
            score = prior - nll.sum(1).view(copies, -1)
            margin = score - score[:1]
            lab = labels[: y.shape[0], 0] > 0
            loss = loss + self.cfg.label_contrast * (torch.logsumexp(margin, 0) * lab).sum() / real
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        value = self.dist.mean(value)  # the global mean under torchrun: every rank sees the same value
        if not math.isfinite(value):
            raise self._non_finite("training", value, self.step + 1)
        self.opt.step()
        self.state = detach_state(self.state)
        self.step += 1
        return value

    def _real_tokens(self, y: torch.Tensor) -> int:
        """Targets this step trains on, over all ranks (streams: every position; documents: all but padding)."""
        if isinstance(self.batches, StreamBatches):
            return y.numel() * self.dist.world
        return int(self.dist.sum(float((y != IGNORE).sum())))

    def _forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None, source=None):
        extra = _forward_extra(labels if source is None else source)
        if not self._compile_pending:
            return self.net(x, self.state, **extra)
        try:  # the first call compiles: inductor needs a working C++ (CPU) or Triton (GPU) toolchain
            out = self.net(x, self.state, **extra)
            self._compile_pending = False
            return out
        except Exception as e:
            raise CharnnError(f"--compile failed ({type(e).__name__}: {first_line(e)}); train without --compile") from None

    def _observe_step(self, seconds: float, tokens: int) -> None:
        self._step_secs.append(seconds)
        self._step_spt.append(seconds / max(1, tokens))
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
        self.on_event("start", {"run_dir": str(self.run_dir), "params": self.model.num_params(),
                                "device": str(self.device), "precision": self.precision,
                                "precision_choice": self.precision_choice.to_dict(),
                                "threads_choice": self.threads_choice.to_dict(),
                                "vocab_size": self.tokenizer.vocab_size, "train_tokens": len(self.batches.ids),
                                "val_tokens": len(self.val_ids), "steps_per_epoch": self.batches.steps_per_epoch(),
                                "step": self.step, "tokenizer": self.tokenizer.kind, "processes": self.dist.world,
                                "chars_per_token": self.chars_per_token,
                                "val_unknown": int((self.val_ids == self.tokenizer.unk_id).sum())})
        stopped, last_eval_step = None, -1
        window_t0, window_steps, window_tokens, loss_ema = time.perf_counter(), 0, 0, None
        while stopped is None:
            if self.window == 0:  # a new epoch: pick its offset (deterministic from seed + epoch)
                self.offset = random.Random(cfg.seed * 100003 + self.epoch).randint(0, self.batches.max_offset())
            for batch in self.batches.epoch(self.offset, self.window):
                stopped, signum, recheck = self._should_stop()
                if stopped:
                    break
                if signum is not None:
                    raise TrainingInterrupted(signum, self._save_on_stop())
                if recheck:
                    self._rechoose_threads()
                if self.batches.fresh(self.offset, self.window):
                    self.state = None
                t_step = time.perf_counter()
                loss = self._train_step(*batch)
                tokens = self.step_tokens
                self._observe_step(time.perf_counter() - t_step, tokens)
                self.window += 1
                self.chars_seen += int(tokens * self.chars_per_token)
                window_tokens += tokens
                loss_ema = loss if loss_ema is None else 0.9 * loss_ema + 0.1 * loss
                window_steps += 1
                now = time.perf_counter()
                rate = window_tokens * self.chars_per_token / max(1e-9, now - window_t0)
                # loss is per token; loss_per_char divides by the training text's mean characters per token
                self.on_event("step", {"step": self.step, "loss": loss, "loss_avg": loss_ema,
                                       "loss_per_char": loss_ema / self.chars_per_token,
                                       "lr": self.opt.param_groups[0]["lr"], "chars_per_sec": rate,
                                       "elapsed": self.elapsed(), "progress": self.progress(),
                                       "epoch": self.epochs_done()})
                if now - window_t0 > 10:  # a moving window keeps chars/s current
                    window_t0, window_steps, window_tokens = now, 0, 0
                if self.step % cfg.eval_every == 0:
                    if not self._budget_spares_eval():
                        stopped = "max_time"
                        break
                    self._eval_and_save()
                    last_eval_step = self.step
                elif cfg.save_every_secs and self.dist.any(time.perf_counter() - self._last_save >= cfg.save_every_secs):
                    self.save("last.pt", self.last_val)  # a crash loses at most this interval of work
            else:
                self.epoch, self.window, self.state = self.epoch + 1, 0, None
                continue
        if last_eval_step != self.step or self.dist.any(self.dist.is_main and not (self.run_dir / "last.pt").exists()):
            self._eval_and_save()
        result = TrainResult(self.run_dir, self.step, self.best_val, self.last_val, self.elapsed(),
                             self.chars_seen, stopped)
        self.on_event("done", asdict(result))
        return result


def process_age() -> float:
    """Seconds since this process started (from /proc; 0 where there is none): the command line starts the
    run's clock there, so --max-time also counts the imports and the corpus loading before the Trainer."""
    try:
        start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: start time
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def _forward_extra(cond) -> dict:
    """The keyword arguments a batch's `cond` becomes in the model's forward: labels or an encoder's inputs."""
    if cond is None:
        return {}
    return {"labels": cond} if isinstance(cond, torch.Tensor) else {"source": cond}


def _check_same_kind(saved: dict, corpus, run: str) -> None:
    """A --pairs run resumes with --pairs, and a language model without it."""
    was = (saved.get("model_config") or {}).get("kind") == "seq2seq"
    if was != isinstance(corpus, PairText):
        raise ConfigError(f"--resume: run {run!r} was trained {'with' if was else 'without'} --pairs; "
                          "resume it the same way")


def _other_labels(labels: torch.Tensor, n: int, k: int = 1) -> torch.Tensor:
    """k copies of the rows, stacked: in each, every labelled row's labels moved to another label (1..n, the
    same shift along the row, the k shifts of a row distinct, so its k labels differ); label 0 stays."""
    shifts = torch.rand(labels.shape[0], n - 1, device=labels.device).argsort(1)[:, :k] + 1  # (rows, k) in 1..n-1
    moved = (labels.unsqueeze(0) - 1 + shifts.T.unsqueeze(-1)) % n + 1  # (k, rows, T)
    return torch.where(labels > 0, moved, labels).reshape(-1, labels.shape[1])


def _check_same_labels(saved: Optional[dict], corpus, run: str) -> None:
    """A resumed run must see the labels it was trained on: the same way of labelling, the same names."""
    if bool(saved) != isinstance(corpus, LabelledText):
        by = (saved or {}).get("by")
        raise ConfigError(f"--resume: run {run!r} was trained {'with --label-by ' + by if by else 'without labels'}; "
                          "resume it the same way")
    if saved and (saved.get("by") != corpus.by or list(saved.get("names", [])) != corpus.names):
        raise ConfigError(f"--resume: run {run!r} was trained on labels {', '.join(saved.get('names', []))} "
                          f"(--label-by {saved.get('by')}); this corpus has {', '.join(corpus.names)} "
                          f"(--label-by {corpus.by}). Resume with the same corpus, or start a new run")


def _fingerprint(tokenizer, train_tokens: int, val_tokens: int) -> int:
    """A number that differs when two processes tokenized different text (or built different tokenizers)."""
    blob = repr((sorted(tokenizer.state().items()), train_tokens, val_tokens)).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little")


def train(corpus: Corpus, model_cfg: ModelConfig, cfg: TrainConfig, on_event: Optional[Callback] = None,
          resume: bool = False, stop: Optional[StopRequest] = None) -> TrainResult:
    """Train a model on `corpus` and write best.pt / last.pt into out/name."""
    return Trainer(corpus, model_cfg, cfg, on_event, resume, stop).fit()

