"""Drawing tokens: decoding filters and seeded Gumbel noise.

Decoding is temperature (`temper`), then top-k, then top-p, then a Gumbel-max draw (argmax of logits + Gumbel
noise: an exact sample from the softmax). The noise is a counter-based hash of (seed, draw, token): a seed reproduces
the output, whatever else is in the batch, however many tokens a step draws, on any device. To float rounding: a
CUDA device's logs, and one stream's draw in C on the CPU (charnn.models.native: its head, and for an int8 LSTM or
GRU stream the noise's logs, about 1% of them a last bit apart), are not torch's CPU operations, so a near-tie between
two tokens can fall the other way there; the tests compare whole seeded texts across these paths.
`charnn.generation.batcher` runs the loop that steps the model and draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from charnn.sampling import SamplingParams

NOISE_FLOATS = 1 << 20  # a block of Gumbel noise holds at most about this many numbers


def filter_logits(logits: torch.Tensor, top_k: Optional[int] = None, top_p: Optional[float] = None) -> torch.Tensor:
    """(B, V) temperature-scaled logits -> the same with every token outside top-k, then top-p, at -inf. The most
    likely token always stays: a p so small that float32 reads it as 0 keeps that one token, not none."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_, order = logits.sort(dim=-1, descending=True)
        probs = sorted_.softmax(dim=-1)
        outside = probs.cumsum(dim=-1) - probs >= top_p  # the mass before this token already reaches p
        outside[..., 0] = False  # (the first token's mass before it is 0, and 0 >= p when p underflows float32)
        logits = logits.scatter(-1, order, sorted_.masked_fill(outside, float("-inf")))
    return logits


def temper(logits: torch.Tensor, temperature) -> torch.Tensor:
    """(n, V) logits / temperature, in place: a float, or (n, 1) one per row. The one place logits are divided
    (the Batcher's draw and sampling from an encoder-decoder); greedy draws are never divided (see
    `charnn.sampling.SamplingParams.greedy`). One stream's draw in C (cells_native.c's head_draw) makes the same
    float32 division, and is checked against this one (tests/test_native.py)."""
    return logits.div_(temperature)


def _signed(c: int) -> int:
    """A 64-bit constant as the int64 torch stores."""
    return c - (1 << 64) if c >= 1 << 63 else c


