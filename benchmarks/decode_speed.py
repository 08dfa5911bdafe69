"""`transduce` decoding speed of a trained pairs model (issue 36): lines/s at each batch size, greedy and beam 5,
in-process through `charnn.generation.seq2seq.Transducer` (the library under `charnn transduce`), and the ratio
of each batched row to batch 1 (the issue's goal: batched beam 5 >= 10x batch 1 for the default model).

    python benchmarks/decode_speed.py RUN --inputs sigmorphon21-eng-test     # a G2P model, its test words
    python benchmarks/decode_speed.py RUN --inputs words.txt --lines 500 --batches 1 32 64 128

The inputs are the first column of a TSV (or the lines of a text file, or a catalog entry), the first --lines of
them; every (precision, beam, batch) row decodes the same inputs, one (beam, batch) setting at a time, decoded
once to warm up and then in rounds (--rounds) alternating its precisions, so that a change in the machine's
load shows as spread rather than as a ratio.
Each row is compared with the first batch size in fp32 (the first of --precisions): its speed ratio and how many
outputs agree. `--precisions fp32 auto` (the default) also shows what `transduce` does by default: auto's
decision for each beam is measured (or taken from the cache) before the timed rounds, and named in the table.
Prints a markdown table and writes benchmarks/results/decode_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import cpu_features, cpu_name  # noqa: E402

from charnn.checkpoint import build_seq2seq, load_checkpoint  # noqa: E402
from charnn.data.catalog import resolve  # noqa: E402
from charnn.generation.seq2seq import Transducer  # noqa: E402
from charnn.sampling import TransduceConfig  # noqa: E402


def read_inputs(name: str, n: int) -> list:
    path = Path(name) if Path(name).exists() else Path(resolve(name))
    lines = [ln.split("\t")[0] for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return lines[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a pairs run folder or checkpoint (best.pt is read from a folder)")
    ap.add_argument("--inputs", required=True, help="a TSV, text file or catalog entry: the inputs to decode")
    ap.add_argument("--lines", type=int, default=1000)
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "auto"], choices=["fp32", "bf16", "auto"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decode_speed.json"))
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    path = Path(a.run)
    data = load_checkpoint(path / "best.pt" if path.is_dir() else path)
    model, src_tok, tok = build_seq2seq(data)
    inputs = read_inputs(a.inputs, a.lines)
    c = model.config
    hw = {"cpu": cpu_name(), "cpu_features": cpu_features(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
          "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
          "load_avg_at_start": os.getloadavg()}
    model_line = (f"{c.layers} x {c.hidden} {c.cell}, embed {c.embed}, "
                  f"{'attention' if c.attention else 'no attention'}, {sum(p.numel() for p in model.parameters()):,} parameters")
    cases = [(p, b, n) for b in a.beams for n in a.batches for p in a.precisions]  # (a row's precisions back to
    # back: this host's speed drifts by 10-25% within minutes, and a ratio of rows far apart in a round took it)
    times = {c: [] for c in cases}
    outputs, ran = {}, {}

    def transducer(p, beam, batch):
        return Transducer(model, src_tok, tok, TransduceConfig(beam=beam, batch_size=batch, unknown="skip",
                                                               precision=p), torch.device("cpu"),
                          data["pairs"]["max_ratio"])

    for p, beam, batch in cases:  # auto decides before the clock (the first use of a model measures, once)
        tr = transducer(p, beam, batch)
        list(tr.run([(inputs[0], "input")]))
        ran[(p, beam, batch)] = tr.precision
    # One (beam, batch) at a time, its precisions alternating, round 0 warming up: a transduce run decodes with one
    # setting, and oneDNN keeps the kernels it built for the shapes it met (when all settings took turns, each
    # evicted the last one's, and bf16's take longer to build: bf16 read no faster than fp32 at greedy 256, and
    # 1.5x when timed one setting at a time)
    order = [(r, c) for i in range(0, len(cases), len(a.precisions)) for r in range(a.rounds + 1)
             for c in cases[i:i + len(a.precisions)]]
    for r, c in order:
        tr = transducer(*c)
        t0 = time.perf_counter()
        hyps = list(tr.run((s, "input") for s in inputs))
        dt = time.perf_counter() - t0
        if r:
            times[c].append(dt)
        outputs[c] = [h[0].text if h else "" for h in hyps]
    rows = []
    for p, beam, batch in sorted(cases, key=lambda c: a.precisions.index(c[0])):
        first = (a.precisions[0], beam, a.batches[0])
        dt = statistics.median(times[(p, beam, batch)])
        same = sum(x == y for x, y in zip(outputs[(p, beam, batch)], outputs[first])) / len(inputs)
        choice = ran[(p, beam, batch)]
        rows.append({"precision": p, "ran_in": choice.precision, "how": choice.how, "bf16_speedup": choice.speedup,
                     "beam": beam, "batch_size": batch, "seconds": times[(p, beam, batch)],
                     "lines_per_s": len(inputs) / dt, "ratio_to_first": statistics.median(times[first]) / dt,
                     "same_outputs": same})
    hw["load_avg_at_end"] = os.getloadavg()
    print(f"\n{hw['cpu']} ({hw['cpu_features']}), {hw['threads']} threads, torch {hw['torch']}, {hw['date']}; load "
          f"{hw['load_avg_at_start'][0]:.2f} at start, {hw['load_avg_at_end'][0]:.2f} at end; {model_line}; "
          f"{len(inputs):,} inputs of {a.inputs}, median of {a.rounds} rounds\n")
    base = f"{a.precisions[0]} batch {a.batches[0]}"
    print(f"| precision | search | batch | lines/s | x {base} | outputs as {base} |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        name = "greedy" if row["beam"] == 1 else f"beam {row['beam']}"
        how = row["ran_in"] if row["precision"] != "auto" else (
            f"auto: {row['ran_in']}" + (f" ({row['bf16_speedup']:.2f}x)" if row["bf16_speedup"] else ""))
        print(f"| {how} | {name} | {row['batch_size']} | {row['lines_per_s']:,.1f} | {row['ratio_to_first']:.1f}x | "
              f"{row['same_outputs']:.1%} |")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"hardware": hw, "model": model_line, "run": str(a.run), "inputs": a.inputs,
                               "lines": len(inputs), "rows": rows}, indent=1))
    print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
