"""A small nanoGPT-style Transformer, trained for a fixed wall time: the baseline benchmarks/parallel_cells.py
compares charnn's recurrent models against at equal time. A benchmark baseline, not a charnn feature.

Pre-norm blocks (LayerNorm -> causal self-attention -> residual, LayerNorm -> 4x GELU MLP -> residual), learned
positions, tied embedding and head, AdamW with warm-up and cosine decay, random windows of the training text
(nanoGPT's train.py). Scored on the validation text in non-overlapping windows of `block` characters (each
character sees the window's earlier ones only: slightly pessimistic against a recurrent model's carried state).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab: int
    block: int = 128  # context length
    layers: int = 4
    heads: int = 4
    width: int = 128
    dropout: float = 0.0


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(c.width), nn.LayerNorm(c.width)
        self.qkv, self.proj = nn.Linear(c.width, 3 * c.width), nn.Linear(c.width, c.width)
        self.mlp = nn.Sequential(nn.Linear(c.width, 4 * c.width), nn.GELU(), nn.Linear(4 * c.width, c.width))
        self.heads, self.drop = c.heads, c.dropout

    def forward(self, x):  # (B, T, C)
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.drop if self.training else 0.0)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.c = c
        self.tok, self.pos = nn.Embedding(c.vocab, c.width), nn.Embedding(c.block, c.width)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.ln = nn.LayerNorm(c.width)
        self.apply(lambda m: nn.init.normal_(m.weight, std=0.02) if isinstance(m, (nn.Linear, nn.Embedding)) else None)

    def forward(self, x):  # (B, T) -> (B, T, V)
        h = self.tok(x) + self.pos(torch.arange(x.shape[1], device=x.device))
        for b in self.blocks:
            h = b(h)
        return self.ln(h) @ self.tok.weight.t()  # tied head


@torch.no_grad()
def score(model: GPT, ids: torch.Tensor, batch: int = 32) -> float:
    """Nats per character over `ids` in non-overlapping windows of model.c.block."""
    model.eval()
    T = model.c.block
    n = (len(ids) - 1) // T
    x, y = ids[:n * T].view(n, T), ids[1:n * T + 1].view(n, T)
    total = 0.0
    for i in range(0, n, batch):
        total += F.cross_entropy(model(x[i:i + batch]).flatten(0, 1), y[i:i + batch].flatten(), reduction="sum").item()
    model.train()
    return total / (n * T)


def train_for(train_ids: torch.Tensor, val_ids: torch.Tensor, vocab: int, seconds: float, batch: int = 32,
              lr: float = 2e-3, seed: int = 1337, max_steps=None, **shape) -> dict:
    """Train a GPT of `shape` on random windows for `seconds` of wall time (or `max_steps`, the schedule then
    by steps); its val nats/char then."""
    torch.manual_seed(seed)
    c = GPTConfig(vocab=vocab, **shape)
    model = GPT(c)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.99))
    start, steps, warm = time.perf_counter(), 0, 100
    while (elapsed := time.perf_counter() - start) < seconds and steps < (max_steps or float("inf")):
        # 1) linear warm-up, 2) cosine decay to lr/10 over the wall-time budget (or the steps)
        frac = min(1.0, steps / max_steps if max_steps else elapsed / seconds)
        scale = min(1.0, (steps + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr * scale
        at = torch.randint(len(train_ids) - c.block - 1, (batch,))
        x = torch.stack([train_ids[i:i + c.block] for i in at])
        y = torch.stack([train_ids[i + 1:i + c.block + 1] for i in at])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps += 1
    seconds = time.perf_counter() - start
    return {"steps": steps, "batch": batch, "seconds": round(seconds, 1), "params": sum(p.numel() for p in model.parameters()),
            "chars": steps * batch * c.block, "val": round(score(model, val_ids), 4)}
