"""Choose `charnn eval --dynamic`'s defaults: static vs dynamic nats/char over a grid of step sizes, decays and
segment lengths, on the first characters of a run's validation split. Prints a table, writes JSON.

    python benchmarks/dynamic_sweep.py RUN_OR_CKPT CORPUS [--val-chars 20000] [--lr 1e-4,3e-4,1e-3] ...

The validation split is the corpus's last val_frac (from the run's config.json), as `charnn train` holds it out
from one text file with a char tokenizer.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import asdict
from pathlib import Path

from common import cpu_features, cpu_name

import torch

from charnn.checkpoint import build_from_checkpoint, load_checkpoint, resolve_checkpoint
from charnn.config import DynamicConfig
from charnn.scoring.dynamic import adapt, score_static


def floats(text: str):
    return [float(x) for x in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("corpus")
    ap.add_argument("--val-chars", type=int, default=20_000, help="score this many characters of the val split")
    ap.add_argument("--lr", type=floats, default=[1e-4, 3e-4, 1e-3, 3e-3])
    ap.add_argument("--decay", type=floats, default=[0.0, 1e-3, 1e-2])
    ap.add_argument("--segment", type=lambda s: [int(x) for x in s.split(",")], default=[50])
    ap.add_argument("--beta", type=floats, default=[0.99])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/dynamic_sweep.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = resolve_checkpoint(args.run)
    data = load_checkpoint(path)
    model, tok = build_from_checkpoint(data, "cpu")
    val_frac = json.loads((path.parent / "config.json").read_text())["train"]["val_frac"]
    corpus = Path(args.corpus).read_text(encoding="utf-8")
    text = corpus[int(len(corpus) * (1 - val_frac)):][:args.val_chars]
    print(f"{path} (step {data.get('step')}, best val {data.get('best_val_loss')}); {len(text):,} val chars; "
          f"{cpu_name()} ({cpu_features()}), {args.threads} thread(s)")
    rows, statics = [], {}
    print(f"{'lr':>8} {'decay':>7} {'segment':>7} {'beta':>6} {'static':>8} {'dynamic':>8} {'gain':>7} {'s':>6}")
    for lr, decay, segment, beta in itertools.product(args.lr, args.decay, args.segment, args.beta):
        if segment not in statics:
            statics[segment] = score_static(model, tok, text, torch.device("cpu"), segment).nats_per_char
        cfg = DynamicConfig(lr=lr, decay=decay, segment=segment, beta=beta)
        t0 = time.perf_counter()
        dyn = adapt(model, tok, text, torch.device("cpu"), cfg).result.nats_per_char
        row = {**asdict(cfg), "static": statics[segment], "dynamic": dyn, "gain": statics[segment] - dyn,
               "seconds": time.perf_counter() - t0}
        rows.append(row)
        print(f"{lr:>8g} {decay:>7g} {segment:>7} {beta:>6g} {row['static']:>8.4f} {dyn:>8.4f} {row['gain']:>7.4f} "
              f"{row['seconds']:>6.1f}", flush=True)
    best = max(rows, key=lambda r: r["gain"])
    print(f"best: lr {best['lr']:g}, decay {best['decay']:g}, segment {best['segment']}, beta {best['beta']:g}: "
          f"gain {best['gain']:.4f} nats/char")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"checkpoint": str(path), "step": data.get("step"), "cpu": cpu_name(),
                                          "cpu_features": cpu_features(),
                                          "val_chars": len(text), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
