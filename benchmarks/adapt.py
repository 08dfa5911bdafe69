"""Does adapting a model pay? Fine-tuning (`--init-from`) against training from scratch, and dynamic evaluation.

1. Fine-tuning: a base model trained on one corpus (default: the King James Bible, ../shared/corpora/kjv/),
   then a small different text (default: the first 200,000 characters of tinyshakespeare) trained for the
   same budget from the base (at a few learning rates) and from scratch. Reports each run's best val
   nats/char on the small text's validation split and, for a sample of each, how much of it is copied from
   the run's training text (`charnn novelty`'s numbers). Goal: fine-tuned >= 0.15 nats/char better.
2. Dynamic evaluation: the default model trained 5 minutes on tinyshakespeare, its validation split scored
   statically and with `charnn eval --dynamic`'s defaults, with the time each took. Goal: >= 0.05 lower.

Prints a table per part and writes benchmarks/results/adapt.json. Runs land in --work (reused when there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from common import CORPORA, cpu_features, cpu_name

import torch

import charnn
from charnn.checkpoint import build_from_checkpoint, load_checkpoint

HERE = Path(__file__).resolve().parent
SHARED = CORPORA


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-corpus", default=str(SHARED / "kjv"), help="'builtin': the built-in corpus")
    ap.add_argument("--base", help="a base checkpoint or run folder to use instead of training one")
    ap.add_argument("--base-time", default="8m", help="training budget of the base model")
    ap.add_argument("--small", default=str(SHARED / "tinyshakespeare.txt"),
                    help="the small new text's source: a file, or a folder of .py files")
    ap.add_argument("--small-chars", type=int, default=200_000, help="characters of it to use")
    ap.add_argument("--budget", default="2m", help="training budget of each run on the small text")
    ap.add_argument("--lrs", default="1e-2,3e-3,2e-3,1e-3", help="fine-tuning learning rates to try")
    ap.add_argument("--sample-chars", type=int, default=2000)
    ap.add_argument("--dynamic-corpus", default=str(SHARED / "tinyshakespeare.txt"))
    ap.add_argument("--dynamic-time", default="5m", help="training budget of the model dynamic evaluation runs on")
    ap.add_argument("--skip", choices=["finetune", "dynamic"], action="append", default=[])
    ap.add_argument("--work", default="/tmp/charnn-adapt")
    ap.add_argument("--json", default=str(HERE / "results" / "adapt.json"))
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result = {"machine": {"cpu": cpu_name(), "cpu_features": cpu_features(), "cores": os.cpu_count(),
                          "torch": torch.__version__,
                          "python": platform.python_version()}, "args": vars(args)}
    print(f"# {cpu_name()} ({cpu_features()}), {os.cpu_count()} cores, torch {torch.__version__}")
    if "finetune" not in args.skip:
        result["finetune"] = finetune(args, work)
    if "dynamic" not in args.skip:
        result["dynamic"] = dynamic(args, work)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")


def trained(corpus: str, work: Path, name: str, **flags) -> dict:
    """A run (trained now unless work/name already holds one): its folder, best val and wall time."""
    run = work / name
    if not (run / "best.pt").is_file():
        t = time.perf_counter()
        charnn.train(corpus, out=str(work), name=name, **flags)
        print(f"  trained {name} in {time.perf_counter() - t:.0f}s", flush=True)
    data = load_checkpoint(run / "best.pt")
    return {"run": str(run), "best_val": data["best_val_loss"], "steps": data["step"], "elapsed": data["elapsed"],
            "chars_seen": data["chars_seen"], "lr": data["train_config"]["lr"]}


def finetune(args, work: Path) -> dict:
    small = work / "small.txt"
    src = Path(args.small)
    whole = ("\n\n".join(f.read_text(encoding="utf-8") for f in sorted(src.rglob("*.py"))) if src.is_dir()
             else src.read_text(encoding="utf-8"))  # a folder: its Python files, joined in sorted order
    text = whole[: args.small_chars]
    small.write_text(text, encoding="utf-8")
    corpus = None if args.base_corpus == "builtin" else args.base_corpus
    base = {"run": args.base} if args.base else trained(corpus, work, "base", max_time=args.base_time)
    rows = {"scratch": trained(str(small), work, "scratch", max_time=args.budget)}
    for lr in args.lrs.split(","):
        rows[f"init-from, lr {lr}"] = trained(str(small), work, f"finetune-lr{lr}", max_time=args.budget,
                                              init_from=base["run"], lr=float(lr))
    for row in rows.values():
        row["novelty"] = copying(row["run"], args.sample_chars)
    scratch = rows["scratch"]["best_val"]
    print(f"\n## Fine-tuning: {len(text):,} characters of {Path(args.small).name}, {args.budget} per run; "
          f"base: {base['run']}")
    print("| run | lr | steps | best val nats/char | vs scratch | longest copied span | 16-char windows copied |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        nov = r["novelty"]
        print(f"| {name} | {r['lr']:g} | {r['steps']:,} | {r['best_val']:.4f} | {r['best_val'] - scratch:+.4f} | "
              f"{nov.get('longest', '?')} | {nov.get('share16', float('nan')):.1%} |")
    return {"base": base, "small_chars": len(text), "runs": rows}


def copying(run: str, chars: int) -> dict:
    """How much of a 0.8-temperature sample of the run is found verbatim in the run's training text."""
    from charnn.reports.novelty import novelty  # what `charnn novelty` reports

    sample = charnn.load(run, device="cpu").generate(length=chars, temperature=0.8, seed=1)
    report = novelty(run, sample)
    out = {"longest": report.longest.length if report.longest else 0,
           "longest_text": report.longest.text if report.longest else ""}
    out.update({f"share{w.n}": w.share for w in report.windows})
    return out


def dynamic(args, work: Path) -> dict:
    from dataclasses import asdict

    from charnn.config import DynamicConfig
    from charnn.scoring.dynamic import evaluate_dynamic  # what charnn eval --dynamic runs

    run = trained(args.dynamic_corpus, work, "shakespeare", max_time=args.dynamic_time)
    model, tok = build_from_checkpoint(load_checkpoint(Path(run["run"]) / "best.pt"))
    text = Path(args.dynamic_corpus).read_text(encoding="utf-8")
    val = text[int(len(text) * 0.9):]  # the run's validation split (--val-frac 0.1: the last tenth)
    cfg = DynamicConfig()
    r = evaluate_dynamic(model, tok, val, torch.device("cpu"), cfg)
    print(f"\n## Dynamic evaluation: {run['run']} ({run['steps']:,} steps, {run['elapsed']:.0f} s), "
          f"{len(val):,} validation characters, {asdict(cfg)}")
    print("| scoring | nats/char | bits/char | seconds |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| static | {r.static.nats_per_char:.4f} | {r.static.bits_per_char:.4f} | {r.static_seconds:.1f} |")
    print(f"| dynamic | {r.dynamic.nats_per_char:.4f} | {r.dynamic.bits_per_char:.4f} | {r.dynamic_seconds:.1f} |")
    print(f"gain: {r.gain:.4f} nats/char, {r.dynamic_seconds / max(r.static_seconds, 1e-9):.1f}x the static time")
    return {"run": run, "val_chars": len(val), **r.to_dict(), "config": asdict(cfg)}


if __name__ == "__main__":
    main()
