"""The `charnn` command line: parse flags, build configs, call the library, map errors to exit codes.

One module per command (train, sample, evaluate, info, corpora, plot); `app` assembles them, `options` holds
the option types they share, `output` the stderr console and one-line errors; `progress` and `textplot` draw
on the terminal. stdout carries generated text (and `eval`'s and `info`'s results) only; everything else goes
to stderr. Only this package imports typer or rich.
"""

import sys

try:
    from charnn.cli.app import app, main
except KeyboardInterrupt:  # (a Ctrl-C while typer and rich load, the command's first few hundred milliseconds:
    sys.stderr.write("interrupted\n")  # a 30-line traceback)
    raise SystemExit(130) from None

__all__ = ["app", "main"]
