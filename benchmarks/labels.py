"""Labels (issue 18): `charnn classify` against a TF-IDF baseline, one labelled model against separate
models, and classify throughput, on the King James Bible, in one run.

The task: which of 10 books a held-out verse comes from. Every verse of the books in BOOKS becomes a line
`book<TAB>text` of a TSV in a work folder (its `chapter:verse` prefix stripped, so the number cannot give the
answer; lines shuffled with --seed, so a verse's neighbours in the training stream are not its own book's);
`load_labelled(tsv, "line", val_frac=0.1, seed=1337)` makes exactly the split `charnn train` makes.

1. Classification: `charnn train TSV --label-by line --max-time BUDGET` (the default model), then the
   held-out verses through `Classifier` (the library under `charnn classify`), training-frequency and
   uniform priors, against scikit-learn char_wb 1-5-gram TF-IDF + LogisticRegression on the same verses.
   Accuracy, macro-F1 and the CPU seconds of training and predicting for both.
2. Conditioning: one separate model per book, trained on that book's training verses only, with the
   labelled model's optimiser steps x the book's share of training characters (the same total steps,
   so the same compute, and every book gets the share of it the labelled model gave it). Val nats/char
   per book on the same held-out verses, each verse scored alone from a fresh state (as classify does).
3. Throughput: 2,000 lines of 100 characters through `charnn classify` (a process, end to end, startup
   included) and through `Classifier.classify` in-process.

Prints markdown tables and writes benchmarks/results/labels.json. Corpus text stays in the work folder.

    python benchmarks/labels.py                      # the measured run: 360 s budget, about 25 minutes
    python benchmarks/labels.py --budget 20 --lines 200 --books Ruth Song_of_Solomon   # a quick check
    python benchmarks/labels.py --budget 600 --then-budget 600 --then-flags "--label-contrast 1 --label-negatives 9"
                                 # two phases: --init-from the first model, the second with other flags
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import random
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import CORPORA, cpu_features, cpu_name  # noqa: E402

from charnn.checkpoint import build_from_checkpoint, load_checkpoint  # noqa: E402
from charnn.scoring.classify import Classifier  # noqa: E402
from charnn.data.labels import load_labelled  # noqa: E402
from charnn.text.tokenizer import start_id  # noqa: E402

# a spread of sizes (13k to 238k characters) and of voices: narrative, law, poetry, wisdom, love song,
# prophecy, gospel, epistle, apocalypse. Ruth and Song of Solomon are the small labels.
BOOKS = ["Genesis", "Leviticus", "Ruth", "Psalms", "Proverbs", "Song_of_Solomon", "Isaiah", "Matthew", "Romans",
         "Revelation"]
VERSE = re.compile(r"^\d+:\d+\s+")


def build_task(kjv: Path, books, tsv: Path, seed: int) -> None:
    """label<TAB>verse lines of `books`, the chapter:verse prefix stripped, shuffled with `seed`."""
    lines = []
    for book in books:
        (path,) = kjv.glob(f"[0-9][0-9]-{book}.txt")
        for verse in path.read_text(encoding="utf-8").splitlines():
            text = VERSE.sub("", verse).strip()
            if text:
                lines.append(f"{book}\t{text}")
    random.Random(seed).shuffle(lines)
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")


def sample_load(samples: list, every: float = 15.0) -> None:
    """Append (seconds since start, 1-minute load average) every `every` seconds, from a daemon thread: a
    load well above 2 during the run means other work shared these 2 cores and the timings are high."""
    t0 = time.perf_counter()

    def loop():
        while True:
            samples.append((round(time.perf_counter() - t0), os.getloadavg()[0]))
            time.sleep(every)

    threading.Thread(target=loop, daemon=True).start()


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def charnn(*args, stdin=None) -> dict:
    """Run `charnn ARGS` as a process: its wall and CPU seconds, and stdout."""
    cpu, t0 = child_cpu(), time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "charnn", *args], stdin=stdin, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    if p.returncode != 0:
        raise SystemExit(f"charnn {' '.join(args[:2])} failed: {p.stderr.strip()[-2000:]}")
    return {"wall_s": time.perf_counter() - t0, "cpu_s": child_cpu() - cpu, "stdout": p.stdout}


def load(path: Path):
    data = load_checkpoint(path)
    model, tok = build_from_checkpoint(data, torch.device("cpu"))
    return data, model, tok


@torch.inference_mode()
def verse_nats(model, tok, texts, per=256) -> np.ndarray:
    """Nats of each text (ending in a newline) under an unlabelled model, each from a fresh state with its
    first token conditioned on the start id: what Classifier does per label, for a plain model."""
    ids = [tok.encode(t) for t in texts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros(len(ids))
    for b in range(0, len(order), per):
        block = [ids[i] for i in order[b:b + per]]
        T = max(len(x) for x in block)
        y = np.zeros((len(block), T), dtype=np.int64)
        mask = np.zeros((len(block), T), dtype=bool)
        for i, x in enumerate(block):
            y[i, :len(x)], mask[i, :len(x)] = x, True
        x = np.concatenate([np.full((len(block), 1), start_id(tok)), y[:, :-1]], axis=1)
        logits, _ = model(torch.from_numpy(x), None)
        nll = F.cross_entropy(logits.float().transpose(1, 2), torch.from_numpy(y), reduction="none")
        out[order[b:b + per]] = (nll * torch.from_numpy(mask)).double().sum(1).numpy()
    return out


def baseline(train_x, train_y, val_x) -> dict:
    """char_wb 1-5-gram TF-IDF (sublinear tf) + logistic regression, fixed settings, fit on the training
    verses only; CPU seconds of this process (both cores count)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    clf = make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 5), sublinear_tf=True, min_df=2),
                        LogisticRegression(C=10.0, max_iter=2000))
    cpu, t0 = time.process_time(), time.perf_counter()
    clf.fit(train_x, train_y)
    fit = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - t0}
    cpu, t0 = time.process_time(), time.perf_counter()
    pred = list(clf.predict(val_x))
    predict = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - t0}
    return {"pred": pred, "train": fit, "predict": predict,
            "features": len(clf.named_steps["tfidfvectorizer"].vocabulary_)}


