"""Training on a busy CPU: `charnn train --max-time T` with a busy-loop process pinned to one core.

For each code tree (`--code NAME=DIR`, e.g. the old commit in a `git worktree`) and each thread setting, it
runs the whole command line in a subprocess (imports, data and final evaluation included) while a
`while True: pass` process holds the last core, alternating the trees run by run (A/B, `--repeats` times),
and reports the steps made, the last validation loss and the wall time of the command. Prints a table and
writes JSON.

    git worktree add /tmp/old <commit>
    python benchmarks/busy_cpu.py --code old=/tmp/old --code new=. --max-time 30s --repeats 2
    python benchmarks/busy_cpu.py --code new=. --max-time 30s --threads 1     # the fixed-thread reference
    python benchmarks/busy_cpu.py --code old=/tmp/old --code new=. --max-time 150s --hog-seconds 20  # a load that leaves

With --hog-seconds S the busy loop stops S seconds after the command starts: what counts then is how soon
training takes the freed core back (the table adds the chars/s of the run's last third).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_features, cpu_name  # noqa: E402


def run(code: str, out: str, name: str, max_time: str, extra: list, hog_seconds: float = 0) -> dict:
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    timer = threading.Timer(hog_seconds, hog.kill) if hog_seconds else None
    if timer:
        timer.start()
    try:
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(hog.pid, {max(os.sched_getaffinity(0))})
        env = {**os.environ, "PYTHONPATH": str(Path(code).resolve())}
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "charnn", "train", "--out", out, "--name", name,
                               "--max-time", max_time, "--quiet", *extra], env=env, capture_output=True, text=True,
                              cwd=out)  # not the checkout: `-m` would import the charnn in the current folder
        wall = time.perf_counter() - t0
    finally:
        if timer:
            timer.cancel()
        hog.kill()
        hog.wait()
    if done.returncode:
        raise SystemExit(done.stderr)
    rows = [json.loads(line) for line in (Path(out) / name / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
    config = json.loads((Path(out) / name / "config.json").read_text())
    rates = [r["chars_per_sec"] for r in rows if r.get("chars_per_sec")]
    return {"steps": rows[-1]["step"], "val": vals[-1], "wall": round(wall, 1),
            "threads": (config.get("threads") or {}).get("reason", "torch's default"),
            "last_third_chars_per_s": round(sum(rates[-len(rates) // 3:]) / max(1, len(rates[-len(rates) // 3:])))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", action="append", required=True, help="NAME=DIR: a charnn tree to run")
    ap.add_argument("--max-time", default="30s")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="pass --threads N (default: the tree's default)")
    ap.add_argument("--hog-seconds", type=float, default=0, help="stop the busy loop this long after each command "
                    "starts (0: it runs to the end)")
    ap.add_argument("--json", default="busy_cpu.json")
    ap.add_argument("train_args", nargs="*", help="more `charnn train` arguments (a corpus, flags)")
    args = ap.parse_args()
    extra = list(args.train_args) + (["--threads", str(args.threads)] if args.threads else [])
    results = []
    with tempfile.TemporaryDirectory() as out:
        for rep in range(args.repeats):
            for spec in args.code:
                label, code = spec.split("=", 1)
                r = run(code, out, f"{label}-{rep}", args.max_time, extra, args.hog_seconds)
                results.append({"code": label, "repeat": rep, **r})
                print(f"{label:6} #{rep}: {r['steps']:5} steps  val {r['val']:.3f}  wall {r['wall']:6.1f} s  "
                      f"last third {r['last_third_chars_per_s']:,} chars/s  ({r['threads']})", flush=True)
    held = f"the first {args.hog_seconds:g} s" if args.hog_seconds else "the whole run"
    print(f"\n{cpu_name()} ({cpu_features()}), {os.cpu_count()} cores, one held by a busy loop for {held}; "
          f"--max-time {args.max_time}{' --threads ' + str(args.threads) if args.threads else ''}")
    print("| code | run | steps | val nats/char | wall s | chars/s, last third |\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['code']} | {r['repeat']} | {r['steps']} | {r['val']:.3f} | {r['wall']} | "
              f"{r['last_third_chars_per_s']:,} |")
    Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "max_time": args.max_time,
                                           "hog_seconds": args.hog_seconds, "results": results}, indent=1))


if __name__ == "__main__":
    main()
