"""Characters vs subwords under one time budget: val bits per character, training speed, samples.

Trains one model per tokenizer (char, then bpe and unigram at two vocabulary sizes) on the same corpus
with the same model, batch shape and --max-time budget (which counts everything: tokenizer training,
encoding, evaluations, saves). Each model is scored on the same validation text (the corpus's last
--val-frac) in nats per *character*, so the numbers compare across tokenizers.

    python benchmarks/tokenizers.py --max-time 300            # the write-up's run (about 25 minutes)
    python benchmarks/tokenizers.py --max-time 15 --vocab 512 2048

Prints a table, a few lines of sample from each model, and writes benchmarks/results/tokenizers.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import CORPORA  # noqa: E402
from charnn.checkpoint import build_from_checkpoint, load_checkpoint  # noqa: E402
from charnn.config import ModelConfig, TrainConfig
from charnn.sampling import SampleConfig  # noqa: E402
from charnn.data.batches import split_text  # noqa: E402
from charnn.data.corpus import Corpus, read_text  # noqa: E402
from charnn.scoring.evaluate import EvalResult  # noqa: E402
from charnn.generation.sampler import generate  # noqa: E402
from charnn.training.trainer import train  # noqa: E402

DEFAULT_CORPUS = CORPORA / "tinyshakespeare.txt"


def run_one(kind: str, vocab, text: str, args, out: str) -> dict:
    rates, tok_info = [], {}

    def on_event(event: str, info: dict) -> None:
        if event == "step":
            rates.append(info["chars_per_sec"])
        elif event == "start":
            tok_info.update(vocab_size=info["vocab_size"], chars_per_token=info["chars_per_token"])
        elif event == "tokenizer" and info["stage"] == "done":
            tok_info["tokenizer_seconds"] = info["seconds"]

    name = kind if vocab is None else f"{kind}-{vocab}"
    model_cfg = ModelConfig(vocab_size=1, layers=args.layers, hidden=args.hidden, embed=args.embed)
    cfg = TrainConfig(out=out, name=name, val_frac=args.val_frac, batch_size=args.batch_size, seq_len=args.seq_len,
                      lr=args.lr, max_time=args.max_time, eval_every=args.eval_every, device=args.device,
                      threads=args.threads, seed=args.seed, tokenizer=kind, vocab_size=vocab)
    result = train(Corpus(text, name, args.corpus), model_cfg, cfg, on_event)
    data = load_checkpoint(result.run_dir / "best.pt")
    model, tok = build_from_checkpoint(data)
    # training scored the val split with charnn.scoring.evaluate (nats per character); recount its tokens and
    # characters rather than scoring it a second time
    _, val_text = split_text(text, args.val_frac)
    val_ids = tok.encode(val_text)
    ev = EvalResult(nats=data["val_loss"] * tok.token_chars(val_ids[1:]), tokens=len(val_ids) - 1,
                    chars=tok.token_chars(val_ids[1:]))
    sample = "".join(generate(model, tok, SampleConfig(length=args.sample_chars, temperature=0.8, prime="\n",
                                                       device="cpu"), torch.device("cpu"), seed=1))
    # steady-state speed: the median of the per-step moving-window rates, first 10% left out (warm-up)
    steady = sorted(rates[len(rates) // 10:]) or [math.nan]
    return {"name": name, "tokenizer": kind, "vocab_requested": vocab, **tok_info, "steps": result.steps,
            "elapsed_s": result.elapsed, "stopped": result.stopped, "train_chars_per_s": steady[len(steady) // 2],
            "chars_seen": result.chars_seen, "val_bits_per_char": ev.bits_per_char,
            "val_nats_per_char": ev.nats_per_char, "val_nats_per_token": ev.nats_per_token,
            "val_chars": ev.chars, "val_tokens": ev.tokens, "sample": sample}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    p.add_argument("--max-time", type=float, default=300.0, help="seconds per model, everything included")
    p.add_argument("--vocab", type=int, nargs=2, default=[512, 2048], help="the two subword vocabulary sizes")
    p.add_argument("--kinds", nargs="+", default=["char", "bpe", "unigram"])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=128, help="tokens per stream per step, for every tokenizer")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--val-frac", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--sample-chars", type=int, default=300)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "tokenizers.json"))
    args = p.parse_args()
    text = read_text(args.corpus)

    rows = []
    with tempfile.TemporaryDirectory(prefix="charnn-tokbench-") as out:
        for kind in args.kinds:
            for vocab in ([None] if kind == "char" else args.vocab):
                print(f"training {kind}{'' if vocab is None else f' {vocab}'} for {args.max_time:.0f}s ...",
                      file=sys.stderr, flush=True)
                rows.append(run_one(kind, vocab, text, args, out))

    print(f"\n{Path(args.corpus).name}, {args.max_time:.0f}s per model, {args.layers}x{args.hidden} LSTM, "
          f"batch {args.batch_size}x{args.seq_len} tokens, threads {args.threads or torch.get_num_threads()}\n")
    head = (f"{'model':<14} {'vocab':>6} {'chars/tok':>9} {'tok. s':>6} {'steps':>6} {'train chars/s':>13} "
            f"{'val bits/char':>13} {'val nats/token':>14}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['name']:<14} {r['vocab_size']:>6} {r['chars_per_token']:>9.2f} "
              f"{r.get('tokenizer_seconds', 0.0):>6.1f} {r['steps']:>6} "
              f"{r['train_chars_per_s']:>13,.0f} {r['val_bits_per_char']:>13.4f} {r['val_nats_per_token']:>14.4f}")
    for r in rows:
        print(f"\n--- {r['name']} (temperature 0.8) ---")
        print("\n".join(r["sample"].strip("\n").splitlines()[:6]))

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    meta = {"corpus": args.corpus, "corpus_chars": len(text), "max_time_s": args.max_time,
            "config": {k: v for k, v in vars(args).items() if k not in ("json",)},
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.platform(),
            "processor": platform.processor(), "cpu_threads": torch.get_num_threads(), "time": time.ctime()}
    Path(args.json).write_text(json.dumps({"meta": meta, "runs": rows}, indent=2), encoding="utf-8")
    print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
