"""`charnn sample` (or `charnn eval`, `eval --dynamic`) on a busy CPU: chars/s with the measured threads
(charnn.threadwatch) against fixed `--threads`, while a busy-loop process holds the last core (the whole time, or
only the first --hog-seconds), and on a quiet machine.

Each row runs the whole command in a subprocess (`charnn sample CHECKPOINT --length N --seed 1 ...`, or `charnn
eval CHECKPOINT FILE [--dynamic] ...`) and reads the speed sample reports on stderr, or eval's characters over the
command's wall time (start-up included); the settings take turns within each condition. Prints a table and writes
JSON.

    python benchmarks/busy_sample.py --checkpoint checkpoints/stdlib --length 20000
    python benchmarks/busy_sample.py --checkpoint checkpoints/stdlib --length 200000 --hog-seconds 3
    python benchmarks/busy_sample.py --checkpoint checkpoints/tinyshakespeare --eval tinyshakespeare.txt
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_features, cpu_name  # noqa: E402

SETTINGS = {"measured (default)": [], "--threads 2": ["--threads", "2"], "--threads 1": ["--threads", "1"]}


def sample_rate(checkpoint: str, length: int, extra: list) -> float:
    r = subprocess.run([sys.executable, "-m", "charnn", "sample", checkpoint, "--length", str(length), "--seed", "1",
                        *extra], capture_output=True, text=True, check=True)
    return float(re.search(r"\(([\d,]+) chars/s", r.stderr)[1].replace(",", ""))


def eval_rate(checkpoint: str, path: str, extra: list) -> float:
    """`charnn eval` (extra: its flags, --dynamic among them): characters scored over the command's seconds."""
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "charnn", "eval", checkpoint, path, "--json", *extra],
                       capture_output=True, text=True, check=True)
    seconds, out = time.perf_counter() - start, json.loads(r.stdout)
    return (out["static"] if "static" in out else out)["chars"] / seconds


def condition(name: str, rate, hog_seconds: float, repeats: int) -> list:
    rows = []
    for _ in range(repeats):
        for setting, extra in SETTINGS.items():
            hog = None
            if name != "quiet":
                hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
                    os.sched_setaffinity(hog.pid, {os.cpu_count() - 1})
                time.sleep(0.3)
            timer = threading.Timer(hog_seconds, hog.kill) if hog and hog_seconds else None
            if timer:
                timer.start()
            try:
                rows.append({"condition": name, "setting": setting, "chars_per_s": rate(extra)})
            finally:
                if timer:
                    timer.cancel()
                if hog:
                    hog.kill()
                    hog.wait()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--length", type=int, default=20000)
    ap.add_argument("--eval", metavar="FILE", help="time `charnn eval CHECKPOINT FILE` instead of sampling")
    ap.add_argument("--dynamic", action="store_true", help="with --eval: `eval --dynamic`")
    ap.add_argument("--hog-seconds", type=float, default=0.0, help="the busy loop stops after this long (0: never)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None, help="default: benchmarks/results/busy_sample.json (busy_eval.json)")
    a = ap.parse_args()
    a.out = a.out or f"benchmarks/results/busy_{'eval' if a.eval else 'sample'}.json"
    busy = f"busy for the first {a.hog_seconds:g} s" if a.hog_seconds else "busy"
    if a.eval:
        flags = ["--dynamic"] if a.dynamic else []
        rate, what = (lambda extra: eval_rate(a.checkpoint, a.eval, flags + extra)), f"charnn eval {' '.join(flags)}"
    else:
        rate, what = (lambda extra: sample_rate(a.checkpoint, a.length, extra)), f"charnn sample --length {a.length}"
    rows = condition("quiet", rate, 0, a.repeats) + condition(busy, rate, a.hog_seconds, a.repeats)
    print(f"{cpu_name()} ({cpu_features()}), {os.cpu_count()} cores; `{what.strip()}`\n")
    print("| condition | setting | chars/s (each run) |\n|---|---|---|")
    for cond in dict.fromkeys(r["condition"] for r in rows):
        for setting in SETTINGS:
            got = [f"{r['chars_per_s']:,.0f}" for r in rows if r["condition"] == cond and r["setting"] == setting]
            print(f"| {cond} | {setting} | {' / '.join(got)} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"cpu": cpu_name(), "features": cpu_features(), "command": what.strip(),
                                       "length": a.length, "eval": a.eval, "hog_seconds": a.hog_seconds,
                                       "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
