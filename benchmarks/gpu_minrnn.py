"""benchmarks/gpu_check.py's phases for the parallel-scan cells (`--cell mingru`, `--cell minlstm`), run with
`gpu_check.py --minrnn` (about 5 more minutes):

  minrnn_speed  `charnn train --cell mingru` and `--cell minlstm` at the GPU defaults (batch 256 x 128) in bf16,
                each for train_speed's time: chars/s and the ratio to train_speed's bf16 LSTM (goal >= 20x)
  minrnn_180    `charnn train CORPUS --cell mingru --max-time 180` (plus --minrnn-flags): best val loss
                (goal <= 1.40 nats/char; the LSTM's best at 180 s is 1.4369)
  sample        (gpu_check's phase, more rows) the default mingru and minlstm (2x256, x1f2), random weights: 1 and
                64 streams with and without CUDA graphs, beside a 2x256 LSTM's (goal: the graphs recorded, and one
                stream >= 20,000 chars/s as the LSTM's goal)
"""

from __future__ import annotations

CELLS = ("mingru", "minlstm")
MIN_SAMPLE_NOTE = ", 2x256 LSTM, mingru and minlstm"
MIN_SAMPLE_SECONDS = 60  # the sample phase's limit grows by this much: ten more rows of about 4 s each


def min_sample_models(vocab: int) -> list:
    """(label, model, streams, graphs) for the sample worker: the 2x256 LSTM (the min cells' size) with graphs,
    then each min cell at its defaults, 1 and 64 streams, with and without graphs. Random weights, seed 0."""
    import torch

    from charnn.config import ModelConfig
    from charnn.models.configs import MinRNNConfig
    from charnn.models.lm import CharRNN
    from charnn.models.minrnn import MinRNN

    torch.manual_seed(0)
    rows = [("2x256 lstm random", CharRNN(ModelConfig(vocab_size=vocab, layers=2, hidden=256, embed=64)), n, True)
            for n in (1, 64)]
    for cell in CELLS:
        model = MinRNN(MinRNNConfig(vocab_size=vocab, cell=cell))
        rows += [(f"2x256 {cell} random", model, n, g) for n in (1, 64) for g in (True, False)]
    return rows


def phase_minrnn_speed(r, lstm) -> dict:
    """`lstm`: train_speed's bf16 run (None if it failed), for the ratio."""
    flags = ["--device", r.device, "--eval-every", "1000000", "--save-every-secs", "0", "--log-every", "5",
             "--precision", r.half, *r.s["steps"]]
    rows = {cell: r.train(f"speed-{cell}", r.s["speed_time"], r.s["speed_slack"], flags + ["--cell", cell])
            for cell in CELLS}
    for row in rows.values():
        row["over_lstm"] = round(row["chars_per_s"] / lstm["chars_per_s"], 2) if lstm else None
    return {"runs": rows}


def phase_minrnn_180(r, extra: list) -> dict:
    flags = (["--device", "cpu"] if r.device == "cpu" else []) + r.s["long_steps"] + ["--cell", "mingru", *extra]
    run = r.train("long-mingru", r.s["long_time"], r.s["long_slack"], flags)
    return {**run, "max_time": r.s["long_time"], "flags": ["--cell", "mingru", *extra]}


def minrnn_goals(phases: dict) -> list:
    if "minrnn_speed" not in phases and "minrnn_180" not in phases:  # run without --minrnn
        return []
    speed, long = phases.get("minrnn_speed", {}), phases.get("minrnn_180", {})
    goals = []
    for cell, row in speed.get("runs", {}).items():
        v = row.get("over_lstm")
        goals.append({"goal": f"train --cell {cell} / LSTM chars/s, bf16 ratio", "value": v, "target": ">= 20",
                      "met": None if v is None else v >= 20})
    v = long.get("best_val_loss")
    goals.append({"goal": "train --cell mingru --max-time 180: best val loss", "value": v, "target": "<= 1.40",
                  "met": None if v is None else v <= 1.40})
    sample = [x for x in phases.get("sample", {}).get("rows", []) if x["streams"] == 1 and x["graphs"]]
    for cell in CELLS:
        one = next((x for x in sample if x["model"] == f"2x256 {cell} random"), None)
        if one is not None:  # (run with --minrnn: the sample phase has the min cells' rows)
            v = one["chars_per_s"]
            goals.append({"goal": f"sample --cell {cell}, 1 stream, CUDA graphs recorded", "value": v,
                          "target": ">= 20,000, recorded", "met": bool(one["graphs_captured"]) and v >= 20000})
    return goals


def minrnn_rows(phases: dict) -> list:
    """(name, value) rows for gpu_check's table."""
    rows = [(f"train --cell {cell} {run['precision']}, batch {run['batch']} x {run['seq']}",
             f"{run['chars_per_s']:,.0f}") for cell, run in phases.get("minrnn_speed", {}).get("runs", {}).items()]
    if "wall_s" in phases.get("minrnn_180", {}):
        t = phases["minrnn_180"]
        rows.append((f"minrnn_180 (best at step {t['steps']:,} of {t['last_step']:,}, batch {t['batch']})",
                     f"{t['chars_per_s']:,.0f}"))
    return rows
