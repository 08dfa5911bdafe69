"""Drawing tokens: decoding filters and seeded Gumbel noise.

Decoding is temperature, then top-k, then top-p, then a Gumbel-max draw (argmax of logits + Gumbel noise: an
exact sample from the softmax). The noise comes in blocks from one seeded torch.Generator on the model's
device and is used one row per token, in order, however many tokens a step draws; so a seed reproduces the
output byte for byte. `charnn.generation.batcher` runs the loop that steps the model and draws.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

NOISE_FLOATS = 1 << 20  # Gumbel noise is drawn in blocks of about this many numbers

Draw = Callable[[torch.Tensor, Optional[torch.Tensor], torch.Tensor], torch.Tensor]  # (logits, noise, out) -> out


def filter_logits(logits: torch.Tensor, top_k: Optional[int] = None, top_p: Optional[float] = None) -> torch.Tensor:
    """(B, V) temperature-scaled logits -> the same with every token outside top-k, then top-p, at -inf."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_, order = logits.sort(dim=-1, descending=True)
        probs = sorted_.softmax(dim=-1)
        outside = probs.cumsum(dim=-1) - probs >= top_p  # the mass before this token already reaches p
        logits = logits.scatter(-1, order, sorted_.masked_fill(outside, float("-inf")))
    return logits


def gumbel_noise(steps: int, batch: int, vocab: int, generator: torch.Generator, device) -> torch.Tensor:
    """(steps, B, V) Gumbel(0, 1) noise, -log(E) with E = -log(U) ~ Exp(1), U ~ Uniform[0, 1): argmax(logits +
    noise) draws from the softmax. (From uniforms: on a CPU, torch's `exponential_` costs about 20 ns a number,
    `rand` and two logs about 5.)"""
    u = torch.rand(steps, batch, vocab, generator=generator, device=device)
    return u.clamp_min_(1e-30).log_().neg_().clamp_min_(1e-30).log_().neg_()


class Noise:
    """Gumbel noise rows (B, V) in a fixed order from one seed, made `steps` rows at a time."""

    def __init__(self, batch: int, vocab: int, seed: int, device: torch.device):
        self.batch, self.vocab, self.device = batch, vocab, device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.steps = max(1, min(256, NOISE_FLOATS // (batch * vocab)))
        self.i, self.block, self.rows = self.steps, None, ()

    def _refill(self) -> None:
        self.block = gumbel_noise(self.steps, self.batch, self.vocab, self.generator, self.device)
        self.rows, self.i = self.block.unbind(0), 0  # views made once per block: a view costs time per token

    def next(self) -> torch.Tensor:
        """The next row."""
        if self.i == self.steps:
            self._refill()
        self.i += 1
        return self.rows[self.i - 1]

    def fill(self, out: torch.Tensor) -> None:
        """Copy the next len(out) rows into `out` (n, B, V), in as few copies as the blocks allow."""
        k = 0
        while k < len(out):
            if self.i == self.steps:
                self._refill()
            m = min(len(out) - k, self.steps - self.i)
            out[k:k + m].copy_(self.block[self.i:self.i + m])
            k, self.i = k + m, self.i + m
