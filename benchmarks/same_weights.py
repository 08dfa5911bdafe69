"""Does a restructuring change what training computes? Trains each checkpoint kind of tests/fixtures/make_formats.py
(char LSTM, char GRU, bpe, labelled, pairs) to the same step with the same seed, in fp32 on one thread, with this
checkout and with another one (an older commit, say, checked out with `git worktree add /tmp/old COMMIT`), and
compares the weights bit for bit. Prints a table and writes JSON.

    python benchmarks/same_weights.py --other /tmp/old
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import cpu_features, cpu_name

ROOT = Path(__file__).resolve().parent.parent
TRAIN = """
import sys, torch
sys.path.insert(0, {fixtures!r})
from make_formats import corpus, flags_of
from pathlib import Path
import charnn
torch.set_num_threads(1)
kind, out = sys.argv[1], Path(sys.argv[2])
charnn.train(corpus(kind, out), out=str(out), name=kind, **{{**flags_of(kind), "max_steps": 40}})
"""


def train(checkout: Path, kind: str, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    code = TRAIN.format(fixtures=str(ROOT / "tests" / "fixtures"))
    subprocess.run([sys.executable, "-c", code, kind, str(out)], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(checkout)})
    return torch.load(out / kind / "last.pt", weights_only=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--other", required=True, help="the other checkout (its root folder)")
    ap.add_argument("--out", default="benchmarks/results/same_weights.json")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    from make_formats import KINDS

    tmp, rows = Path(tempfile.mkdtemp()), []
    for kind in KINDS:
        mine, other = train(ROOT, kind, tmp / "this" / kind), train(Path(a.other), kind, tmp / "other" / kind)
        differ = [k for k in mine["model"] if not torch.equal(mine["model"][k], other["model"].get(k))]
        opt_same = all(torch.equal(x, y) for s1, s2 in zip(mine["optimizer"]["state"].values(),
                                                            other["optimizer"]["state"].values())
                       for x, y in zip(s1.values(), s2.values()))
        rows.append({"kind": kind, "step": mine["step"], "tensors": len(mine["model"]), "tensors_differing": differ,
                     "optimizer_state_identical": opt_same, "val_loss": [mine["val_loss"], other["val_loss"]]})
    print(f"{cpu_name()} ({cpu_features()}), torch {torch.__version__}; this checkout vs {a.other}")
    print(f"{'kind':<10} {'step':>5} {'tensors':>8} {'differing':>10} {'optimizer':>10}")
    for r in rows:
        print(f"{r['kind']:<10} {r['step']:>5} {r['tensors']:>8} {len(r['tensors_differing']):>10} "
              f"{'same' if r['optimizer_state_identical'] else 'DIFFERS':>10}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"cpu": cpu_name(), "cpu_features": cpu_features(), "torch": torch.__version__,
                                       "other": a.other, "kinds": rows}, indent=2), encoding="utf-8")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
