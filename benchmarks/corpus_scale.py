"""Corpora at scale: first-run encoding speed, peak memory through encoding and training, cached start.

Generates a text of --size-mb itself (seeded lines of words, some of them non-ASCII) into a temporary
folder that is deleted afterwards, then runs two child processes with a fresh CHARNN_CACHE:
1. first run: encode the corpus (hashing included), then train a small model for --steps steps;
   reports encode MB/s and the process's peak RSS (ru_maxrss: encoding and training together);
2. second run: the time from asking for the data to a Trainer ready to train (the cache hit).
Prints a table and writes JSON to benchmarks/results/corpus_scale.json.

    nice -n 19 python benchmarks/corpus_scale.py --size-mb 200
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_features, cpu_name

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the of and to in a is that for it as was with be by on not he I this are or his from at which but "
         "have an they you were her she there had been one all we their has would when if so no will more "
         "café naïve résumé — “quoted” über señor Straße 東京 ½ ✓").split()


def generate(path: Path, size_mb: float, seed: int = 0) -> int:
    """Write about size_mb MB of seeded text: a pool of lines repeated in a shuffled order."""
    rng = random.Random(seed)
    pool = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))) for _ in range(50_000)]
    target, written = int(size_mb * 1e6), 0
    with open(path, "wb") as f:
        while written < target:
            block = ("\n".join(rng.choices(pool, k=20_000)) + "\n").encode("utf-8")
            if written + len(block) > target:  # end on a whole line (never inside a UTF-8 sequence)
                block = block[: block.rfind(b"\n", 0, target - written) + 1] or block
            f.write(block)
            written += len(block)
    return written


def child(args) -> dict:
    """One measured run, in its own process so that ru_maxrss is its own."""
    sys.path.insert(0, str(ROOT))
    import torch

    from charnn.config import ModelConfig, TrainConfig
    from charnn.data.corpus import load_corpus
    from charnn.data.encode import prepare_corpus
    from charnn.training.trainer import Trainer

    torch.set_num_threads(args.threads)
    cfg = TrainConfig(out=args.out, name="scale", max_steps=args.steps, eval_every=args.steps, batch_size=32,
                      seq_len=64, device="cpu", eval_tokens=20_000, save_every_secs=0, threads=args.threads)
    model = ModelConfig(vocab_size=1, layers=1, hidden=64, embed=16, dropout=0.0)
    t0 = time.perf_counter()
    corpus = load_corpus([args.corpus])
    data = prepare_corpus(corpus, cfg)
    t_data = time.perf_counter() - t0
    trainer = Trainer(corpus, model, cfg)
    t_ready = time.perf_counter() - t0
    out = {"cached": data.cached, "data_seconds": t_data, "ready_seconds": t_ready,
           "train_tokens": len(data.train_ids), "val_tokens": len(data.val_ids), "dtype": str(data.val_ids.dtype)}
    if args.phase == "first":
        t1 = time.perf_counter()
        result = trainer.fit()
        out.update(train_seconds=time.perf_counter() - t1, steps=result.steps, val_loss=result.best_val_loss)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=1000.0, help="size of the generated text")
    ap.add_argument("--steps", type=int, default=5, help="training steps after encoding")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: no oversubscription on a shared machine)")
    ap.add_argument("--phase", choices=["first", "cached"], help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(child(args)))
        return
    with tempfile.TemporaryDirectory(prefix="charnn-scale-") as tmp:
        corpus = Path(tmp) / "big.txt"
        t = time.perf_counter()
        size = generate(corpus, args.size_mb)
        gen_s = time.perf_counter() - t
        env = {**os.environ, "CHARNN_CACHE": str(Path(tmp) / "cache"), "PYTHONPATH": str(ROOT)}
        runs = {}
        for phase in ("first", "cached"):
            cmd = [sys.executable, __file__, "--phase", phase, "--corpus", str(corpus), "--out", str(Path(tmp) / "runs"),
                   "--steps", str(args.steps), "--threads", str(args.threads)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{phase} run failed:\n{done.stderr}")
            runs[phase] = json.loads(done.stdout.strip().splitlines()[-1])
    first, cached = runs["first"], runs["cached"]
    mb = size / 1e6
    result = {
        "size_mb": mb, "generate_seconds": gen_s, "cpu": cpu_name(), "cpu_features": cpu_features(),
        "cores": os.cpu_count(), "threads": args.threads,
        "encode_seconds": first["data_seconds"], "encode_mb_per_s": mb / first["data_seconds"],
        "first_run_peak_rss_mb": first["peak_rss_mb"], "train_steps": first["steps"],
        "train_seconds": first["train_seconds"], "cached_start_seconds": cached["ready_seconds"], "cached_data_seconds": cached["data_seconds"],
        "cached_peak_rss_mb": cached["peak_rss_mb"], "cache_hit": cached["cached"],
        "train_tokens": first["train_tokens"], "val_tokens": first["val_tokens"], "dtype": first["dtype"],
        "targets": {"encode_mb_per_s": 50, "peak_rss_mb": 1536, "cached_start_seconds": 5},
    }
    rows = [("text", f"{mb:,.0f} MB ({first['train_tokens']:,} train / {first['val_tokens']:,} val ids, {first['dtype']})"),
            ("first-run encode", f"{first['data_seconds']:.1f} s = {result['encode_mb_per_s']:.0f} MB/s (target >= 50)"),
            ("peak RSS, encode + train", f"{first['peak_rss_mb']:,.0f} MB (target <= 1,536)"),
            (f"{first['steps']} training steps", f"{first['train_seconds']:.1f} s"),
            ("cached start", f"{cached['ready_seconds']:.2f} s to a ready Trainer, {cached['data_seconds']:.2f} s of it "
                             f"the data, hit={cached['cached']} (target <= 5)"),
            ("machine", f"{result['cpu']} ({result['cpu_features']}), {result['cores']} cores, "
                        f"{args.threads} torch threads")]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    out = ROOT / "benchmarks" / "results" / "corpus_scale.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
