"""The run's own record: `metrics.jsonl` (one JSON object per logged step) and `config.json`.

`MetricsLogger` is an `on_event` callback for the Trainer; `Callbacks` fans one event out to several, so
logging, the progress bar and sample previews hang off the loop without living in it.

A record holds `step`, `epoch` (fractional), `train_loss` (mean over the steps since the previous record, nats
per character as `val_loss`: a subword run's per-token loss over the training text's characters per token; files
written before 2026-12 hold it per token), `lr`, `chars_per_sec`, `elapsed` (seconds since the run began, resumed
time included) and, at evaluation steps, `val_loss` (nats per character; a classifier's losses are per text). A
record is written every `every` steps, at every evaluation and at the last step, so `step` always increases along
the file.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from charnn import __version__
from charnn.data.files import write_atomic, write_error, write_failed
from charnn.training.stopping import StopTraining

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
HINT = "choose another --out"


class Callbacks:
    """One `on_event` callback that calls several in order; `add` may be called after the Trainer exists."""

    def __init__(self, *callbacks: Optional[Callable[[str, dict], None]]):
        self.callbacks = [c for c in callbacks if c is not None]
        self.stop = None  # the run's StopRequest: a callback's StopTraining asks it to end as at a limit

    def add(self, callback):
        self.callbacks.append(callback)
        return callback

    def __call__(self, kind: str, info: dict) -> None:
        """Every callback sees the event, then the first one's exception is raised: a user's `on_event` that raised
        on `saved` kept the metrics writer from it (no config.json or metrics.jsonl, records lost for good)."""
        error = None
        for callback in self.callbacks:
            try:
                callback(kind, info)
            except StopTraining as e:
                if self.stop is None:
                    error = error or e
                else:
                    self.stop.asked = True
            except BaseException as e:  # (KeyboardInterrupt too: raised once the others have it)
                error = error or e
        if error is not None:
            raise error


class StepMeter:
    """What a step event reports besides the step: the loss's moving average, and chars/s over a moving window
    (restarted every 10 s, so it stays current)."""

    def __init__(self, now: float):
        self.t0, self.tokens, self.loss_ema = now, 0, None

    def add(self, loss: float, tokens: int, now: float, chars_per_token: float) -> Tuple[float, float]:
        self.tokens += tokens
        self.loss_ema = loss if self.loss_ema is None else 0.9 * self.loss_ema + 0.1 * loss
        rate = self.tokens * chars_per_token / max(1e-9, now - self.t0)
        if now - self.t0 > 10:
            self.t0, self.tokens = now, 0
        return self.loss_ema, rate


def start_info(t) -> dict:
    """The start event of trainer `t`: what the run is (sizes, device, precision and threads, and how chosen)."""
    return {"run_dir": str(t.run_dir), "params": t.model.num_params(), "device": str(t.device),
            "precision": t.precision, "precision_choice": t.precision_choice.to_dict(),
            "threads_choice": t.threads_choice.to_dict(), "vocab_size": t.tokenizer.vocab_size,
            "train_tokens": len(t.batches.ids), "val_tokens": len(t.val_ids),
            "steps_per_epoch": t.batches.steps_per_epoch(), "step": t.step, "tokenizer": t.tokenizer.kind,
            "processes": t.dist.world, "chars_per_token": t.task.chars_per_token, "batch_size": t.cfg.batch_size,
            "text_chars_per_token": t.task.text_chars_per_token or t.task.chars_per_token,
            "val_unknown": int((t.val_ids == t.tokenizer.unk_id).sum()) if t.task.val_unknown is None
            else t.task.val_unknown, "unit": t.task.unit,
            "replaces": t.replaces, "val_cut": getattr(t, "val_cut", None),  # (--max-time's, schedule.foresee_eval)
            "limits_changed": getattr(t, "limits_changed", {})}  # (a resume's: {flag: (saved, now)})


def run_config(trainer, corpus_source: str, corpus_args: Optional[List[str]] = None,
               glob: Optional[str] = None) -> dict:
    """What config.json holds: the model and training configs, the tokenizer and where the text came from (in
    words, and as the corpus arguments and --glob a resume without CORPUS reads again: recorded_text)."""
    return {"charnn_version": __version__, "corpus": corpus_source, "corpus_args": corpus_args, "glob": glob,
            "model": trainer.model_cfg.saved(),
            "train": asdict(trainer.cfg),
            "tokenizer": {"kind": trainer.tokenizer.kind, "vocab_size": trainer.tokenizer.vocab_size},
            "precision": trainer.precision_choice.to_dict(),  # what --precision came to, and how (auto: measured)
            "threads": trainer.threads_choice.to_dict(),  # what --threads came to at the start, and how
            "parent": trainer.parent,
            "labels": trainer.task.labels}  # --label-by: how, the names and their training sizes (None: no labels)  # --init-from: the run it started from (None for a run from scratch)


def recorded_text(run_dir) -> Tuple[Optional[List[str]], Optional[str], Optional[str]]:
    """(the corpus arguments, --glob, the text in words) that a run's config.json records; the arguments None where
    it records none (a run of the built-in corpus, one from before 2026-12-07), all None where it cannot be read."""
    try:
        config = json.loads((Path(run_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
        args, glob, words = config.get("corpus_args"), config.get("glob"), config.get("corpus")
    except (OSError, ValueError, AttributeError):
        return None, None, None
    if not (isinstance(args, list) and args and all(isinstance(a, str) and a for a in args)):
        args = None
    return args, glob if isinstance(glob, str) else None, words if isinstance(words, str) else None


def finite(x) -> Optional[float]:
    """A number for JSON: the float, or None for NaN, infinities, None and anything not a number."""
    return float(x) if isinstance(x, numbers.Real) and math.isfinite(x) else None


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, text.encode("utf-8"), HINT)


def read_metrics(path: Path) -> List[dict]:
    """The records of a metrics.jsonl; a half-written last line (a crash mid-write) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            records.append(rec)
    return records


