"""Pairs for sequence to sequence (`charnn train --pairs`): one `input<TAB>target` per line, read, split, encoded
and laid out as batches of similar length.

Both sides are character sequences that end with a newline token: the encoder reads the input and its end, the
decoder starts from the newline (the start id every charnn model starts from) and writes the target and its end.
A line never holds a newline, so the end token is never ambiguous.

The validation split holds out a seeded random `val_frac` of the distinct *inputs*, with every target they
have: dictionaries are sorted, so a tail would hold out one letter, and an input with several targets
(pronunciation variants) on both sides would leak.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from charnn.data import corpus as plain
from charnn.data.batches import pad_rows
from charnn.data.sources import find_files
from charnn.errors import CharnnError, ConfigError
from charnn.text.tokenizer import CharTokenizer, start_id

END = "\n"  # ends every input and target (and starts the decoder)


@dataclass
class Pair:
    source: str
    target: str


@dataclass
class PairFile:
    path: str
    pairs: List[Pair]
    skipped: int = 0  # lines that were not input<TAB>target (with skip_bad)


@dataclass
class PairText:
    """What `charnn train --pairs` reads: every pair of the CORPUS files, and the split."""
    pairs: List[Pair]
    source: str  # the corpus arguments, for messages and the checkpoint
    name: str = "run"
    skipped_lines: int = 0
    val_pairs: Optional[List[Pair]] = None  # --val-file's pairs (then every pair trains)
    train: List[Pair] = field(default_factory=list)
    val: List[Pair] = field(default_factory=list)

    @property
    def held_out(self):
        """The --val-file's part (None where the text was read without one)."""
        return self.val_pairs

    def with_val_file(self, path: str, encoding: str = "utf-8", skip_bad: bool = False) -> "PairText":
        """The same pairs validated on `path`'s (a resumed run's saved --val-file, not given again: the pairs were
        read without it)."""
        files = read_pair_files([path], encoding, None, skip_bad)
        return replace(self, val_pairs=[p for f in files for p in f.pairs],
                       skipped_lines=self.skipped_lines + sum(f.skipped for f in files))

    def split(self, val_frac: float, seed: int) -> "PairText":
        if self.val_pairs is not None:
            return replace(self, train=list(self.pairs), val=list(self.val_pairs))
        inputs = sorted({p.source for p in self.pairs})
        n_val = max(1, int(round(len(inputs) * val_frac)))
        if n_val >= len(inputs):
            raise CharnnError(f"{len(inputs)} distinct inputs are too few to hold out --val-frac {val_frac} of them")
        held = set(random.Random(seed).sample(inputs, n_val))
        return replace(self, train=[p for p in self.pairs if p.source not in held],
                       val=[p for p in self.pairs if p.source in held])

    def record(self) -> dict:
        """What the checkpoint keeps about the data: sizes, and how long targets run for their inputs (so
        decoding can bound its output length from the input's)."""
        return {"train_pairs": len(self.train), "val_pairs": len(self.val),
                "max_ratio": max((len(p.target) + 1) / (len(p.source) + 1) for p in self.train),
                "max_target": max(len(p.target) for p in self.train),
                "max_source": max(len(p.source) for p in self.train)}


TRAIN_HINT = "`--skip-bad-lines` skips and counts such lines"


def looks_like_pairs(path: str, head: int = 8192) -> bool:
    """Whether a file's first lines (its first `head` bytes; at least 5 non-blank lines) almost all hold exactly
    one tab, as input<TAB>target pairs (and label<TAB>text lines) do: `train` without --pairs says so."""
    try:
        with open(path, "rb") as f:
            lines = [ln for ln in f.read(head).split(b"\n")[:-1] if ln.strip()]
    except OSError:
        return False
    return len(lines) >= 5 and sum(ln.count(b"\t") == 1 for ln in lines) >= 0.9 * len(lines)


