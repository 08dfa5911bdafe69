"""Loss curves of one or more runs as an image file (PNG, SVG or PDF), drawn with matplotlib.

matplotlib is the optional extra `charnn[plot]`; without it `plot_runs` raises one clear CharnnError.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Sequence, Tuple

from charnn.errors import CharnnError
from charnn.training.metrics import METRICS_FILE, read_metrics

X_AXES = {"step": ("step", "step"), "time": ("elapsed", "elapsed seconds")}


def run_records(run: str) -> Tuple[str, List[dict]]:
    """(label, records) for a run folder, a checkpoint in one, or a metrics.jsonl file."""
    p = Path(run)
    path = p if p.name == METRICS_FILE else (p if p.is_dir() else p.parent) / METRICS_FILE
    if not p.exists():
        raise CharnnError(f"run {run!r} does not exist")
    records = read_metrics(path)
    if not records:
        raise CharnnError(f"{str(path)!r} is missing or empty; train the run with this charnn version first")
    return path.parent.name or str(path.parent), records


def plot_runs(runs: Sequence[Tuple[str, List[dict]]], out: Path, x: str = "step") -> Path:
    """Train (thin) and validation (dots) loss of each run on one chart; returns the file written."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise CharnnError("`charnn plot` needs matplotlib, which is not installed; "
                          "install it with: pip install 'charnn[plot]'") from None
    key, xlabel = X_AXES[x]
    fig = Figure(figsize=(9, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(runs))]
    labels = [name if [n for n, _ in runs].count(name) == 1 else f"{name} ({i + 1})"
              for i, (name, _) in enumerate(runs)]
    for (_, records), label, color in zip(runs, labels, colors):
        train = [(r[key], r["train_loss"]) for r in records if r.get("train_loss") is not None and key in r]
        val = [(r[key], r["val_loss"]) for r in records if r.get("val_loss") is not None and key in r]
        if train:
            ax.plot(*zip(*train), color=color, alpha=0.45, linewidth=1, label=f"{label} train")
        if val:
            ax.plot(*zip(*val), color=color, marker="o", markersize=3.5, linewidth=1.8, label=f"{label} val")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss (nats/char)")
    ax.secondary_yaxis("right", functions=(lambda n: n / math.log(2), lambda b: b * math.log(2))) \
        .set_ylabel("bits/char")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    out = Path(out)
    if out.suffix.lower().lstrip(".") not in fig.canvas.get_supported_filetypes():  # (matplotlib adds .png)
        out = out.with_name(out.name.rstrip(".") + ".png")
    try:
        fig.savefig(out, dpi=120)
    except (ValueError, OSError) as e:
        raise CharnnError(f"could not write {str(out)!r}: {getattr(e, 'strerror', None) or e}") from None
    return out
