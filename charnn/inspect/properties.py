"""Simple properties of a text that charnn computes itself, one number per character, and the recurrent units
whose activations track them best (Pearson correlation over the text), for `charnn show --cells`.

Each property is read as the model meets the character: its value *after* the character is read, which is
what the state after that character can know. So the opening quote is already inside the quotes, and the
closing one outside."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np

OPEN, CLOSE = "([{", ")]}"
PROPERTIES = {  # name -> what it measures (the page's and the table's legend)
    "inside quotes": "1 between a double quote and the next one, else 0",
    "inside brackets": "how many ( [ { are open",
    "line position": "characters since the last newline",
    "indentation": "spaces (a tab counts 4) at the start of the current line, so far",
    "word start": "1 on the first letter or digit of a word, else 0",
}


def text_properties(text: str) -> Dict[str, np.ndarray]:
    """Each property of PROPERTIES as a float array with one value per character of `text`."""
    n = len(text)
    out = {name: np.zeros(n) for name in PROPERTIES}
    quote, depth, column, indent, leading, prev_word = 0, 0, 0, 0, True, False
    for i, ch in enumerate(text):
        if ch == '"':
            quote ^= 1
        elif ch in OPEN:
            depth += 1
        elif ch in CLOSE:
            depth = max(0, depth - 1)
        if ch == "\n":
            column, indent, leading = 0, 0, True
        else:
            column += 1
            if leading and ch in " \t":
                indent += 4 if ch == "\t" else 1
            else:
                leading = False
        word = ch.isalnum() or ch == "_"
        out["inside quotes"][i], out["inside brackets"][i] = quote, depth
        out["line position"][i], out["indentation"][i] = column, indent
        out["word start"][i] = float(word and not prev_word)
        prev_word = word
    return out


def at_tokens(values: np.ndarray, tokens: List[str]) -> np.ndarray:
    """Per-character values -> one per token: the value at each token's last character (the state after a
    token has read all of it). Empty tokens take the previous token's value."""
    ends = np.cumsum([len(t) for t in tokens]) - 1
    return values[np.clip(ends, 0, max(0, len(values) - 1))] if len(values) else np.zeros(len(tokens))


def correlations(acts: np.ndarray, prop: np.ndarray) -> np.ndarray:
    """Pearson r of every unit (columns of acts (N, U)) with prop (N,); a constant unit or property gives 0."""
    a = acts.astype(np.float64) - acts.mean(0, dtype=np.float64)
    p = prop.astype(np.float64) - prop.mean()
    denom = np.sqrt((a * a).sum(0) * (p * p).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (p @ a) / denom
    return np.where(denom > 1e-12, r, 0.0)


@dataclass
class Ranked:
    prop: str  # the property's name
    units: List[int]  # the best units, best first (columns of the activations)
    r: List[float]  # their correlations (signed; ranked by size)


def rank_units(acts: np.ndarray, props: Dict[str, np.ndarray], top: int = 5) -> List[Ranked]:
    """For each property that varies over the text, the `top` units whose activations correlate with it most
    (by |r|), best first."""
    out = []
    for name, values in props.items():
        if np.ptp(values) == 0:  # a text without quotes says nothing about a quote cell
            continue
        r = correlations(acts, values)
        best = np.argsort(-np.abs(r), kind="stable")[:top]
        out.append(Ranked(name, best.tolist(), r[best].tolist()))
    return out
