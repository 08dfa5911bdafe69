"""Training speed suite: charnn's training step against a plain PyTorch loop, over model sizes and batches.

For every (model, batch) it runs, each in a fresh subprocess so that allocator settings and peak memory
do not leak from one to the next:
  - plain: what a user writes from the PyTorch examples (fp32 nn.LSTM, random windows, Adam, clipping),
  - charnn: charnn's own Trainer step (the same code `charnn train` runs) at each --precisions entry.
It reports training chars/s, the ratio to the plain loop, achieved FLOP/s by the 6·N rule (N = recurrent
+ head weights), its fraction of the fp32 and bf16 matmul ceilings measured in the same run, and peak
RSS (or peak CUDA memory). Prints a table and writes JSON.

    python benchmarks/train_speed.py                       # the suite (a few minutes on 2 cores)
    python benchmarks/train_speed.py --sizes 2x512 --batches 32 --steps 30   # the issue-5 target row
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import CORPORA, cpu_features, cpu_name  # noqa: E402

CORPUS = CORPORA / "tinyshakespeare.txt"


def matmul_ceiling(dtype: torch.dtype, device: torch.device, n: int = 2048, seconds: float = 1.0) -> float:
    """Best FLOP/s of an n x n x n matmul in `dtype` on `device` (the ceiling a training step is held to)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best, t_end = 0.0, time.perf_counter() + seconds
    for _ in range(3):
        a @ b
    while time.perf_counter() < t_end:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * n ** 3 / (time.perf_counter() - t))
    return best


def flop_params(layers: int, hidden: int, embed: int, vocab: int) -> int:
    """N of the 6·N rule: the recurrent weight matrices and the head (the embedding is a lookup)."""
    rec = sum(4 * hidden * ((embed if l == 0 else hidden) + hidden) for l in range(layers))
    return rec + hidden * vocab


