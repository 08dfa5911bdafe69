"""benchmarks/gpu_check.py's 180-s training runs on tinyshakespeare: one `train_180` run per `--long-flags` (the
first is `train_180`, then `train_180_2`, ...), and with `--together` every 180-s run of the check at once.

  --long-flags F  `charnn train CORPUS --max-time 180` plus F: best val loss (no flags: every default, the 1.40
                  goal; with flags, issue 32's regularised runs: goal <= 1.38). Give it again for more runs.
  --together      train_180's runs, minrnn_180 and g2p_180 start at the same time and share the one GPU (a lent
                  GPU comes for minutes: this fits five runs where one at a time fits two); then the train_180
                  settings with the best val loss run again alone (`train_180_solo`), so the best number is
                  measured with the whole GPU. Each shared row says so in the table; its chars/s shows its share.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

LONG = "train_180"


def note(msg: str) -> None:
    print(f"[gpu_check] {msg}", file=sys.stderr, flush=True)


def long_name(i: int) -> str:
    return LONG if i == 0 else f"{LONG}_{i + 1}"


def phase_train_180(r, extra: list, i: int = 0, run_name: str = "") -> dict:
    """`extra`: one --long-flags, e.g. a wider model for the 1.40 goal (none: every flag at its default)."""
    cmd = " ".join(["charnn train CORPUS --max-time", str(r.s["long_time"]), *extra])
    note(f"{long_name(i)}: `{cmd}`" + ("" if extra else ", every other flag at its default"))
    flags = ["--device", "cpu"] if r.device == "cpu" else []
    name = run_name or ("long" if i == 0 else f"long{i + 1}")
    run = r.train(name, r.s["long_time"], r.s["long_slack"], flags + r.s["long_steps"] + extra)
    return {**run, "max_time": r.s["long_time"], "flags": extra, "checkpoint": str(r.tmp / "runs" / name / "best.pt")}


def phase_solo(r, phases: dict) -> dict:
    """The shared train_180 run with the best val loss, again with the GPU to itself."""
    done = {n: ph for n, ph in phases.items() if n.startswith(LONG) and ph.get("best_val_loss") is not None}
    if not done:
        raise RuntimeError("no train_180 run finished to repeat")
    best = min(done, key=lambda n: done[n]["best_val_loss"])
    return {**phase_train_180(r, done[best]["flags"], run_name="long-solo"), "repeats": best}


def run_phase(fn) -> dict:
    """Run one phase: its result, or its error recorded (the other phases are worth their minutes)."""
    t = time.monotonic()
    try:
        result = {**fn(), "error": None}
    except Exception as e:
        result = {"error": f"{type(e).__name__}: {e}"}
    return {**result, "seconds": round(time.monotonic() - t, 1)}


def run_together(named: list) -> dict:
    """named: [(phase name, fn)] run at the same time, one thread each (each waits on its own subprocess)."""
    with ThreadPoolExecutor(max_workers=max(1, len(named))) as pool:
        futures = [(name, pool.submit(run_phase, fn)) for name, fn in named]
        return {name: {**f.result(), "shared_gpu_with": len(named) - 1} for name, f in futures}


def long_goals(phases: dict) -> list:
    goals = []
    for name, ph in phases.items():
        if not name.startswith(LONG) or "error" not in ph:
            continue
        v, flags = ph.get("best_val_loss"), ph.get("flags") or []
        target = 1.38 if flags else 1.40  # issue 32's regularised runs; every default: issue 16's goal
        where = f", sharing the GPU with {ph['shared_gpu_with']}" if ph.get("shared_gpu_with") else ""
        goals.append({"goal": f"{name}{where}: best val loss, nats/char", "value": v, "target": f"<= {target:.2f}",
                      "met": None if v is None else v <= target})
    return goals


def long_rows(phases: dict) -> list:
    """(name, value) rows for gpu_check's table, and the lines that name each run's flags."""
    rows, notes = [], []
    for name, t in phases.items():
        if not name.startswith(LONG) or "wall_s" not in t:
            continue
        shared = f", shared x{t['shared_gpu_with'] + 1}" if t.get("shared_gpu_with") else ""
        rows.append((f"{name}{shared} (best at step {t['steps']:,} of {t['last_step']:,}, {t['precision']}, "
                     f"batch {t['batch']})", f"{t['chars_per_s']:,.0f}"))
        again = f" (again, alone: {t['repeats']})" if t.get("repeats") else ""
        notes.append(f"{name}{again}: --max-time {t['max_time']} {' '.join(t['flags']) or '(every default)'}")
    shared = [name for name, ph in phases.items() if ph.get("shared_gpu_with")]
    if shared:
        notes.append(f"these ran at the same time, sharing the GPU: {', '.join(shared)}")
    return rows, notes
