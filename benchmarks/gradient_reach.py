"""The vanishing gradient, measured with `charnn show --gradients`'s numbers (`Model.gradient_reach`): an LSTM, a
GRU and a vanilla RNN of the default size (2 x 256), each at initialisation and after the same training time on
the built-in corpus, on the same 10,000 characters they did not train on (charnn's own source). For each, the
gradient norm of the loss at a position with respect to the input k steps back, relative to k = 0, averaged
over 64 positions. Prints a table and writes JSON.

    python benchmarks/gradient_reach.py --seconds 120
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
from common import cpu_features, cpu_name

import charnn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KS = (1, 2, 5, 10, 20, 50, 100)


def held_out(chars: int) -> str:
    text = "".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "charnn").rglob("*.py")))
    return text[:chars]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", default="120", help="training time per cell (--max-time)")
    ap.add_argument("--cells", nargs="+", default=["lstm", "gru", "rnn"])
    ap.add_argument("--json", default=str(HERE / "results" / "gradient_reach.json"))
    args = ap.parse_args()
    text = held_out(10_000)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cell in args.cells:
            run = charnn.train(None, cell=cell, max_time=args.seconds, out=tmp, name=cell, seed=1,
                               eval_every=200, device="cpu")
            for label, path in (("init", None), ("trained", run.run_dir)):
                if path is None:  # the same architecture at step 0: its first checkpoint's config, fresh weights
                    m = charnn.load(run.run_dir, device="cpu")
                    torch.manual_seed(1)
                    m.net = type(m.net)(m.net.config).eval()
                else:
                    m = charnn.load(path, device="cpu")
                g = m.gradient_reach(text)
                rows.append({"cell": cell, "weights": label, "val_loss": None if path is None else m.best_val_loss,
                             "relative": {k: float(g.relative[k]) for k in KS}})
    print(f"gradient reach on {len(text):,} held-out characters; {cpu_name()} ({cpu_features()}), "
          f"load average {os.getloadavg()[0]:.2f}; default model size, {args.seconds} s of training each")
    print(f"{'cell':<6} {'weights':<8} {'val':>6} " + " ".join(f"{'k=' + str(k):>8}" for k in KS))
    for r in rows:
        val = "-" if r["val_loss"] is None else f"{r['val_loss']:.3f}"
        print(f"{r['cell']:<6} {r['weights']:<8} {val:>6} " + " ".join(f"{r['relative'][k]:>8.2g}" for k in KS))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "seconds": args.seconds, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
