"""Sequence to sequence (issue 17): the articles' claims about attention and bidirectional encoders, measured on
synthetic tasks this script generates, and `transduce` throughput, in one run.

Tasks (training pairs and held-out test inputs never seen in training, both generated with --seed):
- reverse: random lowercase strings of 1-40 letters -> the string reversed;
- numbers: integers 0-999,999 -> English words ("4021" -> "four thousand twenty-one");
- dates: ISO dates 1800-2199 -> "March 7, 2024".

For every task, three models trained with `charnn train --pairs` for the same --budget each (the default model
otherwise, 2 layers x 256): attention + bidirectional encoder (the default), --no-attention (the decoder starts
from the encoder's final state only), --unidirectional. Each is scored by exact match per input-length bucket,
greedy and beam 5 (`charnn.generation.seq2seq.Transducer`, the library under `charnn transduce`).

Throughput: the reverse task's attention model decoding 1,000 test inputs in-process, --batch-size 1 and 64,
greedy and beam 5: lines/s and output chars/s.

Prints markdown tables and writes benchmarks/results/seq2seq.json.

    python benchmarks/seq2seq.py                       # the measured run (see benchmarks/SEQ2SEQ.md)
    python benchmarks/seq2seq.py --budget 20 --train 2000 --test 50 --tasks reverse   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import cpu_features, cpu_name  # noqa: E402

from charnn.checkpoint import build_seq2seq, load_checkpoint  # noqa: E402
from charnn.sampling import TransduceConfig  # noqa: E402
from charnn.generation.seq2seq import Transducer  # noqa: E402

ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
       "seventeen eighteen nineteen".split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
MONTHS = "January February March April May June July August September October November December".split()
BUCKETS = {"reverse": 4, "numbers": 6, "dates": 4}
VARIANTS = {"attention": [], "no-attention": ["--no-attention"], "unidirectional": ["--unidirectional"],
            "additive": ["--attention-score", "additive"]}


def below_thousand(n: int) -> str:
    words = []
    if n >= 100:
        words.append(f"{ONES[n // 100]} hundred")
        n %= 100
        if n == 0:
            return words[0]
    if n < 20:
        words.append(ONES[n])
    else:
        words.append(TENS[n // 10] + (f"-{ONES[n % 10]}" if n % 10 else ""))
    return " ".join(words)


def number_words(n: int) -> str:
    if n < 1000:
        return below_thousand(n)
    head, rest = divmod(n, 1000)
    return f"{below_thousand(head)} thousand" + (f" {below_thousand(rest)}" if rest else "")


def make_task(task: str, rng: random.Random):
    """(input, target) of one random example, and its bucket name."""
    if task == "reverse":
        n = rng.randint(1, 40)
        s = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))
        return s, s[::-1], ("1-10", "11-20", "21-30", "31-40")[(n - 1) // 10]
    if task == "numbers":
        digits = rng.randint(1, 6)
        n = rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)
        return str(n), number_words(n), f"{digits} digits"
    if task == "dates":
        y, m = rng.randint(1800, 2199), rng.randint(1, 12)
        d = rng.randint(1, 28 if m == 2 else 30 if m in (4, 6, 9, 11) else 31)
        return f"{y:04d}-{m:02d}-{d:02d}", f"{MONTHS[m - 1]} {d}, {y}", f"{y // 100}00s"
    raise SystemExit(f"unknown task {task!r}")


def datasets(task: str, n_train: int, n_test: int, seed: int):
    rng = random.Random(f"{task}-{seed}")
    train, seen = [], set()
    while len(train) < n_train:
        src, tgt, _ = make_task(task, rng)
        train.append((src, tgt))
        seen.add(src)
    per: dict = {}
    for _ in range(1000 * n_test):  # held-out inputs, n_test per bucket
        src, tgt, bucket = make_task(task, rng)
        if src not in seen and len(per.setdefault(bucket, [])) < n_test:
            seen.add(src)
            per[bucket].append((src, tgt))
        if len(per) == BUCKETS[task] and all(len(v) == n_test for v in per.values()):
            break
    return train, dict(sorted(per.items(), key=lambda kv: (len(kv[0]), kv[0])))


def train(work: Path, task: str, variant: str, budget: float, seed: int, flags: list) -> dict:
    cmd = [sys.executable, "-m", "charnn", "train", str(work / f"{task}.tsv"), "--pairs", *VARIANTS[variant], *flags,
           "--max-time", str(budget), "--out", str(work / "runs"), "--name", f"{task}-{variant}", "--seed", str(seed),
           "--eval-every", "250", "--device", "cpu", "--quiet"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"training failed: {' '.join(cmd)}\n{r.stderr}")
    data = load_checkpoint(work / "runs" / f"{task}-{variant}" / "best.pt")
    return {"seconds": time.perf_counter() - t0, "steps": data["step"], "val_nats_per_char": data["best_val_loss"]}


def accuracy(run: Path, test: dict, beam: int) -> dict:
    data = load_checkpoint(run / "best.pt")
    model, src_tok, tok = build_seq2seq(data)
    tr = Transducer(model, src_tok, tok, TransduceConfig(beam=beam, unknown="skip"), torch.device("cpu"),
                    data["pairs"]["max_ratio"])
    out = {}
    for bucket, pairs in test.items():
        hyps = list(tr.run((s, "test") for s, _ in pairs))
        out[bucket] = sum(h[0].text == t for h, (_, t) in zip(hyps, pairs)) / len(pairs)
    return out


def throughput(run: Path, inputs: list) -> list:
    data = load_checkpoint(run / "best.pt")
    model, src_tok, tok = build_seq2seq(data)
    rows = []
    for beam in (1, 5):
        for batch in (1, 64):
            tr = Transducer(model, src_tok, tok, TransduceConfig(beam=beam, batch_size=batch), torch.device("cpu"),
                            data["pairs"]["max_ratio"])
            list(tr.run((s, "warm") for s in inputs[:20]))
            t0 = time.perf_counter()
            hyps = list(tr.run((s, "t") for s in inputs))
            dt = time.perf_counter() - t0
            chars = sum(len(h[0].text) + 1 for h in hyps)
            rows.append({"beam": beam, "batch_size": batch, "lines_per_sec": len(inputs) / dt,
                         "chars_per_sec": chars / dt, "seconds": dt})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=240, help="training seconds per model")
    ap.add_argument("--train", type=int, default=50_000, help="training pairs per task")
    ap.add_argument("--test", type=int, default=300, help="test inputs per length bucket")
    ap.add_argument("--tasks", nargs="+", default=["reverse", "numbers", "dates"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--throughput-lines", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--flags", default="", help="more `charnn train` flags for every model, e.g. '--hidden 128'")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "seq2seq.json"))
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(args.work or tempfile.mkdtemp(prefix="charnn-s2s-"))
    work.mkdir(parents=True, exist_ok=True)
    result = {"cpu": cpu_name(), "cpu_features": cpu_features(), "cores": os.cpu_count(), "torch": torch.__version__,
              "budget": args.budget,
              "flags": args.flags,
              "train_pairs": args.train, "test_per_bucket": args.test, "tasks": {}}
    for task in args.tasks:
        train_pairs, test = datasets(task, args.train, args.test, args.seed)
        (work / f"{task}.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in train_pairs), encoding="utf-8")
        result["tasks"][task] = {"buckets": {b: len(v) for b, v in test.items()}, "models": {}}
        for variant in args.variants:
            info = train(work, task, variant, args.budget, args.seed, args.flags.split())
            run = work / "runs" / f"{task}-{variant}"
            info["greedy"] = accuracy(run, test, 1)
            info["beam5"] = accuracy(run, test, 5)
            result["tasks"][task]["models"][variant] = info
            print(f"{task:<8} {variant:<15} {info['steps']:>6} steps  val {info['val_nats_per_char']:.4f}  greedy "
                  + " ".join(f"{b}:{100 * a:.1f}" for b, a in info["greedy"].items())
                  + "  beam5 " + " ".join(f"{b}:{100 * a:.1f}" for b, a in info["beam5"].items()), flush=True)
        if task == "reverse" and "attention" in args.variants:
            inputs = [s for v in test.values() for s, _ in v]
            random.Random(0).shuffle(inputs)
            result["throughput"] = throughput(work / "runs" / "reverse-attention", inputs[:args.throughput_lines])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")

    print(f"\n{result['cpu']} ({result['cpu_features']}), {result['cores']} cores, torch {result['torch']}; "
          f"{args.budget:g} s of training per "
          f"model, {args.train:,} training pairs per task, {args.test} test inputs per bucket\n")
    for task, t in result["tasks"].items():
        buckets = list(t["buckets"])
        print(f"**{task}**: exact match (%) by input length, greedy / beam 5\n")
        print("| model | steps | val nats/char | " + " | ".join(buckets) + " |")
        print("|---|---:|---:|" + "---:|" * len(buckets))
        for variant, m in t["models"].items():
            cells = " | ".join(f"{100 * m['greedy'][b]:.1f} / {100 * m['beam5'][b]:.1f}" for b in buckets)
            print(f"| {variant} | {m['steps']:,} | {m['val_nats_per_char']:.4f} | {cells} |")
        print()
    if "throughput" in result:
        print("**transduce throughput** (reverse, attention model, in-process)\n")
        print("| search | batch | lines/s | chars/s |\n|---|---:|---:|---:|")
        for r in result["throughput"]:
            print(f"| {'greedy' if r['beam'] == 1 else 'beam ' + str(r['beam'])} | {r['batch_size']} | "
                  f"{r['lines_per_sec']:,.1f} | {r['chars_per_sec']:,.0f} |")
        tp = {(r["beam"], r["batch_size"]): r["lines_per_sec"] for r in result["throughput"]}
        print(f"\nbatched / batch-1 lines/s: greedy {tp[(1, 64)] / tp[(1, 1)]:.1f}x, beam 5 "
              f"{tp[(5, 64)] / tp[(5, 1)]:.1f}x")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