# -- workers (run in their own process) --------------------------------------------------------------------
def _peak_memory(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB


def _timed(step, warmup: int, steps: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def worker_plain(a) -> dict:
    """The plain loop of benchmarks/plain_lstm.py: fp32 nn.LSTM, random windows, Adam, clip."""
    from plain_lstm import PlainLSTM, plain_step

    from charnn.text.tokenizer import CharTokenizer

    device = torch.device(a.device)
    text = Path(a.corpus).read_text(encoding="utf-8")
    tok = CharTokenizer.build(text)
    ids = torch.from_numpy(tok.encode(text)).to(device)
    torch.manual_seed(0)
    model = PlainLSTM(tok.vocab_size, a.embed, a.hidden, a.layers).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    secs = _timed(lambda: plain_step(model, opt, ids, a.batch, a.seq), a.warmup, a.steps, device)
    return {"chars_per_sec": a.steps * a.batch * a.seq / secs, "peak_mib": _peak_memory(device),
            "vocab": tok.vocab_size}


def worker_charnn(a) -> dict:
    """charnn's Trainer, stepped over its own batches: the step `charnn train` runs, minus evals and saves."""
    from charnn.config import ModelConfig, TrainConfig
    from charnn.data.corpus import load_corpus
    from charnn.training.trainer import Trainer

    out = tempfile.mkdtemp(prefix="charnn-bench-")
    model_cfg = ModelConfig(vocab_size=1, layers=a.layers, hidden=a.hidden, embed=a.embed, dropout=0.1)
    cfg = TrainConfig(out=out, name="bench", batch_size=a.batch, seq_len=a.seq, device=a.device,
                      precision=a.precision, max_steps=a.warmup + a.steps, eval_every=10 ** 9,
                      save_every_secs=0, compile=a.compile)
    trainer = Trainer(load_corpus(a.corpus), model_cfg, cfg)
    trainer.model.train()
    batches = trainer.batches.epoch(0)

    def step():
        x, y = next(batches)
        trainer._train_step(x, y)

    secs = _timed(step, a.warmup, a.steps, trainer.device)
    return {"chars_per_sec": a.steps * a.batch * a.seq / secs, "peak_mib": _peak_memory(trainer.device),
            "vocab": trainer.tokenizer.vocab_size, "precision": trainer.precision}


# -- the driver --------------------------------------------------------------------------------------------
def run_worker(kind: str, a, layers: int, hidden: int, batch: int, precision: str = "fp32",
               compile_: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--corpus", a.corpus, "--device", a.device,
           "--layers", str(layers), "--hidden", str(hidden), "--embed", str(a.embed), "--batch", str(batch),
           "--seq", str(a.seq), "--steps", str(a.steps), "--warmup", str(a.warmup), "--precision", precision]
    if compile_:
        cmd.append("--compile")
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT / "benchmarks"))
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=str(CORPUS))
    ap.add_argument("--sizes", default="1x128,2x256,2x512,3x1024", help="LAYERSxHIDDEN, comma-separated")
    ap.add_argument("--batches", default="32,64")
    ap.add_argument("--precisions", default="fp32,bf16", help="charnn precisions to time")
    ap.add_argument("--compile", action="store_true", help="also time charnn with --compile")
    ap.add_argument("--embed", type=int, default=64)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=12, help="timed steps per row")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "train_speed.json"))
    ap.add_argument("--worker", choices=["plain", "charnn"], help=argparse.SUPPRESS)
    ap.add_argument("--layers", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--hidden", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.worker:
        print(json.dumps(worker_plain(a) if a.worker == "plain" else worker_charnn(a)))
        return

    device = torch.device(a.device)
    ceil = {"fp32": matmul_ceiling(torch.float32, device), "bf16": matmul_ceiling(torch.bfloat16, device)}
    hw = torch.cuda.get_device_name() if device.type == "cuda" else f"{cpu_name()} ({cpu_features()})"
    print(f"# {hw}, {torch.get_num_threads()} threads, torch {torch.__version__}; matmul ceiling: "
          f"fp32 {ceil['fp32'] / 1e9:,.0f} GFLOP/s, bf16 {ceil['bf16'] / 1e9:,.0f} GFLOP/s")
    precisions = [p for p in a.precisions.split(",") if p]
    variants = [("plain", "fp32", False)] + [("charnn", p, False) for p in precisions]
    if a.compile:
        variants.append(("charnn", "fp32", True))
    header = (f"{'model':>7} {'batch':>5} {'variant':>15} {'chars/s':>9} {'x plain':>7} {'GFLOP/s':>8} "
              f"{'% fp32':>6} {'% bf16':>6} {'peak MiB':>8}")
    print(header)
    rows = []
    for size in a.sizes.split(","):
        layers, hidden = (int(v) for v in size.lower().split("x"))
        for batch in (int(b) for b in a.batches.split(",")):
            plain = None
            for kind, prec, comp in variants:
                r = run_worker(kind, a, layers, hidden, batch, prec, comp)
                name = "plain fp32" if kind == "plain" else f"charnn {prec}" + (" compile" if comp else "")
                row = {"model": size, "layers": layers, "hidden": hidden, "batch": batch, "seq": a.seq,
                       "embed": a.embed, "variant": name, **r}
                if "error" in r:
                    print(f"{size:>7} {batch:>5} {name:>15}  failed: {r['error'][:80]}")
                    rows.append(row)
                    continue
                flops = 6 * flop_params(layers, hidden, a.embed, r["vocab"]) * r["chars_per_sec"]
                if kind == "plain":
                    plain = r["chars_per_sec"]
                row.update(flops=flops, frac_fp32=flops / ceil["fp32"], frac_bf16=flops / ceil["bf16"],
                           x_plain=r["chars_per_sec"] / plain if plain else None)
                rows.append(row)
                xp = f"{row['x_plain']:.2f}" if row["x_plain"] else "-"
                print(f"{size:>7} {batch:>5} {name:>15} {r['chars_per_sec']:>9,.0f} {xp:>7} {flops / 1e9:>8,.1f} "
                      f"{100 * row['frac_fp32']:>5.0f}% {100 * row['frac_bf16']:>5.0f}% {r['peak_mib']:>8,.0f}",
                      flush=True)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"hardware": hw, "device": a.device, "threads": torch.get_num_threads(),
                                        "torch": torch.__version__, "seq": a.seq, "steps": a.steps,
                                        "matmul_ceiling": ceil, "rows": rows}, indent=2))
    print(f"# wrote {a.json}")


if __name__ == "__main__":
    main()