GOLDEN = _signed(0x9E3779B97F4A7C15)  # splitmix64's increment
MIX1, MIX2 = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> keeps the sign)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer, elementwise on int64 (products wrap modulo 2**64, as two's complement does)."""
    x = (x ^ _shr(x, 30)) * MIX1
    x = (x ^ _shr(x, 27)) * MIX2
    return x ^ _shr(x, 31)


def gumbel_noise(seeds: torch.Tensor, positions: torch.Tensor, steps: int, vocab: int) -> torch.Tensor:
    """(steps, n, V) Gumbel(0, 1) noise for n rows: row i's noise for its draws positions[i] .. + steps - 1.

    Each number is a hash of (seed, draw, token), splitmix64 style: mix64(mix64(seed) + index * GOLDEN) with
    index = draw * V + token; its top 24 bits make a uniform U in (0, 1) and -log(-log(U)) a Gumbel. So a row's
    noise depends on its seed and how far it has drawn, not on the other rows or the device, and all rows'
    noise for a block is a dozen tensor ops, however many rows there are. (23 bits: with 24, float32 rounds the
    largest U to 1.0, and its Gumbel would be infinite.)"""
    dev = seeds.device
    draw = positions[None, :, None] + torch.arange(steps, device=dev)[:, None, None]  # (steps, n, 1)
    index = draw * vocab + torch.arange(vocab, device=dev)  # (steps, n, V)
    x = mix64(mix64(seeds)[None, :, None] + index * GOLDEN)
    u = (_shr(x, 41).float() + 0.5) * (1.0 / (1 << 23))
    return u.log_().neg_().log_().neg_()


@dataclass
class DrawPlan:
    """A batch's draw settings as tensors, made again only after rows joined or left: (n, 1) temperatures (None: all
    1), filter groups (top_k, top_p, the rows' indices: None for all), and for the noise each row's seed, its draws
    so far (advanced as blocks are drawn) and the greedy rows (None: none). A greedy row takes the argmax: no
    noise, and no temperature (it is divided by 1, so one division serves the whole batch)."""
    scale: Optional[torch.Tensor]
    filters: list
    seeds: torch.Tensor
    drawn: torch.Tensor
    greedy: Optional[torch.Tensor]

    @classmethod
    def of(cls, params: Sequence[SamplingParams], drawn: List[int], device: torch.device) -> "DrawPlan":
        temps = [1.0 if p.greedy else p.temperature for p in params]
        scale = None if all(t == 1.0 for t in temps) else torch.tensor(temps, device=device)[:, None]
        groups: Dict[tuple, List[int]] = {}
        for i, p in enumerate(params):
            if p.top_k is not None or p.top_p is not None:
                groups.setdefault((p.top_k, p.top_p), []).append(i)
        filters = [(k, p, None if len(idx) == len(params) else torch.tensor(idx, device=device))
                   for (k, p), idx in groups.items()]
        greedy = [i for i, p in enumerate(params) if p.greedy]
        return cls(scale, filters, torch.tensor([p.seed for p in params], dtype=torch.long, device=device),
                   torch.tensor(drawn, dtype=torch.long, device=device),
                   torch.tensor(greedy, device=device) if greedy else None)


class Utf8Mask:
    """Keeps a subword model's text UTF-8: its byte pieces (byte fallback) may only be drawn where they continue or
    start a character, so a byte that no character has there is never drawn (it would decode as U+FFFD). Each row
    has a state (where it is in a character: `charnn.text.subword.UTF8_STATES`), 0 at the start; the draw adds
    `bias[state]` (0 or -inf per token) to the tempered logits before the filters, so they and the noise choose among
    the allowed tokens, and the state then moves on by `next[state, drawn]`. Tensor operations only (a CUDA graph
    records them); the C draws take the same tables (`c_args`). For a tokenizer of whole characters it is off: the
    rows' states stay 0 and `apply`/`advance` do nothing."""

    def __init__(self, tables, capacity: int, device: torch.device):
        """`tables`: the tokenizer's (allowed, next) (`utf8_tables`), or None: off."""
        from charnn.models.native import NO_MASK

        self.on, self.state = tables is not None, torch.zeros(capacity, dtype=torch.long, device=device)
        self.c_args = NO_MASK  # (bias, next, state) pointers for the C draws (head_draw, min_block, int8_block)
        if self.on:
            allowed = torch.as_tensor(tables[0])
            self.V = allowed.shape[1]
            self.bias = torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf")).to(device)
            self.next = torch.as_tensor(tables[1], dtype=torch.long).to(device)
            self.flat_next = self.next.view(-1)
            self.c_args = (self.bias.data_ptr(), self.next.data_ptr(), self.state.data_ptr())

    @classmethod
    def of(cls, tokenizer, capacity: int, device: torch.device) -> "Utf8Mask":
        """The guard for a tokenizer with byte pieces (`utf8_tables`); off for one of whole characters."""
        tables = getattr(tokenizer, "utf8_tables", None)
        return cls(None if tables is None else tables(), capacity, device)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """(n, V) logits of the first n rows, in place: the tokens their states do not allow at -inf."""
        return logits.add_(self.bias.index_select(0, self.state[:logits.shape[0]])) if self.on else logits

    def advance(self, drawn: torch.Tensor) -> None:
        """The first n rows drew `drawn` (n,): their states move on."""
        if self.on:
            n = drawn.shape[0]
            self.state[:n] = self.flat_next.index_select(0, self.state[:n] * self.V + drawn)
