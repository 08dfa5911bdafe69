"""An encoder-decoder's decoded outputs scored against their references: each distinct input decoded once and
scored against the closest of its targets (charnn.scoring.pairs.PairScore) -- what `charnn eval` reports for a
`--pairs` model, and what training's --best-by wer picks best.pt by."""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from charnn.generation.seq2seq import Transducer
from charnn.scoring.pairs import PairScore


def references_of(pairs: Sequence[Tuple[str, str]]) -> Dict[str, List[str]]:
    """input -> its targets, in file order (a pronouncing dictionary lists a word once per pronunciation)."""
    refs: Dict[str, List[str]] = {}
    for source, target in pairs:
        refs.setdefault(source, []).append(target)
    return refs


def score_decoded(transducer: Transducer, references: Dict[str, List[str]], where: str,
                  score: PairScore) -> PairScore:
    """Decode every input of `references` once with `transducer` and add each output to `score` (inputs left
    with no known character decode to an empty output); `where` names the inputs in messages ("file:line")."""
    outputs = [h[0].text if h else "" for h in transducer.run((text, f"{where}:{i}")
                                                              for i, text in enumerate(references, 1))]
    for out, refs in zip(outputs, references.values()):
        score.add_output(out, refs)
    return score
