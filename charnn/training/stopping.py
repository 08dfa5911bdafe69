"""How a training run ends: the result it returns, and a stop asked for by a signal (saved, then raised)."""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from charnn.data.files import hold_interrupt
from charnn.errors import CharnnError

STOP_REASONS = ("max_steps", "epochs", "max_time", "patience", "callback")


class StopTraining(Exception):
    """Raised by an `on_event` callback (charnn.train's): training ends after the current step, with the final
    evaluation and saves a limit gets, and returns its result, `stopped` "callback" (early stopping of your own)."""


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
    best_by: str = "loss"  # what picked best.pt: "loss" (its val loss is best_val_loss) or "wer" (--pairs)
    best_score: float = float("inf")  # best.pt's score by best_by (a fraction for WER)
    saved: bool = True  # False: no step was trained and the folder's older run of the name was left as it was


def non_finite(what: str, value: float, step: int, run_dir: Path, saved: bool = True) -> CharnnError:
    """The error that stops a run whose loss went NaN or infinite (its checkpoints from before are kept; `saved`:
    whether this run has saved any: a folder's older run is not this one's)."""
    kept = (f"the last good checkpoints in {run_dir} are kept" if saved and (run_dir / "last.pt").is_file()
            else "this run had saved no checkpoint yet")
    return CharnnError(f"{what} loss became {value} at step {step}; stopped, and {kept}. "
                       "Try a lower --lr or a --grad-clip such as 1.0")


class Interrupted(KeyboardInterrupt):
    """A stop signal before training began (reading and encoding the text, measuring, building the model): there is
    nothing to save, so it stops at once (the loop would have seen it only after all of that: 38 s of a corpus's
    encoding went on after a Ctrl-C)."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


class StopRequest:
    """Set by a signal handler; the loop checks it between steps so a save never sees a half step."""

    def __init__(self):
        self.signum: Optional[int] = None
        self.asked = False  # a callback raised StopTraining: end as at a limit
        self.training = False  # the loop has begun (before it, a signal stops at once: Interrupted)


@contextmanager
def graceful_signals(stop: StopRequest):
    """SIGINT/SIGTERM (and SIGHUP, a closed terminal; SIGBREAK on Windows) ask the loop to stop after the current step, which saves
    last.pt; a second one quits at once (once a checkpoint being written is in place)."""

    def handler(signum, frame):
        if not stop.training and not hold_interrupt(signum):  # (a file being written is finished first)
            raise Interrupted(signum)
        if stop.signum is not None and not hold_interrupt(signum):
            raise Interrupted(signum)
        stop.signum = signum

    wanted = [signal.SIGINT, signal.SIGTERM] + [getattr(signal, name) for name in ("SIGHUP", "SIGBREAK")
                                                 if hasattr(signal, name)]  # (SIGBREAK: Windows' Ctrl-Break)
    old = {s: signal.getsignal(s) for s in wanted}
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


def process_age() -> float:
    """Seconds since this process started (from /proc; 0 where there is none): the command line starts the
    run's clock there, so --max-time also counts the imports and the corpus loading before the Trainer. Under
    torchrun, since the launcher started (the workers' parent: its start-up and rendezvous took ~2 s of a 20-s run
    outside the clock)."""
    who = os.getppid() if os.environ.get("TORCHELASTIC_RUN_ID") else "self"
    try:
        start = int(Path(f"/proc/{who}/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: start time
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0