def scores(truth, pred, names) -> dict:
    from sklearn.metrics import f1_score

    right = np.array(truth) == np.array(pred)
    recall = {n: float(right[np.array(truth) == n].mean()) for n in names}
    return {"accuracy": float(right.mean()), "macro_f1": float(f1_score(truth, pred, labels=names, average="macro")),
            "recall": recall}


def classify_val(run: Path, texts, truth, names) -> dict:
    """The labelled model's last.pt on the held-out verses: loglik under every label in one pass, then
    both priors; and each verse's nats under its own label."""
    data, model, tok = load(run / "last.pt")
    clf = Classifier(model, tok, data["labels"], torch.device("cpu"))
    cpu, t0 = time.process_time(), time.perf_counter()
    ll = clf.loglik([tok.encode(t) for t in texts])  # (verses, labels), what clf.classify does
    timing = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - t0}
    out = {"predict": timing, "step": data["step"], "val_nats_stream": data["labels"]["val_nats_per_char"]}
    for prior, uniform in (("training", False), ("uniform", True)):
        joint = ll + Classifier(model, tok, data["labels"], torch.device("cpu"), uniform).prior
        out[prior] = scores(truth, [names[i] for i in joint.argmax(1)], names)
    true = np.array([names.index(n) for n in truth])
    out["own_nats"] = -ll[np.arange(len(texts)), true]
    # the same verses through a plain scorer of for_label(j): the two must agree
    out["scorer_check"] = max(float(np.abs(verse_nats(model.for_label(j + 1), tok, [t for t, n in zip(texts, truth)
                                                                                     if n == name]) -
                                           out["own_nats"][true == j]).max()) for j, name in enumerate(names))
    return out


def separate(work: Path, text, names, steps_total: int) -> dict:
    """One plain model per label on its training verses, steps_total x its share of training characters,
    validated on its held-out verses (--val-file, so all its training verses train it)."""
    chars = text.counts(text.train)
    total = sum(c["chars"] for c in chars.values())
    out = {}
    for j, name in enumerate(names, 1):
        folder = work / "separate" / name
        folder.mkdir(parents=True, exist_ok=True)
        train, val = folder / "train.txt", folder / "val.txt"
        train.write_text("".join(d.text for d in text.train if d.label == j), encoding="utf-8")
        val.write_text("".join(d.text for d in text.val if d.label == j), encoding="utf-8")
        steps = max(1, round(steps_total * chars[name]["chars"] / total))
        r = charnn("train", str(train), "--val-file", str(val), "--max-steps", str(steps), "--eval-every",
                   str(steps), "--out", str(work / "runs"), "--name", f"sep-{name}", "--device", "cpu", "-q")
        data, model, tok = load(work / "runs" / f"sep-{name}" / "last.pt")
        texts = [d.text for d in text.val if d.label == j]
        nats = verse_nats(model, tok, texts)
        out[name] = {"steps": steps, "wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "val_stream": data["val_loss"],
                     "nats": float(nats.sum()), "chars": sum(len(t) for t in texts)}
        print(f"separate {name}: {steps} steps, {r['wall_s']:.0f} s, val {nats.sum() / out[name]['chars']:.4f}",
              file=sys.stderr)
    return out


