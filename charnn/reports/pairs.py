"""Scoring an encoder-decoder on files of input<TAB>target pairs (`charnn eval` of a `--pairs` model): the targets'
nats per character given their inputs (teacher-forced), and the decoded outputs against the targets: exact-match
accuracy, character error rate and, where targets are space-separated symbols (phonemes, tags), symbol error rate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Sequence

import numpy as np

from charnn.config import TransduceConfig
from charnn.data.pairs import PairFile, encode_side
from charnn.evaluate import pair_nats
from charnn.generation.seq2seq import Transducer
from charnn.text.tokenizer import start_id


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance (insertions, deletions and substitutions cost 1) between two sequences."""
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            cur = row[j]
            row[j] = min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
            prev = cur
    return row[-1]


@dataclass
class PairScore:
    pairs: int = 0
    nats: float = 0.0
    target_chars: int = 0  # characters of the targets, each target's end counted as one (what nats is over)
    exact: int = 0
    char_errors: int = 0
    chars: int = 0  # characters of the targets (what the character error rate is over)
    symbol_errors: int = 0
    symbols: int = 0  # space-separated symbols of the targets
    spaced: bool = False  # targets hold spaces: the symbol error rate means something

    def __add__(self, o: "PairScore") -> "PairScore":
        return PairScore(*(getattr(self, k) + getattr(o, k) for k in ("pairs", "nats", "target_chars", "exact",
                                                                     "char_errors", "chars", "symbol_errors",
                                                                     "symbols")), self.spaced or o.spaced)

    def to_dict(self) -> dict:
        div = lambda a, b: a / b if b else None  # noqa: E731
        return {"pairs": self.pairs, "nats_per_char": div(self.nats, self.target_chars),
                "exact_match": div(self.exact, self.pairs), "cer": div(self.char_errors, self.chars),
                "ser": div(self.symbol_errors, self.symbols) if self.spaced else None,
                "target_chars": self.chars}


def score_pairs(model, source_tokenizer, tokenizer, file: PairFile, cfg: TransduceConfig, device,
                max_ratio: float) -> PairScore:
    """One file's score: teacher-forced nats, then every input decoded with `cfg` (unknown input characters are
    scored as the unknown token and dropped when decoding)."""
    pairs = file.pairs
    src = encode_side(source_tokenizer, [p.source for p in pairs])
    tgt = encode_side(tokenizer, [p.target for p in pairs])
    nats = float(pair_nats(model, src, tgt, start_id(tokenizer), device).sum()) if pairs else 0.0
    transducer = Transducer(model, source_tokenizer, tokenizer, replace(cfg, unknown="skip", n_best=1), device,
                            max_ratio)
    outputs = [h[0].text if h else "" for h in transducer.run((p.source, f"{file.path}:{i}")
                                                              for i, p in enumerate(pairs, 1))]
    s = PairScore(pairs=len(pairs), nats=nats, target_chars=int(sum(len(t) for t in tgt)),
                  chars=sum(len(p.target) for p in pairs), spaced=any(" " in p.target for p in pairs))
    for p, out in zip(pairs, outputs):
        s.exact += out == p.target
        s.char_errors += edit_distance(out, p.target)
        if s.spaced:
            ref = p.target.split()
            s.symbol_errors += edit_distance(out.split(), ref)
            s.symbols += len(ref)
    return s


def score_files(model, source_tokenizer, tokenizer, files: List[PairFile], cfg: TransduceConfig, device,
                max_ratio: float) -> List[PairScore]:
    return [score_pairs(model, source_tokenizer, tokenizer, f, cfg, device, max_ratio) for f in files]


def total(scores: List[PairScore]) -> PairScore:
    out = PairScore()
    for s in scores:
        out = out + s
    return out


def unknown_chars(source_tokenizer, files: List[PairFile]) -> int:
    return sum(int(np.sum(source_tokenizer.encode(p.source) == source_tokenizer.unk_id)) for f in files for p in f.pairs)
