"""`charnn show`: see inside a model on a text: surprisal per character, the units that track the text
(--cells), the gradient's reach (--gradients), attention (--attention); in the terminal, as tab-separated lines
for a pipe, as JSON, or as a self-contained page (--html)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from charnn.cli.options import Device, Quiet, check_threads
from charnn.cli.output import ResultConsole, check_output_file, err, user_errors, writing_results
from charnn.errors import ConfigError

FORMATS = ("auto", "color", "tsv", "json")


def show(
    args: Annotated[Optional[List[str]], typer.Argument(help="[CHECKPOINT] [FILE]: a .pt file or run folder "
                                                             "(default: the newest run), then the text (- or "
                                                             "nothing: stdin).", show_default=False)] = None,
    html: Annotated[Optional[str], typer.Option(help="Also write a self-contained page here: hover a character "
                                                      "for the model's top guesses.", show_default=False)] = None,
    cells: Annotated[bool, typer.Option("--cells", help="The units whose activations track the text's properties "
                                                        "(quotes, brackets, line position, indentation, word "
                                                        "starts; labels), ranked by correlation.")] = False,
    gradients: Annotated[bool, typer.Option("--gradients", help="How much the loss depends on the input k steps "
                                                                "back: the vanishing gradient, measured.")] = False,
    attention: Annotated[bool, typer.Option("--attention", help="A sequence-to-sequence model: the attention "
                                                                "matrix of each input line, transduced.")] = False,
    top_k: Annotated[int, typer.Option(min=1, help="Alternatives shown per character.")] = 5,
    units: Annotated[int, typer.Option(min=1, help="--cells: units listed per property.")] = 3,
    max_k: Annotated[int, typer.Option(min=1, help="--gradients: the furthest step back, k.")] = 100,
    positions: Annotated[int, typer.Option(min=1, help="--gradients: positions averaged over.")] = 64,
    label: Annotated[Optional[str], typer.Option(help="A model trained with --label-by: read the text as this "
                                                      "label.", show_default=False)] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto (colour on a terminal, tsv otherwise; nothing with "
                                                      "--html), color, tsv or json.")] = "auto",
    max_chars: Annotated[int, typer.Option(min=1, help="Show the first this many characters of the text.")] = 20_000,
    encoding: Annotated[str, typer.Option(help="Text encoding of FILE.")] = "utf-8",
    threads: Annotated[int, typer.Option(min=1, help="CPU threads for torch. The passes here read one stream, whose "
                                                     "small products one thread runs fastest (and a busy machine "
                                                     "slows several far more).")] = 1,
    device: Device = "auto",
    quiet: Quiet = False,
):
    """The text coloured by the model's surprisal per character; --cells, --gradients, --attention look
    further inside."""
    from charnn.reports.show import ShowOptions

    with user_errors():
        if fmt not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        options = ShowOptions(top_k, cells, units, gradients, max_k, positions, attention, label).validate()
        check_threads(threads)  # (its own option had no upper bound: 100,000 threads was a segfault)
        if html is not None:  # (found only after the work)
            html = check_output_file(html, "--html", "page.html")
        report = _report(args, options, max_chars, encoding, device, threads, quiet)
        if html is not None:
            from charnn.reports.showpage import write_page
            write_page(report, html)
        for note in [] if quiet else report.notes + ([f"wrote {html}"] if html is not None else []):
            err.print(note)
    fmt = fmt if fmt != "auto" else ("none" if html is not None else "color" if sys.stdout.isatty() else "tsv")
    with writing_results():
        _print(report, fmt)


def _report(args, options, max_chars: int, encoding: str, device: str, threads: int, quiet: bool):
    """Read the text and gather the report with `threads` torch threads (the caller's count restored after)."""
    from charnn.checkpoint import resolve_checkpoint
    from charnn.device import resolve_device, torch_threads
    from charnn.reports.show import build_report

    checkpoint, source = _arguments(args)
    path = resolve_checkpoint(checkpoint)
    text = _read(source, encoding)
    if len(text) > max_chars:
        text = text[:max_chars]
        if not quiet:
            err.print(f"showing the first {max_chars:,} characters (--max-chars)")
    with torch_threads(threads):
        return build_report(path, text, options, resolve_device(device))


def _arguments(args: Optional[List[str]]):
    """(checkpoint or None, FILE or None for stdin) from [CHECKPOINT] [FILE]."""
    args = list(args or [])
    if len(args) > 2:
        raise ConfigError(f"one CHECKPOINT and one FILE at most, got {len(args)}: {' '.join(args)}")
    if len(args) == 2:
        return args[0], args[1]
    if args and (Path(args[0]).suffix == ".pt" or Path(args[0]).is_dir()):
        return args[0], None
    return None, args[0] if args else None


def _read(source: Optional[str], encoding: str) -> str:
    from charnn.data.corpus import decode_bytes, read_text
    from charnn.errors import CharnnError

    if source not in (None, "-"):
        return read_text(source, "text", encoding)
    if sys.stdin.isatty():
        raise CharnnError("no text: give FILE, or pipe text in: `charnn sample RUN | charnn show RUN`")
    data = sys.stdin.buffer.read()
    if b"\x00" in data[:8192]:
        raise CharnnError("the text on stdin looks binary; pipe in text")
    return decode_bytes(data, "the text on stdin", encoding)


def _print(report, fmt: str) -> None:
    from charnn.cli import showview as view
    from charnn.reports.show import report_dict

    if fmt == "none":
        return
    if fmt == "json":
        typer.echo(json.dumps(report_dict(report), ensure_ascii=False))
        return
    sections = [s for s, on in (("cells", report.cells is not None), ("gradients", report.gradients is not None),
                                 ("attention", bool(report.attention))) if on] or ["surprisal"]  # (cells asked for
    # but none found were [], and fell back to the surprisal table)
    if fmt == "tsv":
        tsv = {"surprisal": view.surprisal_tsv, "cells": lambda r: view.cells_tsv(r.cells),
               "gradients": view.gradients_tsv, "attention": view.attention_tsv}
        lines = [line for i, section in enumerate(sections)
                 for line in ([""] if i else []) + list(tsv[section](report))]  # a blank line between sections
        for at in range(0, len(lines), 4096):  # a few large writes, not one per line
            typer.echo("\n".join(lines[at:at + 4096]))
        return
    piped = not sys.stdout.isatty()  # --format color into a pipe or file: full colour, whatever the terminal says
    out = ResultConsole(highlight=False, soft_wrap=True, force_terminal=True,
                        color_system="truecolor" if piped else "auto")
    for section in sections:
        if section == "surprisal":
            lines = view.surprisal_view(report)
        elif section == "cells":
            lines = list(view.cells_view(report))
        elif section == "gradients":
            lines = view.gradients_view(report, out.width)
        else:
            lines = list(view.attention_view(report))
        for line in lines:
            out.print(line, markup=isinstance(line, str), highlight=False)
