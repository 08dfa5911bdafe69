"""Labelled texts read whole, for the many-to-one classifier: each training example is a window of at most
`seq_len` tokens with its text's label, batched with windows of similar length.

- Line documents (`--label-by line`): each line is a text; a line longer than `seq_len` is read in windows
  (its first `seq_len` tokens, the next, ...), each an example with the line's label.
- File and folder documents (one long text per label): cut into windows of `seq_len` tokens on a grid that
  moves with every epoch (the epoch's offset), so window edges fall elsewhere each time.

An epoch shuffles the windows (seeded by its offset), sorts each run of 64 batches' worth by length so a batch
pads little, and shuffles the batches. A batch is (x (rows, width) ids padded with 0, y (rows, 1) the label
index 0..N-1, lengths (rows,)); under torchrun each rank takes its share of the rows.
"""

from __future__ import annotations

from typing import Iterator, List, Sequence, Tuple

import numpy as np
import torch

from charnn.errors import CharnnError

RUN = 64  # batches' worth of windows sorted by length together


def cut_windows(starts: Sequence[int], lengths: Sequence[int], labels: Sequence[int], width: int,
                shift: int = 0, stream: bool = False) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(window starts, lengths, labels): each text in windows of at most `width` tokens. A stream (a label's
    long text) starts its grid at `shift` and keeps whole windows only, unless the text is shorter than one."""
    out_s: List[int] = []
    out_n: List[int] = []
    out_l: List[int] = []
    for s, n, lab in zip(starts, lengths, labels):
        s, n = int(s), int(n)
        if stream and n > width:
            first = shift % max(1, n - width + 1)
            cuts = range(s + first, s + n - width + 1, width)
            out_s += cuts
            out_n += [width] * len(cuts)
            out_l += [lab] * len(cuts)
            continue
        for at in range(s, s + max(n, 1), width):
            out_s.append(at)
            out_n.append(min(width, s + n - at))
            out_l.append(lab)
    return np.asarray(out_s, np.int64), np.asarray(out_n, np.int64), np.asarray(out_l, np.int64)


def pad_windows(ids: torch.Tensor, starts: Sequence[int], lengths: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x (rows, longest) ids padded with 0, lengths (rows,)) of the windows."""
    width = max(1, int(max(lengths)))
    x = torch.zeros((len(starts), width), dtype=torch.long)
    for r, (s, n) in enumerate(zip(starts, lengths)):
        x[r, :n] = ids[int(s):int(s) + int(n)]
    return x, torch.as_tensor(np.maximum(np.asarray(lengths), 1), dtype=torch.long)


class TextBatches:
    def __init__(self, ids: torch.Tensor, starts, lengths, labels, batch_size: int, seq_len: int, stream: bool,
                 device=None):
        """`ids`: every text's tokens one after another (CPU); `starts`, `lengths`: each text's span; `labels`:
        each text's label index (0..N-1); `stream`: the texts are long label documents (file, folder)."""
        self.ids, self.batch_size, self.seq_len, self.stream = ids, batch_size, seq_len, stream
        self.docs = (np.asarray(starts, np.int64), np.asarray(lengths, np.int64), np.asarray(labels, np.int64))
        self.device = device or torch.device("cpu")
        self.rows_share = (0, 1)
        self._plan_key, self._plan = None, []
        n = len(cut_windows(*self.docs, seq_len, 0, stream)[0])
        if n < batch_size:
            raise CharnnError(f"the training text makes {n:,} texts of up to --seq-len {seq_len} tokens, fewer than "
                              f"one batch needs ({batch_size}); lower --batch-size or --seq-len, or use more text")

    def shard(self, rank: int, world: int) -> None:
        self.rows_share = (rank, world)

    def max_offset(self) -> int:
        return 2**31 - 1  # the offset seeds the epoch's shuffle (and moves a stream's window grid)

    def fresh(self, offset: int, window: int) -> bool:
        return True  # every batch is read from the zero state

    def steps_per_epoch(self, offset: int = 0) -> int:
        return len(self.plan(offset))

    def plan(self, offset: int) -> list:
        """The epoch's batches: (window starts, lengths, labels) each, deterministic in `offset`."""
        if self._plan_key == offset:
            return self._plan
        B = self.batch_size
        rng = np.random.default_rng(offset)
        starts, lengths, labels = cut_windows(*self.docs, self.seq_len, offset % self.seq_len, self.stream)
        order = rng.permutation(len(starts))
        batches = []
        for c in range(0, len(order), RUN * B):
            chunk = order[c:c + RUN * B]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            # a tail of fewer than B windows waits for another epoch's shuffle
            batches += [chunk[i:i + B] for i in range(0, len(chunk) - B + 1, B)]
        self._plan = [(starts[b], lengths[b], labels[b]) for b in (batches[j] for j in rng.permutation(len(batches)))]
        self._plan_key = offset
        return self._plan

    def epoch(self, offset: int = 0, start: int = 0) -> Iterator[Tuple[torch.Tensor, ...]]:
        rank, world = self.rows_share
        per = self.batch_size // world
        for starts, lengths, labels in self.plan(offset)[start:]:
            rows = slice(rank * per, (rank + 1) * per)
            x, n = pad_windows(self.ids, starts[rows], lengths[rows])
            y = torch.as_tensor(labels[rows], dtype=torch.long).view(-1, 1)
            yield x.to(self.device), y.to(self.device), n
