"""Does a subword model write broken characters, and what does keeping its byte pieces UTF-8 cost? Measured.

A character outside a subword vocabulary is written as its UTF-8 byte pieces (byte fallback), so a model must
learn which bytes follow which; drawn freely, it sometimes draws a byte no character has where it stands, and that
decodes as U+FFFD. charnn's Batcher draws byte pieces only where UTF-8 has them (`charnn.generation.draw.Utf8Mask`).
This script makes a text where that matters (tinyshakespeare with each purely alphabetic word replaced by one to
three CJK characters, the same ones every time: about 3,100 distinct characters, so a bpe vocabulary of 3,400 leaves
the rarest as bytes), trains a bpe model on it for `--budget` seconds (or takes `--run`), then counts U+FFFD in
sampled text with the guard and without it (`Utf8Mask.of` patched to none), and times sampling both ways, one
stream (fp32 and int8: the draws in C) and 64 streams (torch's draw), the two alternating. Prints tables, writes JSON.

    python benchmarks/utf8_draws.py --corpus ../shared/corpora/tinyshakespeare.txt --budget 60
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import CORPORA, cpu_name
from sample_speed import chars_per_second

import charnn
from charnn.generation import batcher
from charnn.sampling import SampleConfig
from charnn.generation.sampler import Sampler

ROOT = Path(__file__).resolve().parents[1]
CJK = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]


def cjk_text(source: str, lines: int = 20000) -> str:
    """Each purely alphabetic word of the first `lines` lines -> 1-3 CJK characters, the same for every occurrence."""
    rng, words, out = random.Random(1), {}, []
    for line in source.splitlines()[:lines]:
        out.append(" ".join(words.setdefault(w, "".join(rng.choice(CJK) for _ in range(rng.randint(1, 3))))
                            if w.isalpha() else w for w in line.split(" ")))
    return "\n".join(out)


def guarded(on: bool):
    """The Batcher's UTF-8 guard on (charnn's) or off (as before it)."""
    batcher.Utf8Mask.of = REAL_OF if on else (lambda tokenizer, capacity, device: batcher.Utf8Mask(None, capacity, device))


REAL_OF = batcher.Utf8Mask.of


def broken(model, seeds: int, length: int, temperature: float) -> dict:
    counts = []
    for seed in range(seeds):
        cfg = SampleConfig(length=length, temperature=temperature, prime="\n")
        counts.append("".join(Sampler(model.net, model.tokenizer, cfg, torch.device("cpu"), seed=seed)).count("\ufffd"))
    return {"U+FFFD": sum(counts), "chars": seeds * length, "per_sample": counts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=str(CORPORA / "tinyshakespeare.txt"))
    ap.add_argument("--run", help="a bpe run or checkpoint to use instead of training one")
    ap.add_argument("--budget", default="60s", help="training time for the bpe model (charnn train --max-time)")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--length", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=3.0, help="per speed measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the speed table")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "utf8_draws.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    run = args.run
    if run is None:
        work = Path(tempfile.mkdtemp(prefix="charnn-utf8-"))
        (work / "cjk.txt").write_text(cjk_text(Path(args.corpus).read_text(encoding="utf-8")), encoding="utf-8")
        subprocess.run([sys.executable, "-m", "charnn", "train", str(work / "cjk.txt"), "--tokenizer", "bpe",
                        "--vocab-size", "3400", "--max-time", args.budget, "--out", str(work), "-q"], check=True)
        run = str(work / "cjk")
    model = charnn.load(run, device="cpu")
    result = {"cpu": cpu_name(), "torch": torch.__version__, "run": run, "vocab": model.tokenizer.vocab_size}
    print(f"{cpu_name()}, torch {torch.__version__}, 2 threads; {run}, vocab {model.tokenizer.vocab_size}\n")
    print(f"| guard | temperature | U+FFFD in {args.seeds} x {args.length:,} characters |\n|---|---:|---:|")
    result["broken"] = []
    for temperature in (1.0, 0.8):
        for on in (False, True):
            guarded(on)
            row = {"guard": on, "temperature": temperature, **broken(model, args.seeds, args.length, temperature)}
            result["broken"].append(row)
            print(f"| {'on' if on else 'off'} | {temperature} | {row['U+FFFD']} |")
    print("\n| sampling chars/s | guard off | guard on | on/off |\n|---|---:|---:|---:|")
    result["speed"] = []
    for name, streams, int8 in (("1 stream", 1, False), ("1 stream --int8", 1, True), ("64 streams", 64, False)):
        rates = {False: [], True: []}
        for _ in range(args.rounds):
            for on in (False, True):
                guarded(on)
                rates[on].append(chars_per_second(model.net, model.tokenizer, torch.device("cpu"), streams, True,
                                                  args.seconds, int8=int8)["chars_per_s"])
        off, on = sorted(rates[False])[len(rates[False]) // 2], sorted(rates[True])[len(rates[True]) // 2]
        result["speed"].append({"case": name, "off": rates[False], "on": rates[True], "median_off": off,
                                "median_on": on})
        print(f"| {name} | {off:,.0f} | {on:,.0f} | {on / off:.2f} |")
    guarded(True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"\n(medians of {args.rounds} alternating rounds; JSON: {args.out})")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
