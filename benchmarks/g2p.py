"""Sequence to sequence on a real, public dataset (issue 17): grapheme-to-phoneme conversion from the SIGMORPHON
2021 shared task (Task 1), on its own train/dev/test split, beside the task's published baseline.

Everything goes through the CLI a user would type, with the data named from the corpus catalog (downloaded once
into the cache; `charnn corpora` lists the entries):

    charnn train sigmorphon21-rum-train --pairs --val-file sigmorphon21-rum-dev --max-time BUDGET ...
    charnn eval RUN/best.pt sigmorphon21-rum-dev sigmorphon21-rum-test --beam 5 --json

The task's metric is word error rate (WER: the share of words whose whole transcription is wrong, so 100 - charnn's
exact match) and phone error rate (PER: phone edit distance / reference phones; the targets are space-separated
phones, so it is `eval`'s symbol error rate). Each setting is trained with --seeds seeds and the mean is reported
with the spread, because the test split is small (100 words for the low-resource languages: one word is 1 point).

Prints a markdown table and writes benchmarks/results/g2p.json.

    python benchmarks/g2p.py                                # the measured run (see benchmarks/SEQ2SEQ.md)
    python benchmarks/g2p.py --budget 20 --seeds 1          # a quick check
    python benchmarks/g2p.py --languages eng --budget 120 300 600 1800 --seeds 2 --settings default \
        --local ../data/sigmorphon21                        # the large English set, at four budgets
    python benchmarks/g2p.py --languages eng --train-pairs 2000 5000 --settings small large --budget 300 --seeds 1 \
        --local ../data/sigmorphon21                        # where the size defaults should change

--local DIR puts copies of the task's files (DIR/<code>_train.tsv, _dev.tsv, _test.tsv; English: eng_us_*) into
charnn's corpus cache first, for a machine that cannot reach GitHub; charnn then reads them as downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import CORPORA, cpu_features, cpu_name  # noqa: E402

# The task's published baseline (an ensembled neural transducer trained with imitation learning, Makarov &
# Clematide 2018), WER % on dev and test, from the "Baseline" table of the task's README (github.com/sigmorphon/
# 2021-task1, README.md at commit 821bcdece5a47820872215969f275004b0abe80c). Copied, not measured here.
BASELINE_WER = {
    "eng": (45.13, 41.94),  # the task's eng_us (the catalog's sigmorphon21-eng-*)
    "arm_e": (4.50, 7.00), "bul": (8.30, 18.30), "dut": (10.80, 14.70), "fre": (7.40, 8.50), "geo": (0.00, 0.00),
    "hbs_latn": (34.70, 32.10), "hun": (1.50, 1.80), "jpn_hira": (6.20, 5.20), "kor": (18.40, 16.30),
    "vie_hanoi": (1.30, 2.50),
    "ady": (22.00, 22.00), "gre": (5.00, 21.00), "ice": (11.00, 12.00), "ita": (22.00, 19.00), "khm": (34.00, 34.00),
    "lav": (41.00, 55.00), "mlt_latn": (20.00, 19.00), "rum": (10.00, 10.00), "slv": (43.00, 49.00),
    "wel_sw": (16.00, 10.00),
}
# The settings compared (`charnn train` flags; every run adds --pairs, the budget, the seed and the split).
SETTINGS = {
    "default": [],
    # the candidates tried on English dev for the size defaults (SEQ2SEQ.md, "defaults that scale")
    "2x256-d0.3": ["--dropout", "0.3"],
    "1x256-d0.3": ["--layers", "1", "--dropout", "0.3"],
    "2x384-d0.3": ["--hidden", "384", "--dropout", "0.3"],
    "2x256-e128-d0.3": ["--embed", "128", "--dropout", "0.3"],
    "small": ["--layers", "1", "--hidden", "128", "--embed", "128", "--dropout", "0.5"],
    "large": ["--layers", "2", "--hidden", "256", "--embed", "64", "--dropout", "0.1"],  # the default past 2,000
    # learning rate and batch against the data's size (the pairs defaults: --lr 1e-2, --batch-size 32 on a CPU)
    "batch32": ["--batch-size", "32"],
    "batch64": ["--batch-size", "64"],
    "batch128": ["--batch-size", "128"],
    "lr3e-3": ["--lr", "3e-3"],
    "small-batch16": ["--layers", "1", "--hidden", "128", "--embed", "128", "--dropout", "0.5", "--batch-size", "16"],
    "small-lr3e-3": ["--layers", "1", "--hidden", "128", "--embed", "128", "--dropout", "0.5", "--lr", "3e-3"],
    "small-additive": ["--layers", "1", "--hidden", "128", "--embed", "128", "--dropout", "0.5",
                       "--attention-score", "additive"],
}


def charnn(args: list) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "charnn", *args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"charnn {' '.join(args)} failed:\n{r.stderr}")
    return r


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_one(work: Path, lang: str, setting: str, seed: int, budget: float, beam: int, eval_every: int,
            pairs=None) -> dict:
    name = f"{lang}-{setting}-{seed}-{budget:g}" + (f"-{pairs}" if pairs else "")
    train = subsample(work, lang, pairs) if pairs else f"sigmorphon21-{lang}-train"
    cpu0, t0 = children_cpu(), time.perf_counter()
    charnn(["train", train, "--pairs", "--val-file", f"sigmorphon21-{lang}-dev",
            *SETTINGS[setting], "--max-time", str(budget), "--seed", str(seed), "--eval-every", str(eval_every),
            "--out", str(work), "--name", name, "--device", "cpu", "--quiet"])
    train_cpu, train_wall = children_cpu() - cpu0, time.perf_counter() - t0
    cpu0, t0 = children_cpu(), time.perf_counter()
    r = charnn(["eval", str(work / name / "best.pt"), f"sigmorphon21-{lang}-dev", f"sigmorphon21-{lang}-test",
                "--beam", str(beam), "--json", "--device", "cpu"])
    dev, test = json.loads(r.stdout)["files"]
    info = json.loads(charnn(["info", str(work / name / "best.pt"), "--json"]).stdout)
    config = json.loads((work / name / "config.json").read_text())
    rates = [rec["chars_per_sec"] for rec in map(json.loads, (work / name / "metrics.jsonl").read_text().splitlines())
             if rec.get("chars_per_sec")]
    return {"seed": seed, "budget": budget, "steps": info["training"]["steps"],
            "precision": config["precision"],  # what auto chose, and why
            "threads": config.get("threads"), "train_chars_per_s": statistics.median(rates) if rates else None,
            "parameters": info["model"]["parameters"], "train_cpu_s": train_cpu, "train_wall_s": train_wall,
            "eval_cpu_s": children_cpu() - cpu0, "eval_wall_s": time.perf_counter() - t0,
            "dev_wer": 100 * (1 - dev["exact_match"]), "test_wer": 100 * (1 - test["exact_match"]),
            "dev_per": 100 * dev["ser"], "test_per": 100 * test["ser"], "test_nats_per_char": test["nats_per_char"]}


def subsample(work: Path, lang: str, n: int) -> str:
    """A file of n of the task's training pairs drawn at random (seed 0, the same for every run), in the file's
    order: a smaller dictionary of the same language, for where the size defaults change (PAIR_SIZES)."""
    sys.path.insert(0, str(ROOT))
    from charnn.data.catalog import find, local_path

    path = work / f"{lang}-train-{n}.tsv"
    if not path.is_file():
        source = local_path(find(f"sigmorphon21-{lang}-train"))
        if not source.is_file():
            raise SystemExit(f"--train-pairs draws from {source}: fetch it first (one run without it, or --local)")
        lines = source.read_text(encoding="utf-8").splitlines()
        keep = sorted(random.Random(0).sample(range(len(lines)), min(n, len(lines))))
        path.write_text("".join(lines[i] + "\n" for i in keep), encoding="utf-8")
    return str(path)


def lm_rate(work: Path, seconds: float) -> dict:
    """The language model's training chars/s on this machine (every default, tinyshakespeare, `seconds` long):
    what the pairs runs' rate is compared with."""
    corpus = CORPORA / "tinyshakespeare.txt"
    charnn(["train", str(corpus), "--max-time", str(seconds), "--out", str(work), "--name", "lm", "--device", "cpu",
            "--quiet"])
    records = [json.loads(line) for line in (work / "lm" / "metrics.jsonl").read_text().splitlines()]
    rates = [rec["chars_per_sec"] for rec in records if rec.get("chars_per_sec")]
    config = json.loads((work / "lm" / "config.json").read_text())
    return {"seconds": seconds, "chars_per_s": statistics.median(rates) if rates else None,  # (none logged: short)
            "precision": config["precision"],
            "threads": config.get("threads")}


