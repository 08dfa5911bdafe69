"""What `charnn show` costs: 10,000 characters of text through the default model (2 x 256 LSTM), end to end in a
process of its own (interpreter, imports and checkpoint loading included), for plain `show` (surprisal),
`--cells`, `--gradients` and `--html` with both; and in process, each library step alone.

The targets (issue 35): `show` under 2 s, `--cells` under 10 s, on 2 cores. The machine is often shared, so
the load average before and after is printed with the table. Prints a table and writes JSON.

    python benchmarks/show_speed.py                                   # a fresh default model (1 training step)
    python benchmarks/show_speed.py --run checkpoints/stdlib          # a trained run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import cpu_features, cpu_name

import charnn
from charnn.inspect.activations import activations
from charnn.inspect.gradients import gradient_reach
from charnn.inspect.properties import rank_units, text_properties
from charnn.inspect.surprisal import surprisal

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent


def stdlib_text(chars: int) -> str:
    """The first `chars` characters of Python's own `textwrap.py`, `string.py`, ... (the built-in corpus's kind
    of text)."""
    import inspect as _inspect
    import string
    import textwrap
    out = ""
    for mod in (textwrap, string, json, argparse):
        out += Path(_inspect.getfile(mod)).read_text(encoding="utf-8")
        if len(out) >= chars:
            break
    return out[:chars]


def command(args, repeats: int) -> dict:
    """Median wall seconds and CPU seconds (user + system) of `charnn ARGS` in a process of its own, stdout
    discarded. CPU time says what the command itself needs when other work shares the cores."""
    import resource

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    walls, cpus = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "charnn", *map(str, args)], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if r.returncode:
            raise SystemExit(r.stderr)
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus)}


def in_process(run: str, text: str, repeats: int) -> dict:
    m = charnn.load(run, device="cpu")

    def timed(fn):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def cells():
        acts = activations(m.net, m.tokenizer, text, m.device)
        rank_units(acts.values, text_properties(acts.text))
    return {"surprisal": timed(lambda: surprisal(m.net, m.tokenizer, text, m.device)),
            "activations + ranking": timed(cells),
            "gradient reach (K 100, 64 positions)": timed(lambda: gradient_reach(m.net, m.tokenizer, text, m.device))}


def fresh_run(folder: Path, text: str) -> str:
    (folder / "corpus.txt").write_text(text * 3, encoding="utf-8")
    result = charnn.train(str(folder / "corpus.txt"), max_steps=1, out=str(folder), name="default",
                          device="cpu", eval_every=1)
    return str(result.run_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a trained run (default: a fresh default model, one training step)")
    ap.add_argument("--chars", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (charnn show's --threads; default 1)")
    ap.add_argument("--json", default=str(HERE / "results" / "show_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    text = stdlib_text(args.chars)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or fresh_run(Path(tmp), text)
        path = Path(tmp) / "text.txt"
        path.write_text(text, encoding="utf-8")
        rows = {}
        for label, extra in (("show (surprisal)", []), ("show --cells", ["--cells"]),
                             ("show --gradients", ["--gradients"]),
                             ("show --cells --gradients --html", ["--cells", "--gradients", "--html",
                                                                  Path(tmp) / "p.html"])):
            rows[label] = command(["show", run, path, "--format", "tsv", "--threads", args.threads, *extra],
                                  args.repeats)
        parts = in_process(run, text, args.repeats)
        model = charnn.load(run, device="cpu").info.get("model", {})
    load_after = os.getloadavg()
    print(f"charnn show on {len(text):,} characters; {cpu_name()} ({cpu_features()}), {os.cpu_count()} cores, "
          f"torch threads {torch.get_num_threads()}")
    print(f"model: {run} ({model.get('cell')}, {model.get('layers')} x {model.get('hidden')}); load average "
          f"before {load_before[0]:.2f}, after {load_after[0]:.2f}; median of {args.repeats}")
    print(f"{'end to end (own process)':<42} {'wall s':>8} {'CPU s':>8}")
    for label, secs in rows.items():
        print(f"{label:<42} {secs['wall']:>8.2f} {secs['cpu']:>8.2f}")
    print(f"{'in process, the library step alone':<42} {'seconds':>8}")
    for label, secs in parts.items():
        print(f"{label:<42} {secs:>8.3f}")
    out = {"chars": len(text), "cpu": cpu_name(), "cpu_features": cpu_features(), "cores": os.cpu_count(),
           "threads": torch.get_num_threads(), "run": run, "load_before": load_before, "load_after": load_after,
           "repeats": args.repeats, "end_to_end_seconds": rows, "in_process_seconds": parts}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
