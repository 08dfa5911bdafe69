"""Does token healing help a subword model continue a prime cut mid-word? Measured, not assumed.

From the last 10% of a text (the validation split of a `charnn train` run on it), take primes of about 300
characters that end inside a word, sample each continuation with healing (the default) and without, and
check whether the word the prime was cut from is completed into a word that occurs in the text. Same
model, same primes, same seeds. Prints a table and writes JSON.

    python benchmarks/healing.py checkpoints/tinyshakespeare/best.pt ../shared/corpora/tinyshakespeare.txt
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path

import torch

from charnn.checkpoint import build_from_checkpoint, load_checkpoint, resolve_checkpoint
from charnn.sampling import SampleConfig
from charnn.data.batches import split_text
from charnn.generation.sampler import Sampler

WORD = re.compile(r"[A-Za-z']+")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("text")
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--prime-chars", type=int, default=300)
    ap.add_argument("--temp", type=float, default=0.8)
    ap.add_argument("--out", default="benchmarks/results/healing.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, tokenizer = build_from_checkpoint(load_checkpoint(resolve_checkpoint(args.checkpoint)), torch.device("cpu"))
    text = Path(args.text).read_text(encoding="utf-8")
    words = set(WORD.findall(text))
    held_out = split_text(text, 0.1)[1]  # the validation split of a run with the default --val-frac
    rng = random.Random(0)
    cuts = []
    while len(cuts) < args.trials:  # a position strictly inside a word of at least 4 letters
        m = WORD.search(held_out, rng.randrange(args.prime_chars, len(held_out) - 40))
        if m and len(m.group()) >= 4:
            cuts.append((m.start() + rng.randrange(1, len(m.group()) - 1), m.start()))
    results = {}
    for heal in (True, False):
        real, t0 = 0, time.perf_counter()
        for i, (cut, start) in enumerate(cuts):
            prime = held_out[cut - args.prime_chars:cut]
            cfg = SampleConfig(length=20, prime=prime, temperature=args.temp, heal=heal)
            out = "".join(Sampler(model, tokenizer, cfg, torch.device("cpu"), seed=i))
            completed = WORD.match(out[len(prime) - (cut - start):])
            real += bool(completed) and completed.group() in words
        results["healed" if heal else "plain"] = {"real_words": real, "trials": len(cuts),
                                                  "rate": real / len(cuts), "seconds": time.perf_counter() - t0}
    print(f"{tokenizer.kind} model {args.checkpoint}, {len(cuts)} primes cut mid-word, temperature {args.temp}")
    print(f"{'prime handling':<16}{'completed into a real word':>28}")
    for name, r in results.items():
        print(f"{name:<16}{r['real_words']:>20,} / {r['trials']:,} ({r['rate']:.1%})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"checkpoint": args.checkpoint, "text": args.text, "temperature": args.temp,
                               "prime_chars": args.prime_chars, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