def read_pairs(path: Path, encoding: str = "utf-8", skip_bad: bool = False, hint: str = TRAIN_HINT) -> PairFile:
    """The pairs of one file: blank lines skipped; a line without exactly one tab, or with nothing on one side of
    it, is an error naming the file and line (or, with `skip_bad`, skipped and counted). A trailing CR (a CRLF
    file) is dropped."""
    text = plain.read_text(str(path), "pairs file", encoding, allow_empty=True)
    pairs, bad, cr = [], 0, False
    for no, line in enumerate(text.split("\n"), 1):
        line = line[:-1] if line.endswith("\r") else line
        if not line.strip():
            continue
        tabs = line.count("\t")
        if tabs != 1:
            if skip_bad:
                bad, cr = bad + 1, cr or "\r" in line
                continue
            why = "has no tab" if tabs == 0 else f"has {tabs} tabs"
            if "\r" in line:  # (a file of old Mac line ends reads as one line of every pair's tabs)
                why += ", and lines that end in CR alone (a line ends at LF): convert them"
            raise CharnnError(f"{path}:{no}: the line {why} (a pair is input<TAB>target, exactly one tab; {hint})")
        source, target = line.split("\t")
        if not source or not target:  # (`word<TAB>` from a messy export trained half a dictionary to write nothing)
            if skip_bad:
                bad += 1
                continue
            side = "input" if not source else "target"
            raise CharnnError(f"{path}:{no}: the line's {side} is empty (a pair is input<TAB>target, both "
                              f"non-empty; {hint})")
        pairs.append(Pair(source, target))
    if cr and not pairs:  # (--skip-bad-lines skipped the one line that old Mac line ends make of a file)
        raise CharnnError(f"{path}: its lines end in CR alone (a line ends at LF): convert them")
    return PairFile(str(path), pairs, bad)


def read_pair_files(paths: Sequence[str], encoding: str = "utf-8", glob: Optional[str] = None,
                    skip_bad: bool = False, on_skip: Optional[Callable[[str, str], None]] = None) -> List[PairFile]:
    """Every file of the CORPUS arguments (folders walked as for any corpus), each with its pairs."""
    files = [read_pairs(f.path, encoding, skip_bad) for f in find_files(list(paths), glob, on_skip, encoding)]
    if not any(f.pairs for f in files):
        raise CharnnError(f"{' '.join(paths)} holds no input<TAB>target lines")
    return files


def load_pairs(paths: Sequence[str], encoding: str = "utf-8", glob: Optional[str] = None, val_frac: float = 0.1,
               seed: int = 1337, val_file: Optional[str] = None, skip_bad: bool = False,
               on_skip: Optional[Callable[[str, str], None]] = None) -> PairText:
    if not paths:
        raise ConfigError("`--pairs` needs CORPUS files or folders of input<TAB>target lines")
    files = read_pair_files(paths, encoding, glob, skip_bad, on_skip)
    pairs = [p for f in files for p in f.pairs]
    skipped = sum(f.skipped for f in files)
    val = None
    if val_file is not None:
        val_files = read_pair_files([val_file], encoding, None, skip_bad)
        val, skipped = [p for f in val_files for p in f.pairs], skipped + sum(f.skipped for f in val_files)
    return PairText(pairs, " ".join(paths), plain.lines_run_name(paths[0]), skipped, val).split(val_frac, seed)


def build_vocabularies(train: Sequence[Pair]) -> Tuple[CharTokenizer, CharTokenizer]:
    """(source, target) character vocabularies of the training pairs, each with the end token."""
    return (CharTokenizer.build("".join(p.source for p in train) + END),
            CharTokenizer.build("".join(p.target for p in train) + END))


def encode_side(tokenizer, texts: Sequence[str]) -> List[np.ndarray]:
    """Each text's ids followed by the end token."""
    end = start_id(tokenizer)
    return [np.append(tokenizer.encode(t), end) for t in texts]


@dataclass
class PreparedPairs:
    source_tokenizer: CharTokenizer
    tokenizer: CharTokenizer  # the target's
    train_src: List[np.ndarray]
    train_tgt: List[np.ndarray]
    val_src: List[np.ndarray]
    val_tgt: List[np.ndarray]
    val_inputs: List[str]  # the validation inputs as text (previews show a few)
    val_unknown: int  # validation characters outside the vocabularies
    val_targets: List[str] = field(default_factory=list)  # their targets as text (--best-by wer scores them)

    @property
    def train_ids(self) -> torch.Tensor:
        """The training targets' ids end to end (their count is what the trainer reports)."""
        return torch.from_numpy(np.concatenate(self.train_tgt))


