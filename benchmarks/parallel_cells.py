"""Parallel-scan cells (`--cell mingru`, `--cell minlstm`) against charnn's LSTM: scan cost, training speed at
equal parameter count, quality at equal wall time (with a small nanoGPT-style Transformer as a baseline) and
sampling speed. All rows of one run come from the same machine and process; prints markdown tables and writes
JSON (benchmarks/results/parallel_cells.json).

    python benchmarks/parallel_cells.py --threads 2                       # everything, 300-s quality runs
    python benchmarks/parallel_cells.py --sections speed --batches 8,64   # one table
    python benchmarks/parallel_cells.py --sections quality --budget 30    # a quick check of the quality runs

Model specs are cell:LAYERSxHIDDEN[xEXPAND][fFFN] (expand 1, no FFN unless given), e.g. lstm:2x256,
mingru:2x256x2, mingru:2x256x1f2 (charnn's default minGRU), and any training-time regularisers as +NAME=VALUE:
lstm:2x256+ar=2+tar=1 is what `charnn train` gives a plain-text language model by default. The quality runs
call charnn's trainer with exactly the spec (no command-line defaults).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import CORPORA, cpu_features, cpu_name
from conv_block import conv_blocks

from charnn.config import ModelConfig, TrainConfig
from charnn.data.corpus import Corpus
from charnn.device import autocast, keep_freed_memory
from charnn.models import fused
from charnn.models.registry import build_model
from charnn.models.scan import mingru_scan, sequential_mingru
from charnn.training.precision import native_bf16
from charnn.training.schedule import make_optimizer
from charnn.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
CORPUS = CORPORA / "tinyshakespeare.txt"
SPEED_MODELS = "lstm:2x256,mingru:2x256x1f2,minlstm:2x256x1f2,mingru:2x256x2,minlstm:2x224x2,mingru:4x256x1"
QUALITY_MODELS = "lstm:2x256,mingru:2x256x1f2,minlstm:2x256x1f2"


def model_config(spec: str, vocab: int = 65) -> ModelConfig:
    """cell:LAYERSxHIDDEN[xEXPAND][fFFN][kTAPS], then any regularisers as +NAME=VALUE (lstm:2x256+ar=2+tar=1);
    kTAPS (a causal convolution in each min-cell block, benchmark only: conv_block.py) is `convolution`'s."""
    spec, *regs = spec.split("+")
    regularisers = {k: float(v) for k, v in (r.split("=") for r in regs)}
    cell, shape = spec.split(":")
    m = re.fullmatch(r"(\d+)x(\d+)(?:x(\d+))?(?:f(\d+))?(?:k\d+)?", shape)
    layers, hidden, expand, ffn = int(m[1]), int(m[2]), int(m[3] or 1), int(m[4] or 0)
    if cell in ("lstm", "gru", "rnn"):
        return ModelConfig(vocab_size=vocab, cell=cell, layers=layers, hidden=hidden, extra=regularisers)
    return ModelConfig(vocab_size=vocab, kind="minrnn", cell=cell, layers=layers, hidden=hidden,
                       extra={"expand": expand, "ffn": ffn, **regularisers})


def convolution(spec: str):
    """The context a spec's model is built in: with kTAPS, MinRNN's blocks are conv_block.ConvBlocks."""
    m = re.search(r"k(\d+)(?:\+|$)", spec.split(":")[-1])
    return conv_blocks(int(m[1])) if m else contextlib.nullcontext()


def timed(fn, seconds: float) -> float:
    """Seconds per call of fn, after two warm-up calls, over about `seconds`."""
    fn(), fn()
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds or n < 3:
        fn()
        n += 1
    return elapsed / n