def loss_unit(run_dir: Path) -> str:
    """What a run's losses are per, from its config.json: "text" for a classifier's, else "char"."""
    try:
        model = json.loads((Path(run_dir) / CONFIG_FILE).read_text(encoding="utf-8")).get("model") or {}
    except (OSError, ValueError, AttributeError):
        return "char"
    return "text" if isinstance(model, dict) and model.get("kind") == "classifier" else "char"


def curves(records: List[dict]):
    """(train, val): lists of (step, loss) for the records that carry each as finite numbers (a NaN, from a
    hand-edited file, stopped `charnn info`'s curve with a traceback)."""
    def points(key):
        return [(r["step"], r[key]) for r in records if _finite(r.get(key)) and _finite(r.get("step"))]
    return points("train_loss"), points("val_loss")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class MetricsLogger:
    """Appends one record per logged step to run_dir/metrics.jsonl and writes run_dir/config.json at start.

    A fresh run starts the file anew (its checkpoints are replaced too); a resumed run keeps the records up
    to the step it resumes from and drops later ones (steps that are about to be trained again). Nothing is
    written before the run's first checkpoint save: a run that fails before it leaves an existing run folder
    of the same name untouched. Until then records wait in memory.
    """

    def __init__(self, run_dir: Path, every: int = 10, resume: bool = False, config: Optional[dict] = None):
        self.path, self.every, self.resume, self.config = Path(run_dir) / METRICS_FILE, max(1, every), resume, config
        self.pending: Optional[dict] = None  # the record of the latest step, waiting for a possible val_loss
        self.last_step_info: Optional[dict] = None
        self.last_written = -1
        self._loss_sum, self._loss_n = 0.0, 0
        self.start_step: Optional[int] = None  # set by "start"; files are opened at the first "saved"
        self.chars_per_token = 1.0  # (the start event's: train_loss is written per character)
        self.backlog: List[dict] = []
        self.last_record: Optional[dict] = None  # the last line written, and where it starts (an eval's val_loss
        self.last_offset = 0  # rewrites it when the save before the eval wrote it)

    def __call__(self, kind: str, info: dict) -> None:
        if kind == "start":
            self.start_step = info.get("step", 0)
            self.chars_per_token = info.get("chars_per_token") or 1.0
        elif kind == "saved":
            if self.start_step is not None:
                self._start(self.start_step)
                self.start_step = None
                backlog, self.backlog = self.backlog, []
                for rec in backlog:
                    self._append(rec)
            if self.pending is not None and self.pending["step"] == info["step"]:  # the saved step's record goes
                self._flush()  # out with it (a kill before the next step lost it, and a resume never wrote it)
        elif kind == "step":
            self._flush()
            self._loss_sum, self._loss_n = self._loss_sum + info["loss"], self._loss_n + 1
            self.last_step_info = info
            if info["step"] % self.every == 0:
                self.pending = self._record(info)
        elif kind == "eval":
            rec = self.pending if self.pending and self.pending["step"] == info["step"] else None
            written = self.last_record if self.last_record and self.last_record["step"] == info["step"] else None
            if rec is None and written is not None:  # (written at the save just before: it gets its val_loss)
                rec, self.last_written = dict(written), info["step"] - 1
            if rec is None:
                last = self.last_step_info
                rec = self._record(last) if last and last["step"] == info["step"] else {"step": info["step"]}
            rec["val_loss"] = finite(info["val_loss"])
            if info.get("by", "loss") != "loss":  # what picks best.pt (--best-by wer: the share of words wrong)
                rec[f"val_{info['by']}"] = finite(info["score"])
            self.pending = rec
            self._flush()
        elif kind == "done":
            self.close()

    def close(self) -> None:
        """Write what is pending, and the last step if no record has it yet (safe to call twice)."""
        self._flush()
        last = self.last_step_info
        if last is not None and last["step"] > self.last_written:
            self.pending = self._record(last)
            self._flush()

    def _start(self, step: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.resume:
            kept = [r for r in read_metrics(self.path) if r["step"] <= step]
            self.last_written = kept[-1]["step"] if kept else -1
            text = "".join(json.dumps(r) + "\n" for r in kept)
            if not self.path.is_file() or self.path.read_bytes() != text.encode("utf-8"):  # (bytes: a damaged
                # log that is not UTF-8 is rewritten, as read_metrics read it; it raised UnicodeDecodeError)
                write_text_atomic(self.path, text)
        else:
            write_text_atomic(self.path, "")
        if self.config is not None:
            write_text_atomic(self.path.parent / CONFIG_FILE, json.dumps(self.config, indent=2) + "\n")

    def _record(self, info: dict) -> dict:
        train_loss = (self._loss_sum / self._loss_n if self._loss_n else info["loss"]) / self.chars_per_token
        self._loss_sum, self._loss_n = 0.0, 0
        return {"step": info["step"], "epoch": round(info["epoch"], 4), "train_loss": finite(train_loss),
                "lr": info["lr"], "chars_per_sec": round(info["chars_per_sec"], 1),
                "elapsed": round(info["elapsed"], 3)}

    def _flush(self) -> None:
        rec, self.pending = self.pending, None
        if rec is None or rec["step"] <= self.last_written:
            return
        if self.start_step is not None:  # no checkpoint saved yet: keep it in memory
            if not self.backlog or rec["step"] > self.backlog[-1]["step"]:
                self.backlog.append(rec)
            return
        self._append(rec)

    def _append(self, rec: dict) -> None:
        if rec["step"] <= self.last_written:
            return
        line = (json.dumps(rec) + "\n").encode("utf-8")
        again = self.last_record is not None and rec["step"] == self.last_record["step"]  # (with its val_loss)
        try:
            with open(self.path, "ab", buffering=0) as f:
                end = f.seek(0, 2)
                if again:
                    f.truncate(self.last_offset)
                    end = f.seek(0, 2)
                try:
                    done = 0
                    while done < len(line):  # an unbuffered write may write part of it
                        done += f.write(line[done:])
                except OSError:
                    f.truncate(end)  # a full disk leaves no half line behind
                    raise
        except OSError as e:
            raise write_failed(write_error(e, self.path.parent), self.path, len(line), HINT) from None
        self.last_written, self.last_record, self.last_offset = rec["step"], rec, end
