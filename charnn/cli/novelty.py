"""`charnn novelty`: how much of a sample the run found verbatim in its training text; a table or --json."""

from __future__ import annotations

import json
import sys
from typing import Annotated, List, Optional

import typer

from charnn.cli.options import Json, Quiet, split_checkpoint
from charnn.cli.output import err, user_errors, writing_results


def novelty(
    args: Annotated[Optional[List[str]], typer.Argument(help="[CHECKPOINT] [SAMPLE]: a .pt file or run folder "
                                                             "(default: the newest run), then the text to check "
                                                             "(- or nothing: stdin).", show_default=False)] = None,
    ns: Annotated[Optional[List[int]], typer.Option("--n", min=1, max=1_000_000, help="Window length in characters; "
                                                    "repeat it for several (default: 16, 32 and 64).",
                                                    show_default=False)] = None,
    corpus: Annotated[Optional[List[str]], typer.Option(help="Read the training text from these files again "
                                                        "(repeatable), for a run whose cached text is gone.",
                                                        show_default=False)] = None,
    glob: Annotated[Optional[str], typer.Option(help="Inside --corpus folders, only files matching this.")] = None,
    encoding: Annotated[Optional[str], typer.Option(help="Text encoding of --corpus (default: the run's, else "
                                                    "utf-8).", show_default=False)] = None,
    as_json: Json = False,
    quiet: Quiet = False,
):
    """The longest span of a sample found verbatim in the run's training text, and the share of its
    n-character windows found there."""
    from charnn.checkpoint import resolve_checkpoint
    from charnn.data.corpus import decode_bytes, read_text
    from charnn.data.sources import check_encoding
    from charnn.errors import CharnnError, ConfigError
    from charnn.reports.novelty import NS, novelty as check

    with user_errors("novelty"):
        if encoding is not None:
            check_encoding(encoding)  # (without --corpus a wrong one was accepted without a word)
        if glob is not None and not corpus:
            raise ConfigError("`--glob` picks files inside --corpus folders: add --corpus (without it the run's "
                              "own training text is read)")
        checkpoint, rest = split_checkpoint(args)
        if len(rest) > 1:
            raise ConfigError(f"one SAMPLE at a time, got {len(rest)}: {' '.join(rest)}")
        sample = rest[0] if rest else None
        checkpoint = str(resolve_checkpoint(checkpoint, use="generate"))
        if sample in (None, "-"):
            if sys.stdin.isatty():
                raise CharnnError("no sample: give FILE, or pipe text in: `charnn sample RUN | charnn novelty RUN`")
            text = decode_bytes(sys.stdin.buffer.read(), "the sample on stdin")
        else:
            text = read_text(sample, "sample")
        result = check(checkpoint, text, sorted(set(ns or NS)), corpus or (), glob, encoding,
                       None if quiet else _note)
    with writing_results():
        if as_json:
            typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))
            return
        for line in _table(result):
            typer.echo(line)


def _note(kind: str, info: dict) -> None:
    if kind == "corpus":
        err.print(f"reading the training text again from {info['source']}")
    elif kind == "index" and info["stage"] == "build":
        err.print(f"indexing {info['chars']:,} characters of training text, once (kept in {info['folder']})")
    elif kind == "index" and info["stage"] == "built":
        err.print(f"indexed in {info['seconds']:.1f} s")


SPAN_SHOWN = 400  # characters of the longest span the table quotes (--json has it whole; a memorised page was
# the whole table)


def _table(r) -> List[str]:
    lines = [f"sample: {r.sample_chars:,} characters; training text: {r.train_chars:,} characters ({r.corpus})"]
    s = r.longest
    if s is None:
        lines.append("longest verbatim span: none (no character of the sample is in the training text)")
    else:
        where = f"line {s.line:,} of " + (s.source or "the training files joined, in the order read")  # (a folder's
        # line alone matched no file's line: the files are joined with a separator, and no file is named)
        shown = repr(s.text) if len(s.text) <= SPAN_SHOWN else (f"{s.text[:SPAN_SHOWN]!r} ... "
                                                                 f"({len(s.text) - SPAN_SHOWN:,} more; --json: all)")
        lines += [f"longest verbatim span: {s.length:,} characters, at sample offset {s.sample_offset:,}; "
                  f"training text offset {s.train_offset:,} ({where})", f"  {shown}"]
    lines.append(f"{'n':>6} {'windows':>10} {'found':>10} {'share':>8}")
    for w in r.windows:
        share = "-" if w.share is None else f"{100 * w.share:.1f}%"
        lines.append(f"{w.n:>6} {w.windows:>10,} {w.found:>10,} {share:>8}")
    return lines
