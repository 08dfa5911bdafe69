"""The `charnn` command line: parse flags, build configs, call the library, map errors to exit codes.

One module per command (train, sample, evaluate, info, corpora, plot); `app` assembles them, `options` holds
the option types they share, `output` the stderr console and one-line errors; `progress` and `textplot` draw
on the terminal. stdout carries generated text (and `eval`'s and `info`'s results) only; everything else goes
to stderr. Only this package imports typer or rich.

`main` (the `charnn` script) imports the app itself, so that a Ctrl-C while typer and rich load is one line.
"""

import sys

__all__ = ["app", "main"]


def main() -> None:
    try:
        from charnn.cli.app import main as run
    except KeyboardInterrupt:  # (a Ctrl-C in the command's first few hundred milliseconds: a 30-line traceback)
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
    run()


def __getattr__(name: str):
    if name == "app":
        from charnn.cli.app import app

        return app
    raise AttributeError(f"module 'charnn.cli' has no attribute {name!r}")
