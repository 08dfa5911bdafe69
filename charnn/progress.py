"""Turning training events into a Rich progress bar on stderr (or plain lines when stderr is no terminal)."""

from __future__ import annotations

import math
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

TOTAL = 1000  # the bar counts thousandths of the run (steps, time or epochs: whichever limit is nearest)
PLAIN_EVERY = 10.0  # seconds between plain progress lines


def _fmt(x: float) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.4f}"


class TrainProgress:
    """A callback for `charnn.train.train`: draws progress and remembers the last numbers."""

    def __init__(self, console: Console, open_ended: bool, quiet: bool = False, plain_every: float = PLAIN_EVERY):
        self.console, self.open_ended, self.quiet, self.plain_every = console, open_ended, quiet, plain_every
        self.live = console.is_terminal and not quiet  # no terminal (CI logs, a file): plain periodic lines
        self.val = math.nan
        self.best = math.nan
        self.progress = None
        self._last_line = -math.inf  # the first step always gets a plain line

    def __enter__(self):
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]step {task.fields[step]}"), BarColumn(),
                TextColumn("train {task.fields[loss]}  val {task.fields[val]} nats/char  {task.fields[rate]} chars/s"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                console=self.console, redirect_stdout=False, redirect_stderr=False, transient=False)
            self.progress.start()
            self.task = self.progress.add_task("train", total=None if self.open_ended else TOTAL,
                                               step=0, loss="—", val="—", rate="—")
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()

    def note(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, highlight=False)

    def __call__(self, kind: str, info: dict) -> None:
        if kind == "tokenizer":
            if info["stage"] == "start":
                cap = "" if info["chars"] == info["of_chars"] else f" (a sample of {info['of_chars']:,})"
                self.note(f"training a {info['kind']} tokenizer (vocab {info['vocab_size']:,}) on "
                          f"{info['chars']:,} characters{cap}...")
            else:
                self.note(f"{info['kind']} tokenizer ready: {info['vocab_size']:,} pieces in {info['seconds']:.1f}s")
        elif kind == "start":
            per = f", {info['chars_per_token']:.2f} chars/token" if info.get("tokenizer", "char") != "char" else ""
            procs = f" x {info['processes']} processes" if info.get("processes", 1) > 1 else ""
            self.note(f"training {info['params']:,} parameters on {info['device']}{procs} ({info['precision']}), "
                      f"vocab {info['vocab_size']}{per}, {info['train_tokens']:,} train / {info['val_tokens']:,} val "
                      f"tokens -> {info['run_dir']}")
            if info.get("val_unknown"):
                self.note(f"note: {info['val_unknown']:,} validation characters are not in the training text's "
                          "vocabulary; they are scored as the unknown token")
        elif kind == "step":
            # train and val are both nats per character (the train loss per token over mean chars/token)
            fields = dict(step=info["step"], loss=_fmt(info.get("loss_per_char", info["loss_avg"])), val=_fmt(self.val),
                          rate=f"{info['chars_per_sec']:,.0f}")
            if self.progress is not None:
                completed = None if self.open_ended else min(TOTAL, int(info["progress"] * TOTAL))
                self.progress.update(self.task, completed=completed, **fields)
            elif not self.quiet and time.monotonic() - self._last_line >= self.plain_every:
                self._last_line = time.monotonic()
                done = "" if self.open_ended else f"{min(1.0, info['progress']):4.0%}  "
                self.note(f"{done}step {info['step']}  train {fields['loss']}  val {fields['val']} nats/char  "
                          f"{fields['rate']} chars/s  {info['elapsed']:.0f}s")
        elif kind == "eval":
            self.val, self.best = info["val_loss"], info["best_val_loss"]
            mark = " (best)" if info["improved"] else ""
            self.note(f"step {info['step']}: val {info['val_loss']:.4f} nats/char "
                      f"({info['val_loss'] / math.log(2):.3f} bits){mark}")
