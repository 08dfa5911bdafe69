"""A tiny terminal line plot: lines drawn in Unicode braille (2x4 dots per cell), points as '•'.

Plain strings come out; an optional `paint(text, series_index)` wraps each run of a series' characters
(the CLI uses it for colour), so the plot reads the same with colour or without.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

Points = Sequence[Tuple[float, float]]
BRAILLE = 0x2800
BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # BITS[row][col] within one cell
POINT = "•"
LINE_KEY = "⠤"


def _bucket_means(points: Points, x0: float, xspan: float, ncols: int) -> List[Tuple[int, float]]:
    """Average y per dot column, so a noisy curve of many points draws as a clean line."""
    sums = {}
    for x, y in points:
        col = round((x - x0) / xspan * (ncols - 1))
        s, n = sums.get(col, (0.0, 0))
        sums[col] = (s + y, n + 1)
    return [(c, s / n) for c, (s, n) in sorted(sums.items())]


def line_plot(series: Sequence[Tuple[str, Points, str]], width: int = 60, height: int = 10,
              paint: Optional[Callable[[str, int], str]] = None, fmt: str = "{:.2f}") -> List[str]:
    """Draw series (name, [(x, y)...], "line" or "points") on one set of axes; returns the lines of text.

    width and height count character cells of the plotting area; axis labels and a legend come on top.
    """
    paint = paint or (lambda text, i: text)
    pts = [p for _, points, _ in series for p in points]
    if not pts:
        return []
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if y1 == y0:  # a flat curve: centre it
        y0, y1 = y0 - 0.5, y1 + 0.5
    xspan, yspan = (x1 - x0) or 1.0, y1 - y0
    dot_w, dot_h = width * 2, height * 4
    mask = [[0] * width for _ in range(height)]
    owner: List[List[Optional[int]]] = [[None] * width for _ in range(height)]

    def dot_row(y: float) -> int:
        return round((y1 - y) / yspan * (dot_h - 1))

    def set_dot(dx: int, dy: int, i: int) -> None:
        r, c = dy // 4, dx // 2
        if owner[r][c] is None or owner[r][c] == i:
            mask[r][c] |= BITS[dy % 4][dx % 2]
            owner[r][c] = i

    for i, (_, points, style) in enumerate(series):
        if style != "line":
            continue
        cols = _bucket_means(points, x0, xspan, dot_w)
        prev = None
        for dx, y in cols:
            dy = dot_row(y)
            if prev is None:
                set_dot(dx, dy, i)
            else:  # join to the previous column with a straight run of dots
                n = max(abs(dx - prev[0]), abs(dy - prev[1]), 1)
                for k in range(1, n + 1):
                    set_dot(round(prev[0] + (dx - prev[0]) * k / n), round(prev[1] + (dy - prev[1]) * k / n), i)
            prev = (dx, dy)
    cells = [[chr(BRAILLE + m) if m else " " for m in row] for row in mask]
    for i, (_, points, style) in enumerate(series):
        if style == "line":
            continue
        for x, y in points:  # points go on top of lines
            r, c = dot_row(y) // 4, round((x - x0) / xspan * (dot_w - 1)) // 2
            cells[r][c], owner[r][c] = POINT, i

    labels = {0: fmt.format(y1), height - 1: fmt.format(y0)}
    if height >= 5:
        labels[(height - 1) // 2] = fmt.format(y1 - yspan * ((height - 1) // 2) / (height - 1))
    lw = max(len(s) for s in labels.values())
    out = []
    for r in range(height):
        axis = f"{labels[r]:>{lw}} ┤" if r in labels else f"{'':>{lw}} │"
        out.append((axis + _painted(cells[r], owner[r], paint)).rstrip())
    out.append(f"{'':>{lw}} └" + "─" * width)
    left, right = f"{x0:g}", f"{x1:g}"
    out.append(f"{'':>{lw}}  {left}{right:>{max(1, width - len(left))}}")
    keys = [paint(LINE_KEY if style == "line" else POINT, i) + f" {name}" for i, (name, _, style) in enumerate(series)]
    out.append(f"{'':>{lw}}  " + "   ".join(keys))
    return out


def _painted(chars: List[str], owners: List[Optional[int]], paint) -> str:
    """Join a row, wrapping each run of one series' characters in paint()."""
    out, i = [], 0
    while i < len(chars):
        j = i
        while j < len(chars) and owners[j] == owners[i]:
            j += 1
        text = "".join(chars[i:j])
        out.append(text if owners[i] is None else paint(text, owners[i]))
        i = j
    return "".join(out)
