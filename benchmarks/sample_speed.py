"""How fast does `charnn sample` generate? The fast stepper against the naive way, in one run.

For a 2x512 LSTM with random weights (vocab 65), times the real sampler (decoding, Gumbel draws and
flushing included) for: the naive way (the model's nn.LSTM called once per character with carried state),
one stream and 64 streams with the fast stepper. Prints a table and writes JSON.

    nice -n 19 python benchmarks/sample_speed.py --threads 2 --seconds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from charnn.config import ModelConfig, SampleConfig
from charnn.model import CharRNN
from charnn.sample import Sampler
from charnn.tokenizer import CharTokenizer

CHARS = "\n !$&',-.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # 64 characters + unknown = 65


def chars_per_second(model, tokenizer, device, streams: int, fast: bool, seconds: float) -> dict:
    """Run the sampler long enough to take about `seconds`, after a short run that sizes it."""
    def once(length):
        cfg = SampleConfig(length=length, num_samples=streams, prime="\n")
        sampler = Sampler(model, tokenizer, cfg, device, seed=0, fast=fast)
        t0 = time.perf_counter()
        for _ in sampler:
            pass
        if device.type == "cuda":
            torch.cuda.synchronize()
        return sampler.chars, time.perf_counter() - t0

    n, dt = once(64)
    length = max(64, int(seconds * n / dt / streams))
    n, dt = once(length)
    return {"streams": streams, "fast": fast, "chars": n, "seconds": round(dt, 3), "chars_per_s": round(n / dt, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--seconds", type=float, default=4.0, help="rough length of each timed run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/sample_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    tokenizer = CharTokenizer(list(CHARS))
    model = CharRNN(ModelConfig(vocab_size=tokenizer.vocab_size, cell=args.cell, layers=args.layers,
                                hidden=args.hidden, embed=64)).to(device).eval()

    runs = [("naive: nn.LSTM per char", 1, False), ("fast stepper", 1, True),
            ("naive: nn.LSTM per char", 64, False), ("fast stepper", 64, True)]
    results = []
    for label, streams, fast in runs:
        r = chars_per_second(model, tokenizer, device, streams, fast, args.seconds)
        results.append({"label": label, **r})
    naive = {r["streams"]: r["chars_per_s"] for r in results if not r["fast"]}
    for r in results:
        r["vs_naive_1_stream"] = round(r["chars_per_s"] / naive[1], 2)
        r["vs_naive_same_streams"] = round(r["chars_per_s"] / naive[r["streams"]], 2)

    print(f"{args.layers}x{args.hidden} {args.cell}, vocab {tokenizer.vocab_size}, {device}, {args.threads} threads, "
          f"torch {torch.__version__}")
    print(f"{'sampler':<26}{'streams':>8}{'chars':>10}{'seconds':>9}{'chars/s':>12}{'x naive(1)':>12}{'x naive(same)':>15}")
    for r in results:
        print(f"{r['label']:<26}{r['streams']:>8}{r['chars']:>10,}{r['seconds']:>9.2f}{r['chars_per_s']:>12,.0f}"
              f"{r['vs_naive_1_stream']:>12.1f}{r['vs_naive_same_streams']:>15.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": f"{args.layers}x{args.hidden} {args.cell}", "vocab": tokenizer.vocab_size, "device": str(device),
            "threads": args.threads, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    out.write_text(json.dumps({**meta, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
