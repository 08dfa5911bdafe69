"""A made-up pronouncing dictionary, for timing sequence-to-sequence training and decoding where no real one can be
fetched (a machine without network): English-like pseudo-words built from syllables, each written in IPA segments
separated by spaces (as SIGMORPHON's files) by a small set of context rules (c before e/i/y is /s/, a silent final
e lengthens the vowel before it, digraphs, doubled consonants), so the mapping is learnable but not one letter to one
symbol. Sizes as SIGMORPHON 2021's English (33,344 / 4,168 / 4,168 words). Its error rates mean nothing against
published G2P numbers; its lengths and alphabet are close enough that speed measured on it carries over.

    python benchmarks/toy_g2p.py DIR          # DIR/toy_train.tsv, toy_dev.tsv, toy_test.tsv
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

ONSETS = ("", "b", "bl", "br", "c", "ch", "cl", "cr", "d", "dr", "f", "fl", "fr", "g", "gl", "gr", "h", "j", "k", "l",
          "m", "n", "p", "ph", "pl", "pr", "qu", "r", "s", "sh", "sl", "sm", "sn", "sp", "st", "str", "t", "th", "tr",
          "v", "w", "wh", "y", "z")
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "u", "ai", "ea", "ee", "oa", "oo", "ou", "ow", "ie", "y")
CODAS = ("", "", "b", "ck", "d", "ff", "g", "ght", "l", "ll", "m", "n", "nd", "ng", "nk", "p", "r", "rt", "s", "ss",
         "st", "t", "tch", "x")
SHORT = {"a": "æ", "e": "ɛ", "i": "ɪ", "o": "ɑ", "u": "ʌ", "y": "ɪ"}
LONG = {"a": "eɪ", "e": "i", "i": "aɪ", "o": "oʊ", "u": "ju", "y": "aɪ"}
DIGRAPHS = {"ai": "eɪ", "ea": "i", "ee": "i", "oa": "oʊ", "oo": "u", "ou": "aʊ", "ow": "oʊ", "ie": "aɪ"}
SOFT = {"c": ["s"], "g": ["d", "ʒ"]}  # c and g before e
CLUSTERS = {"tch": ["t", "ʃ"], "ght": ["t"], "sh": ["ʃ"], "ch": ["t", "ʃ"], "th": ["θ"], "ph": ["f"], "wh": ["w"],
            "qu": ["k", "w"], "ck": ["k"], "ng": ["ŋ"], "nk": ["ŋ", "k"], "x": ["k", "s"], "j": ["d", "ʒ"],
            "y": ["j"], "r": ["ɹ"]}


def word(rng: random.Random) -> str:
    syllables = rng.choices((1, 2, 3), weights=(4, 5, 2))[0]
    w = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables))
    if rng.random() < 0.25 and w[-1] not in "aeiouy":
        w += "e"  # a silent final e
    return w


def pronounce(w: str) -> list:
    out, i = [], 0
    while i < len(w):
        rest, prev = w[i:], w[i - 1] if i else ""
        magic = len(rest) == 3 and rest[0] in LONG and rest[1] not in "aeiouy" and rest[2] == "e" and \
            (not prev or prev not in "aeiou")
        if rest == "e" and any(c in "aeiouy" for c in w[:i]):  # silent at the end of a word with another vowel
            break
        if magic:  # a-consonant-e: the long vowel, the consonant, no e
            out += [LONG[rest[0]], *CLUSTERS.get(rest[1], SOFT.get(rest[1], [rest[1]]))]
            break
        if rest[:2] in DIGRAPHS:
            out.append(DIGRAPHS[rest[:2]])
            i += 2
            continue
        if rest[0] in "aeiou" or (rest[0] == "y" and i > 0):
            final = {"y": "i", "o": "oʊ", "a": "ɑ"}  # a vowel that ends the word
            out.append(SHORT[rest[0]] if len(rest) > 1 else final.get(rest[0], SHORT[rest[0]]))
            i += 1
            continue
        for n in (3, 2, 1):
            if rest[:n] in CLUSTERS and (n > 1 or rest[0] in "xjyr"):
                out += CLUSTERS[rest[:n]]
                i += n
                break
        else:
            c = rest[0]
            if c == "c":
                out.append("s" if rest[1:2] in ("e", "i", "y") else "k")
            elif c == "g":
                out += ["d", "ʒ"] if rest[1:2] in ("e", "i") and i > 0 else ["ɡ"]
            elif c == "s" and prev in "aeiou" and rest[1:2] in ("e", "a", "i", "o", "u") and prev:
                out.append("z")
            else:
                out.append(c)
            i += 1
            while i < len(w) and w[i] == c:  # a doubled consonant is one sound
                i += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", type=int, nargs=3, default=[33344, 4168, 4168])
    args = ap.parse_args()
    rng, seen, rows = random.Random(args.seed), set(), []
    while len(rows) < sum(args.sizes):
        w = word(rng)
        if w not in seen and 2 <= len(w) <= 16:
            seen.add(w)
            rows.append(f"{w}\t{' '.join(pronounce(w))}")
    args.out.mkdir(parents=True, exist_ok=True)
    start = 0
    for name, n in zip(("train", "dev", "test"), args.sizes):
        (args.out / f"toy_{name}.tsv").write_text("\n".join(rows[start:start + n]) + "\n", encoding="utf-8")
        start += n
    print(f"wrote {args.out}/toy_train.tsv, toy_dev.tsv, toy_test.tsv ({', '.join(map(str, args.sizes))} words)")


if __name__ == "__main__":
    main()
