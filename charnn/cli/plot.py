"""`charnn plot`: the loss curves of one or more runs drawn into an image file (matplotlib)."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from charnn.cli.options import Quiet
from charnn.cli.output import check_output_file, err, user_errors
from charnn.errors import ConfigError


def plot(
    runs: Annotated[Optional[List[str]], typer.Argument(help="Run folders (or their checkpoints, or metrics.jsonl "
                                                        "files; default: the newest run).",
                                                        show_default=False)] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="Image to write (.png, .svg or .pdf).")] = "curves.png",
    x: Annotated[str, typer.Option(help="Horizontal axis: step or time.")] = "step",
    quiet: Quiet = False,
):
    """Draw the train and validation loss of one or more runs into an image (needs matplotlib: pip install
    matplotlib)."""
    from charnn.checkpoint import resolve_checkpoint
    from charnn.reports.plot import X_AXES, plot_runs, run_records

    with user_errors():
        if x not in X_AXES:
            raise ConfigError(f"`--x` must be one of {', '.join(X_AXES)}, not {x!r}")
        output = check_output_file(output, "--output", "curves.png")  # (a folder 't' was written as ./t.png)
        runs = runs or [str(resolve_checkpoint(None))]
        path = plot_runs([run_records(r) for r in runs], output, x)
    if not quiet:
        err.print(f"wrote {path}")
