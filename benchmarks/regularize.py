"""The training-time regularisers (issue 32): what each costs per step, and what each buys at equal wall time.

    python benchmarks/regularize.py cost                                   # ms per step, alternating, one run
    python benchmarks/regularize.py ablation --budget 300 --seeds 1 2      # val nats/char after --budget seconds
    python benchmarks/regularize.py ablation --corpus kjv --budget 300 --seeds 1 2

`ablation` trains every row with `charnn train` itself (its defaults, --max-time BUDGET, the last 10% held out)
on tinyshakespeare or on the King James Bible's books joined in canon order (../shared/corpora/), one row after
another, and reads each run's best validation loss. Prints a markdown table and writes JSON to
benchmarks/results/. Run it on an otherwise idle machine: the rows compete for wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import CORPORA, cpu_features, cpu_name

ROOT = Path(__file__).resolve().parent.parent
CORPORA = CORPORA
OFF = ["--ar", "0", "--tar", "0"]  # a language model trains with AR 2 / TAR 1 by default (since this ablation)
AWD = ["--weight-drop", "0.5", "--locked-dropout", "--dropout", "0.25", "--input-dropout", "0.1",
       "--embed-dropout", "0.05", "--ar", "2", "--tar", "1"]
ROWS = {  # name -> charnn train flags on top of the defaults (2x256 LSTM, dropout 0.1, AR 2 / TAR 1)
    "default": OFF,  # the names of the measured table (REGULARIZE.md): "default" was AR/TAR off
    "weight drop 0.5": ["--weight-drop", "0.5", *OFF],
    "locked dropout (--dropout 0.25, --input-dropout 0.1)": ["--locked-dropout", "--dropout", "0.25",
                                                              "--input-dropout", "0.1", *OFF],
    "embedding dropout 0.05": ["--embed-dropout", "0.05", *OFF],
    "AR 2 / TAR 1": ["--ar", "2", "--tar", "1"],
    "all of them": AWD,
    "2x512, all of them": ["--hidden", "512", *AWD],
}


def corpus_file(name: str, work: Path) -> Path:
    if name == "shakespeare":
        return CORPORA / "tinyshakespeare.txt"
    books = sorted((CORPORA / "kjv").glob("*.txt"))  # 01-Genesis ... 66-Revelation: canon order
    out = work / "kjv.txt"
    out.write_text("".join(b.read_text(encoding="utf-8") for b in books), encoding="utf-8")
    return out


def ablation(args) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = corpus_file(args.corpus, work)
        for seed in args.seeds:
            for name, flags in ROWS.items():
                if args.rows and name not in args.rows:
                    continue
                run = f"r{len(rows)}"
                cmd = [sys.executable, "-m", "charnn", "train", str(corpus), "--out", str(work), "--name", run,
                       "--max-time", str(args.budget), "--seed", str(seed), "--quiet", *flags]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
                best = torch.load(work / run / "best.pt", weights_only=True, map_location="cpu")
                last = torch.load(work / run / "last.pt", weights_only=True, map_location="cpu")
                rows.append({"row": name, "seed": seed, "flags": " ".join(flags), "val": best["val_loss"],
                             "steps": last["step"], "wall_s": round(time.perf_counter() - t0, 1),
                             "precision": last.get("precision")})
                print(f"{name:55s} seed {seed}: val {best['val_loss']:.4f} after {last['step']} steps", flush=True)
    return {"corpus": args.corpus, "budget_s": args.budget, "rows": rows}


def cost(args) -> dict:
    """fwd+bwd+AdamW per step of the default model (batch 8 x 128, fp32), each regulariser alone and all, in
    alternating rounds, median ms."""
    from charnn.models.configs import LMConfig
    from charnn.models.lm import CharRNN
    torch.set_num_threads(args.threads)
    variants = {"plain": {}, "weight drop": {"weight_drop": 0.5},
                "locked dropout": {"locked_dropout": True, "dropout": 0.25, "input_dropout": 0.1},
                "embedding dropout": {"embed_dropout": 0.05}, "AR/TAR": {"ar": 2.0, "tar": 1.0},
                "all": {"weight_drop": 0.5, "locked_dropout": True, "dropout": 0.25, "input_dropout": 0.1,
                        "embed_dropout": 0.05, "ar": 2.0, "tar": 1.0}}
    x = torch.randint(0, 65, (8, 129))
    models = {}
    for name, kw in variants.items():
        torch.manual_seed(0)
        m = CharRNN(LMConfig(vocab_size=65, **{"dropout": 0.1, **kw})).train()
        models[name] = (m, torch.optim.AdamW(m.parameters(), lr=1e-3))
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (m, opt) in models.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                logits, _ = m(x[:, :-1])
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 65), x[:, 1:].reshape(-1))
                penalty = m.training_penalty()
                (loss if penalty is None else loss + penalty).backward()
                opt.step()
                opt.zero_grad()
            times[name].append((time.perf_counter() - t0) / args.steps * 1000)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {"threads": args.threads, "ms_per_step": med, "all_rounds": times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["cost", "ablation"])
    ap.add_argument("--corpus", choices=["shakespeare", "kjv"], default="shakespeare")
    ap.add_argument("--budget", type=float, default=300.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rows", nargs="*", help="only these rows (names as in the table)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    meta = {"cpu": f"{cpu_name()} ({cpu_features()})", "torch": torch.__version__, "load": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"{meta['cpu']}, torch {meta['torch']}, load {meta['load'][0]:.2f}")
    if args.what == "cost":
        result = cost(args)
        base = result["ms_per_step"]["plain"]
        print("| regulariser | ms/step | vs plain |\n| --- | ---: | ---: |")
        for k, v in result["ms_per_step"].items():
            print(f"| {k} | {v:.1f} | {v / base:.2f}x |")
    else:
        result = ablation(args)
        print(f"\n{args.corpus}, {args.budget:.0f} s per run\n| row | seed | val nats/char | steps |\n"
              "| --- | ---: | ---: | ---: |")
        for r in result["rows"]:
            print(f"| {r['row']} | {r['seed']} | {r['val']:.4f} | {r['steps']:,} |")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"regularize_{args.what}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, **result}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
