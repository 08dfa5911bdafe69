"""benchmarks/gpu_check.py must not rot between the rare minutes a GPU is lent: its dry run (every phase on the
CPU, tiny sizes, a corpus it writes itself) has to finish with every phase's numbers real."""

import json
import math
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_dry_run_measures_every_phase(tmp_path):
    out = tmp_path / "gpu_check.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run",
                        "--corpus", str(tmp_path / "absent.txt"), "--json", str(out), "--long-flags", "--dropout 0.2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["corpus"]["written_for_dry_run"] and report["corpus"]["chars"] > 0
    hw = report["hardware"]
    assert hw["torch"] == torch.__version__ and hw["cpu"] and hw["device"] == "cpu"
    phases = report["phases"]
    assert set(phases) == {"train_speed", "train_180", "sample", "torchrun"}
    for name, ph in phases.items():
        assert ph["error"] is None and not ph.get("partial_error"), (name, ph)

    # training speed: two real runs, the second in fp32, the first in bf16 (or fp32 where the CPU cannot)
    half = "fp32" if report["dry_run_bf16_stand_in"] else "bf16"
    runs = phases["train_speed"]["runs"]
    assert [runs["bf16"]["precision"], runs["fp32"]["precision"]] == [half, "fp32"]
    for run in runs.values():
        assert positive(run["chars_per_s"]) and run["timed_steps"] > 0 and run["batch"] == 4
    assert positive(phases["train_speed"]["bf16_over_fp32"])

    # the long run: a val loss, and the precision auto chose as the run's best.pt records it
    long = phases["train_180"]
    assert positive(long["best_val_loss"]) and long["best_val_loss"] < 5 and long["steps"] > 0
    assert long["precision_asked"] == "auto" and long["device"] == "cpu"
    assert long["flags"] == ["--dropout", "0.2"] and long["model"]["dropout"] == 0.2  # --long-flags reached it
    assert long["last_step"] >= long["steps"]
    choice = long["precision_choice"]  # config.json: how auto decided
    assert long["precision"] == choice["precision"] and choice["how"] in ("measured", "cached", "rule")

    # sampling: 1 and 64 streams, graphs on and off, on the random model, then the trained model
    rows = phases["sample"]["rows"]
    assert [(r["streams"], r["graphs"]) for r in rows] == [(1, True), (1, False), (64, True), (64, False), (1, True)]
    assert rows[-1]["model"] == "1x32 lstm of train_180"
    for r in rows:
        assert positive(r["chars_per_s"]) and r["chars"] > 0 and r["notes"] == [] and r["probe_chars"] > 0

    ddp = phases["torchrun"]
    assert positive(ddp["chars_per_s"]) and positive(ddp["torchrun_over_plain"]) and ddp["precision"] == half

    goals = {g["goal"]: g for g in report["goals"]}
    assert len(goals) == 5 and all(g["met"] in (True, False) for g in goals.values())

    table = p.stdout
    assert "charnn GPU check (DRY RUN" in table and "FAILED" not in table
    for label in ("train fp32, batch 4 x 32", "train_180 (best at step", "1 stream, no CUDA graphs",
                  "64 streams, no CUDA graphs", "torchrun x1 / plain", "best val loss", "--precision auto chose"):
        assert label in table, label
    assert "[gpu_check]" in p.stderr and "[gpu_check]" not in table  # progress on stderr, the table on stdout


def test_a_short_loan_runs_the_long_trainings_together_then_the_best_alone(tmp_path):
    """--together: every 180-s run at once (each row says it shared), then the best train_180 settings again alone;
    --skip leaves phases out; --long-flags given twice makes two runs; the JSON holds each phase as it finished."""
    out = tmp_path / "gpu_check.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--together",
                        "--corpus", str(tmp_path / "absent.txt"), "--json", str(out), "--skip", "fp32", "sample",
                        "torchrun", "--long-flags", "", "--long-flags", "--dropout 0.3"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    phases = json.loads(out.read_text())["phases"]
    assert set(phases) == {"train_speed", "train_180", "train_180_2", "train_180_solo"}
    assert list(phases["train_speed"]["runs"]) == ["bf16"] and phases["train_speed"]["bf16_over_fp32"] is None
    assert phases["train_180"]["flags"] == [] and phases["train_180_2"]["flags"] == ["--dropout", "0.3"]
    assert phases["train_180"]["shared_gpu_with"] == 1 == phases["train_180_2"]["shared_gpu_with"]
    solo = phases["train_180_solo"]
    best = min(("train_180", "train_180_2"), key=lambda n: phases[n]["best_val_loss"])
    assert solo["repeats"] == best and solo["flags"] == phases[best]["flags"] and "shared_gpu_with" not in solo
    assert all(positive(ph["best_val_loss"]) for name, ph in phases.items() if name != "train_speed")
    assert "train_180, shared x2" in p.stdout and "train_180_solo (best at step" in p.stdout
    assert "these ran at the same time, sharing the GPU: train_180, train_180_2" in p.stdout


def test_the_parallel_cells_phases_time_training_the_180_s_run_and_sampling_with_graphs(tmp_path):
    """--minrnn as issue 31's loan runs it (no 180-s LSTM run): mingru/minlstm training speed against the LSTM, the
    180-s mingru run, and the sample phase's rows for both min cells (1 and 64 streams, graphs on and off) beside a
    2x256 LSTM, each with its goal."""
    out = tmp_path / "gpu_check.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--minrnn",
                        "--corpus", str(tmp_path / "absent.txt"), "--json", str(out), "--skip", "fp32", "torchrun",
                        "train_180"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads(out.read_text())
    phases = report["phases"]
    assert set(phases) == {"train_speed", "minrnn_speed", "minrnn_180", "sample"}
    assert not any("train_180" in r["model"] for r in phases["sample"]["rows"])  # (no trained LSTM to sample)
    for cell, run in phases["minrnn_speed"]["runs"].items():
        assert run["model"]["cell"] == cell and positive(run["chars_per_s"]) and positive(run["over_lstm"])
    assert phases["minrnn_180"]["model"]["cell"] == "mingru" and positive(phases["minrnn_180"]["best_val_loss"])
    rows = [(r["model"], r["streams"], r["graphs"]) for r in phases["sample"]["rows"] if "2x256" in r["model"]]
    assert rows == [("2x256 lstm random", 1, True), ("2x256 lstm random", 64, True)] + [
        (f"2x256 {cell} random", n, g) for cell in ("mingru", "minlstm") for n in (1, 64) for g in (True, False)]
    assert all(positive(r["chars_per_s"]) and r["notes"] == [] for r in phases["sample"]["rows"])
    goals = {g["goal"]: g for g in report["goals"]}
    for cell in ("mingru", "minlstm"):
        g = goals[f"sample --cell {cell}, 1 stream, CUDA graphs recorded"]
        assert positive(g["value"]) and g["met"] is False  # (no graph is recorded off CUDA)
    assert "sample 2x256 minlstm random, 64 streams, no CUDA graphs" in p.stdout
