"""`charnn info`: describe a checkpoint and its run on stdout, or as one JSON object."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from charnn.cli.options import Checkpoint, Json
from charnn.cli.output import ResultConsole, print_curve, user_errors, visible, writing_results
from charnn.errors import CharnnError, first_line


def info(checkpoint: Checkpoint = None, as_json: Json = False):
    """Describe a checkpoint: model, tokenizer, training so far, format version, and the loss curve."""
    from charnn.reports.info import describe, summary_lines

    with user_errors():
        facts = describe(checkpoint)
        try:
            lines = [] if as_json else summary_lines(facts)
        except (KeyError, TypeError, ValueError) as e:  # (a hand-edited field: `step: 'x'` was a traceback)
            raise CharnnError(f"{facts.get('path', 'the checkpoint')}: a field is damaged ({type(e).__name__}: "
                              f"{first_line(e)})") from None
    with writing_results():
        if as_json:
            typer.echo(json.dumps(facts, ensure_ascii=False))
            return
        out = ResultConsole(highlight=False, soft_wrap=True)
        for line in lines:
            out.print(visible(line), markup=False)  # (a label's or path's control characters: escapes)
        out.print()
        print_curve(out, Path(facts["run_dir"]))