def seed_cache(folder: Path, langs: list) -> None:
    """Copy the task's files from `folder` into charnn's corpus cache where the catalog entry is not there yet."""
    sys.path.insert(0, str(ROOT))
    from charnn.data.catalog import find, local_path

    for lang in langs:
        for split in ("train", "dev", "test"):
            entry = find(f"sigmorphon21-{lang}-{split}")
            source = folder / Path(entry["url"]).name
            target = local_path(entry)
            if not target.is_file() and source.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(source.read_bytes())


def spread(values: list, digits: int = 1) -> str:
    mean = statistics.mean(values)
    return f"{mean:.{digits}f}" if len(values) < 2 else f"{mean:.{digits}f} ({min(values):.0f}-{max(values):.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--languages", nargs="+", default=["rum"], help="SIGMORPHON 2021 language codes in the catalog")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS))
    ap.add_argument("--budget", type=float, nargs="+", default=[180], help="training seconds per model (several: "
                    "each budget is its own run, as a user would train with that --max-time)")
    ap.add_argument("--seeds", type=int, default=3, help="models per setting (seeds 1..N)")
    ap.add_argument("--first-seed", type=int, default=1, help="start the seeds here (to add seeds to an earlier run)")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--eval-every", type=int, default=100, help="charnn train --eval-every (100 suits the 800-word "
                    "sets; a large set evaluates longer, so less often)")
    ap.add_argument("--work", default=None, help="run folder (default: a temporary one)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "g2p.json"))
    ap.add_argument("--table", default=None, help="print the table of an earlier run's JSON, and stop")
    ap.add_argument("--local", default=None, help="a folder with copies of the task's files (see the docstring)")
    ap.add_argument("--train-pairs", type=int, nargs="+", default=[None], help="train on this many of the training "
                    "pairs, drawn at random (several: each its own runs; dev and test stay whole)")
    ap.add_argument("--lm-rate", type=float, default=0, help="first train the language model this many seconds on "
                    "tinyshakespeare: its chars/s, beside the pairs runs' (0: skip)")
    args = ap.parse_args()
    if args.local:
        seed_cache(Path(args.local), args.languages)
    if args.table:
        return table(json.loads(Path(args.table).read_text(encoding="utf-8")))
    work = Path(args.work or tempfile.mkdtemp(prefix="charnn-g2p-"))
    result = {"cpu": cpu_name(), "cpu_features": cpu_features(), "cores": os.cpu_count(), "budget": args.budget,
              "beam": args.beam, "eval_every": args.eval_every,
              "settings": {s: SETTINGS[s] for s in args.settings}, "languages": {}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if args.lm_rate:
        result["language_model"] = lm_rate(work, args.lm_rate)
        print(f"language model: {result['language_model']['chars_per_s']:,.0f} training chars/s", flush=True)
    for lang in args.languages:
        result["languages"][lang] = {"baseline_wer_dev_test": BASELINE_WER.get(lang), "runs": {}}
        for pairs, setting in ((n, s) for n in args.train_pairs for s in args.settings):
            key = setting if pairs is None else f"{setting}, {pairs:,} training pairs"
            runs = result["languages"][lang]["runs"][key] = []
            for budget in args.budget:
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    runs.append(run_one(work, lang, setting, seed, budget, args.beam, args.eval_every, pairs))
                    r = runs[-1]
                    print(f"{lang} {key} {budget:g} s seed {seed}: best at step {r['steps']}, dev WER "
                          f"{r['dev_wer']:.1f}, test WER {r['test_wer']:.1f}, test PER {r['test_per']:.2f}, train CPU "
                          f"{r['train_cpu_s']:.0f} s, {r['train_chars_per_s'] or 0:,.0f} chars/s", flush=True)
                    # written after every run: a long sweep cut short keeps what it measured
                    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    table(result)
    print(f"\nwrote {args.out}")


def table(result: dict) -> None:
    seeds = max(len({r["seed"] for r in runs}) for e in result["languages"].values() for runs in e["runs"].values())
    chose = sorted({r["precision"]["precision"] for e in result["languages"].values() for runs in e["runs"].values()
                    for r in runs if r.get("precision")})
    budgets = result["budget"] if isinstance(result["budget"], list) else [result["budget"]]
    print(f"\n{result['cpu']} ({result.get('cpu_features', '?')}), {result['cores']} cores, precision "
          f"{'/'.join(chose) or '?'}; {'/'.join(f'{b:g}' for b in budgets)} s of training per model, beam "
          f"{result['beam']}, {seeds} seed(s) per setting: mean (min-max)\n")
    if result.get("language_model"):
        lm = result["language_model"]
        print(f"The language model (every default, tinyshakespeare, {lm['seconds']:g} s) trains at "
              f"{lm['chars_per_s']:,.0f} chars/s on this machine ({lm['precision']['precision']}).\n")
    print("| language | system | budget s | best.pt at step | dev WER % | test WER % | test PER % | train chars/s | "
          "train CPU s per model | eval CPU s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for lang, entry in result["languages"].items():
        base = entry["baseline_wer_dev_test"]
        if base:
            print(f"| {lang} | published baseline (neural transducer, ensembled) | - | - | {base[0]:.1f} | "
                  f"{base[1]:.1f} | - | - | - | - |")
        for setting, all_runs in entry["runs"].items():
            for budget in budgets:
                runs = [r for r in all_runs if r.get("budget", budget) == budget]
                if not runs:
                    continue
                col = lambda k, digits=1: spread([r[k] for r in runs], digits)  # noqa: E731
                rate = [r["train_chars_per_s"] for r in runs if r.get("train_chars_per_s")]
                print(f"| {lang} | charnn {setting} | {budget:g} | {col('steps', 0)} | {col('dev_wer')} | "
                      f"{col('test_wer')} | {col('test_per')} | {statistics.mean(rate) if rate else 0:,.0f} | "
                      f"{statistics.mean(r['train_cpu_s'] for r in runs):.0f} | "
                      f"{statistics.mean(r['eval_cpu_s'] for r in runs):.1f} |")


if __name__ == "__main__":
    main()