# -- the scan alone ----------------------------------------------------------------------------------------
def heinsen_scan(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """The textbook log-space scan (Heinsen 2023): h = exp(cumsum log a + logcumsumexp(log b - cumsum log a))."""
    a_star = torch.cumsum(log_a, 1)
    return torch.exp(a_star + torch.logcumsumexp(log_b - a_star, 1))


def scan_table(seconds: float) -> list:
    """fwd+bwd ms of one (8, 128, 256) minGRU layer's recurrence (gates included), and the error against the loop."""
    torch.manual_seed(0)
    u = torch.randn(8, 128, 512, requires_grad=True)
    k, v = u.detach()[..., :256].requires_grad_(), u.detach()[..., 256:].requires_grad_()

    def log_space():  # the paper's: log-space gates, g(v) > 0, and Heinsen's scan
        log_g = torch.where(v >= 0, torch.log(F.relu(v) + 0.5), -F.softplus(-v))
        return heinsen_scan(-F.softplus(k), -F.softplus(-k) + log_g)
    ways = {"C, one pass each way (charnn.models.fused; CPU)": lambda: fused.min_scan("mingru", u)[0],
            "chunked scan, hand-written backward (charnn.models.scan; GPU)": lambda: mingru_scan(u),
            "log-space logcumsumexp (Heinsen), autograd": log_space,
            "step-by-step loop, autograd": lambda: sequential_mingru(u)}
    rows = []
    for name, fn in ways.items():
        with torch.no_grad():
            err = (fn() - sequential_mingru(u)).abs().max().item() if "log-space" not in name else None
        ms = timed(lambda: fn().sum().backward(), seconds) * 1e3
        rows.append({"scan": name, "ms_fwd_bwd": round(ms, 2), "max_err": err})
    return rows


# -- training speed ----------------------------------------------------------------------------------------
def train_step_rate(spec: str, batch: int, precision: str, seq_len: int, seconds: float) -> dict:
    """chars/s of one training step (forward, loss, backward, clipping, AdamW) on random ids, state carried. A spec
    ending in "!torch" runs with charnn.models.fused's C kernels off (torch operations only: what a GPU runs)."""
    spec, torch_ops = spec.removesuffix("!torch"), spec.endswith("!torch")
    available, fused.available = fused.available, (lambda *t: False) if torch_ops else fused.available
    try:
        return _step_rate(spec, batch, precision, seq_len, seconds) | {"model": spec + (" (torch ops)" if torch_ops
                                                                                        else "")}
    finally:
        fused.available = available


def _step_rate(spec: str, batch: int, precision: str, seq_len: int, seconds: float) -> dict:
    torch.manual_seed(0)
    with convolution(spec):
        model = build_model(model_config(spec))
    opt = make_optimizer(model, TrainConfig(lr=1e-3), torch.device("cpu"))  # the trainer's AdamW
    x = torch.randint(65, (batch, seq_len))
    y = torch.randint(65, (batch, seq_len))
    state = [None]
    ctx = autocast(torch.device("cpu"), precision)

    def step():
        with ctx:
            logits, s = model(x, state[0])
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        penalty = model.training_penalty()  # AR/TAR, when the spec asks for them
        loss = loss if penalty is None else loss + penalty
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state[0] = model.state_ops.detach(s)
    dt = timed(step, seconds)
    return {"model": spec, "params": model.num_params(), "batch": batch, "precision": precision,
            "chars_per_s": round(batch * seq_len / dt)}


def speed_table(models, batches, precisions, seq_len, seconds) -> list:
    rows = [train_step_rate(m, b, p, seq_len, seconds) for m in models for p in precisions for b in batches]
    lstm = {(r["batch"], r["precision"]): r["chars_per_s"] for r in rows if r["model"].startswith("lstm")}
    base = lstm.get((8, "fp32")) or next(iter(lstm.values()), None)
    for r in rows:
        r["x_lstm_b8_fp32"] = round(r["chars_per_s"] / base, 2) if base else None
    return rows


# -- quality at equal wall time ----------------------------------------------------------------------------
def quality_row(entry: str, budget: float, threads: int, out: Path, precision: str, steps=None,
                eval_tokens: int = 1_000_000) -> dict:
    """One run of charnn's trainer for `budget` seconds: entry is a model spec with an optional @BATCH, /LR and
    #SEED (mingru:2x256x2@32/3e-3#2; defaults: batch 8, charnn's --lr and --seed)."""
    m_ = re.fullmatch(r"([^@/#]+)(?:@(\d+))?(?:/([\d.e-]+))?(?:#(\d+))?", entry)
    spec, batch, lr, seed = m_[1], int(m_[2] or 8), m_[3], m_[4]
    limit = {"max_steps": steps} if steps else {"max_time": budget}  # equal steps: independent of the load
    cfg = TrainConfig(out=str(out), name=re.sub(r"[^\w.-]", "-", entry), val_frac=0.1, eval_tokens=eval_tokens, **limit,
                      threads=threads, device="cpu", batch_size=batch, eval_every=10**9, save_every_secs=0,
                      precision=precision, **({"lr": float(lr)} if lr else {}),
                      **({"seed": int(seed)} if seed else {}))
    text = CORPUS.read_text(encoding="utf-8")
    with convolution(spec):
        result = train(Corpus(text, CORPUS.stem, str(CORPUS)), model_config(spec, vocab=1), cfg)
    return {"model": entry, "batch": batch, "steps": result.steps, "chars": result.chars_seen,
            "val_nats_per_char": round(result.best_val_loss, 4), "seconds": round(result.elapsed, 1)}


def transformer_row(budget: float, steps=None, eval_tokens: int = 1_000_000) -> dict:
    from tiny_gpt import train_for
    text = CORPUS.read_text(encoding="utf-8")
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    cut = int(len(ids) * 0.9)
    row = train_for(ids[:cut], ids[cut:cut + eval_tokens + 1], len(chars), budget if not steps else float("inf"), max_steps=steps,
                    batch=8 if steps else 32, layers=4, heads=4, width=128)
    return {"model": "transformer:4x128 (nanoGPT-style, benchmark only)", "batch": row["batch"], "steps": row["steps"],
            "chars": row["chars"], "val_nats_per_char": row["val"], "seconds": row["seconds"]}


# -- sampling ----------------------------------------------------------------------------------------------
def sample_table(models, seconds, streams=(1, 64)) -> list:
    """chars/s of the sampler, one stream and 64 (`streams`), fp32 and (where the model's kind does it here) --int8; a spec
    ending in "!torch" samples a min cell with its stepper's C step off (MinStepper's torch operations, what a GPU
    runs)."""
    from sample_speed import CHARS, chars_per_second, int8_steps
    from charnn.models import minstep
    from charnn.text.tokenizer import CharTokenizer
    tok = CharTokenizer(list(CHARS))
    rows = []
    for spec in models:
        torch.manual_seed(0)
        model = build_model(model_config(spec.removesuffix("!torch"), tok.vocab_size)).eval()
        torch_ops = spec.endswith("!torch")
        rows_in_c, minstep.NATIVE_ROWS = minstep.NATIVE_ROWS, 0 if torch_ops else minstep.NATIVE_ROWS
        try:
            for int8 in (False, True) if int8_steps(model, torch.device("cpu")) and not torch_ops else (False,):
                for n in streams:
                    r = chars_per_second(model, tok, torch.device("cpu"), n, True, seconds, int8=int8)
                    rows.append({"model": spec.replace("!torch", " (torch ops)"), "int8": int8, "streams": n,
                                 "chars_per_s": r["chars_per_s"]})
        finally:
            minstep.NATIVE_ROWS = rows_in_c
    return rows


def table(rows: list) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join("" if r.get(k) is None else ("yes" if r[k] else "no") if isinstance(r[k], bool)
                                else f"{r[k]:,}" if isinstance(r[k], int) else str(r[k]) for k in keys) + " |"
              for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sections", default="scan,speed,quality,sample")
    ap.add_argument("--models", default=SPEED_MODELS, help="speed and sampling: comma-separated model specs ("
                    "SPEC!torch runs a min cell without its C: charnn.models.fused's kernels in training, MinStepper's "
                    "step in sampling; sampling takes the first three plain specs and every !torch one)")
    ap.add_argument("--quality-models", default=QUALITY_MODELS,
                    help="model specs, each with optional @BATCH, /LR, #SEED")
    ap.add_argument("--transformer", action=argparse.BooleanOptionalAction, default=True,
                    help="also train the nanoGPT-style baseline for --budget seconds")
    ap.add_argument("--batches", default="8,32,64")
    ap.add_argument("--streams", default="1,64", help="sampling: the numbers of streams measured")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=3.0, help="timing per speed row")
    ap.add_argument("--budget", type=float, default=300.0, help="wall seconds per quality run")
    ap.add_argument("--steps", type=int, help="quality at equal steps instead of --budget (batch 8 unless @BATCH; "
                    "the transformer's batch is 8 too): what a shared machine's load cannot skew")
    ap.add_argument("--eval-tokens", type=int, default=1_000_000, help="val characters the quality runs score")
    ap.add_argument("--precision", default="bf16" if native_bf16(torch.device("cpu"))[0] else "fp32",
                    help="of the quality runs (fixed, so --precision auto's probe does not eat the budget)")
    ap.add_argument("--runs", default="/tmp/parallel_cells_runs")
    ap.add_argument("--out", default="benchmarks/results/parallel_cells.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as charnn's trainer does
    sections = args.sections.split(",")
    bf16 = native_bf16(torch.device("cpu"))[0]
    load = os.getloadavg()
    result = {"cpu": cpu_name(), "features": cpu_features(), "threads": args.threads, "torch": torch.__version__,
              "load_before": [round(x, 2) for x in load]}
    print(f"{result['cpu']} ({result['features']}), {args.threads} threads, torch {torch.__version__}, "
          f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    if "scan" in sections:
        result["scan"] = scan_table(args.seconds)
        print("## The scan of one 8x128x256 layer, fwd+bwd\n\n" + table(result["scan"]) + "\n")
    models = args.models.split(",")
    if "speed" in sections:
        precisions = ["fp32", "bf16"] if bf16 else ["fp32"]
        result["speed"] = speed_table(models, [int(b) for b in args.batches.split(",")], precisions, args.seq_len,
                                      args.seconds)
        print(f"## Training chars/s (T {args.seq_len})\n\n" + table(result["speed"]) + "\n")
    if "quality" in sections:
        rows = [quality_row(m, args.budget, args.threads, Path(args.runs), args.precision, args.steps,
                            args.eval_tokens) for m in args.quality_models.split(",")]
        result["quality"] = rows + ([transformer_row(args.budget, args.steps, args.eval_tokens)] if args.transformer else [])
        limit = f"{args.steps} steps" if args.steps else f"{args.budget:.0f} s"
        print(f"## Val nats/char after {limit} ({args.precision})\n\n" + table(result["quality"]) + "\n")
    if "sample" in sections:
        plain = [m for m in models if not m.endswith("!torch")]  # the first three, and every !torch spec
        result["sample"] = sample_table(plain[:3] + [m for m in models if m not in plain], args.seconds,
                                        [int(n) for n in args.streams.split(",")])
        print("## Sampling chars/s\n\n" + table(result["sample"]) + "\n")
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
