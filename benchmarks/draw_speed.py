"""One stream's draw alone: top-p in C (draw_from, through `lib.head_draw` with a one-unit head) against torch's
`filter_logits` + argmax (the Batcher's draw for many rows), over vocabularies of characters and of subwords, with
flat and peaked logits. Prints a markdown table and writes JSON (benchmarks/results/draw_speed.json).

    python benchmarks/draw_speed.py [--vocab 256,1024,4096,16384,65536] [--scales 3,8] [--top-p 0.9]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import time
from pathlib import Path

import torch
from common import cpu_features, cpu_name

from charnn.generation.draw import filter_logits
from charnn.models import native


def microseconds(fn, seconds: float = 0.3) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n * 1e6


def row(lib, V: int, scale: float, top_p: float) -> dict:
    g = torch.Generator().manual_seed(V)
    w = (torch.randn(1, V, generator=g) * scale).contiguous()
    h, bias, scratch = torch.ones(1), torch.zeros(V), torch.empty(V)
    out, noise = torch.empty(1, dtype=torch.long), -torch.log(torch.empty(V).exponential_(generator=g))
    ptr = lambda t: ctypes.c_void_p(t.data_ptr())  # noqa: E731

    def c(p):
        return lambda: lib.head_draw(1, V, ptr(h), 1, ptr(w), ptr(bias), ptr(scratch), 1, ptr(noise), ptr(out), 1.0, 0, p,
                                     None, None, None)
    kept = filter_logits(w[0].clone(), None, top_p)
    return {"vocab": V, "scale": scale, "top_p": top_p, "nucleus": int(torch.isfinite(kept).sum()),
            "c_top_p_us": round(microseconds(c(top_p)), 1), "c_no_top_p_us": round(microseconds(c(1.0)), 1),
            "torch_top_p_us": round(microseconds(lambda: torch.argmax(filter_logits(w[0].clone(), None, top_p)
                                                                      + noise)), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", default="256,1024,4096,16384,65536")
    ap.add_argument("--scales", default="3,8", help="logits are N(0, scale): 3 flatter, 8 peaked")
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "draw_speed.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    lib = native.library()
    if lib is None:
        raise SystemExit("draw_speed: charnn's C library could not be built here (no C compiler?)")
    rows = [row(lib, V, s, a.top_p) for s in map(float, a.scales.split(",")) for V in map(int, a.vocab.split(","))]
    print(f"{cpu_name()} ({cpu_features()}), torch {torch.__version__}, 1 thread, top-p {a.top_p}\n")
    print("| logits | vocabulary | nucleus | C top-p, us | torch top-p, us | C without top-p, us |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| N(0, {r['scale']:g}) | {r['vocab']:,} | {r['nucleus']:,} | {r['c_top_p_us']:,} | "
              f"{r['torch_top_p_us']:,} | {r['c_no_top_p_us']:,} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"cpu": cpu_name(), "features": cpu_features(), "torch": torch.__version__,
                                       "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
