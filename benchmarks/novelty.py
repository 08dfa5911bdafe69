"""The copying check's index (`charnn novelty`): build and query time on a ~100 MB text, against the naive way.

The text is every real text at hand joined: ../shared/corpora/tinyshakespeare.txt, the KJV books in
../shared/corpora/kjv/ and the whole standard-library corpus (the built-in corpus without its 5M cap),
about 17.6 MB, repeated to --size-mb (repetition is the hard case for a suffix sort: long repeats).
Samples of 10,000 characters: "mixed" (lines of tinyshakespeare with their words shuffled, and a 500-character
stretch copied) and "copied" (10,000 characters copied whole, where the longest span is the whole sample).
The naive way is torch-rnn's novel_substrings.py: `window in text` for every window, here on
tinyshakespeare alone (1.1 MB), beside the index on the same text. Prints a table, writes JSON.

    python benchmarks/novelty.py --size-mb 100
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from common import CORPORA, cpu_features, cpu_name

from charnn.data import textindex
from charnn.data.corpus import builtin_corpus
from charnn.reports.novelty import _windows

ROOT = Path(__file__).resolve().parent.parent
CORPORA = CORPORA
NS = (16, 32, 64)


def real_text() -> str:
    parts = [(CORPORA / "tinyshakespeare.txt").read_text(encoding="utf-8")]
    parts += [p.read_text(encoding="utf-8") for p in sorted((CORPORA / "kjv").glob("*.txt"))]
    parts.append(builtin_corpus(cap=10 ** 10).text)
    return "\n\n".join(parts)


def samples(shakespeare: str, rng: random.Random) -> dict:
    lines = shakespeare.splitlines()
    mixed = []
    while sum(map(len, mixed)) < 9_500:
        words = rng.choice(lines).split()
        rng.shuffle(words)
        mixed.append(" ".join(words) + "\n")
    a = rng.randrange(len(shakespeare) - 20_000)
    mixed = ("".join(mixed)[:9_500] + shakespeare[a: a + 500])[:10_000]
    return {"mixed": mixed, "copied": shakespeare[a + 5_000: a + 15_000]}


def check(index, sample: str) -> dict:
    t0 = time.perf_counter()
    q = textindex.Query.of(sample)
    lengths, where = textindex.match_lengths(index, q, np.arange(len(sample)), np.full(len(sample), max(NS)))
    _, longest, at = textindex.longest_match(index, q, lengths, where, max(NS))
    textindex.locate(index, at)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "longest": longest, "shares": [_windows(lengths, n).share for n in NS]}


def naive(text: str, sample: str) -> dict:
    t0 = time.perf_counter()
    shares = []
    for n in NS:
        windows = [sample[i: i + n] for i in range(len(sample) - n + 1)]
        shares.append(sum(w in text for w in windows) / len(windows))
    return {"seconds": time.perf_counter() - t0, "shares": shares}


def build(folder: Path, text: str) -> tuple:
    data = text.encode("utf-8")
    t0 = time.perf_counter()
    index = textindex.build_index(folder, (data[a: a + (4 << 20)] for a in range(0, len(data), 4 << 20)))
    return index, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=100.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "novelty.json"))
    args = ap.parse_args()
    rng = random.Random(0)
    shakespeare = (CORPORA / "tinyshakespeare.txt").read_text(encoding="utf-8")
    base = real_text()
    big = (base * (int(args.size_mb * 1e6) // len(base) + 1))[: int(args.size_mb * 1e6)]
    tests = samples(shakespeare, rng)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        small, small_build = build(Path(tmp) / "small", shakespeare)
        for name, sample in tests.items():
            rows.append({"text": "tinyshakespeare", "chars": len(shakespeare), "sample": name, "way": "index",
                         "build_seconds": small_build, **check(small, sample)})
            rows.append({"text": "tinyshakespeare", "chars": len(shakespeare), "sample": name, "way": "naive",
                         "build_seconds": 0.0, **naive(shakespeare, sample)})
        del small
        index, seconds = build(Path(tmp) / "big", big)
        for name, sample in tests.items():
            rows.append({"text": f"real texts x{len(big) / len(base):.1f}", "chars": len(big), "sample": name,
                         "way": "index", "build_seconds": seconds, **check(index, sample)})
        disk = sum(p.stat().st_size for p in (Path(tmp) / "big").iterdir())
    result = {"cpu": cpu_name(), "cpu_features": cpu_features(), "base_chars": len(base), "index_bytes": disk,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rows": rows}
    print(f"CPU: {result['cpu']} ({result['cpu_features']});"
          f" base text {len(base):,} characters; index on disk {disk / 1e6:,.0f} MB; "
          f"peak RSS {result['peak_rss_mb']:,.0f} MB")
    print(f"{'text':<22} {'chars':>12} {'sample':<7} {'way':<6} {'build s':>8} {'query s':>8} {'longest':>8} shares")
    for r in rows:
        shares = " ".join(f"{s:.3f}" for s in r["shares"])
        print(f"{r['text']:<22} {r['chars']:>12,} {r['sample']:<7} {r['way']:<6} {r['build_seconds']:>8.2f} "
              f"{r['seconds']:>8.3f} {r.get('longest', ''):>8} {shares}")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
