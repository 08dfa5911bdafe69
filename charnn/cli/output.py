"""What every command shares on stderr: the console, one-line errors, a quiet closed pipe, the loss curve."""

from __future__ import annotations

import importlib
import json
import math
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from charnn.errors import CharnnError, ConfigError, escape_controls, is_out_of_memory

class MessageConsole(Console):
    """stderr's console: where its reader went away (`charnn train ... 2>&1 | head`), the work goes on without
    messages, where Rich's own handling would exit 1 (training would stop at its next line, unsaved)."""

    notes = True  # False: a command's -q (its notes are silenced; errors still print)

    def on_broken_pipe(self) -> None:
        self.quiet = True

    def note(self, text: str) -> None:
        """`note: TEXT` on stderr (as it is: no markup), unless -q silenced the command's notes."""
        if self.notes:
            self.print(f"note: {text}", markup=False)

    def _check_buffer(self) -> None:
        try:
            super()._check_buffer()
        except OSError:  # stderr on a full disk (2>/dev/full): the messages go, the results stay (sample printed
            self.quiet = True  # nothing and exited 1)
            del self._buffer[:]


err = MessageConsole(stderr=True, highlight=False, soft_wrap=True)


class ResultConsole(Console):
    """A console for results on stdout: a closed pipe is left to `writing_results` (quiet, exit 0), where
    Rich's own handling would exit 1."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


def note_threads(threads, quiet: bool = False) -> None:
    """A note on stderr where --threads asks for more threads than the machine has cores: they take turns, and
    every small step waits for the slowest (it still runs: a user may know better)."""
    cores = os.cpu_count() or 1
    if threads is not None and threads > cores and not quiet:
        err.print(f"note: --threads {threads} is more than this machine's {cores} cores; threads beyond them take "
                  "turns on the cores and usually run slower", markup=False)


def json_line(obj, **kw) -> str:
    """obj as one line of strict JSON: a float that is not finite (a diverged model's loss, an empty file's
    average) as null, which every JSON reader takes (json.dumps would write NaN or Infinity)."""
    def finite(x):
        if isinstance(x, float):
            return x if math.isfinite(x) else None
        if isinstance(x, dict):
            return {k: finite(v) for k, v in x.items()}
        return [finite(v) for v in x] if isinstance(x, (list, tuple)) else x
    return json.dumps(finite(obj), allow_nan=False, **kw)


def import_torch() -> None:
    """Import torch with the stop signals held until it is done: a Ctrl-C in the first second of `charnn train`
    (torch's import) was swallowed by torch's C start-up (training then ran to its end), or died in a
    RecursionError or an abort. Held (noted by a handler that raises nothing), it is raised again once the import
    is done, to the handlers that were there."""
    if "torch" in sys.modules:
        return
    names = ("SIGINT", "SIGTERM", "SIGHUP")
    wanted = [getattr(signal, n) for n in names if hasattr(signal, n)]
    arrived = []
    try:
        old = {s: signal.signal(s, lambda signum, frame: arrived.append(signum)) for s in wanted}
    except ValueError:  # not the main thread: signals are not ours to hold
        old = {}
    try:
        importlib.import_module("torch")
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if arrived:
        signal.raise_signal(arrived[0])


@contextmanager
def user_errors(command: str = ""):
    """Map library errors to one red line and an exit code; CHARNN_DEBUG=1 shows the traceback. `command`: whose
    flags the out-of-memory line names (OOM_HINTS)."""
    debug = debugging()
    try:
        yield
    except (CharnnError, KeyboardInterrupt, MemoryError, RuntimeError) as e:
        # torch reports a failed allocation as a RuntimeError; any other RuntimeError is a bug: let it show
        if debug or (isinstance(e, RuntimeError) and not is_out_of_memory(e)):
            raise
        if isinstance(e, KeyboardInterrupt):  # (SIGTERM and SIGHUP before training began: 143 and 129, as after)
            err.print("[yellow]interrupted[/]", markup=True)
            raise typer.Exit(signal_exit_code(getattr(e, "signum", signal.SIGINT))) from None
        fail(str(e) if isinstance(e, CharnnError) else out_of_memory(command), 2 if isinstance(e, ConfigError) else 1)
    except OSError as e:  # a path the system refused where no check names it (a name over 255 bytes, a loop of links)
        if not debug and is_out_of_memory(e):  # (ENOMEM: `novelty`'s index of a 1.8 GB text under a memory limit)
            fail(out_of_memory(command))
        if debug or e.filename is None:  # (without a path it is not the user's to fix here: let it show)
            raise
        fail(f"cannot use {shown_path(e.filename)}: {e.strerror or e}")


def shown_path(path) -> str:
    """A path for an error line: quoted, and cut in the middle past 80 characters."""
    text = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    return repr(text if len(text) <= 80 else text[:38] + "..." + text[-38:])


OOM_HINTS = {"train": "a smaller --batch-size, --seq-len or --hidden", "sample": "fewer --num-samples",
             "transduce": "a smaller --batch-size or --beam", "eval": "smaller files, or a smaller --beam",
             "novelty": "a machine with more memory (the training text's index is built in memory, about 5 bytes "
                        "a byte of text)",
             "serve": "a smaller --max-batch or --max-score-tokens"}


def out_of_memory(command: str) -> str:
    """The out-of-memory line, with what the command can lower (its own flags: the one hint for all named
    --batch-size and --hidden, which `sample` has neither of)."""
    hint = OOM_HINTS.get(command)
    return "out of memory" + (f"; try {hint}" if hint else "")


def check_output_file(path, flag: str, example: str) -> Path:
    """An output file's path, checked before the work: a name (not '', '.', a folder), in a folder that exists
    (`plot -o` made missing folders, `show --html` refused them; '' was "a directory")."""
    text = str(path)
    p = Path(text)
    if not text.strip() or not p.name.strip(".") or p.is_dir():
        raise ConfigError(f"{flag} {text!r} names no file (give one, e.g. {example})")
    if not p.parent.is_dir():
        why = "is not a folder" if p.parent.exists() else "does not exist"
        raise ConfigError(f"{flag} {text!r}: its folder {str(p.parent)!r} {why}")
    from charnn.checkpoint import is_checkpoint_file
    if p.is_file() and is_checkpoint_file(p):  # (show --html best.pt wrote a page over the model)
        raise ConfigError(f"{flag} {text!r} is a checkpoint; refusing to write over it (give a new file name)")
    return p


def signal_exit_code(signum: int) -> int:
    """What a command stopped by a signal exits with, as a shell reports a process the signal ended: 128 + its
    number (SIGINT 130, SIGTERM 143, SIGHUP 129); 130 for any other (Windows' SIGBREAK)."""
    return 128 + int(signum) if int(signum) in (1, 2, 15) else 130


LONGEST_ERROR = 2000  # characters of an error line; past them its middle is left out


def visible(text: str) -> str:
    """`text` with the characters a terminal acts on or hides (ESC sequences that clear the screen or set the
    window's title, BEL, bidi overrides: charnn.errors.TERMINAL_CONTROL) written as escapes. For names and paths in
    tables and messages (a label or file name can hold them)."""
    return escape_controls(text)


def error_line(message: str) -> str:
    """An error's line, cut in the middle past LONGEST_ERROR characters: a value the user gave is quoted in it (a
    100,000-character --device was one line that long); control characters in it shown as escapes."""
    message = visible(message)
    if len(message) <= LONGEST_ERROR:
        return message
    cut = len(message) - LONGEST_ERROR + 400
    return f"{message[:1200]}... ({cut:,} characters left out) ...{message[1200 + cut:]}"


def fail(message: str, code: int = 1):
    """One red line on stderr, then exit with `code`."""
    err.print(f"[red]charnn: error:[/] {escape(error_line(message))}", markup=True)
    raise typer.Exit(code) from None


@contextmanager
def writing_results(what: str = "the results"):
    """Around the code that writes a command's results to stdout: a reader that went away (`| head`) ends
    the command quietly (exit 0); any other failure to write (a full disk, EIO, a read-only target) is one
    line, `cannot write WHAT: REASON`, and exit 1. Either way stdout is then pointed at /dev/null so that
    the interpreter's last flush cannot fail again with a traceback."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        detach_stdout()
        raise typer.Exit(0) from None
    except OSError as e:
        if debugging() or e.filename is not None:  # (a path: an input that could not be read, not stdout)
            raise
        detach_stdout()
        fail(f"cannot write {what}: {e.strerror or e}")
    except UnicodeEncodeError as e:  # (PYTHONIOENCODING=ascii:strict, say: the user's choice of errors)
        if debugging():
            raise
        detach_stdout()
        fail(f"cannot write {what}: stdout's encoding {e.encoding} has no {e.object[e.start:e.end]!r}; use "
             "PYTHONIOENCODING=utf-8, or leave out its :strict")


def debugging() -> bool:
    """CHARNN_DEBUG=1 (or true, yes, on): show tracebacks instead of one-line errors; unset, empty, 0, false, no
    and off leave them off (CHARNN_DEBUG=false turned them on)."""
    return os.environ.get("CHARNN_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def detach_stdout() -> None:
    """stdout can no longer be written: point it at /dev/null so the interpreter's final flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def print_curve(console: Console, run_dir: Path) -> None:
    """The run's train and val loss over steps, from its metrics.jsonl, drawn in the terminal."""
    from charnn.cli.textplot import line_plot
    from charnn.training.metrics import METRICS_FILE, curves, loss_unit, read_metrics

    train_pts, val_pts = curves(read_metrics(run_dir / METRICS_FILE))
    if len(train_pts) + len(val_pts) < 2:
        return
    colours = ("cyan", "magenta")
    lines = line_plot([("train", train_pts, "line"), ("val", val_pts, "points")],
                      width=max(20, min(72, console.width - 12)), height=10,
                      paint=lambda text, i: f"[{colours[i % 2]}]{text}[/]")
    console.print(f"loss (nats/{loss_unit(run_dir)}) over steps", highlight=False)
    for line in lines:
        console.print(line, markup=True, highlight=False)
