"""A benchmark-only minGRU / minLSTM block with a short causal convolution before its gates (issue 31 asked
whether one pays): parallel_cells.py's specs ending in kN (mingru:2x256x1f2k4) train charnn's MinRNN with
this block in place of MinBlock, in the same trainer, so the rows compare at equal steps or time.

    x + Dropout(Out(scan(Gates(n + Conv(n))))),  n = LayerNorm(x)

Conv is depthwise over the last N steps (as Mamba's and Griffin's blocks have before their recurrences), its
taps starting at zero (the block starts as charnn's). The last N - 1 values of n ride in the carried state, after
the recurrence's h, so that windows join exactly as the LSTM's do: the layer's state is (B, S + (N - 1) * D).
Not a charnn feature: the sampler's steppers know nothing of it (benchmarks/PARALLEL.md has the numbers).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from charnn.models import fused, minrnn


class ConvBlock(minrnn.MinBlock):
    taps = 4

    def __init__(self, c):
        super().__init__(c)
        D = c.hidden
        self.conv = nn.Conv1d(D, D, self.taps, groups=D, bias=False)
        nn.init.zeros_(self.conv.weight)
        self.width = c.expand * c.hidden

    def forward(self, x, h0, every=False):
        B, T, D = x.shape
        k, S = self.taps, self.width
        tail = x.new_zeros(B, k - 1, D) if h0 is None else h0[:, S:].view(B, k - 1, D).to(x.dtype)
        h0 = None if h0 is None else h0[:, :S]
        n = self.norm(x)
        padded = torch.cat([tail.to(n.dtype), n], 1)  # (B, k - 1 + T, D)
        n = n + F.conv1d(padded.transpose(1, 2), self.conv.weight.to(n.dtype), groups=D).transpose(1, 2)
        u = self.gates(n)
        if fused.available(u):  # the C scan on a CPU, as MinBlock's unfused path
            h = fused.min_scan(self.cell, u, h0)[0]
        else:
            h = minrnn.mingru_scan(minrnn.mingru_input(self.cell, u), h0)
        x = x + self._dropped(self.out(h.to(x.dtype) if not torch.is_autocast_enabled("cpu") else h))
        if self.ffn is not None:
            x = x + self._dropped(self.ffn[:-1](x))
        new_tail = padded[:, -(k - 1):].float().reshape(B, -1)
        return x, (h if every else torch.cat([h[:, -1].float(), new_tail], -1))


@contextlib.contextmanager
def conv_blocks(taps: int):
    """MinRNN builds ConvBlocks of `taps` steps inside the block (charnn's own MinBlock again after)."""
    before = minrnn.MinBlock
    ConvBlock.taps = taps
    minrnn.MinBlock = ConvBlock
    try:
        yield
    finally:
        minrnn.MinBlock = before
