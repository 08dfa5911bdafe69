"""`charnn show` in the terminal: the text coloured by surprisal (white to red, with a legend), the units that
track the text's properties coloured over an excerpt, the gradient's reach as a plot, and attention matrices;
and the same numbers as plain tab-separated lines for a pipe (no colour codes)."""

from __future__ import annotations

import math
from typing import Iterator, List, Sequence, Tuple

import numpy as np
from rich.text import Text

from charnn.cli.output import visible
from charnn.cli.textplot import line_plot
from charnn.reports.show import Cells, ShowReport

MAX_NATS = 5.0  # the red end of the surprisal scale
WHITE, RED, BLUE = (255, 255, 255), (215, 48, 39), (49, 104, 196)
EXCERPT_CHARS = 360  # a unit's activation is coloured over about this much of the text
_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}


def _mix(a: Tuple[int, int, int], b: Tuple[int, int, int], t: float) -> str:
    t = min(1.0, max(0.0, t))
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(a, b))


def heat(nats: float) -> str:
    """The style of a character the model found this surprising: black on white (0) to red (MAX_NATS+)."""
    return f"black on {_mix(WHITE, RED, nats / MAX_NATS)}"


def diverging(v: float) -> str:
    """The style of an activation scaled to -1..1: blue (negative), white (0), red (positive)."""
    return f"black on {_mix(WHITE, BLUE if v < 0 else RED, abs(v))}"


def _coloured(tokens: Sequence[str], styles: Sequence[str]) -> Text:
    text = Text()
    for token, style in zip(tokens, styles):
        if token.endswith("\n"):  # a coloured mark where the line ends, so a surprising newline shows
            text.append(visible(token[:-1]) + "↵", style=style)
            text.append("\n")
        else:  # (an ESC or a bidi override in the text is shown, not obeyed)
            text.append(visible(token.replace("\t", "    ")), style=style)
    return text


def legend() -> Text:
    text = Text("surprisal, nats: ")
    for v in range(int(MAX_NATS) + 1):
        text.append(f" {v}{'+' if v == MAX_NATS else ''} ", style=heat(v))
    return text


def surprisal_view(report: ShowReport) -> List[Text]:
    s = report.surprisal
    chars = sum(len(t) for t in s.tokens)
    head = Text(f"{report.name}: {chars:,} characters, {s.total:,.1f} nats, {s.total / max(1, chars):.4f} "
                f"nats/char; hover in --html for the alternatives", style="bold")
    return [head, legend(), _coloured(s.tokens, [heat(n) for n in s.nats])]


def _excerpt(values: np.ndarray, tokens: Sequence[str]) -> slice:
    """About EXCERPT_CHARS of tokens, from the start of the line where the property first changes."""
    changes = np.flatnonzero(np.diff(values) != 0)
    at = int(changes[0]) + 1 if len(changes) else 0
    floor = max(0, at - 200)
    while at > floor and not tokens[at - 1].endswith("\n"):
        at -= 1
    end, size = at, 0
    while end < len(tokens) and (size < EXCERPT_CHARS or (size < EXCERPT_CHARS + 120
                                                           and not tokens[end - 1].endswith("\n"))):
        size += len(tokens[end])  # about EXCERPT_CHARS, then on to the end of that line
        end += 1
    return slice(at, end)


def cells_view(report: ShowReport) -> Iterator[Text]:
    yield Text(f"units that track the text ({report.units:,} units; r: correlation over the text; colour: the first "
               "unit's activation, blue negative, red positive)", style="bold")
    if not report.cells:
        yield Text("(no property of the text varies along it: nothing to track)")
    for cell in report.cells:
        units = ", ".join(f"{u.name} (r {u.r:+.2f})" for u in cell.units)
        yield Text.assemble(("\n" + visible(cell.prop), "bold"), f" ({visible(cell.about)}): ", units)
        best = cell.units[0].values
        scale = float(np.abs(best).max()) or 1.0
        where = _excerpt(cell.values, report.tokens)
        yield _coloured(report.tokens[where], [diverging(v / scale) for v in best[where]])


def gradients_view(report: ShowReport, width: int) -> List[str]:
    g = report.gradients
    rel = g.relative
    pts = [(k, math.log10(max(v, 1e-12))) for k, v in enumerate(rel)]
    lines = [f"gradient reach: |d loss_t / d input_(t-k)| relative to k = 0, log10, mean over {g.positions} "
             f"positions"]
    lines += line_plot([("log10 relative gradient norm", pts, "line")], width=max(20, min(72, width - 12)),
                       height=10, paint=lambda text, i: f"[cyan]{text}[/]", fmt="{:.1f}")
    marks = [k for k in (0, 1, 2, 5, 10, 20, 50, 100, 200) if k < len(rel)]
    lines.append("k: " + "  ".join(f"{k}={rel[k]:.2g}" for k in marks))
    return lines


def attention_view(report: ShowReport) -> Iterator[Text]:
    for m in report.attention:
        yield Text.assemble(("\nattention: ", "bold"), "".join(m.source).rstrip("\n"), " -> ",
                            "".join(m.output).rstrip("\n"), " (rows: output characters; columns: input)")
        yield Text("   " + "".join(_shown(c).ljust(2) for c in m.source))
        for ch, row in zip(m.output, m.weights):
            line = Text(_shown(ch).ljust(3))
            for w in row:
                line.append("  ", style=f"on {_mix(WHITE, BLUE, float(w))}")
            yield line


def _shown(ch: str) -> str:
    return {"\n": "⏎", " ": "␠", "\t": "⇥"}.get(ch, ch)


def _escape(text: str) -> str:
    """A token for the tab-separated lines: backslash escapes for the separators and for any character a terminal
    would act on (ESC, BEL, bidi overrides: a model's vocabulary can hold them)."""
    return visible("".join(_ESCAPES.get(c, c) for c in text))


def surprisal_tsv(report: ShowReport) -> Iterator[str]:
    """A header, then per token: the token, its probability and surprisal, and its alternatives with theirs."""
    s = report.surprisal
    k = s.top_ids.shape[1]
    yield "\t".join(["token", "prob", "nats"] + [f"{name}{j}" for j in range(1, k + 1) for name in ("top", "p")])
    shown = [_escape(p) for p in s.pieces]  # each vocabulary entry escaped once, not once per row
    probs, top_p = np.exp(-s.nats).tolist(), np.exp(s.top_logprobs).tolist()
    for i, (token, nats, ids) in enumerate(zip(s.tokens, s.nats.tolist(), s.top_ids.tolist())):
        top = "\t".join(f"{shown[t]}\t{p:.6f}" for t, p in zip(ids, top_p[i]))
        yield f"{_escape(token)}\t{probs[i]:.6f}\t{nats:.6f}\t{top}"


def cells_tsv(cells: List[Cells]) -> Iterator[str]:
    yield "property\trank\tunit\tr"
    for cell in cells:
        for rank, u in enumerate(cell.units, 1):
            yield f"{cell.prop}\t{rank}\t{u.name}\t{u.r:.6f}"


def gradients_tsv(report: ShowReport) -> Iterator[str]:
    yield "k\tnorm\trelative"
    for k, (v, r) in enumerate(zip(report.gradients.norms, report.gradients.relative)):
        yield f"{k}\t{v:.6g}\t{r:.6g}"


def attention_tsv(report: ShowReport) -> Iterator[str]:
    for m in report.attention:
        yield "\t".join(["output\\input"] + [_escape(c) for c in m.source])
        for ch, row in zip(m.output, m.weights):
            yield "\t".join([_escape(ch)] + [f"{w:.4f}" for w in row])
