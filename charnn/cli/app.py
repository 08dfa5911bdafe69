"""The `charnn` Typer app: one-line usage errors, --version, and one command per module of this package."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
from typing import Annotated

import typer

from charnn import __version__
from charnn.cli.classify import classify
from charnn.cli.corpora import corpora
from charnn.cli.evaluate import evaluate
from charnn.cli.info import info
from charnn.cli.novelty import novelty
from charnn.cli.output import error_line, writing_results
from charnn.cli.plot import plot
from charnn.cli.sample import sample
from charnn.cli.serve import serve
from charnn.cli.show import show
from charnn.cli.train import train
from charnn.cli.transduce import transduce

# Typer >= 0.26 vendors its own click; take the exception classes from whichever click it uses.
_click_exceptions = sys.modules[typer.BadParameter.__module__]
_UsageError = _click_exceptions.UsageError
_ClickException = _click_exceptions.ClickException
_NO_ARGS_HELP = getattr(_click_exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


class NoTypeForFlags:
    """An on/off flag shows no value type in --help: Typer >= 0.29 writes `<bool>` beside each (`--greedy <bool>`,
    `--help <bool>`), which reads as if it took a value (`--greedy true` is an error). An empty metavar is shown as
    nothing by every Typer the package allows."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and not getattr(param, "count", False) and param.metavar is None:
                param.metavar = ""
        return params


class Command(NoTypeForFlags, typer.core.TyperCommand):
    """A charnn command (flags without a type in --help)."""


class OneLineErrors(NoTypeForFlags, typer.core.TyperGroup):
    """Usage errors as one line on stderr (exit 2) instead of a multi-line box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        argv = sys.argv[1:] if args is None else list(args)
        shows = next((w for w, flag in (("the version", "--version"), ("the help", "--help")) if flag in argv),
                     None if argv else "the help")  # (its own output on stdout: /dev/full was a traceback)
        try:
            with writing_results(shows) if shows else contextlib.nullcontext():
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Exit as e:
            sys.exit(e.exit_code)
        except SystemExit as e:  # rich's answer to a reader that went away (`charnn train --help | head`): exit 1,
            sys.exit(0 if shows and e.code == 1 else e.code)  # with nothing said; a closed pipe is no failure
        except _NO_ARGS_HELP:  # the help was already shown
            sys.exit(2)
        except _UsageError as e:
            cmd = e.ctx.command_path if e.ctx else "charnn"
            if cmd == "charnn":  # (an option missing its value is raised without the command's context)
                cmd = next((f"charnn {a}" for a in argv if a in self.commands), cmd)
            typer.echo(f"{cmd}: error: {error_line(e.format_message())} (see '{cmd} --help')", err=True)
            sys.exit(2)
        except _ClickException as e:
            typer.echo(f"charnn: error: {error_line(e.format_message())}", err=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(cls=OneLineErrors, add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, sample and evaluate stacked-LSTM language models over characters.")


def _version(value: bool):
    if value:
        typer.echo(f"charnn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False):
    """Train, sample and evaluate stacked-LSTM language models over characters."""


# The commands, in the order `charnn --help` lists them.
app.command(cls=Command)(train)
app.command(cls=Command)(sample)
app.command(cls=Command)(transduce)
app.command("eval", cls=Command)(evaluate)
app.command(cls=Command)(classify)
app.command(cls=Command)(novelty)
app.command(cls=Command)(show)
app.command(cls=Command)(info)
app.command(cls=Command)(corpora)
app.command(cls=Command)(plot)
app.command(cls=Command)(serve)


class _ClosedBytes(io.BytesIO):
    def write(self, data) -> int:
        raise OSError(errno.EBADF, "Bad file descriptor (stdout is closed)")


class _Closed(io.TextIOBase):
    """Standing in for a standard stream the shell closed (`>&-`, `<&-`: Python's is None): reading finds its end
    at once, writing fails as a closed descriptor does, so `writing_results` says so in one line (an
    AttributeError traceback was printed, or nothing at all with exit 0)."""

    shut = True  # (what says "stdin is closed" where reading it found nothing)

    def read(self, size: int = -1) -> str:
        return ""

    def readline(self, size: int = -1) -> str:
        return ""

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "Bad file descriptor (stdout is closed)")

    @property
    def buffer(self):
        return _ClosedBytes()


def utf8_output(*streams) -> None:
    """A pipe or a file given an encoding that lacks characters (Windows' cp1252, a Latin-1 locale) gets UTF-8:
    generated text holds any character, and writing one the encoding lacked was a traceback after the work was done.
    A terminal keeps its encoding (it shows what that encoding can), with characters it lacks replaced, not raised;
    PYTHONIOENCODING, where set, is the user's choice and stays: its encoding, and its errors handler where it
    names one (`latin-1:strict`), else characters the encoding lacks replaced (they were a traceback)."""
    chosen = os.environ.get("PYTHONIOENCODING", "")
    if chosen:
        for stream in streams if ":" not in chosen else ():
            try:
                if stream.errors == "strict":  # (stdout; stderr's backslashreplace stays)
                    stream.reconfigure(errors="replace")
            except (AttributeError, ValueError, OSError):
                pass
        return
    for stream in streams:
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("_", "-")
        if encoding in ("utf-8", "utf8", "gb18030") or encoding.startswith(("utf-16", "utf-32")) \
                or not hasattr(stream, "reconfigure"):  # (every character has a spelling there)
            continue
        try:
            tty = stream.isatty()
            stream.reconfigure(**({"errors": "replace"} if tty else {"encoding": "utf-8", "errors": stream.errors}))
        except (ValueError, OSError):  # (a stream already written to in another encoding, or closed)
            pass


def main() -> None:
    sys.stdin = sys.stdin if sys.stdin is not None else _Closed()
    sys.stdout = sys.stdout if sys.stdout is not None else _Closed()
    utf8_output(sys.stdout, sys.stderr)
    app(prog_name="charnn")
