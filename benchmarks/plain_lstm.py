"""The baseline charnn is measured against: a plain PyTorch LSTM loop, as a user would write it from the
PyTorch examples (fp32 nn.LSTM, random windows, Adam, fixed LR), trained for a time budget.

Its val loss is scored by charnn's own scorer (charnn.scoring.evaluate.score_ids) on the same split, so the two
numbers compare. Prints a table and writes JSON.

    python benchmarks/plain_lstm.py --budget 300 [--hidden 512 --layers 2 --batch 32 --seq 128 --lr 2e-3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import CORPORA

from charnn.data.batches import split_text
from charnn.scoring.evaluate import score_ids
from charnn.text.tokenizer import CharTokenizer

CORPUS = CORPORA / "tinyshakespeare.txt"


class PlainLSTM(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        h, state = self.lstm(self.embed(x), state)
        return self.head(h), state


def plain_step(model: nn.Module, opt: torch.optim.Optimizer, ids: torch.Tensor, batch: int, seq: int) -> float:
    """One step as the PyTorch examples write it: random windows, zero initial state, Adam, clipping."""
    starts = torch.randint(0, len(ids) - seq - 1, (batch,))
    x = torch.stack([ids[s:s + seq] for s in starts])
    y = torch.stack([ids[s + 1:s + seq + 1] for s in starts])
    logits, _ = model(x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
    return loss.item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=str(CORPUS))
    ap.add_argument("--budget", type=float, default=300.0, help="seconds of training")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--embed", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--json", default="benchmarks/results/plain_lstm.json")
    args = ap.parse_args()

    torch.manual_seed(0)
    text = Path(args.corpus).read_text(encoding="utf-8")
    train_text, val_text = split_text(text, 0.1)
    tok = CharTokenizer.build(train_text)
    train_ids = torch.from_numpy(tok.encode(train_text))
    val_ids = torch.from_numpy(tok.encode(val_text))
    model = PlainLSTM(tok.vocab_size, args.embed, args.hidden, args.layers)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < args.budget:
        plain_step(model, opt, train_ids, args.batch, args.seq)
        steps += 1
    train_time = time.perf_counter() - t0
    val = score_ids(model, val_ids, torch.device("cpu")) / (len(val_ids) - 1)
    row = {"model": f"{args.layers}x{args.hidden}", "batch": args.batch, "seq": args.seq, "lr": args.lr,
           "budget_s": args.budget, "steps": steps, "chars_per_sec": steps * args.batch * args.seq / train_time,
           "val_nats_per_char": val, "threads": torch.get_num_threads()}
    print(f"{'model':>8} {'steps':>6} {'chars/s':>9} {'val nats/char':>14}")
    print(f"{row['model']:>8} {steps:>6} {row['chars_per_sec']:>9,.0f} {val:>14.4f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
