"""`charnn eval`: score text files under a checkpoint; the table (or --json) is the only thing on stdout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, List

import typer

from charnn.cli.options import Device, Json
from charnn.cli.output import err, user_errors, writing_results


def evaluate(
    paths: Annotated[List[str], typer.Argument(help="[CHECKPOINT] FILE...: a .pt file or run folder (default: the "
                                                    "newest run), then one or more text files.",
                                               show_default=False)],
    as_json: Json = False,
    device: Device = "auto",
    encoding: Annotated[str, typer.Option(help="Text encoding of the files.")] = "utf-8",
):
    """Score text files: nats and bits per character, perplexity, characters and tokens."""
    from charnn.checkpoint import build_from_checkpoint, load_checkpoint, resolve_checkpoint
    from charnn.data.corpus import read_text
    from charnn.device import resolve_device
    from charnn.evaluate import combine, evaluate_text

    with user_errors():
        first = Path(paths[0])
        if len(paths) > 1 and (first.suffix == ".pt" or first.is_dir()):
            ckpt, files = paths[0], paths[1:]
        else:
            ckpt, files = None, paths
        dev = resolve_device(device)
        path = resolve_checkpoint(ckpt)
        data = load_checkpoint(path)
        model, tokenizer = build_from_checkpoint(data, dev)
        results = [evaluate_text(model, tokenizer, read_text(f, "file", encoding), dev) for f in files]
        total = combine(results)
        if total.unknown:
            err.print(f"note: {total.unknown:,} characters are not in the model's vocabulary; "
                      "they are scored as the unknown token")
    with writing_results():
        if as_json:
            out = {**total.to_dict(), "checkpoint": str(path), "files": [
                {"path": f, **r.to_dict()} for f, r in zip(files, results)]}
            typer.echo(json.dumps(out))
            return
        rows = [(f, r) for f, r in zip(files, results)] + ([("total", total)] if len(files) > 1 else [])
        typer.echo(f"{'file':<30} {'nats/char':>10} {'bits/char':>10} {'perplexity':>11} {'chars':>10} {'tokens':>10}")
        for f, r in rows:
            typer.echo(f"{f:<30} {r.nats_per_char:>10.4f} {r.bits_per_char:>10.4f} {r.perplexity:>11.3f} "
                       f"{r.chars:>10,} {r.tokens:>10,}")
