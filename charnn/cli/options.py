"""Option and argument types that several commands share, defined once, and the shell-escape helper."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional, Tuple

import typer

from charnn.config import DEVICES, DynamicConfig, raise_problems, threads_problems
from charnn.data import catalog
from charnn.data.linefeed import STDIN
from charnn.errors import CharnnError, ConfigError

_DYNAMIC = DynamicConfig()

Checkpoint = Annotated[Optional[str], typer.Argument(help="A .pt file or run folder (default: the newest run "
                                                          "under ./checkpoints that the command can use).",
                                                     show_default=False)]
Device = Annotated[str, typer.Option(help=f"Device: {', '.join(DEVICES)} (auto: CUDA when present, then Apple "
                                          "MPS, else the CPU).")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed (default: a fresh one, reported on stderr).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Silence notes on stderr.")]
DecodePrecision = Annotated[str, typer.Option(help="Decode in fp32, bf16 (autocast), or auto: bf16 where this "
                                                   "machine decodes a batch faster in it, measured once and "
                                                   "remembered.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
DynamicLr = Annotated[Optional[float], typer.Option(help="Dynamic evaluation: step size of the RMS-normalised update, 0 to 1 "
                                                         f"(default {_DYNAMIC.lr:g}).", show_default=False)]
DynamicDecay = Annotated[Optional[float], typer.Option(help="Dynamic evaluation: pull toward the trained weights per "
                                                            f"step, 0 to 1 (default {_DYNAMIC.decay:g}).",
                                                       show_default=False)]
Segment = Annotated[Optional[int], typer.Option(help="Dynamic evaluation: tokens scored per step "
                                                     f"(default {_DYNAMIC.segment}).", show_default=False)]
Threads = Annotated[Optional[int], typer.Option(help="CPU threads. Default: measured while it runs, torch's count "
                                                   "or one, whichever is faster (one where another process holds a "
                                                   "core); a fixed count makes the numbers repeatable to the last "
                                                   "digit.", show_default=False)]


def check_threads(threads: Optional[int]) -> Optional[int]:
    """--threads as given (None: measured, charnn.threadwatch), or a usage error outside 1..MAX_THREADS."""
    raise_problems(threads_problems(threads))
    return threads


def dynamic_config(on: bool, flag: str, lr: Optional[float], decay: Optional[float],
                   segment: Optional[int]) -> DynamicConfig:
    """Dynamic evaluation's settings, the defaults where a flag is not given; its flags without `flag` (the one
    that turns it on) are a usage error, not silently ignored."""
    given = {k: v for k, v in {"lr": lr, "decay": decay, "segment": segment}.items() if v is not None}
    if given and not on:
        raise ConfigError(f"`--dynamic-lr`, `--dynamic-decay` and `--segment` apply with `{flag}`; add it")
    return DynamicConfig(**given).validate()


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

Label = Annotated[Optional[str], typer.Option(help="A model trained with --label-by: write as this label. Without "
                                                   "it: the model's label-free path.", show_default=False)]
ScoreLabel = Annotated[Optional[str], typer.Option("--label", help="A model trained with --label-by: score the text "
                                                                   "as written under this label. Without it: the "
                                                                   "model's label-free path, then a row per label.",
                                                   show_default=False)]


def typed_text(flag: str, value: Optional[str]) -> Optional[str]:
    """A text flag's value as typed, or a usage error where it is not UTF-8: Python keeps each undecodable byte
    of the command line as a lone surrogate (U+DC80..U+DCFF), which was named as a character the model lacks."""
    bad = next((c for c in value or "" if "\udc80" <= c <= "\udcff"), None)
    if bad is not None:
        hint = "; or a prime saved as UTF-8, through --prime-file" if flag == "--prime" else ""
        raise ConfigError(f"`{flag}` is not UTF-8 text (byte 0x{ord(bad) - 0xDC00:02X}): give it in UTF-8 (a UTF-8 "
                          f"locale{hint})")
    return value


def stdin_once(paths: List[str]) -> None:
    """`-` (stdin) given twice is a usage error: the second read found stdin closed (a traceback)."""
    if paths.count(STDIN) > 1:
        raise ConfigError("`-` (stdin) can be read once; give it once")


def split_checkpoint(args: Optional[List[str]], needs: int = 0) -> Tuple[Optional[str], List[str]]:
    """[CHECKPOINT] ARGS...: the first argument names the checkpoint when it is a .pt file or a folder and at
    least `needs` arguments follow it; else None, which resolve_checkpoint takes as the newest run."""
    args = list(args or [])
    if len(args) > needs and (Path(args[0]).suffix == ".pt" or Path(args[0]).is_dir()):
        return args[0], args[1:]
    if len(args) > needs and args[0] != STDIN and not Path(args[0]).exists() and catalog.find(args[0]) is None:
        raise CharnnError(f"{args[0]!r} does not exist: neither a checkpoint (a .pt file or a run folder) nor an "
                          "input file")  # (a mistyped run folder was taken as an input file, and the newest run's,
    return None, args  # or "no trained runs under 'checkpoints'", followed; a catalog name is an input)
