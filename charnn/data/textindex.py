"""A suffix-array index over a text, to find which parts of another text occur in it verbatim.

The text is kept as UTF-8 bytes (`text.utf8`) beside its suffix array (`sa.bin`, int32, or int64 past 2 GB)
and `index.json`, written last, which marks the folder complete; both arrays are memory-mapped when read.
The suffix array comes from libdivsufsort (pydivsufsort): exact on any text, about 0.2 s per MB, where
prefix doubling in numpy took 11x as long for a cap of 64 bytes (benchmarks/ADAPT.md).

Matching is in bytes and counted in characters. UTF-8 is self-synchronising: a match that starts at a
character's first byte starts at one in the text too, and the whole characters inside a matching byte
prefix match as characters.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Tuple

import numpy as np

from charnn.data.cache import HINT
from charnn.data.files import atomic_file, write_atomic
from charnn.text.tokenizer import codepoints

FORMAT = 1
TEXT, SA, META = "text.utf8", "sa.bin", "index.json"
WIDTH = 64  # bytes compared per query per round
BLOCK = 16 << 20  # bytes counted at a time when locating a position


@dataclass
class TextIndex:
    folder: Path
    text: np.ndarray  # uint8: the text's UTF-8 bytes
    sa: np.ndarray  # the byte offsets of its suffixes, in sorted order
    chars: int  # characters in the text
    seconds: float  # how long building it took


@dataclass
class Query:
    """A sample laid out for searching: its UTF-8 bytes and where each character starts and ends in them."""
    data: np.ndarray  # uint8
    starts: np.ndarray  # int64, one per character
    ends: np.ndarray

    @classmethod
    def of(cls, text: str) -> "Query":
        cps = codepoints(text).astype(np.int64)
        size = 1 + (cps >= 0x80) + (cps >= 0x800) + (cps >= 0x10000)
        ends = np.cumsum(size)
        data = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
        return cls(data, ends - size, ends)


def build_index(folder: Path, chunks: Iterable[bytes]) -> TextIndex:
    """Write the text (UTF-8 chunks, in order) and its suffix array into `folder`; the index, opened. The caller
    holds the folder's build lock: temp files left there are a killed build's, and are removed first."""
    import pydivsufsort

    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    for left in folder.glob(".*.tmp"):  # (a build killed mid-write left 170 MB there that nothing removed)
        with contextlib.suppress(OSError):
            left.unlink()
    chars, what = 0, "the copying-check index"
    try:
        with atomic_file(folder / TEXT, what=what, hint=HINT) as f:
            for chunk in chunks:
                f.write(chunk)
                chars += len(chunk) - _continuations(np.frombuffer(chunk, dtype=np.uint8))
        text = np.fromfile(folder / TEXT, dtype=np.uint8)
        sa = pydivsufsort.divsufsort(text)
        with atomic_file(folder / SA, size=sa.nbytes, what=what, hint=HINT) as f:
            sa.tofile(f)
        meta = {"format": FORMAT, "bytes": len(text), "chars": chars, "sa_dtype": sa.dtype.name,
                "seconds": time.perf_counter() - t0}
        write_atomic(folder / META, json.dumps(meta).encode("utf-8"), HINT, what=what)
        del text, sa  # (held while the index was mapped again: twice the memory, 5 bytes a character, at the peak)
    except BaseException:  # (a full cache left the text without its suffix array: space gone for nothing)
        for name in (TEXT, SA):
            with contextlib.suppress(OSError):
                (folder / name).unlink(missing_ok=True)
        raise
    return open_index(folder)


def open_index(folder: Path) -> Optional[TextIndex]:
    """The complete index in `folder`, memory-mapped, or None."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        dtype = np.dtype(meta["sa_dtype"])
        if (meta.get("format") != FORMAT or (folder / TEXT).stat().st_size != meta["bytes"]
                or (folder / SA).stat().st_size != meta["bytes"] * dtype.itemsize or not meta["bytes"]):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    text = np.memmap(folder / TEXT, dtype=np.uint8, mode="r")
    sa = np.memmap(folder / SA, dtype=dtype, mode="r")
    return TextIndex(folder, text, sa, meta["chars"], meta.get("seconds", 0.0))