def prepare_pairs(text: PairText, tokenizers: Optional[Tuple[dict, dict]] = None,
                  eval_tokens: int = 0) -> PreparedPairs:
    """Vocabularies from the training pairs (or a resumed run's), every side encoded; validation keeps the
    first pairs whose targets hold `eval_tokens` tokens (at least one pair; 0: all of them)."""
    from charnn.text.tokenizer import tokenizer_from_state

    if tokenizers is None:
        src_tok, tgt_tok = build_vocabularies(text.train)
    else:
        src_tok, tgt_tok = (tokenizer_from_state(s) for s in tokenizers)
    val = text.val
    if eval_tokens:
        ends = np.cumsum([len(p.target) + 1 for p in val])
        val = val[: max(1, int(np.searchsorted(ends, eval_tokens, side="right")))]
    val_src = encode_side(src_tok, [p.source for p in val])
    val_tgt = encode_side(tgt_tok, [p.target for p in val])
    unknown = sum(int((ids == 0).sum()) for ids in val_src + val_tgt)
    return PreparedPairs(src_tok, tgt_tok, encode_side(src_tok, [p.source for p in text.train]),
                         encode_side(tgt_tok, [p.target for p in text.train]), val_src, val_tgt,
                         [p.source for p in val], unknown, [p.target for p in val])


def pad_sources(seqs: Sequence[np.ndarray]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inputs as padded rows (rows, longest) and their lengths (a CPU int64 tensor, as packing wants it)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.zeros(len(seqs), int(lengths.max()), dtype=torch.long)
    for r, s in enumerate(seqs):
        out[r, :len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out, lengths


def pair_batch(src: Sequence[np.ndarray], tgt: Sequence[np.ndarray], start: int, device=None):
    """(x, y, (source, lengths)): the decoder's input (start id, then the target) and targets (the target and
    its end, then IGNORE), and the padded inputs with their lengths."""
    x, y = pad_rows(tgt, start)
    s, lengths = pad_sources(src)
    device = device or torch.device("cpu")
    return x.to(device), y.to(device), (s.to(device), lengths)


class PairBatches:
    """Batches of `batch_size` pairs, each from a fresh encoder and decoder, grouped by length so little goes
    to padding. An epoch shuffles the pairs (seeded by its `offset`), sorts each run of 64 batches' worth by
    target then input length, cuts it into batches and shuffles the batches; a tail of fewer than
    `batch_size` pairs waits for another epoch's shuffle. Under torchrun each rank takes its share of every
    batch's rows, so N ranks together see what one process sees."""

    def __init__(self, src: List[np.ndarray], tgt: List[np.ndarray], batch_size: int, start: int,
                 device: Optional[torch.device] = None):
        if len(tgt) < batch_size:
            raise CharnnError(f"the training split has {len(tgt):,} pairs, fewer than one batch needs ({batch_size}); "
                              "lower --batch-size or use more pairs")
        self.src, self.tgt, self.batch_size, self.start = src, tgt, batch_size, start
        self.device = device or torch.device("cpu")
        self.src_len = np.array([len(s) for s in src], dtype=np.int64)
        self.tgt_len = np.array([len(t) for t in tgt], dtype=np.int64)
        self.ids = torch.from_numpy(np.concatenate(tgt))
        self.rows_share = (0, 1)
        self._plan_key, self._plan = None, []

    def shard(self, rank: int, world: int) -> None:
        self.rows_share = (rank, world)

    def max_offset(self) -> int:
        return 2**31 - 1  # the offset only seeds the epoch's shuffle

    def plan(self, offset: int) -> List[np.ndarray]:
        if self._plan_key == offset:
            return self._plan
        B = self.batch_size
        rng = np.random.default_rng(offset)
        order = rng.permutation(len(self.tgt))
        batches = []
        for c in range(0, len(order), 64 * B):
            chunk = order[c:c + 64 * B]
            chunk = chunk[np.lexsort((self.src_len[chunk], self.tgt_len[chunk]))]
            batches += [chunk[i:i + B] for i in range(0, len(chunk) - B + 1, B)]
        self._plan_key, self._plan = offset, [batches[j] for j in rng.permutation(len(batches))]
        return self._plan

    def steps_per_epoch(self, offset: int = 0) -> int:
        return len(self.plan(offset))

    def fresh(self, offset: int, window: int) -> bool:
        return True  # no state passes from one batch to the next

    def epoch(self, offset: int = 0, start: int = 0) -> Iterator[Tuple]:
        rank, world = self.rows_share
        for rows in self.plan(offset)[start:]:
            per = len(rows) // world
            mine = rows[rank * per:(rank + 1) * per]
            yield pair_batch([self.src[i] for i in mine], [self.tgt[i] for i in mine], self.start, self.device)
