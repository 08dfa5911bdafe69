"""Plain `charnn train` against `torchrun --nproc-per-node N` at the same global batch: chars/s and loss.

    python benchmarks/distributed.py ../shared/corpora/tinyshakespeare.txt --steps 40 --nproc 2

Each run trains the same model for the same steps; chars/s is the median of the logged rates after the
first quarter of the steps (warm-up excluded), from the run's metrics.jsonl. Prints a table and writes
benchmarks/results/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from charnn.training.metrics import read_metrics  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(corpus: str, out: str, nproc: int, steps: int, batch: int, threads: int, device: str) -> dict:
    flags = ["train", corpus, "--out", out, "--name", f"p{nproc}", "--max-steps", str(steps), "--batch-size",
             str(batch), "--eval-every", str(steps), "--log-every", "1", "--dropout", "0", "--device", device,
             "--threads", str(threads), "--quiet"]
    if nproc == 0:  # plain, no torchrun
        cmd = [sys.executable, "-m", "charnn", *flags]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "charnn", *flags]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    wall = time.perf_counter() - t
    recs = read_metrics(Path(out) / f"p{nproc}" / "metrics.jsonl")
    rates = [r["chars_per_sec"] for r in recs[len(recs) // 4:]]
    return {"launcher": "plain" if nproc == 0 else f"torchrun x{nproc}", "processes": max(1, nproc),
            "threads_per_process": threads, "chars_per_sec": statistics.median(rates), "wall_s": round(wall, 1),
            "final_train_loss": recs[-1]["train_loss"], "val_loss": recs[-1].get("val_loss")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as out:
        # plain with every core, torchrun with 1 process (the DDP overhead alone), N processes sharing the cores
        for nproc, threads in ((0, cores), (1, cores), (args.nproc, max(1, cores // args.nproc))):
            rows.append(one_run(args.corpus, out, nproc, args.steps, args.batch_size, threads, args.device))
    print(f"{'launcher':<14}{'procs':>6}{'threads':>8}{'chars/s':>10}{'wall s':>8}{'train loss':>12}{'val loss':>10}")
    for r in rows:
        print(f"{r['launcher']:<14}{r['processes']:>6}{r['threads_per_process']:>8}{r['chars_per_sec']:>10,.0f}"
              f"{r['wall_s']:>8}{r['final_train_loss']:>12.4f}{r['val_loss'] or float('nan'):>10.4f}")
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "distributed.json").write_text(json.dumps({"args": vars(args), "cpu_count": cores, "rows": rows},
                                                         indent=2) + "\n")


if __name__ == "__main__":
    main()
