"""`charnn info`: describe a checkpoint and its run on stdout, or as one JSON object."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from charnn.cli.options import Checkpoint, Json
from charnn.cli.output import ResultConsole, print_curve, user_errors, writing_results


def info(checkpoint: Checkpoint = None, as_json: Json = False):
    """Describe a checkpoint: model, tokenizer, training so far, format version, and the loss curve."""
    from charnn.reports.info import describe, summary_lines

    with user_errors():
        facts = describe(checkpoint)
    with writing_results():
        if as_json:
            typer.echo(json.dumps(facts, ensure_ascii=False))
            return
        out = ResultConsole(highlight=False, soft_wrap=True)
        for line in summary_lines(facts):
            out.print(line, markup=False)
        out.print()
        print_curve(out, Path(facts["run_dir"]))
