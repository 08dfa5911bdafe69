"""Turning training events into a Rich progress bar on stderr (or plain lines when stderr is no terminal)."""

from __future__ import annotations

import math
import time
from pathlib import Path

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
                           TransferSpeedColumn)

from charnn.cli.output import visible
from charnn.reports.info import parent_words

TOTAL = 1000  # the bar counts thousandths of the run (steps, time or epochs: whichever limit is nearest)
PLAIN_EVERY = 10.0  # seconds between plain progress lines
BIG_CORPUS = 20e6  # bytes from which encoding is announced before it starts (smaller ones take a moment)


def _fmt(x: float) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.4f}"


def _lines(n: int) -> str:
    return f"{n:,} line{'s' if n != 1 else ''}"


class TrainProgress:
    """A callback for `charnn.training.trainer.train`: draws progress and remembers the last numbers."""

    def __init__(self, console: Console, open_ended: bool, quiet: bool = False, plain_every: float = PLAIN_EVERY):
        self.console, self.open_ended, self.quiet, self.plain_every = console, open_ended, quiet, plain_every
        self.live = console.is_terminal and not quiet  # no terminal (CI logs, a file): plain periodic lines
        self.val = math.nan
        self.best = math.nan
        self.unit = "char"  # what losses are per and the rate counts: "text" for a classifier (the start event's)
        self.progress = None
        self._last_line = -math.inf  # the first step always gets a plain line
        self.download = DownloadBar(console, quiet)

    def __enter__(self):
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]step {task.fields[step]}"), BarColumn(),
                TextColumn("train {task.fields[loss]}  val {task.fields[val]} nats/{task.fields[unit]}  "
                           "{task.fields[rate]} {task.fields[unit]}s/s"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                console=self.console, redirect_stdout=False, redirect_stderr=False, transient=False)
            self.progress.start()
            self.task = self.progress.add_task("train", total=None if self.open_ended else TOTAL,
                                               step=0, loss="—", val="—", rate="—", unit=self.unit)
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            try:
                self.progress.stop()
            except OSError:  # (stderr's reader is gone: see __call__)
                pass

    def _data(self, info: dict) -> None:
        if info["stage"] == "wait":
            self.note("waiting for another charnn process that is encoding this corpus (then its cache is reused)...")
            return
        if info["stage"] == "encode":
            if info["bytes"] >= BIG_CORPUS:
                self.note(f"encoding {info['bytes'] / 1e6:,.0f} MB of text (once: later runs on it reuse the cache)...")
            return
        if info["bytes"] >= BIG_CORPUS:  # a small corpus encodes in a blink: no line for it
            mb, t = info["bytes"] / 1e6, max(info["seconds"], 1e-9)
            how = (f"cached encoding of {mb:,.0f} MB loaded in {t:.1f}s" if info["cached"] else
                   f"encoded {mb:,.0f} MB in {t:.1f}s ({mb / t:,.0f} MB/s)")
            self.note(f"{how}: {info['train_tokens']:,} train / {info['val_tokens']:,} val tokens as {info['dtype']}")
        if info["cached"]:  # an encoding run reported its skipped files as it met them
            for path, why in info.get("skipped", []):
                self._skipped(path, why)

    def _skipped(self, path: str, why: str) -> None:
        self.note(f"note: skipped {path}: it {why}")

    def note(self, message: str) -> None:
        if not self.quiet:  # (as it is: paths, labels and corpus names are no markup; '[/x]' was a MarkupError)
            self.console.print(message, highlight=False, markup=False)

    def __call__(self, kind: str, info: dict) -> None:
        """Show one training event; where stderr's reader went away (a closed pipe or terminal), training goes on
        without its progress rather than stopping at the next line it prints."""
        try:
            self._show(kind, info)
        except OSError:
            self.quiet = self.console.quiet = True
            if self.progress is not None:
                self.progress.disable = True

    def _show(self, kind: str, info: dict) -> None:
        if kind == "download":
            self.download(info)
        elif kind == "resume_text":
            glob = f" (--glob {info['glob']!r})" if info.get("glob") else ""
            self.note(f"resuming on the run's own text: {' '.join(visible(a) for a in info['corpus'])}{glob}")
        elif kind == "corpus_skip":
            self._skipped(info["path"], info["why"])
        elif kind == "data":
            self._data(info)
        elif kind == "tokenizer":
            if info["stage"] == "start":
                cap = "" if info["chars"] == info["of_chars"] else f" (a sample of {info['of_chars']:,})"
                self.note(f"training a {info['kind']} tokenizer (vocab {info['vocab_size']:,}) on "
                          f"{info['chars']:,} characters{cap}...")
            else:
                self.note(f"{info['kind']} tokenizer ready: {info['vocab_size']:,} pieces in {info['seconds']:.1f}s")
        elif kind == "labels":
            sizes = ", ".join(f"{n} {c:,}" for n, c in zip(info["names"][:12], info["train_chars"][:12]))
            more = f" and {len(info['names']) - 12} more" if len(info["names"]) > 12 else ""
            self.note(f"{len(info['names'])} labels by {info['by']} (training characters): {sizes}{more}")
            if info.get("skipped_lines"):
                self.note(f"note: skipped {_lines(info['skipped_lines'])} that are not label<TAB>text")
        elif kind == "pairs":
            held = f"from {info['val_file']}" if info.get("val_file") else "held out by input"
            self.note(f"{info['train_pairs']:,} training pairs, {info['val_pairs']:,} validation pairs ({held}); "
                      f"targets up to {info['max_ratio']:.2f}x their input's length")
            if info.get("skipped_lines"):
                self.note(f"note: skipped {_lines(info['skipped_lines'])} that are not input<TAB>target")
            if info.get("sized"):
                shown = ", ".join(f"--{k} {v}" for k, v in info["sized"].items())
                self.note(f"model sized for {info['train_pairs']:,} training pairs: {shown} (give these flags to "
                          "choose)")
        elif kind == "init_from":
            self.note(f"fine-tuning from {parent_words(info)}")
            if info.get("labels_dropped"):
                names, one = info["labels_dropped"], len(info["labels_dropped"]) == 1
                more = f" and {len(names) - 10} more" if len(names) > 10 else ""
                self.note(f"note: the base's label{'' if one else 's'} {', '.join(names[:10])}{more} "
                          f"{'is' if one else 'are'} not in this run: "
                          f"{'its vector is' if one else 'their vectors are'} left behind")
        elif kind == "start":
            self.unit = info.get("unit", "char")
            per = info.get("text_chars_per_token", info["chars_per_token"])
            per = f", {per:.2f} chars/token" if info.get("tokenizer", "char") != "char" else ""
            procs = f" x {info['processes']} processes" if info.get("processes", 1) > 1 else ""
            precision = _precision_words(info.get("precision_choice")) or info["precision"]
            precision += _threads_words(info.get("threads_choice"))
            batch = f", batch {info['batch_size']}" if info.get("batch_size") else ""
            self.note(f"training {info['params']:,} parameters on {info['device']}{procs} ({precision}){batch}, "
                      f"vocab {info['vocab_size']}{per}, {info['train_tokens']:,} train / {info['val_tokens']:,} val "
                      f"tokens -> {info['run_dir']}")
            if info.get("replaces"):
                kept = Path(info["run_dir"]) / "previous"
                older = ", where it replaces the older run kept there" if any(kept.glob("*.pt")) else ""
                self.note(f"note: {info['run_dir']} held a run ({info['replaces']}); this one moves it into "
                          f"{kept} at its first save{older} (--resume continues that run instead)")
            for flag, (was, now) in (info.get("limits_changed") or {}).items():  # (the curve moved without a word)
                self.note(f"note: --{flag.replace('_', '-')} {_limit(now)} (the run was saved with {_limit(was)}): the "
                          "learning rate's schedule spans the new limit from here, so the run does not continue as "
                          "one started with it would have")
            if info.get("val_cut"):
                cut, secs = info["val_cut"], lambda s: f"{s:.{0 if s >= 10 else 1}f} s"
                self.note(f"note: validation scores the first {cut['tokens']:,} of {cut['of']:,} val tokens (about "
                          f"{secs(cut['cut_seconds'])}): a whole pass would take about {secs(cut['seconds'])} of "
                          f"--max-time {cut['max_time']:g}s (--eval-tokens sets it)")
            if info.get("val_unknown"):
                self.note(f"note: {info['val_unknown']:,} validation characters are not in the training text's "
                          "vocabulary; they are scored as the unknown token")
        elif kind == "threads" and info.get("before") != info["threads"]:
            self.note(f"step {info['step']}: the step time changed; now {_threads_words(info).lstrip('; ')}")
        elif kind == "step":
            # train and val are both nats per character (the train loss per token over mean chars/token)
            fields = dict(step=info["step"], loss=_fmt(info.get("loss_per_char", info["loss_avg"])), val=_fmt(self.val),
                          rate=f"{info['chars_per_sec']:,.0f}", unit=self.unit)
            if self.progress is not None:
                completed = None if self.open_ended else min(TOTAL, int(info["progress"] * TOTAL))
                self.progress.update(self.task, completed=completed, **fields)
            elif not self.quiet and time.monotonic() - self._last_line >= self.plain_every:
                self._last_line = time.monotonic()
                done = "" if self.open_ended else f"{min(1.0, info['progress']):4.0%}  "
                p = info["progress"]
                eta = f"  eta {info['elapsed'] * (1 - p) / p:.0f}s" if not self.open_ended and 0 < p < 1 else ""
                self.note(f"{done}step {info['step']}  train {fields['loss']}  val {fields['val']} nats/{self.unit}  "
                          f"{fields['rate']} {self.unit}s/s  {info['elapsed']:.0f}s{eta}")
        elif kind == "eval":
            self.val, self.best = info["val_loss"], info["best_val_loss"]
            mark = " (best)" if info["improved"] else ""
            wer = f", WER {100 * info['score']:.2f}%" if info.get("by") == "wer" else ""
            self.note(f"step {info['step']}: val {info['val_loss']:.4f} nats/{self.unit} "
                      f"({info['val_loss'] / math.log(2):.3f} bits){wer}{mark}")