def match_lengths(index: TextIndex, q: Query, at: np.ndarray, limit: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """For sample characters `at`: how many characters from there on (at most `limit`) occur verbatim in the
    text, and a byte offset in the text where they do (-1 where none)."""
    last = np.minimum(at + limit, len(q.starts)) - 1
    start = q.starts[at]
    nbytes, where = _search(index.text, index.sa, q.data, start, q.ends[last] - start)
    return np.searchsorted(q.ends, start + nbytes, side="right") - at, where


def longest_match(index: TextIndex, q: Query, lengths: np.ndarray, where: np.ndarray, cap: int) -> Tuple[int, int, int]:
    """(sample character, length, text byte offset) of the longest verbatim span, given `match_lengths`
    capped at `cap`. Only matches cut by the cap are searched again, the most promising first: a run of
    cut positions a..b is followed by one whose match is shorter than `cap`, so a match from i in the run
    ends before b + cap, or by the last `cap` positions, which hold their whole matches."""
    m = len(lengths)
    cut = np.flatnonzero((lengths == cap) & (np.arange(m) + cap < m))
    if not len(cut):
        i = int(np.argmax(lengths))
        return i, int(lengths[i]), int(where[i])
    run = np.cumsum(np.r_[True, np.diff(cut) > 1])  # which run of consecutive positions each one is in
    run_end = cut[np.r_[np.flatnonzero(np.diff(run)), len(cut) - 1]][run - 1]
    bound = np.where(run_end + cap + 1 >= m, m - cut, run_end - cut + cap)  # b + 1 may be exact to the end
    order = np.argsort(-bound, kind="stable")
    cut, bound = cut[order], bound[order]
    best, batch = (int(cut[0]), cap, int(where[cut[0]])), 1
    while len(cut) and bound[0] > best[1]:
        found, at = match_lengths(index, q, cut[:batch], bound[:batch])
        j = int(np.argmax(found))
        if found[j] > best[1]:
            best = (int(cut[j]), int(found[j]), int(at[j]))
        keep = bound[batch:] > best[1]
        cut, bound, batch = cut[batch:][keep], bound[batch:][keep], batch * 2
    return best


def locate(index: TextIndex, offset: int) -> Tuple[int, int]:
    """A byte offset in the text -> (character offset, line number from 1)."""
    chars, lines = offset, 1
    for a in range(0, offset, BLOCK):
        block = np.asarray(index.text[a: min(offset, a + BLOCK)])
        chars -= _continuations(block)
        lines += int(np.count_nonzero(block == 10))
    return chars, lines


def _continuations(data: np.ndarray) -> int:
    """UTF-8 continuation bytes (10xxxxxx): bytes that start no character."""
    return int(np.count_nonzero((data & 0xC0) == 0x80))


def _search(text, sa, q, qs, lim) -> Tuple[np.ndarray, np.ndarray]:
    """For each query q[qs:qs+lim], the longest prefix that occurs in `text` (bytes) and a place where it does.

    All queries binary-search the suffix array together. `lo` and `hi` bracket the query (virtual ends -1
    and n); since suffixes between two that share k bytes with it share at least k too, each comparison
    starts at min(llcp, rlcp). The longest match is with a neighbour of the final bracket."""
    k, n = len(qs), len(sa)
    lo, hi = np.full(k, -1, np.int64), np.full(k, n, np.int64)
    llcp, rlcp = np.zeros(k, np.int64), np.zeros(k, np.int64)
    while True:
        act = np.flatnonzero(hi - lo > 1)
        if not len(act):
            break
        mid = (lo[act] + hi[act]) >> 1
        pos = np.asarray(sa[mid], dtype=np.int64)
        lcp = _common(text, pos, q, qs[act], lim[act], np.minimum(llcp[act], rlcp[act]))
        left = _sorts_before(text, pos, q, qs[act], lim[act], lcp)
        hi[act[left]], rlcp[act[left]] = mid[left], lcp[left]
        lo[act[~left]], llcp[act[~left]] = mid[~left], lcp[~left]
    length = np.maximum(llcp, rlcp)
    side = np.clip(np.where(llcp >= rlcp, lo, hi), 0, n - 1)
    return length, np.where(length > 0, np.asarray(sa[side], dtype=np.int64), -1)


def _common(text, pos, q, qs, lim, lcp) -> np.ndarray:
    """Bytes the queries share with the suffixes at `pos` (at most `lim`), known to be at least `lcp`."""
    n, lcp, todo = len(text), lcp.copy(), np.arange(len(pos))
    step = np.arange(WIDTH)
    while len(todo):
        off = lcp[todo, None] + step  # (queries, WIDTH)
        tpos = pos[todo, None] + off
        same = (tpos < n) & (off < lim[todo, None])
        same &= np.asarray(text[np.minimum(tpos, n - 1)]) == q[np.minimum(qs[todo, None] + off, len(q) - 1)]
        whole = same.all(axis=1)
        lcp[todo] += np.where(whole, WIDTH, np.argmin(same, axis=1))
        todo = todo[whole]
    return lcp


def _sorts_before(text, pos, q, qs, lim, lcp) -> np.ndarray:
    """Whether each query (cut to `lim` bytes) sorts at or before the suffix at `pos`, given their `lcp`."""
    n = len(text)
    tpos = np.minimum(pos + lcp, n - 1)
    ahead = q[np.minimum(qs + lcp, len(q) - 1)] < np.asarray(text[tpos])
    return (lcp >= lim) | ((pos + lcp < n) & ahead)
