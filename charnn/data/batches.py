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
            lower = "--batch-size or --seq-len" if batch_size > 1 else "--seq-len"
            raise CharnnError(
                f"the training text has {len(ids):,} tokens, fewer than one batch needs "
                f"({batch_size} stream{'s' if batch_size > 1 else ''} x {seq_len} + 1 = {need:,}); lower {lower}, or "
                "use more text"
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

    def fresh(self, offset: int, window: int) -> bool:
        """Streams carry their state from window to window (an epoch's start resets it)."""
        return False

    def max_offset(self) -> int:
        """Largest epoch offset that still leaves as many windows as offset 0."""
        spare = (len(self.ids) - 1) - self.batch_size * self.seq_len * self.steps_per_epoch(0)
        return min(self.seq_len - 1, spare)


IGNORE = -100  # the target of a padding position: cross_entropy's default ignore_index


def pad_rows(seqs, start: int, width: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token sequences as padded rows (x, y), each (rows, width): y is a row's tokens then IGNORE, x the
    start id then the same tokens (what each one is predicted from); `width` defaults to the longest."""
    width = max(1, max(len(s) for s in seqs)) if width is None else width
    y = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for r, s in enumerate(seqs):
        y[r, :len(s)] = torch.as_tensor(s, dtype=torch.long)
    x = torch.cat([torch.full((len(seqs), 1), start, dtype=torch.long), y[:, :-1].clamp_min(0)], dim=1)
    return x, y


class DocumentBatches:
    """Independent documents (`--label-by line`: each line its own text), a batch of whole documents at a time,
    each row starting from a zero state with the start id before its first token: exactly how `classify`
    and `sample` meet a text. The stateful streams of StreamBatches would carry every document's state into
    the next, so the model would learn its first characters from whatever text came before, and never see
    the zero state it is scored from.

    An epoch shuffles the documents (seeded by the epoch's `offset`, which StreamBatches uses as a start
    position), sorts each run of 64 batches' worth by length so a batch pads little, and packs a batch with
    `batch_size` x k rows, k as large as keeps the batch within `batch_size` x `seq_len` tokens: short lines
    get the same tokens per step as a stream would. A batch longer than `seq_len` goes through in windows with
    the state carried (`fresh(window)` says where a batch starts); padding targets are IGNORE. Row counts
    are multiples of `batch_size`, so under torchrun every rank takes its share of each batch."""

    def __init__(self, ids: torch.Tensor, lengths, batch_size: int, seq_len: int, start: int,
                 labels: Optional[torch.Tensor] = None, device: Optional[torch.device] = None):
        """`ids` and `labels` (each token's label) stay on the CPU; batches go to `device`."""
        import numpy as np

        self.device = device or torch.device("cpu")
        self.ids, self.labels, self.batch_size, self.seq_len, self.start = ids, labels, batch_size, seq_len, start
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.rows_share = (0, 1)
        self._plan_key, self._plan = None, []
        if len(self.lengths) < batch_size:
            raise CharnnError(f"the training text has {len(self.lengths):,} documents, fewer than one batch needs "
                              f"({batch_size}); lower --batch-size or use more lines")

    def shard(self, rank: int, world: int) -> None:
        self.rows_share = (rank, world)

    def max_offset(self) -> int:
        return 2**31 - 1  # the offset only seeds the epoch's shuffle

    def plan(self, offset: int):
        """The epoch's windows: (document indices of the batch, time slice, fresh), deterministic in `offset`."""
        import numpy as np

        if self._plan_key == offset:
            return self._plan
        B, T = self.batch_size, self.seq_len
        rng = np.random.default_rng(offset)
        order = rng.permutation(len(self.lengths))
        batches = []
        run = 64 * B
        for c in range(0, len(order), run):
            chunk = order[c:c + run]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            i = 0
            while i + B <= len(chunk):  # a tail of fewer than B documents waits for another epoch's shuffle
                rows = B
                while i + rows + B <= len(chunk) and (rows + B) * self.lengths[chunk[i + rows + B - 1]] <= B * T:
                    rows += B
                batches.append(chunk[i:i + rows])
                i += rows
        windows = []
        for b in (batches[j] for j in rng.permutation(len(batches))):
            width = int(self.lengths[b].max())
            for t in range(0, width, T):
                windows.append((b, slice(t, min(width, t + T)), t == 0))
        self._plan_key, self._plan = offset, windows
        return windows

    def steps_per_epoch(self, offset: int = 0) -> int:
        return len(self.plan(offset))

    def fresh(self, offset: int, window: int) -> bool:
        """Whether `window` starts a batch of documents (the state starts from zero)."""
        plan = self.plan(offset)
        return window >= len(plan) or plan[window][2]

    def epoch(self, offset: int = 0, start: int = 0) -> Iterator[Tuple[torch.Tensor, ...]]:
        rank, world = self.rows_share
        for docs, span, _ in self.plan(offset)[start:]:
            per = len(docs) // world
            x, y, lab = self.pad(docs[rank * per:(rank + 1) * per], span, int(self.lengths[docs].max()))
            yield (x, y) if lab is None else (x, y, lab)

    def pad(self, docs, span: slice, width: int):
        """(x, y, labels) of documents `docs` over time `span` of a batch `width` tokens wide (a rank's rows
        may all be shorter): x is the start id then each document's tokens, y its tokens then IGNORE; labels
        are each row's label (None without labels)."""
        import numpy as np

        x, y = pad_rows([self.ids[int(self.starts[d]):int(self.starts[d] + self.lengths[d])] for d in docs],
                        self.start, width)
        lab = None
        if self.labels is not None:
            first = torch.from_numpy(self.starts[np.asarray(docs)])
            lab = self.labels[first].long().view(-1, 1).expand(len(docs), span.stop - span.start).to(self.device)
        return x[:, span].to(self.device), y[:, span].to(self.device), lab
