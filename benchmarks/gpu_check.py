"""A few minutes on a CUDA GPU: every GPU measurement the docs still mark "not measured", in one run (< 8 min).

    python benchmarks/gpu_check.py --corpus ../shared/corpora/tinyshakespeare.txt   # on the GPU machine
    python benchmarks/gpu_check.py --dry-run                                        # CPU, tiny sizes, ~30 s

Phases, each under its own time limit (one that fails records its error and the next one runs):
  train_speed  `charnn train` at the GPU defaults (batch 256 x 128, 2x256 LSTM) in bf16, then in fp32:
               training chars/s from the runs' metrics.jsonl (warm-up steps left out), and the ratio
  train_180    `charnn train CORPUS --max-time 180` with every default: best val loss (goal <= 1.40 nats/char),
               and the precision `--precision auto` chose, as the run's best.pt records it
  sample       `charnn sample`'s Sampler on a 2x512 LSTM (random weights, vocab 65: benchmarks/sample_speed.py's model
               and timing): 1 and 64 streams, with and without CUDA graphs (goal: 1 stream >= 20,000 chars/s),
               and one stream of train_180's trained model
  torchrun     train_speed's bf16 run again under `torchrun --nproc-per-node 1`: DDP's overhead on one GPU
  --minrnn     also `--cell mingru` / `--cell minlstm`: their speed against the LSTM, a 180-s mingru run, and
               their sampling with and without CUDA graphs beside a 2x256 LSTM's (benchmarks/gpu_minrnn.py; about
               6 more minutes: the default budget grows by 360 s)
  --g2p DIR    also train the English G2P set (SIGMORPHON 2021 eng_us, its files in DIR) for 180 s with every
               default and score it on the task's test words (benchmarks/gpu_g2p.py; about 4 more minutes)
  --long-flags F  more flags for train_180; given again, another 180-s run each (benchmarks/gpu_long.py)
  --together   the 180-s runs at the same time on the one GPU, then the best train_180 settings alone
  --skip P...  leave out train_speed's fp32 run, the 180-s LSTM run(s), the sample or the torchrun phase
SPLIT: a loan allows at most 10 minutes a command and 15 minutes in all, its start included, so the checks go in
calls of about 8 minutes, one issue each (phase times from earlier H200 loans and the budgets here):
  issue 31  --minrnn --skip fp32 train_180 torchrun --budget 540   (speed 45 s, min cells 90 s, mingru 180 s,
            sample 130 s)
  issue 32  --long-flags "FLAGS" --skip fp32 sample torchrun [--g2p DIR] --budget 540   (speed 45 s, 180 s
            [+ G2P 210 s])
The table goes to stdout, progress to stderr, JSON to benchmarks/results/gpu_check.json. Exit 1 if a phase
failed (the others still ran). It needs only torch, numpy, typer, rich and sentencepiece; no network.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import cpu_name  # noqa: E402
from distributed import free_port  # noqa: E402
from gpu_g2p import g2p_goals, g2p_rows, phase_g2p  # noqa: E402
from gpu_long import long_goals, long_name, long_rows, note, phase_solo, phase_train_180, run_phase, run_together  # noqa: E402,E501
from gpu_minrnn import (MIN_SAMPLE_NOTE, MIN_SAMPLE_SECONDS, min_sample_models, minrnn_goals,  # noqa: E402
                        minrnn_rows, phase_minrnn_180, phase_minrnn_speed)

from charnn.checkpoint import load_checkpoint  # noqa: E402
from charnn.training.metrics import read_metrics  # noqa: E402

CORPUS = "../shared/corpora/tinyshakespeare.txt"  # relative to the repo root, as the GPU machine lays it out
NANOGPT_3MIN = 1.4697  # nanoGPT's char-level tinyshakespeare val loss after 3 minutes on an A100

# Time limits in seconds. GPU: worst case 100 + 220 + 70 + 50 = 440 s, inside the 480 s budget. The dry run
# stops its runs by steps (a loaded CI machine must not leave a run with nothing logged); its times are caps.
GPU = dict(budget=480, speed_time=30, speed_slack=20, long_time=180, long_slack=40, sample_limit=70,
           sample_seconds=3.0, ddp_time=30, ddp_slack=20, model=[], sample_model=(2, 512), steps=[], long_steps=[])
DRY = dict(budget=150, speed_time=30, speed_slack=20, long_time=30, long_slack=20, sample_limit=40,
           sample_seconds=0.2, ddp_time=30, ddp_slack=20, sample_model=(2, 32),
           model=["--layers", "1", "--hidden", "32", "--embed", "16", "--batch-size", "4", "--seq-len", "32",
                  "--threads", "1"],
           steps=["--max-steps", "60"], long_steps=["--max-steps", "150", "--eval-every", "50"])


# -- running charnn ------------------------------------------------------------------------------------------
class Runner:
    """Runs `charnn train` subprocesses into one temp --out and CHARNN_CACHE, each killed at its time limit."""

    def __init__(self, tmp: Path, corpus: str, device: str, settings: dict, deadline: float, half: str):
        self.tmp, self.corpus, self.device, self.s, self.deadline = tmp, corpus, device, settings, deadline
        self.half = half  # the precision timed against fp32: bf16, or fp32 on a dry run where bf16 cannot run
        self.env = {**os.environ, "CHARNN_CACHE": str(tmp / "cache"),
                    "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def limit(self, wanted: float) -> float:
        left = self.deadline - time.monotonic() - 2
        if left < 10:
            raise RuntimeError(f"skipped: {max(0, left):.0f} s of the budget left")
        return min(wanted, left)

    def run(self, cmd: list, limit: float) -> None:
        """Run cmd in its own process group; on the time limit, SIGTERM the group (charnn saves and stops)."""
        p = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
        try:
            _, err = p.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate()
            raise RuntimeError(f"timed out after {limit:.0f} s: {' '.join(cmd[1:5])} ...") from None
        if p.returncode != 0:
            lines = [ln.strip() for ln in err.splitlines() if ln.strip()] or [f"exit {p.returncode}"]
            # charnn's own one-line error, else a Python error (not torchrun's report about its child), else the end
            mine = [ln for ln in lines if ln.startswith("charnn: error")]
            errors = [ln for ln in lines if ("Error" in ln or "error:" in ln) and "torch.distributed" not in ln]
            raise RuntimeError(f"exit {p.returncode}: {(mine or errors or lines)[-1][:300]}")

    def train(self, name: str, max_time: float, slack: float, flags: list, torchrun: bool = False) -> dict:
        """One training run; what its run folder records: speed, val loss, precision, batch, device."""
        cmd = ["-m", "charnn", "train", self.corpus, "--out", str(self.tmp / "runs"), "--name", name,
               "--max-time", str(max_time), "--quiet", *self.s["model"], *flags]
        if torchrun:
            cmd = ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "1",
                   "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *cmd]
        t = time.perf_counter()
        self.run([sys.executable, *cmd], self.limit(max_time + slack))
        return {"wall_s": round(time.perf_counter() - t, 1), **read_run(self.tmp / "runs" / name)}


def read_run(run_dir: Path) -> dict:
    """Training chars/s (steady state: the first quarter of the logged steps left out), the batch as config.json
    records it, and what best.pt records: best val loss, steps, device and the precision actually used."""
    config = json.loads((run_dir / "config.json").read_text())
    batch, seq = config["train"]["batch_size"], config["train"]["seq_len"]
    recs = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("elapsed") is not None]
    steady = recs[len(recs) // 4:]
    if len(steady) < 2 or steady[-1]["elapsed"] <= steady[0]["elapsed"]:
        raise RuntimeError(f"too few logged steps to time ({len(recs)} records)")
    steps = steady[-1]["step"] - steady[0]["step"]
    best = load_checkpoint(run_dir / "best.pt")
    return {"chars_per_s": round(steps * batch * seq / (steady[-1]["elapsed"] - steady[0]["elapsed"]), 1),
            "timed_steps": steps, "batch": batch, "seq": seq, "steps": best["step"], "last_step": recs[-1]["step"],
            "best_val_loss": best["best_val_loss"], "device": best["device"], "precision": best["precision"],
            "precision_asked": config["train"]["precision"], "model": config["model"],
            "precision_choice": config.get("precision")}  # how auto decided (measured, cached, rule) and why


# -- the phases ----------------------------------------------------------------------------------------------
def phase_train_speed(r: Runner, fp32: bool = True) -> dict:
    s, rows = r.s, {}
    # no evaluations or timed saves inside the timed steps
    flags = ["--device", r.device, "--eval-every", "1000000", "--save-every-secs", "0", "--log-every", "5"]
    for key, precision in (("bf16", r.half), ("fp32", "fp32"))[:2 if fp32 else 1]:
        note(f"train_speed: {precision}, {s['speed_time']} s")
        rows[key] = r.train(f"speed-{key}", s["speed_time"], s["speed_slack"],
                            flags + s["steps"] + ["--precision", precision])
    ratio = round(rows["bf16"]["chars_per_s"] / rows["fp32"]["chars_per_s"], 3) if fp32 else None
    return {"runs": rows, "bf16_over_fp32": ratio, "flags": flags}


def phase_sample(r: Runner, checkpoint, minrnn: bool = False) -> dict:
    layers, hidden = r.s["sample_model"]
    note(f"sample: {layers}x{hidden} LSTM{MIN_SAMPLE_NOTE if minrnn else ''}, 1 and 64 streams, with and without "
         "CUDA graphs")
    rows_file = r.tmp / "sample_rows.jsonl"
    cmd = [sys.executable, __file__, "--worker", "sample", "--device", r.device, "--rows", str(rows_file),
           "--layers", str(layers), "--hidden", str(hidden), "--seconds", str(r.s["sample_seconds"])]
    if checkpoint and Path(checkpoint).is_file():
        cmd += ["--checkpoint", str(checkpoint)]
    cmd += ["--minrnn"] if minrnn else []
    error = None
    try:
        r.run(cmd, r.limit(r.s["sample_limit"] + (MIN_SAMPLE_SECONDS if minrnn else 0)))
    except RuntimeError as e:  # keep the rows it finished
        error = str(e)
    rows = [json.loads(ln) for ln in rows_file.read_text().splitlines()] if rows_file.is_file() else []
    if error and not rows:
        raise RuntimeError(error)
    return {"rows": rows, "partial_error": error}


def sample_worker(a) -> None:
    """In its own process (so a hung capture can be killed): time the Sampler, one JSON line per row."""
    from sample_speed import CHARS, chars_per_second

    from charnn.checkpoint import build_from_checkpoint
    from charnn.config import ModelConfig
    from charnn.sampling import SampleConfig
    from charnn.generation.sampler import Sampler
    from charnn.models.lm import CharRNN
    from charnn.text.tokenizer import CharTokenizer

    device = torch.device(a.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(0)
    tok = CharTokenizer(list(CHARS))
    model = CharRNN(ModelConfig(vocab_size=tok.vocab_size, layers=a.layers, hidden=a.hidden, embed=64))
    label = f"{a.layers}x{a.hidden} lstm random"
    runs = [(label, model.to(device).eval(), tok, n, g) for n in (1, 64) for g in (True, False)]
    if a.checkpoint:
        trained, ttok = build_from_checkpoint(load_checkpoint(Path(a.checkpoint)), device)
        c = trained.config
        runs.append((f"{c.layers}x{c.hidden} {c.cell} of train_180", trained, ttok, 1, True))
    if a.minrnn:
        runs += [(label, m.to(device).eval(), tok, n, g) for label, m, n, g in min_sample_models(tok.vocab_size)]
    for label, m, t, streams, graphs in runs:
        # a short run first: its notes say whether the CUDA graph was captured or the sampler fell back
        probe = Sampler(m, t, SampleConfig(length=96, num_samples=streams, prime="\n"), device, 0, graphs=graphs)
        for _ in probe:
            pass
        r = chars_per_second(m, t, device, streams, True, a.seconds, graphs=graphs)
        row = {"model": label, **r, "graphs_captured": graphs and device.type == "cuda" and not probe.notes,
               "notes": probe.notes, "probe_chars": probe.chars}
        with open(a.rows, "a") as f:
            f.write(json.dumps(row) + "\n")


def phase_torchrun(r: Runner, plain) -> dict:
    note(f"torchrun: the bf16 speed run under torchrun --nproc-per-node 1, {r.s['ddp_time']} s")
    flags = ["--device", r.device, "--eval-every", "1000000", "--save-every-secs", "0", "--log-every", "5",
             "--precision", r.half, *r.s["steps"]]
    run = r.train("ddp", r.s["ddp_time"], r.s["ddp_slack"], flags, torchrun=True)
    ratio = round(run["chars_per_s"] / plain["chars_per_s"], 3) if plain else None
    return {**run, "plain_chars_per_s": plain["chars_per_s"] if plain else None, "torchrun_over_plain": ratio}


# -- the report ----------------------------------------------------------------------------------------------
def goals(report: dict, device: torch.device) -> list:
    """Each goal with its value and met / not met (None: not measured, its phase failed)."""
    p = report["phases"]
    speed, sample = p.get("train_speed", {}), p.get("sample", {})
    long = p.get("train_180_solo") or p.get("train_180", {})  # auto's choice: from the run that had the GPU alone
    one = next((x for x in sample.get("rows", []) if x["streams"] == 1 and x["graphs"] and "random" in x["model"]), {})
    many = next((x for x in sample.get("rows", []) if x["streams"] == 64 and x["graphs"]), {})
    # auto measures its own short probe; it should agree with the long timed runs: bf16 where they found it
    # clearly faster (>= 1.05x, auto's margin), fp32 where they found it slower, either in between
    ratio = speed.get("bf16_over_fp32")
    expected = None if ratio is None else ("bf16" if ratio >= 1.05 else "fp32" if ratio < 1.0 else "either")
    model = one.get("model", "2x512 lstm random").rsplit(" ", 1)[0]

    def goal(name, value, target, met):
        return {"goal": name, "value": value, "target": target, "met": None if value is None else met(value)}

    return [
        goal("train --precision auto chose (its best.pt says)", long.get("precision") if expected else None,
             f"the faster: {expected}", lambda v: expected in (v, "either")),
        goal("train bf16 / fp32, ratio", speed.get("bf16_over_fp32"), "> 1 (why auto picks bf16)",
             lambda v: v > 1),
        goal(f"sample {model}, 1 stream, CUDA graphs", one.get("chars_per_s"), ">= 20,000", lambda v: v >= 20000),
        goal(f"sample {model}, 64 streams, CUDA graphs", many.get("chars_per_s"), ">= 50,000 (issue 4, CPU target)",
             lambda v: v >= 50000),
    ]


def table(report: dict) -> str:
    hw, p = report["hardware"], report["phases"]
    lines = [f"charnn GPU check{' (DRY RUN: CPU, tiny sizes; the numbers mean nothing)' if report['dry_run'] else ''}",
             f"{hw['gpu'] or 'no GPU'}, torch {hw['torch']}, CUDA {hw['cuda']}, CPU {hw['cpu']}, "
             f"{report['wall_s']:.0f} s",
             f"{'measurement chars/s, unless named':<64}{'value':>10}  {'goal':<34}met"]

    def row(name, value, goal="", met=None):
        mark = "" if met is None and not goal else {True: "met", False: "NOT MET", None: "not measured"}[met]
        lines.append(f"{name:<64}{value:>10}  {goal:<34}{mark}")

    for run in p.get("train_speed", {}).get("runs", {}).values():
        row(f"train {run['precision']}, batch {run['batch']} x {run['seq']}", f"{run['chars_per_s']:,.0f}")
    long, flag_lines = long_rows(p)
    for name, value in long:
        row(name, value)
    for x in p.get("sample", {}).get("rows", []):
        graphs = "CUDA graphs" if x["graphs_captured"] else "graphs (not captured)"
        graphs = graphs if x["graphs"] else "no CUDA graphs"
        streams = f"{x['streams']} stream{'s' if x['streams'] > 1 else ''}"
        row(f"sample {x['model']}, {streams}, {graphs}", f"{x['chars_per_s']:,.0f}")
    if p.get("torchrun", {}).get("torchrun_over_plain") is not None:
        row(f"train under torchrun x1 / plain, ratio ({p['torchrun']['precision']})",
            f"{p['torchrun']['torchrun_over_plain']:.3f}")
    for name, value in minrnn_rows(p) + g2p_rows(p):
        row(name, value)
    for g in report["goals"]:
        v = g["value"]
        shown = "-" if v is None else (f"{v:,.0f}" if isinstance(v, float) and v > 100 else
                                       f"{v:.4f}" if isinstance(v, float) else str(v))
        row(g["goal"], shown, g["target"], g["met"])
    lines += flag_lines
    for name, ph in p.items():
        if ph.get("error") or ph.get("partial_error"):
            lines.append(f"FAILED {name}: {ph.get('error') or ph['partial_error']}")
    return "\n".join(lines)


def cpu_bf16_problem():
    """Why bf16 autocast cannot train an LSTM on this CPU (oneDNN refuses it on some AVX2-only CPUs), or None."""
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.LSTM(8, 8, batch_first=True)(torch.randn(2, 3, 8))
    except RuntimeError as e:
        return str(e).splitlines()[0][:200]
    return None


def tiny_corpus(path: Path) -> None:
    """About 150 kB of made-up verse, for a dry run where the real corpus is absent."""
    words = "the king queen lord love night day sweet death life heaven speak come go my thy good".split()
    rnd = random.Random(0)
    speakers = ["ROMEO:", "JULIET:", "KING:"]
    verse = (rnd.choice(speakers) + "\n" + " ".join(rnd.choice(words) for _ in range(12)) for _ in range(2000))
    text = "\n\n".join(verse)
    path.write_text(text + "\n", encoding="utf-8")


def plan(a, r: Runner, report: dict) -> list:
    """The phases in order, as groups: a group of several runs them at the same time (--together)."""
    p = report["phases"]
    speed_lstm = lambda: p["train_speed"].get("runs", {}).get("bf16")  # noqa: E731
    longs = [(long_name(i), lambda f=f, i=i: phase_train_180(r, shlex.split(f), i))
             for i, f in enumerate(a.long_flags or [""])] if "train_180" not in a.skip else []
    if a.minrnn:
        longs.append(("minrnn_180", lambda: phase_minrnn_180(r, shlex.split(a.minrnn_flags))))
    if a.g2p:
        longs.append(("g2p_180", lambda: phase_g2p(r, a.g2p, shlex.split(a.g2p_flags))))
    first = [[("train_speed", lambda: phase_train_speed(r, fp32="fp32" not in a.skip))]]
    if a.minrnn:
        first.append([("minrnn_speed", lambda: phase_minrnn_speed(r, speed_lstm()))])
    solo = [] if "train_180" in a.skip else [[("train_180_solo", lambda: phase_solo(r, p))]]
    longs = [longs] + solo if a.together else [[x] for x in longs]
    checkpoint = lambda: (p.get("train_180_solo") or p.get("train_180") or {}).get("checkpoint")  # noqa: E731
    last = [[(name, fn)] for name, fn in (("sample", lambda: phase_sample(r, checkpoint(), a.minrnn)),
                                          ("torchrun", lambda: phase_torchrun(r, speed_lstm())))
            if name not in a.skip]
    return first + longs + last


def run_group(group: list) -> dict:
    if len(group) == 1:
        return {group[0][0]: run_phase(group[0][1])}
    note(f"together: {', '.join(name for name, _ in group)}")
    return run_together(group)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=CORPUS, help="tinyshakespeare.txt (a relative path not found here is taken from the repo root)")
    ap.add_argument("--dry-run", action="store_true", help="every phase on the CPU, tiny sizes: checks the script")
    ap.add_argument("--budget", type=float, help="seconds for the whole check (default 480; dry run 150)")
    ap.add_argument("--long-flags", action="append", help="more `charnn train` flags for the 180-s run, e.g. "
                    "'--hidden 1024 --dropout 0.3 --lr 3e-3' (default: none, every flag at its default); "
                    "again for another 180-s run (benchmarks/gpu_long.py)")
    ap.add_argument("--together", action="store_true", help="run the 180-s trainings at the same time, then the "
                    "best train_180 settings alone (benchmarks/gpu_long.py)")
    ap.add_argument("--skip", nargs="+", default=[], choices=["fp32", "train_180", "sample", "torchrun"],
                    help="leave out train_speed's fp32 run, the 180-s LSTM run(s), the sample phase or the torchrun "
                    "phase (a loan's call is at most 10 minutes: see SPLIT in this script's docstring)")
    ap.add_argument("--minrnn", action="store_true", help="also time --cell mingru/minlstm and train mingru "
                    "for the 180 s (benchmarks/gpu_minrnn.py)")
    ap.add_argument("--minrnn-flags", default="", help="more `charnn train` flags for the 180-s mingru run")
    ap.add_argument("--g2p", metavar="DIR", help="also train and score the English G2P set whose files are in DIR "
                    "(benchmarks/gpu_g2p.py)")
    ap.add_argument("--g2p-flags", default="", help="more `charnn train` flags for the G2P run")
    ap.add_argument("--json", help="default benchmarks/results/gpu_check.json (dry run: gpu_check_dry_run.json)")
    ap.add_argument("--worker", choices=["sample"], help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    ap.add_argument("--rows", help=argparse.SUPPRESS)
    ap.add_argument("--layers", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--hidden", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return sample_worker(a)
    if not a.dry_run and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU here; run it on a GPU machine, or with --dry-run to check the script")

    settings, device = (DRY, torch.device("cpu")) if a.dry_run else (GPU, torch.device("cuda"))
    t0, budget = time.monotonic(), a.budget or settings["budget"] + (360 if a.minrnn else 0) + (240 if a.g2p else 0)
    out = Path(a.json or ROOT / "benchmarks" / "results" / f"gpu_check{'_dry_run' if a.dry_run else ''}.json")
    report = {"dry_run": a.dry_run, "budget_s": budget, "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
              "hardware": {"gpu": None if a.dry_run else torch.cuda.get_device_name(), "device": device.type,
                           "torch": torch.__version__, "cuda": torch.version.cuda, "cpu": cpu_name(),
                           "cpu_count": os.cpu_count(), "python": platform.python_version(),
                           "bf16_supported": torch.cuda.is_bf16_supported() if not a.dry_run else None},
              "reference": {"nanogpt_char_val_loss_3min_a100": NANOGPT_3MIN}, "phases": {}}
    with tempfile.TemporaryDirectory(prefix="charnn-gpu-check-") as tmp:
        tmp = Path(tmp)
        corpus = (Path(a.corpus) if Path(a.corpus).exists() else ROOT / a.corpus).resolve()
        written = a.dry_run and not corpus.is_file()
        if written:
            corpus = tmp / "tiny.txt"
            tiny_corpus(corpus)
        report["corpus"] = {"path": str(corpus), "chars": len(corpus.read_text(encoding="utf-8")) if corpus.is_file()
                            else None, "written_for_dry_run": written}
        half, problem = "bf16", cpu_bf16_problem() if a.dry_run else None
        if problem:  # the dry run checks the script, not bf16 on this CPU: time fp32 in bf16's place
            half = "fp32"
            note(f"dry run: bf16 autocast fails on this CPU ({problem}); fp32 stands in for bf16")
        report["dry_run_bf16_stand_in"] = problem
        r = Runner(tmp, str(corpus), device.type, settings, t0 + budget, half)
        for group in plan(a, r, report):
            for name, result in run_group(group).items():
                report["phases"][name] = result
                if result["error"]:
                    note(f"{name} failed: {result['error']}")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2) + "\n")  # so far: a check cut short keeps what it measured
    report["wall_s"] = round(time.monotonic() - t0, 1)
    report["goals"] = long_goals(report["phases"]) + goals(report, device) + minrnn_goals(report["phases"]) + g2p_goals(report["phases"])
    print(table(report), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    note(f"wrote {out} ({report['wall_s']:.0f} s)")
    sys.exit(1 if any(ph["error"] or ph.get("partial_error") for ph in report["phases"].values()) else 0)


if __name__ == "__main__":
    main()
