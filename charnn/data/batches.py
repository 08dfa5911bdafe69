"""Splitting text and laying token ids out as contiguous streams for stateful truncated BPTT."""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch

from charnn.errors import CharnnError


def split_text(text: str, val_frac: float) -> Tuple[str, str]:
    """A contiguous split: the last `val_frac` of the text is validation (as nanoGPT)."""
    cut = int(len(text) * (1.0 - val_frac))
    return text[:cut], text[cut:]


class StreamBatches:
    """`batch_size` contiguous streams over the ids, cut into windows of `seq_len`.

    Row i of batch t+1 continues row i of batch t, so the hidden state can be carried across
    batches (as torch-rnn's loader). Each epoch starts the streams at a small offset so that window
    boundaries move from epoch to epoch.

    Under torchrun each rank takes a contiguous share of the rows (`shard`): the streams are laid out for
    the global batch exactly as in one process, so N ranks together see what one process sees.
    """

    def __init__(self, ids: torch.Tensor, batch_size: int, seq_len: int, labels: Optional[torch.Tensor] = None):
        """`labels`: the label id of each token's document (same length as ids), or None."""
        self.ids, self.batch_size, self.seq_len, self.labels = ids, batch_size, seq_len, labels
        self.rows = slice(0, batch_size)  # this process's streams (all of them outside torchrun)
        need = batch_size * seq_len + 1
        if len(ids) < need:
            raise CharnnError(
                f"the training text has {len(ids):,} tokens, fewer than one batch needs "
                f"({batch_size} streams x {seq_len} + 1 = {need:,}); lower --batch-size or --seq-len, or use more text"
            )

    def shard(self, rank: int, world: int) -> None:
        """Keep rows [rank*B/world, (rank+1)*B/world) of every batch; B must divide evenly."""
        per = self.batch_size // world
        self.rows = slice(rank * per, (rank + 1) * per)

    def steps_per_epoch(self, offset: int = 0) -> int:
        stream_len = (len(self.ids) - 1 - offset) // self.batch_size
        return stream_len // self.seq_len

    def layout(self, offset: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets as (batch_size, stream_len) views starting at `offset`."""
        B = self.batch_size
        L = (len(self.ids) - 1 - offset) // B
        data = self.ids[offset: offset + B * L + 1]
        return data[:-1].view(B, L), data[1:].view(B, L)

    def epoch(self, offset: int = 0, start: int = 0) -> Iterator[Tuple[torch.Tensor, ...]]:
        """Batches (x, y), each (rows, seq_len), from window `start` to the end of the epoch; with labels,
        (x, y, labels), where a position's label is that of the token it predicts."""
        X, Y = self.layout(offset)
        labels = None
        if self.labels is not None:
            B, L = X.shape
            labels = self.labels[offset + 1: offset + B * L + 1].view(B, L)
        if self.rows != slice(0, self.batch_size):
            X, Y = X[self.rows], Y[self.rows]
            labels = None if labels is None else labels[self.rows]
        T = self.seq_len
        for t in range(start, self.steps_per_epoch(offset)):  # ids may be compact (uint8...): the model takes int64
            w = slice(t * T, (t + 1) * T)
            batch = (X[:, w].long(), Y[:, w].long())
            yield batch if labels is None else batch + (labels[:, w].long(),)

    def max_offset(self) -> int:
        """Largest epoch offset that still leaves as many windows as offset 0."""
        spare = (len(self.ids) - 1) - self.batch_size * self.seq_len * self.steps_per_epoch(0)
        return min(self.seq_len - 1, spare)