class DownloadBar:
    """Draws "download" events (start, progress, done) as a Rich bar on stderr, or plain lines."""

    def __init__(self, console: Console, quiet: bool = False):
        self.console, self.quiet, self.progress, self.task = console, quiet, None, None

    def __call__(self, info: dict) -> None:
        if self.quiet:
            return
        stage = info["stage"]
        if stage == "start":
            self.console.print(f"downloading {info['name']} from {info['url']}", highlight=False)
            if self.console.is_terminal:
                self.progress = Progress(TextColumn(info["name"]), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                         TimeRemainingColumn(), console=self.console, redirect_stdout=False,
                                         redirect_stderr=False, transient=True)
                self.progress.start()
                self.task = self.progress.add_task("download", total=info["total"])
        elif stage == "progress" and self.progress is not None:
            self.progress.update(self.task, completed=info["done"])
        elif stage == "done":
            self.close()
            self.console.print(f"downloaded {info['done']:,} bytes", highlight=False)
        elif stage == "unverified":
            self.console.print(f"note: the catalog pins no sha256 for {info['name']}; what arrived has sha256 "
                               f"{info['sha256']}", highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _threads_words(choice) -> str:
    """'; 1 thread, the fastest per step measured (1: 12 ms, 2: 798 ms)' ('' when forced or not measured)."""
    if not choice or choice.get("how") not in ("measured", "unmeasured"):
        return ""
    return f"; {choice.get('reason', '')}"


def _precision_words(choice) -> str:
    """'bf16, auto: bf16 1.47x fp32, measured' from the trainer's precision choice ('' when there is none)."""
    if not choice:
        return ""
    if choice.get("how") == "forced":
        return choice["precision"]
    return f"{choice['precision']}, auto: {choice.get('reason', '')}"


def _limit(value) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
