"""Scoring an encoder-decoder on files of input<TAB>target pairs (`charnn eval` of a `--pairs` model): the targets'
nats per character given their inputs (teacher-forced), and the decoded outputs against the targets: exact-match
accuracy, character error rate and, where targets are space-separated symbols (phonemes, tags), symbol error rate.
"""

from __future__ import annotations

from dataclasses import replace
from typing import List, Optional, Tuple

import numpy as np

from charnn.device import PrecisionChoice
from charnn.sampling import TransduceConfig
from charnn.data.pairs import PairFile, encode_side
from charnn.scoring.evaluate import pair_nats
from charnn.scoring.pairs import PairScore
from charnn.generation.decoded import references_of, score_decoded
from charnn.generation.seq2seq import Transducer
from charnn.text.tokenizer import start_id


def score_pairs(model, source_tokenizer, tokenizer, file: PairFile, cfg: TransduceConfig, device,
                max_ratio: float, transducer: Optional[Transducer] = None) -> PairScore:
    """One file's score: teacher-forced nats of every pair, then every distinct input decoded once with `cfg`
    (or `transducer`, made with it: score_files decodes every file with one) and scored against the closest of
    its targets (unknown input characters are scored as the unknown token and dropped when decoding)."""
    pairs = file.pairs
    src = encode_side(source_tokenizer, [p.source for p in pairs])
    tgt = encode_side(tokenizer, [p.target for p in pairs])
    nats = float(pair_nats(model, src, tgt, start_id(tokenizer), device).sum()) if pairs else 0.0
    transducer = transducer or decoder(model, source_tokenizer, tokenizer, cfg, device, max_ratio)
    s = PairScore(pairs=len(pairs), nats=nats, target_chars=int(sum(len(t) for t in tgt)),
                  spaced=any(" " in p.target for p in pairs))
    return score_decoded(transducer, references_of((p.source, p.target) for p in pairs), str(file.path), s)


def decoder(model, source_tokenizer, tokenizer, cfg: TransduceConfig, device, max_ratio: float) -> Transducer:
    """What eval decodes with: `cfg`'s search, unknown input characters dropped, the best output only."""
    return Transducer(model, source_tokenizer, tokenizer, replace(cfg, unknown="skip", n_best=1), device, max_ratio)


def score_files(model, source_tokenizer, tokenizer, files: List[PairFile], cfg: TransduceConfig, device,
                max_ratio: float) -> Tuple[List[PairScore], Optional[PrecisionChoice]]:
    """Each file's score, all decoded by one Transducer, and the precision they were decoded in (None where no
    input was decoded)."""
    transducer = decoder(model, source_tokenizer, tokenizer, cfg, device, max_ratio)
    scores = [score_pairs(model, source_tokenizer, tokenizer, f, cfg, device, max_ratio, transducer) for f in files]
    return scores, transducer.precision


def total(scores: List[PairScore]) -> PairScore:
    out = PairScore()
    for s in scores:
        out = out + s
    return out


def unknown_chars(tokenizer, files: List[PairFile], side: str = "source") -> int:
    """Characters of the pairs' inputs (`side` "source") or targets ("target") outside `tokenizer`'s vocabulary."""
    return sum(int(np.sum(tokenizer.encode(getattr(p, side)) == tokenizer.unk_id)) for f in files for p in f.pairs)
