"""`--precision auto` against the fixed choices, on this machine, in one run (issue 16).

For each model shape it runs `charnn train` on tinyshakespeare in rounds of auto, fp32 and bf16 (auto and
fp32 swap places every other round, so neither always goes first), each a fresh process with a fresh precision cache, for --steps steps, and reports:
  - what auto chose and why (config.json's `precision`: measured, rule, and the ratio it measured),
  - steady-state training chars/s of each (median of metrics.jsonl's chars/s after the first third),
  - auto / fp32 and bf16 / fp32 ratios from the same round (so a busy machine moves both alike),
  - the seconds from process start to the first logged step (where auto's probe is paid),
  - and whether a forced bf16 runs here at all (on an AVX2 CPU oneDNN has no bf16 LSTM).
Goals: where bf16 is fast, auto picks it; where it is slow, auto is within noise of fp32 (>= 0.95x).
Prints a table and writes benchmarks/results/precision_auto.json.

    python benchmarks/precision_auto.py                        # defaults 2x256 b8, and 2x512 b32
    python benchmarks/precision_auto.py --rounds 5 --steps 600
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import CORPORA, cpu_name  # noqa: E402

SHAPES = {"2x256 b8 (defaults)": [], "2x512 b32": ["--hidden", "512", "--batch-size", "32"]}


def run(corpus: str, precision: str, extra: list, steps: int, work: Path) -> dict:
    out, cache = work / "runs", work / f"cache-{precision}-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "charnn", "train", corpus, "--out", str(out), "--name", precision,
                        "--max-steps", str(steps), "--eval-every", str(10 * steps), "--log-every", "10",
                        "--device", "cpu", "--precision", precision, "-q", *extra],
                       env={**os.environ, "CHARNN_CACHE": str(cache), "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True)
    if p.returncode != 0:
        return {"precision": precision, "error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    records = [json.loads(line) for line in (out / precision / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((out / precision / "config.json").read_text())
    rates = [r["chars_per_sec"] for r in records if r.get("chars_per_sec")]
    first = min(r["elapsed"] for r in records)
    return {"precision": precision, "chose": config["precision"]["precision"], "how": config["precision"]["how"],
            "reason": config["precision"]["reason"], "speedup_probe": config["precision"]["speedup"],
            "chars_per_s": statistics.median(rates[len(rates) // 3:]), "first_step_s": round(first, 2),
            "wall_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=str(CORPORA / "tinyshakespeare.txt"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    a = ap.parse_args()
    hw = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
          "avx512_bf16": bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()),
          "amx": bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()),
          "date": time.strftime("%Y-%m-%d %H:%M"), "load_avg_at_start": os.getloadavg()[0]}
    print(f"# {hw['cpu']}, {hw['cores']} cores, torch {hw['torch']}, AVX512-BF16 {hw['avx512_bf16']}, "
          f"AMX {hw['amx']}", file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in a.shapes:
            for r in range(a.rounds):
                row = {"shape": shape, "round": r}
                order = ("auto", "fp32", "bf16") if r % 2 == 0 else ("fp32", "auto", "bf16")  # no order bias
                for precision in order:
                    row[precision] = run(a.corpus, precision, SHAPES[shape], a.steps, Path(tmp) / f"{shape}-{r}")
                    print(f"{shape} round {r} {precision}: {row[precision]}", file=sys.stderr)
                fp32 = row["fp32"].get("chars_per_s")
                for precision in ("auto", "bf16"):
                    rate = row[precision].get("chars_per_s")
                    row[f"{precision}_over_fp32"] = round(rate / fp32, 3) if rate and fp32 else None
                results.append(row)
    hw["load_avg_at_end"] = os.getloadavg()[0]
    print(f"\n{hw['cpu']}, {hw['cores']} cores, torch {hw['torch']} (load avg {hw['load_avg_at_start']:.1f} -> "
          f"{hw['load_avg_at_end']:.1f})")
    print(f"{'shape':<20} {'round':>5} {'auto chose (how)':<22} {'fp32 c/s':>9} {'auto/fp32':>9} {'bf16/fp32':>9} "
          f"{'1st step auto/fp32':>18}")
    for row in results:
        auto, fp32 = row["auto"], row["fp32"]
        chose = f"{auto.get('chose', 'error')} ({auto.get('how', auto.get('error', '')[:30])})"
        bf16 = row["bf16_over_fp32"] if row["bf16_over_fp32"] is not None else "fails"
        first = f"{auto.get('first_step_s', '?')} / {fp32.get('first_step_s', '?')} s"
        print(f"{row['shape']:<20} {row['round']:>5} {chose:<22} {fp32.get('chars_per_s', 0):>9,.0f} "
              f"{row['auto_over_fp32'] or '-':>9} {bf16:>9} {first:>18}")
    reasons = sorted({row["auto"].get("reason", "") for row in results})
    print("auto's reason: " + " | ".join(reasons))
    bf16_errors = sorted({row["bf16"]["error"] for row in results if "error" in row["bf16"]})
    if bf16_errors:
        print("forced bf16: " + " | ".join(bf16_errors))
    out = ROOT / "benchmarks" / "results" / "precision_auto.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"hardware": hw, "steps": a.steps, "rows": results}, indent=1))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
