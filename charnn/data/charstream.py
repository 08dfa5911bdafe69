"""Encoding characters in one streaming pass, before the split point or the vocabulary is known.

Each chunk's code points go through a lookup table (code point -> id) in one vectorised step. A fresh
vocabulary grows as characters turn up: a new character gets the next provisional id and the position
where it first appeared. At the end the total length fixes the split, the vocabulary becomes the
characters first seen before the cut (the training split's), sorted, and one pass over the written
array maps provisional ids to final ones (validation-only characters to the unknown id, 0). Fine-tuning
(`--init-from`) starts from the base model's vocabulary: its ids stay, and new training characters follow.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from charnn.data.sources import Part, Undecodable, read_chunks, skip_or_raise
from charnn.text.tokenizer import CharTokenizer, codepoints

NO_CP = 0x110000  # one past the largest code point
SLICE = 1 << 16  # code points per slice when looking for characters not seen before
REMAP_BLOCK = 1 << 22  # ids per block of the final remapping pass


class Overflow(Exception):
    """More distinct characters than the id type holds: encode again with a wider one."""


class CharWriter:
    """Writes ids of text chunks to `out`. With no tokenizer it grows a provisional vocabulary; with one, it
    uses that vocabulary's ids, and with `extend` also grows new characters after them (fine-tuning)."""

    def __init__(self, out, dtype: np.dtype, tokenizer: Optional[CharTokenizer] = None, extend: bool = False):
        self.out, self.dtype, self.grow = out, dtype, tokenizer is None or extend
        self.base = tokenizer.chars if tokenizer is not None else []  # ids 1..len(base), kept as they are
        if len(self.base) > np.iinfo(dtype).max:
            raise Overflow
        self.lut = np.zeros(NO_CP, dtype=dtype)  # 0: unknown (or not seen yet)
        if tokenizer is not None:
            self.lut[tokenizer._cps] = tokenizer._ids
        self.cps: List[int] = []  # provisional id - len(base) - 1 -> code point
        self.first: List[int] = []  # the same -> position of its first appearance
        self.pos = 0

    def write(self, chunk: str) -> None:
        cps = codepoints(chunk)
        ids = self.lut[cps]
        if self.grow and not ids.all():
            self._learn(cps)
            ids = self.lut[cps]
        ids.tofile(self.out)
        self.pos += len(ids)

    def _learn(self, cps: np.ndarray) -> None:
        for s in range(0, len(cps), SLICE):  # small slices: after the first, new characters are rare
            piece = cps[s:s + SLICE]
            new = np.flatnonzero(self.lut[piece] == 0)
            if not new.size:
                continue
            u, i = np.unique(piece[new], return_index=True)
            start = len(self.base) + len(self.cps) + 1
            if start + len(u) - 1 > np.iinfo(self.dtype).max:
                raise Overflow
            self.lut[u] = np.arange(start, start + len(u))
            self.cps += u.tolist()
            self.first += (self.pos + s + new[i]).tolist()

    def mark(self) -> Tuple[int, int]:
        return self.pos, len(self.cps)

    def rollback(self, mark: Tuple[int, int]) -> None:
        """Forget everything written since `mark` (a file that turned out not to be text)."""
        pos, n = mark
        self.out.seek(pos * self.dtype.itemsize)
        self.out.truncate()
        self.pos = pos
        self.lut[self.cps[n:]] = 0
        del self.cps[n:], self.first[n:]


def write_stream(writer: CharWriter, parts: Sequence[Part], encoding: str, separator: Optional[str],
                 end: Optional[int], skipped: list, index0: int, on_event) -> None:
    """Write the parts (a separator between consecutive ones) up to character `end`; optional files
    that are not text are rolled back and reported."""
    wrote_any = False
    for k, part in enumerate(parts):
        mark = writer.mark()
        try:
            if wrote_any and separator:
                _write_clipped(writer, separator, end)
            for chunk in read_chunks(part, encoding):
                if not _write_clipped(writer, chunk, end):
                    return
            wrote_any = True
        except Undecodable as e:
            writer.rollback(mark)
            skip_or_raise(part, e, index0 + k, skipped, on_event)


def _write_clipped(writer: CharWriter, chunk: str, end: Optional[int]) -> bool:
    """Write chunk, cut at `end`; False once `end` is reached."""
    if end is not None:
        if writer.pos >= end:
            return False
        chunk = chunk[: end - writer.pos]
    writer.write(chunk)
    return end is None or writer.pos < end


def finish(writer: CharWriter, path, cut: int, end: int) -> Tuple[CharTokenizer, int]:
    """The final tokenizer (the base's characters, then the new ones first seen before `cut`, sorted) and
    the count of unknown ids in [cut, end); rewrites provisional ids in place as final ones."""
    writer.out.flush()
    if writer.grow:
        nb = len(writer.base)
        cps, first = np.array(writer.cps, dtype=np.int64), np.array(writer.first, dtype=np.int64)
        vocab = np.sort(cps[first < cut])
        remap = np.zeros(nb + len(cps) + 1, dtype=writer.dtype)
        remap[: nb + 1] = np.arange(nb + 1)  # the base's ids keep their meaning
        order = np.searchsorted(vocab, cps)  # the final id of each provisional one that is in the vocabulary
        remap[nb + 1:] = np.where(first < cut, nb + order + 1, 0)
        tok = CharTokenizer(list(writer.base) + [chr(c) for c in vocab], ordered=True)
    else:
        remap, tok = None, None
    unknown, size = 0, writer.dtype.itemsize
    with open(path, "r+b") as f:  # plain reads and writes: faster than faulting pages of a memmap in
        for s in range(0, end, REMAP_BLOCK):
            f.seek(s * size)
            block = np.fromfile(f, dtype=writer.dtype, count=min(REMAP_BLOCK, end - s))
            if remap is not None:  # bytes.translate is many times faster than numpy indexing for one byte
                block = (np.frombuffer(block.tobytes().translate(remap.tobytes().ljust(256, b"\0")), dtype=np.uint8)
                         if writer.dtype.itemsize == 1 else remap[block])
                f.seek(s * size)
                block.tofile(f)
            if s + len(block) > cut:
                unknown += int(np.count_nonzero(block[max(0, cut - s):] == 0))
    return tok, unknown
