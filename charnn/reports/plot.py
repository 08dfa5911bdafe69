"""Loss curves of one or more runs as an image file (PNG, SVG or PDF), drawn with matplotlib.

matplotlib is the optional extra `plot` (pip install -e '.[plot]' in a checkout); without it `plot_runs` raises one
clear CharnnError.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import List, Sequence, Tuple

from charnn.data.files import write_output
from charnn.errors import CharnnError, first_line, missing
from charnn.training.metrics import METRICS_FILE, loss_unit, read_metrics

X_AXES = {"step": ("step", "step"), "time": ("elapsed", "elapsed seconds")}


def run_records(run: str) -> Tuple[str, List[dict], str]:
    """(label, records, what the losses are per) for a run folder, a checkpoint in one, or a metrics file
    (metrics.jsonl, or a copy of one under another name)."""
    p = Path(run)
    if not p.exists():
        raise CharnnError(f"run {run!r} {missing(run)}")
    path = p / METRICS_FILE if p.is_dir() else p.parent / METRICS_FILE if p.suffix == ".pt" else p
    records = read_metrics(path)
    if not records and path.is_file() and path.stat().st_size:
        raise CharnnError(f"{str(path)!r} holds no training records: give a run folder, a checkpoint or a "
                          f"run's {METRICS_FILE}")
    if not records:
        raise CharnnError(f"{str(path)!r} is missing or empty; train the run with this charnn version first")
    name = (path.parent.name or str(path.parent)) if path.name == METRICS_FILE else path.stem
    return name, records, loss_unit(path.parent)


def plot_runs(runs: Sequence[Tuple[str, List[dict], str]], out: Path, x: str = "step") -> Path:
    """Train (thin) and validation (dots) loss of each run on one chart; returns the file written."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise CharnnError("`charnn plot` needs matplotlib, which is not installed; "
                          "install it with: pip install matplotlib (or pip install -e '.[plot]' in charnn's "
                          "folder)") from None
    key, xlabel = X_AXES[x]
    fig = Figure(figsize=(9, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(runs))]
    names = [name for name, _, _ in runs]
    labels = [name if names.count(name) == 1 else f"{name} ({i + 1})" for i, name in enumerate(names)]
    for (_, records, _), label, color in zip(runs, labels, colors):
        train = [(r[key], r["train_loss"]) for r in records if r.get("train_loss") is not None and key in r]
        val = [(r[key], r["val_loss"]) for r in records if r.get("val_loss") is not None and key in r]
        if train:
            ax.plot(*zip(*train), color=color, alpha=0.45, linewidth=1, label=f"{label} train")
        if val:
            ax.plot(*zip(*val), color=color, marker="o", markersize=3.5, linewidth=1.8, label=f"{label} val")
    ax.set_xlabel(xlabel)
    units = sorted({unit for _, _, unit in runs})  # "char"; "text" for a classifier's losses
    per = "/".join(units) if len(units) == 1 else "char; classifiers: text"
    ax.set_ylabel(f"loss (nats/{per})")
    ax.secondary_yaxis("right", functions=(lambda n: n / math.log(2), lambda b: b * math.log(2))) \
        .set_ylabel(f"bits/{per}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    out = Path(out)
    kind = out.suffix.lower().lstrip(".")  # a format matplotlib draws; else a .png is added (x.v2 -> x.v2.png), but
    if kind not in fig.canvas.get_supported_filetypes() and (kind or not out.exists()):  # a file that exists and
        out, kind = out.with_name(out.name.rstrip(".") + ".png"), "png"  # has no suffix (/dev/stdout) is written
    drawn = io.BytesIO()
    try:  # as it is (it was /dev/stdout.png)
        fig.savefig(drawn, dpi=120, format=kind or "png")  # (in memory, then whole or not at all: a full disk left
    except Exception as e:  # a cut-off file, and a .pdf's zlib.error a traceback; RuntimeError: .pgf, no xelatex)
        raise CharnnError(f"could not draw {str(out)!r}: {getattr(e, 'strerror', None) or first_line(e)}") from None
    write_output(out, drawn.getvalue(), "the plot")
    return out
