"""The many-to-one classifier (issue 33): `charnn train --classifier` against TF-IDF + logistic regression on
two tasks, the pooling choice, --init-from on a small label set, and `charnn classify` throughput, in one run.

1. KJV ten books, the held-out verses of benchmarks/labels.py (the same TSV, split and 917 verses): the
   classifier after each --max-time budget (default 60, 120, 240 s), last.pt through the library under
   `charnn classify`, beside the TF-IDF baseline refit here and the Bayes recipe's recorded numbers.
2. Pooling: attention, mean, max and final at the first budget.
3. --init-from on a small label set: 5% of the training verses; a language model on those verses' text (the
   first budget), then the classifier --init-from it, against the classifier from scratch, equal budgets.
4. Source-file language (split by file): Python (the standard library), C headers, shell scripts (shebang),
   Perl modules and config files from this machine; `--label-by folder` on the training files, every held-out
   file classified whole (`classify --per-file`'s path), against TF-IDF on whole files.
5. Throughput: files of 2,000, 20,000 and 100,000 100-character lines through `charnn classify` (a process,
   stdin to stdout: startup paid once per file), its startup alone, and in-process.

Prints markdown tables and writes benchmarks/results/classifier.json.

    python benchmarks/classifier.py                        # the measured run, about 20 minutes on 2 cores
    python benchmarks/classifier.py --budgets 20 --parts kjv throughput   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import CORPORA, cpu_features, cpu_name  # noqa: E402
from labels import BOOKS, baseline, build_task, charnn, sample_load, scores  # noqa: E402

from charnn.checkpoint import build_from_checkpoint, load_checkpoint  # noqa: E402
from charnn.data.labels import load_labelled  # noqa: E402
from charnn.scoring.classify import classifier_for  # noqa: E402

BAYES = {"accuracy": 0.8310, "macro_f1": 0.8044, "train_cpu_s": 2346, "predict_lines_per_s": 56,
         "recipe": "600 s labelled LM, then 600 s --label-contrast 10 --label-negatives 9 (LABELS.md, 2026-12-04)"}
PARTS = ("kjv", "init", "code", "throughput", "pooling")
CODE_LABELS = ("python", "c_header", "shell", "perl", "config")


def train(tsv_or_dir, work: Path, name: str, budget: float, *flags) -> dict:
    by = "folder" if Path(tsv_or_dir).is_dir() else "line"
    r = charnn("train", str(tsv_or_dir), "--label-by", by, "--classifier", "--max-time", str(budget), "--out",
               str(work / "runs"), "--name", name, "--device", "cpu", "-q", *flags)
    data = load_checkpoint(work / "runs" / name / "last.pt")
    return {"name": name, "budget_s": budget, "flags": list(flags), "steps": data["step"], "wall_s": r["wall_s"],
            "cpu_s": r["cpu_s"], "val_accuracy_in_run": data["labels"].get("val_accuracy")}


def predict(run: Path, texts, truth, names) -> dict:
    """last.pt over `texts` through classifier_for (what `charnn classify` runs)."""
    data = load_checkpoint(run / "last.pt")
    model, tok = build_from_checkpoint(data, torch.device("cpu"))
    clf = classifier_for(model, tok, data["labels"], torch.device("cpu"))
    cpu, t0 = time.process_time(), time.perf_counter()
    pred = [s.best for s in clf.classify(texts)]
    out = scores(truth, pred, names)
    out["predict"] = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - t0}
    return out


def kjv_split(kjv: Path, work: Path, seed: int):
    tsv = work / "kjv10.tsv"
    build_task(kjv, BOOKS, tsv, seed)
    text = load_labelled([str(tsv)], "line", val_frac=0.1, seed=1337)
    strip = (lambda d: d.text.rstrip("\n"))
    return (tsv, text, [strip(d) for d in text.train], [text.names[d.label - 1] for d in text.train],
            [strip(d) for d in text.val], [text.names[d.label - 1] for d in text.val])


def part_kjv(a, work: Path, split) -> dict:
    tsv, text, train_x, train_y, val_x, val_y = split
    base = baseline(train_x, train_y, val_x)
    out = {"baseline": {**scores(val_y, base["pred"], text.names), "train": base["train"],
                        "predict": base["predict"], "features": base["features"]}, "runs": []}
    print(f"kjv baseline {out['baseline']['accuracy']:.4f}", file=sys.stderr)
    for budget in a.budgets:
        run = train(tsv, work, f"kjv-{budget:g}", budget, *a.flags)
        run.update(predict(work / "runs" / run["name"], val_x, val_y, text.names))
        out["runs"].append(run)
        print(f"kjv classifier {budget:g} s: {run['accuracy']:.4f}, {run['steps']} steps", file=sys.stderr)
    return out


def part_pooling(a, work: Path, split) -> list:
    tsv, text, _, _, val_x, val_y = split
    rows = []
    for pooling in ("attention", "mean", "max", "final"):
        run = train(tsv, work, f"pool-{pooling}", a.budgets[0], "--pooling", pooling, *a.flags)
        run.update(predict(work / "runs" / run["name"], val_x, val_y, text.names), pooling=pooling)
        rows.append(run)
        print(f"pooling {pooling}: {run['accuracy']:.4f}", file=sys.stderr)
    return rows


def part_init(a, work: Path, split) -> dict:
    """5% of the training verses: a classifier from scratch against one --init-from a language model trained on
    those verses' text for the same budget (its --embed and, by --hidden/--layers 1, its first layer)."""
    tsv, text, _, _, val_x, val_y = split
    small = work / "small.tsv"
    keep = random.Random(5).sample(text.train, len(text.train) // 20)
    small.write_text("".join(f"{text.names[d.label - 1]}\t{d.text}" for d in keep), encoding="utf-8")
    val = work / "small-val.tsv"
    val.write_text("".join(f"{text.names[d.label - 1]}\t{d.text}" for d in text.val), encoding="utf-8")
    plain = work / "small.txt"
    plain.write_text("".join(d.text for d in keep), encoding="utf-8")
    budget = a.budgets[0]
    shape = ("--layers", "1", "--hidden", "64")
    charnn("train", str(plain), "--max-time", str(budget), "--out", str(work / "runs"), "--name", "small-lm",
           "--device", "cpu", "-q", *shape)
    out = {"train_verses": len(keep)}
    for name, extra in (("scratch", ()), ("init_from_lm", ("--init-from", str(work / "runs" / "small-lm")))):
        run = train(small, work, f"small-{name}", budget, "--val-file", str(val), *shape, *extra)
        run.update(predict(work / "runs" / run["name"], val_x, val_y, text.names))
        out[name] = run
        print(f"small set, {name}: {run['accuracy']:.4f}", file=sys.stderr)
    return out


def code_files(per_label: int, seed: int) -> dict:
    """{label: files} from this machine, at most `per_label` each, non-empty UTF-8 text under 200 kB."""
    def shebang(p: Path) -> bool:
        try:
            return p.read_bytes()[:40].split(b"\n")[0].startswith(b"#!") and b"sh" in p.read_bytes()[:40].split(b"\n")[0]
        except OSError:
            return False

    found = {"python": sorted(Path("/usr/lib").glob("python3.*/**/*.py")),
             "c_header": sorted(Path("/usr/include").glob("**/*.h")),
             "shell": sorted(p for p in Path("/usr/bin").iterdir() if p.is_file() and shebang(p)),
             "perl": sorted(list(Path("/usr/share/perl5").glob("**/*.pm")) + list(Path("/usr/share/perl").glob("**/*.pm"))),
             "config": sorted(list(Path("/etc").glob("**/*.conf")) + list(Path("/etc").glob("**/*.cfg")))}
    out = {}
    for label, files in found.items():
        good = []
        for f in files:
            try:
                t = f.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if 50 <= len(t) <= 200_000 and not f.is_symlink():
                good.append((str(f), t))
        random.Random(seed).shuffle(good)
        out[label] = good[:per_label]
    return out


def part_code(a, work: Path) -> dict:
    files = code_files(a.code_files, a.seed)
    train_dir = work / "code-train"
    train_x, train_y, test_x, test_y = [], [], [], []
    for label, items in files.items():
        cut = int(len(items) * 0.8)  # split by file: a file is all training or all test
        (train_dir / label).mkdir(parents=True, exist_ok=True)
        for i, (path, t) in enumerate(items[:cut]):
            (train_dir / label / f"{i:04d}.txt").write_text(t, encoding="utf-8")
            train_x.append(t)
            train_y.append(label)
        test_x += [t for _, t in items[cut:]]
        test_y += [label] * (len(items) - cut)
    names = sorted(files)
    base = baseline(train_x, train_y, test_x)
    out = {"files": {k: len(v) for k, v in files.items()}, "test_files": len(test_x),
           "train_chars": sum(len(t) for t in train_x),
           "baseline": {**scores(test_y, base["pred"], names), "train": base["train"], "predict": base["predict"]}}
    run = train(train_dir, work, "code", a.code_budget, *a.flags)
    run.update(predict(work / "runs" / "code", test_x, test_y, names))
    out["classifier"] = run
    print(f"code: classifier {run['accuracy']:.4f}, baseline {out['baseline']['accuracy']:.4f}", file=sys.stderr)
    return out


def part_throughput(run: Path, verses, counts, work: Path) -> dict:
    """`charnn classify` as a process (stdin to stdout) on files of each of `counts` 100-character lines, its
    startup alone (empty input), and in-process on the largest: the startup is paid once per process."""
    flat = " ".join(verses)
    flat = flat * (1 + 100 * max(counts) // max(1, len(flat)))  # long enough for the largest file
    with open(os.devnull) as empty:
        startup = charnn("classify", str(run / "last.pt"), stdin=empty)
    out = {"threads": torch.get_num_threads(), "cli_startup_s": startup["wall_s"], "cli": []}
    for n_lines in counts:
        lines = [flat[i:i + 100] for i in range(0, 100 * n_lines, 100)]
        path = work / f"lines-{n_lines}.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with open(path) as f:
            cli = charnn("classify", str(run / "last.pt"), stdin=f)
        assert len(cli["stdout"].splitlines()) == n_lines
        out["cli"].append({"lines": n_lines, "wall_s": cli["wall_s"], "cpu_s": cli["cpu_s"],
                           "lines_per_s": n_lines / cli["wall_s"]})
        print(f"classify {n_lines:,} lines: {n_lines / cli['wall_s']:.0f} lines/s end to end", file=sys.stderr)
    data = load_checkpoint(run / "last.pt")
    model, tok = build_from_checkpoint(data, torch.device("cpu"))
    clf = classifier_for(model, tok, data["labels"], torch.device("cpu"))
    clf.classify(lines[:256])  # warm-up
    t0 = time.perf_counter()
    answers = [s.best for s in clf.classify(lines)]
    wall = time.perf_counter() - t0
    out["in_process"] = {"lines": len(lines), "wall_s": wall, "lines_per_s": len(lines) / wall}
    out["agree"] = float(np.mean([x == y for x, y in zip(answers, cli["stdout"].splitlines())]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kjv", default=str(CORPORA / "kjv"))
    ap.add_argument("--budgets", type=float, nargs="+", default=[60.0, 120.0, 240.0])
    ap.add_argument("--flags", nargs="*", default=[], help="more `charnn train` flags for every classifier run")
    ap.add_argument("--parts", nargs="*", default=list(PARTS[:4]), choices=PARTS)
    ap.add_argument("--code-files", type=int, default=150, help="files per label in the source-language task")
    ap.add_argument("--code-budget", type=float, default=120.0)
    ap.add_argument("--lines", type=int, nargs="+", default=[2000, 20000, 100000],
                    help="100-character lines for the throughput test: one file of each count")
    ap.add_argument("--seed", type=int, default=1337, help="shuffles the TSV as benchmarks/labels.py does")
    ap.add_argument("--work", help="work folder (kept; default: a temporary one, removed)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "classifier.json"))
    a = ap.parse_args()
    a.flags = [f for x in a.flags for f in x.split()]
    hw = {"cpu": cpu_name(), "cpu_features": cpu_features(), "cores": os.cpu_count(), "torch": torch.__version__,
          "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_avg_at_start": os.getloadavg()}
    print(f"# {hw['cpu']} ({hw['cpu_features']}), {hw['cores']} cores, load {hw['load_avg_at_start']}", file=sys.stderr)
    tmp = None if a.work else tempfile.TemporaryDirectory()
    work = Path(a.work or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    t0, loads = time.perf_counter(), []
    sample_load(loads)
    split = kjv_split(Path(a.kjv), work, a.seed)
    r = {"hardware": hw, "budgets_s": a.budgets, "flags": a.flags, "bayes_recorded": BAYES,
         "train_verses": len(split[2]), "val_verses": len(split[4])}
    if "kjv" in a.parts:
        r["kjv"] = part_kjv(a, work, split)
    if "pooling" in a.parts:
        r["pooling"] = part_pooling(a, work, split)
    if "init" in a.parts:
        r["init"] = part_init(a, work, split)
    if "code" in a.parts:
        r["code"] = part_code(a, work)
    if "throughput" in a.parts:
        runs = sorted((work / "runs").glob("kjv-*"), key=lambda p: float(p.name[4:]))
        if not runs:
            train(split[0], work, "kjv-tp", a.budgets[0], *a.flags)
            runs = [work / "runs" / "kjv-tp"]
        r["throughput"] = part_throughput(runs[-1], split[2] + split[4], a.lines, work)
    hw["load_avg_at_end"] = os.getloadavg()
    hw["load_1min_during_run"] = {"mean": float(np.mean([v for _, v in loads])), "max": max(v for _, v in loads)}
    r["wall_s"] = time.perf_counter() - t0
    report(r)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    if tmp:
        shutil.rmtree(work, ignore_errors=True)


def report(r: dict) -> None:
    hw = r["hardware"]
    load = lambda v: "/".join(f"{x:.2f}" for x in v)  # noqa: E731
    print(f"\n{hw['cpu']} ({hw['cpu_features']}), {hw['cores']} cores, torch {hw['torch']}, {hw['date']}; load avg "
          f"{load(hw['load_avg_at_start'])} at start, {load(hw['load_avg_at_end'])} at end, 1-min load during the "
          f"run mean {hw['load_1min_during_run']['mean']:.2f}, max {hw['load_1min_during_run']['max']:.2f}; "
          f"{r['train_verses']:,} training / {r['val_verses']:,} held-out verses; whole run {r['wall_s'] / 60:.1f} min\n")
    row = lambda name, s, t, p: (f"| {name} | {s['accuracy']:.4f} | {s['macro_f1']:.4f} | {t} | {p} |")  # noqa: E731
    print("| KJV ten books | accuracy | macro-F1 | train CPU s (wall) | predict CPU s (wall) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    if "kjv" in r:
        for run in r["kjv"]["runs"]:
            print(row(f"classifier, --max-time {run['budget_s']:g}, {run['steps']:,} steps", run,
                      f"{run['cpu_s']:.0f} ({run['wall_s']:.0f})",
                      f"{run['predict']['cpu_s']:.1f} ({run['predict']['wall_s']:.1f})"))
        b = r["kjv"]["baseline"]
        print(row(f"TF-IDF char_wb 1-5 + LogReg ({b['features']:,} features), refit here", b,
                  f"{b['train']['cpu_s']:.1f} ({b['train']['wall_s']:.1f})",
                  f"{b['predict']['cpu_s']:.2f} ({b['predict']['wall_s']:.2f})"))
    bay = r["bayes_recorded"]
    print(f"| Bayes recipe, recorded: {bay['recipe']} | {bay['accuracy']:.4f} | {bay['macro_f1']:.4f} | "
          f"{bay['train_cpu_s']:,} | - |")
    if "pooling" in r:
        print("\n| pooling (first budget) | steps | accuracy | macro-F1 |\n| --- | ---: | ---: | ---: |")
        for p in r["pooling"]:
            print(f"| {p['pooling']} | {p['steps']:,} | {p['accuracy']:.4f} | {p['macro_f1']:.4f} |")
    if "init" in r:
        i = r["init"]
        print(f"\n| {i['train_verses']:,} training verses (5%) | steps | accuracy | macro-F1 |\n| --- | ---: | ---: | ---: |")
        for name in ("scratch", "init_from_lm"):
            print(f"| {name} | {i[name]['steps']:,} | {i[name]['accuracy']:.4f} | {i[name]['macro_f1']:.4f} |")
    if "code" in r:
        c = r["code"]
        files = ", ".join(f"{k} {v}" for k, v in c["files"].items())
        print(f"\n| source-file language ({files} files; {c['test_files']} held out, whole files) | accuracy | "
              "macro-F1 | train CPU s (wall) |\n| --- | ---: | ---: | ---: |")
        k = c["classifier"]
        print(f"| classifier, --max-time {k['budget_s']:g}, {k['steps']:,} steps | {k['accuracy']:.4f} | "
              f"{k['macro_f1']:.4f} | {k['cpu_s']:.0f} ({k['wall_s']:.0f}) |")
        b = c["baseline"]
        print(f"| TF-IDF char_wb 1-5 + LogReg | {b['accuracy']:.4f} | {b['macro_f1']:.4f} | "
              f"{b['train']['cpu_s']:.1f} ({b['train']['wall_s']:.1f}) |")
    if "throughput" in r:
        t = r["throughput"]
        print(f"\n| classify, 100-char lines, {t['threads']} threads | wall s | CPU s | lines/s |\n| --- | ---: | ---: | ---: |")
        print(f"| `charnn classify` startup alone (empty input) | {t['cli_startup_s']:.1f} | - | - |")
        for c in t["cli"]:
            print(f"| `charnn classify` process, {c['lines']:,} lines, end to end | {c['wall_s']:.1f} | "
                  f"{c['cpu_s']:.1f} | {c['lines_per_s']:,.0f} |")
        i = t["in_process"]
        print(f"| in-process, classifier_for(...).classify, {i['lines']:,} lines | {i['wall_s']:.1f} | - | "
              f"{i['lines_per_s']:,.0f} |")
        print(f"\nCLI and in-process answers agree on {t['agree']:.1%}")


if __name__ == "__main__":
    main()
