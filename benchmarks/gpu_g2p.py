"""benchmarks/gpu_check.py's phase for sequence to sequence on a real dictionary (issue 36), run with
`gpu_check.py --g2p DIR` (about 4 more minutes):

  g2p_180  `charnn train sigmorphon21-eng-train --pairs --val-file sigmorphon21-eng-dev --max-time 180` with every
           default, then `charnn eval best.pt sigmorphon21-eng-dev sigmorphon21-eng-test --beam 5`: WER and PER beside
           the task's published baseline (test WER 41.94), training chars/s

DIR holds the task's files (eng_us_train.tsv, eng_us_dev.tsv, eng_us_test.tsv; a GPU machine reaches no network):
they are put into the run's corpus cache, where charnn reads them as the catalog's downloads.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BASELINE_TEST_WER = 41.94  # SIGMORPHON 2021 task 1, eng_us, the organisers' baseline (benchmarks/g2p.py)
SPLITS = ("train", "dev", "test")


def seed_cache(cache: Path, folder: Path) -> None:
    for split in SPLITS:
        source = folder / f"eng_us_{split}.tsv"
        if not source.is_file():
            raise RuntimeError(f"{source} is missing (--g2p DIR must hold eng_us_train/dev/test.tsv)")
        target = cache / "corpora" / f"sigmorphon21-eng-{split}" / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def phase_g2p(r, folder: str, extra: list) -> dict:
    seed_cache(r.tmp / "cache", Path(folder))
    out = r.tmp / "runs"
    seconds = r.s["long_time"]
    flags = (["--device", "cpu", "--max-steps", "60", "--eval-every", "30"] if r.device == "cpu" else [])
    t = time.perf_counter()
    r.run([sys.executable, "-m", "charnn", "train", "sigmorphon21-eng-train", "--pairs", "--val-file",
           "sigmorphon21-eng-dev", "--max-time", str(seconds), "--out", str(out), "--name", "g2p", "--quiet",
           *flags, *extra], r.limit(seconds + r.s["long_slack"]))
    wall = time.perf_counter() - t
    done = subprocess.run([sys.executable, "-m", "charnn", "eval", str(out / "g2p" / "best.pt"), "sigmorphon21-eng-dev",
                           "sigmorphon21-eng-test", "--beam", "5", "--json"], cwd=r.tmp, env=r.env,
                          capture_output=True, text=True, timeout=r.limit(120))
    if done.returncode:
        raise RuntimeError(f"eval failed: {done.stderr.strip()[-300:]}")
    dev, test = json.loads(done.stdout)["files"]
    records = [json.loads(line) for line in (out / "g2p" / "metrics.jsonl").read_text().splitlines()]
    rates = [rec["chars_per_sec"] for rec in records if rec.get("chars_per_sec")]
    config = json.loads((out / "g2p" / "config.json").read_text())
    return {"max_time": seconds, "wall_s": round(wall, 1), "flags": extra,
            "dev_wer": 100 * (1 - dev["exact_match"]), "test_wer": 100 * (1 - test["exact_match"]),
            "test_per": 100 * test["ser"], "chars_per_s": statistics.median(rates) if rates else None,
            "precision": config["precision"]["precision"], "model": config["model"]}


def g2p_goals(phases: dict) -> list:
    if "g2p_180" not in phases:
        return []
    v = phases["g2p_180"].get("test_wer")
    return [{"goal": "G2P eng_us, 180 s: test WER %", "value": v, "target": f"<= {BASELINE_TEST_WER + 2:.2f}",
             "met": None if v is None else v <= BASELINE_TEST_WER + 2}]


def g2p_rows(phases: dict) -> list:
    g = phases.get("g2p_180", {})
    if g.get("test_wer") is None:
        return []
    return [(f"g2p_180 training chars/s ({g['precision']})", f"{g['chars_per_s'] or 0:,.0f}"),
            ("g2p_180 dev WER % / test PER %", f"{g['dev_wer']:.1f}/{g['test_per']:.1f}")]
