"""The score of an encoder-decoder's outputs against their targets: exact matches, character errors (edit
distance) and, where targets are space-separated symbols (phonemes, tags), symbol errors; with the targets'
teacher-forced nats (`charnn.scoring.evaluate.pair_nats`), what `charnn eval` reports for a `--pairs` model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


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
    """Nats over every pair; the decoded outputs scored per distinct input (a "word"), against the closest of its
    references when a file gives it several (a pronouncing dictionary's variants), as G2P papers score WER/PER."""

    pairs: int = 0
    nats: float = 0.0
    target_chars: int = 0  # characters of the targets, each target's end counted as one (what nats is over)
    exact: int = 0  # inputs whose output equals one of their references
    char_errors: int = 0
    chars: int = 0  # characters of the references scored against (what the character error rate is over)
    symbol_errors: int = 0
    symbols: int = 0  # space-separated symbols of those references
    spaced: bool = False  # targets hold spaces: the symbol error rate means something
    words: int = 0  # distinct inputs (what exact match and WER are over)

    def __add__(self, o: "PairScore") -> "PairScore":
        return PairScore(*(getattr(self, k) + getattr(o, k) for k in ("pairs", "nats", "target_chars", "exact",
                                                                     "char_errors", "chars", "symbol_errors",
                                                                     "symbols")), self.spaced or o.spaced,
                         self.words + o.words)

    def add_output(self, output: str, references: Sequence[str]) -> None:
        """One input's output against its references: the closest one counts (by symbols when spaced, else by
        characters), exact when any equals it (when spaced: its symbols, so that a stray or doubled space in a
        reference is no word error where it is no symbol error)."""
        self.words += 1
        self.exact += output in references or (self.spaced and output.split() in [r.split() for r in references])
        if self.spaced:
            ref = min(references, key=lambda r: (edit_distance(output.split(), r.split()), len(r)))
            self.symbol_errors += edit_distance(output.split(), ref.split())
            self.symbols += len(ref.split())
        else:
            ref = min(references, key=lambda r: (edit_distance(output, r), len(r)))
        self.char_errors += edit_distance(output, ref)
        self.chars += len(ref)

    def to_dict(self) -> dict:
        div = lambda a, b: a / b if b else None  # noqa: E731
        return {"pairs": self.pairs, "words": self.words, "nats_per_char": div(self.nats, self.target_chars),
                "exact_match": div(self.exact, self.words), "cer": div(self.char_errors, self.chars),
                "ser": div(self.symbol_errors, self.symbols) if self.spaced else None,
                "target_chars": self.target_chars, "reference_chars": self.chars}
