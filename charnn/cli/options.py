"""Option and argument types that several commands share, defined once, and the shell-escape helper."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from charnn.config import DEVICES

Checkpoint = Annotated[Optional[str], typer.Argument(help="A .pt file or run folder (default: the newest run "
                                                          "under ./checkpoints).", show_default=False)]
Device = Annotated[str, typer.Option(help=f"Device: {', '.join(DEVICES)} (auto: CUDA when present).")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed (default: a fresh one, reported on stderr).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Silence notes on stderr.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def unescape(text: str) -> str:
    """'\\n' -> newline, '\\t' -> tab, '\\\\' -> backslash, so separators and stops can be typed in a shell."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)