def throughput(run: Path, verses, n_lines: int, work: Path) -> dict:
    """lines/s of classify for 100-character lines: the CLI end to end (and its startup alone, from an
    empty input), and Classifier.classify in-process."""
    flat = " ".join(verses)
    lines = [flat[i:i + 100] for i in range(0, 100 * n_lines, 100)]
    assert len(lines) == n_lines and all(len(x) == 100 for x in lines)
    path = work / "lines.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ckpt = str(run / "last.pt")
    with open(os.devnull) as empty:
        startup = charnn("classify", ckpt, stdin=empty)
    with open(path) as f:
        cli = charnn("classify", ckpt, stdin=f)
    assert len(cli["stdout"].splitlines()) == n_lines
    data, model, tok = load(run / "last.pt")
    clf = Classifier(model, tok, data["labels"], torch.device("cpu"))
    cpu, t0 = time.process_time(), time.perf_counter()
    answers = [s.best for s in clf.classify(lines)]
    wall = time.perf_counter() - t0
    agree = float(np.mean([a == b for a, b in zip(answers, cli["stdout"].splitlines())]))
    return {"lines": n_lines, "chars_per_line": 100, "threads": torch.get_num_threads(),
            "cli": {"wall_s": cli["wall_s"], "cpu_s": cli["cpu_s"], "lines_per_s": n_lines / cli["wall_s"]},
            "cli_startup": {"wall_s": startup["wall_s"], "cpu_s": startup["cpu_s"]},
            "cli_after_startup_lines_per_s": n_lines / max(1e-9, cli["wall_s"] - startup["wall_s"]),
            "in_process": {"wall_s": wall, "cpu_s": time.process_time() - cpu, "lines_per_s": n_lines / wall},
            "cli_agrees_with_in_process": agree}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kjv", default=str(CORPORA / "kjv"))
    ap.add_argument("--books", nargs="*", default=BOOKS)
    ap.add_argument("--budget", type=float, default=360.0, help="--max-time of the labelled model, seconds")
    ap.add_argument("--label-dropout", type=float, default=0.1)
    ap.add_argument("--train-flags", default="", help="more `charnn train` flags for the labelled model, e.g. "
                                                       "\"--label-contrast 1.0\"")
    ap.add_argument("--then-budget", type=float, default=0.0,
                    help="a second phase: `charnn train --init-from` the labelled model for this many seconds more "
                         "(the label vectors carry over), with --then-flags; classify uses its model")
    ap.add_argument("--then-flags", default="", help="`charnn train` flags of the second phase, e.g. "
                                                     "\"--label-contrast 1 --label-negatives 9\"")
    ap.add_argument("--lines", type=int, default=2000, help="100-character lines for the throughput test")
    ap.add_argument("--seed", type=int, default=1337, help="shuffles the TSV; the split uses charnn's seed 1337")
    ap.add_argument("--work", help="work folder (kept; default: a temporary one, removed)")
    ap.add_argument("--no-separate", action="store_true", help="skip the separate per-label models")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "labels.json"))
    a = ap.parse_args()
    hw = {"cpu": cpu_name(), "cpu_features": cpu_features(), "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
          "date": time.strftime("%Y-%m-%d %H:%M"), "load_avg_at_start": os.getloadavg()}
    print(f"# {hw['cpu']} ({hw['cpu_features']}), {hw['cores']} cores, torch {hw['torch']}, load {hw['load_avg_at_start']}", file=sys.stderr)
    tmp = None if a.work else tempfile.TemporaryDirectory()
    work = Path(a.work or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    t_start, loads, phases = time.perf_counter(), [], {}
    sample_load(loads)

    tsv = work / "kjv10.tsv"
    build_task(Path(a.kjv), a.books, tsv, a.seed)
    text = load_labelled([str(tsv)], "line", val_frac=0.1, seed=1337)
    names = text.names
    strip = (lambda d: d.text.rstrip("\n"))
    train_x, train_y = [strip(d) for d in text.train], [names[d.label - 1] for d in text.train]
    val_x, val_y = [strip(d) for d in text.val], [names[d.label - 1] for d in text.val]
    counts_train, counts_val = text.counts(text.train), text.counts(text.val)
    print(f"{len(train_x):,} training verses, {len(val_x):,} held out", file=sys.stderr)

    phases["baseline"] = round(time.perf_counter() - t_start)
    base = baseline(train_x, train_y, val_x)
    base_scores = scores(val_y, base["pred"], names)
    print(f"baseline accuracy {base_scores['accuracy']:.4f}", file=sys.stderr)

    load_before_train = os.getloadavg()
    phases["labelled_training"] = round(time.perf_counter() - t_start)
    run = work / "runs" / "labelled"
    train = charnn("train", str(tsv), "--label-by", "line", "--label-dropout", str(a.label_dropout),
                   "--max-time", str(a.budget), "--out", str(work / "runs"), "--name", "labelled", "--device", "cpu",
                   "-q", *shlex.split(a.train_flags))
    phase_steps = [load_checkpoint(run / "last.pt")["step"]]
    if a.then_budget:
        then = charnn("train", str(tsv), "--label-by", "line", "--label-dropout", str(a.label_dropout),
                      "--init-from", str(run), "--max-time", str(a.then_budget), "--out", str(work / "runs"),
                      "--name", "labelled2", "--device", "cpu", "-q", *shlex.split(a.then_flags))
        train = {k: train[k] + then[k] for k in ("wall_s", "cpu_s")}
        run = work / "runs" / "labelled2"
        phase_steps.append(load_checkpoint(run / "last.pt")["step"])
    ours = classify_val(run, [d.text for d in text.val], val_y, names)
    ours["step"] = sum(phase_steps)
    print(f"charnn accuracy {ours['training']['accuracy']:.4f} (uniform prior {ours['uniform']['accuracy']:.4f}), "
          f"{ours['step']} steps", file=sys.stderr)

    phases["separate_models"] = round(time.perf_counter() - t_start)
    sep = None if a.no_separate else separate(work, text, names, ours["step"])
    phases["throughput"] = round(time.perf_counter() - t_start)
    speed = throughput(run, [d.text.rstrip("\n") for d in text.train + text.val], a.lines, work)
    hw["load_avg_at_end"] = os.getloadavg()
    hw["load_avg_before_labelled_training"] = load_before_train
    hw["load_1min_during_run"] = {"max": max(v for _, v in loads), "mean": float(np.mean([v for _, v in loads])),
                                  "samples": loads, "phase_starts_s": phases}

    per_label = []
    for j, name in enumerate(names):
        own = ours["own_nats"][np.array(val_y) == name]
        row = {"label": name, "train_verses": counts_train[name]["docs"], "train_chars": counts_train[name]["chars"],
               "val_verses": counts_val[name]["docs"], "val_chars": counts_val[name]["chars"],
               "labelled_val": float(own.sum()) / counts_val[name]["chars"],
               "labelled_val_stream": ours["val_nats_stream"][j],
               "charnn_recall": ours["training"]["recall"][name], "baseline_recall": base_scores["recall"][name]}
        if sep:
            s = sep[name]
            row.update(separate_steps=s["steps"], separate_val=s["nats"] / s["chars"],
                       separate_val_stream=s["val_stream"])
            row["gain"] = row["separate_val"] - row["labelled_val"]
        per_label.append(row)
    wall = time.perf_counter() - t_start
    result = {"hardware": hw, "books": names, "budget_s": a.budget, "label_dropout": a.label_dropout,
              "train_flags": a.train_flags, "then_budget_s": a.then_budget, "then_flags": a.then_flags,
              "phase_steps": phase_steps, "seed": a.seed,
              "train_verses": len(train_x), "val_verses": len(val_x), "wall_s": wall,
              "charnn": {"train": {k: train[k] for k in ("wall_s", "cpu_s")}, "steps": ours["step"],
                         "predict": ours["predict"], "training_prior": ours["training"],
                         "uniform_prior": ours["uniform"],
                         "scorer_check_max_abs_nats": ours["scorer_check"]},
              "baseline": {"model": "TfidfVectorizer(char_wb, 1-5, sublinear_tf, min_df=2) + LogisticRegression(C=10)",
                           "features": base["features"], "train": base["train"], "predict": base["predict"],
                           **base_scores},
              "separate": sep, "per_label": per_label, "throughput": speed}
    report(result)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    if tmp:
        tmp.cleanup()


def report(r: dict) -> None:
    hw, c, b = r["hardware"], r["charnn"], r["baseline"]
    load = lambda v: "/".join(f"{x:.2f}" for x in v)  # noqa: E731
    print(f"\n{hw['cpu']}, {hw['cores']} cores, torch {hw['torch']}, {hw['date']}; load avg (1/5/15 min) "
          f"{load(hw['load_avg_at_start'])} at start, {load(hw['load_avg_at_end'])} at end, 1-min load during the "
          f"run mean {hw['load_1min_during_run']['mean']:.2f}, max {hw['load_1min_during_run']['max']:.2f}; "
          f"{r['train_verses']:,} training / {r['val_verses']:,} held-out verses, {len(r['books'])} books\n")
    print("| classifier | accuracy | macro-F1 | train CPU s (wall) | predict CPU s (wall) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    t, p = c["train"], c["predict"]
    runs = f"{r['budget_s']:.0f} s, {r['phase_steps'][0]:,} steps"
    if r.get("then_budget_s"):
        runs += f"; then {r['then_budget_s']:.0f} s `{r['then_flags']}`, {r['phase_steps'][1]:,} steps"
    for name, s in (("training prior", c["training_prior"]), ("uniform prior", c["uniform_prior"])):
        print(f"| charnn ({runs}), {name} | {s['accuracy']:.4f} | "
              f"{s['macro_f1']:.4f} | {t['cpu_s']:.0f} ({t['wall_s']:.0f}) | {p['cpu_s']:.1f} ({p['wall_s']:.1f}) |")
    print(f"| TF-IDF char_wb 1-5 + LogReg | {b['accuracy']:.4f} | {b['macro_f1']:.4f} | {b['train']['cpu_s']:.1f} "
          f"({b['train']['wall_s']:.1f}) | {b['predict']['cpu_s']:.2f} ({b['predict']['wall_s']:.2f}) |")
    sep = r["separate"] is not None
    print("\n| book | train verses | train chars | val verses | charnn recall | baseline recall |"
          + (" steps alone | separate val | labelled val | separate - labelled |" if sep else " labelled val |"))
    print("| --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: | ---: | ---: |" if sep else " ---: |"))
    for row in sorted(r["per_label"], key=lambda x: -x["train_chars"]):
        line = (f"| {row['label']} | {row['train_verses']:,} | {row['train_chars']:,} | {row['val_verses']:,} | "
                f"{row['charnn_recall']:.3f} | {row['baseline_recall']:.3f} |")
        if sep:
            line += (f" {row['separate_steps']:,} | {row['separate_val']:.4f} | {row['labelled_val']:.4f} | "
                     f"{row['gain']:+.4f} |")
        else:
            line += f" {row['labelled_val']:.4f} |"
        print(line)
    s = r["throughput"]
    print(f"\n| classify, {s['lines']:,} lines x 100 chars, {len(r['books'])} labels, {s['threads']} threads "
          "| wall s | CPU s | lines/s |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| `charnn classify` process, end to end | {s['cli']['wall_s']:.1f} | {s['cli']['cpu_s']:.1f} | "
          f"{s['cli']['lines_per_s']:.1f} |")
    startup = s["cli_startup"]
    print(f"| its startup alone (empty input) | {startup['wall_s']:.1f} | {startup['cpu_s']:.1f} | - |")
    print(f"| in-process `Classifier.classify` | {s['in_process']['wall_s']:.1f} | {s['in_process']['cpu_s']:.1f} | "
          f"{s['in_process']['lines_per_s']:.1f} |")
    print(f"\nscorer check (classify's loglik vs a plain scorer of for_label): max |diff| "
          f"{c['scorer_check_max_abs_nats']:.2e} nats; CLI and in-process answers agree on "
          f"{s['cli_agrees_with_in_process']:.1%}; whole run {r['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
