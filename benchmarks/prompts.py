"""Long prompts: what a 1 MB prime costs `charnn sample` and the other rows of a batch, in one run.

For a trained run (default: trains the default 2x256 LSTM on --corpus for --train-seconds first) and a prime
of --prime-mb MB taken from --corpus, measures
  1. `charnn sample --prime-file` end to end, in a child process: wall time and peak RSS, against the same
     command without a prime (the model's own memory);
  2. in process, the prefill alone: tokens it ran (the window the model needed), seconds, and how far its
     state is from the exact one-pass state (max |difference|), against that exact pass in chunks (what the
     old code did in one forward, without the chunks) timed in the same run;
  3. the longest pause of a row that is generating while the long prime loads in the same Batcher (gaps
     between its successive `step` outputs), against its longest gap with no prime loading;
  4. the same through `charnn serve` (a subprocess, one torch thread): the longest gap between the streamed
     chunks of one client while another sends the prime as a prompt, and the server's peak RSS.
Prints a table and writes JSON.

    python benchmarks/prompts.py --corpus ../shared/corpora/tinyshakespeare.txt
    python benchmarks/prompts.py --run checkpoints/tinyshakespeare --corpus ../shared/corpora/tinyshakespeare.txt
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import cpu_features, cpu_name

import charnn
from charnn.sampling import SamplingParams
from charnn.generation.batcher import Batcher, RowSpec
from charnn.generation.prefill import forward_chunks, prefill
from charnn.generation.prompt import start_ids

ROOT = Path(__file__).resolve().parent.parent
PROBE = ("import resource, runpy, sys; sys.argv = ['charnn', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('charnn', run_name='__main__')\n"
         "finally:\n    sys.stderr.write('RSS %d' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")


def child(args) -> dict:
    """Wall seconds and peak RSS (MB) of `charnn ARGS` in a process of its own."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(r.stderr)
    return {"seconds": wall, "peak_rss_mb": int(r.stderr.rsplit("RSS ", 1)[1]) / 1024}


@torch.inference_mode()
def prefill_alone(m, prime: str) -> dict:
    ids = start_ids(m.tokenizer, prime)[:-1]
    t0, chunks, gen = time.perf_counter(), 0, prefill(m.net, ids, m.device)
    while True:
        try:
            next(gen)
            chunks += 1
        except StopIteration as done:
            state = done.value
            break
    seconds = time.perf_counter() - t0
    t0, tokens, exact = time.perf_counter(), 0, None
    for out, exact in forward_chunks(m.net, ids, None, m.device):
        tokens += out.shape[1]
    exact_seconds = time.perf_counter() - t0
    parts = zip(state, exact) if isinstance(state, tuple) else [(state, exact)]
    return {"prompt_tokens": len(ids), "prefill_chunks": chunks, "prefill_seconds": seconds,
            "exact_seconds": exact_seconds, "exact_tokens_per_s": tokens / exact_seconds,
            "max_state_difference": max(float((a - b).abs().max()) for a, b in parts)}


@torch.inference_mode()
def pauses(m, prime: str, length: int = 2000) -> dict:
    """The generating row's longest gap between outputs, with and without a long prime loading beside it."""
    def run(with_prime: bool) -> float:
        b = Batcher(m.net, m.tokenizer, m.device, capacity=2)
        live = b.add(RowSpec(prompt="\n", length=length, sampling=SamplingParams(seed=1)))
        if with_prime:
            b.add(RowSpec(prompt=prime, length=1, sampling=SamplingParams(seed=2)))
        last, worst = time.perf_counter(), 0.0
        while live.finish_reason is None:
            out = b.step(8)
            now = time.perf_counter()
            if any(r is live for r, _ in out):
                worst, last = max(worst, now - last), now
        return worst
    return {"longest_gap_s_alone": run(False), "longest_gap_s_while_loading": run(True)}


def served(run: str, prime: str) -> dict:
    """One streaming client of `charnn serve`, and a second that sends `prime` while the first streams."""
    import http.client
    import socket
    import threading

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "charnn", "serve", run, "--port", str(port), "--threads", "1",
                             "--max-body-bytes", str(4 * len(prime.encode()) + 4096)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/health")
                break
            except OSError:
                time.sleep(0.1)

        def post(body: dict):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
            return conn.getresponse()

        def gaps(with_prime: bool) -> float:
            r = post({"prompt": "\n", "max_tokens": 3000, "stream": True, "seed": 1})
            other = threading.Thread(target=lambda: post({"prompt": prime, "max_tokens": 1}).read())
            last, worst, started = None, 0.0, False
            for line in r:
                now = time.perf_counter()
                if line.startswith(b"data: {"):
                    if last is not None:
                        worst = max(worst, now - last)
                    last = now
                    if with_prime and not started:
                        started = True
                        other.start()
            if started:
                other.join()
            return worst
        def peak() -> float:
            with open(f"/proc/{proc.pid}/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
        alone = gaps(False)
        before = peak()
        loading = gaps(True)
        return {"server_longest_gap_s_alone": alone, "server_longest_gap_s_while_loading": loading,
                "server_peak_rss_mb_before": before, "server_peak_rss_mb": peak()}
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, help="text to train on and to take the prime from")
    ap.add_argument("--run", help="a trained run (default: train the default model for --train-seconds)")
    ap.add_argument("--train-seconds", type=int, default=120)
    ap.add_argument("--prime-mb", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/prompts.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp())
    run = a.run
    if run is None:
        subprocess.run([sys.executable, "-m", "charnn", "train", a.corpus, "--max-time", f"{a.train_seconds}s",
                        "--out", str(tmp), "--name", "bench", "--quiet"], check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        run = str(tmp / "bench")
    text = Path(a.corpus).read_text(encoding="utf-8")
    size = int(a.prime_mb * 1_000_000)
    prime = (text * (size // len(text) + 1))[:size]
    (tmp / "prime.txt").write_text(prime, encoding="utf-8")
    m = charnn.load(run, "cpu")
    common = ["sample", run, "--length", "200", "--seed", "1", "--quiet"]
    cfg = m.net.config
    result = {"cpu": cpu_name(), "cpu_features": cpu_features(), "torch": torch.__version__, "threads": a.threads,
              "run": run, "model": f"{cfg.layers}x{cfg.hidden} {cfg.cell}", "prime_chars": len(prime),
              "sample_no_prime": child(common), "sample_prime": child([*common, "--prime-file", tmp / "prime.txt"])}
    result.update(prefill_alone(m, prime))
    result.update(pauses(m, prime))
    result.update(served(run, prime))
    rows = [("sample, no prime", f"{result['sample_no_prime']['seconds']:.2f} s",
             f"{result['sample_no_prime']['peak_rss_mb']:.0f} MB"),
            (f"sample, {len(prime):,}-char prime", f"{result['sample_prime']['seconds']:.2f} s",
             f"{result['sample_prime']['peak_rss_mb']:.0f} MB"),
            ("prefill (chunks, window)", f"{result['prefill_seconds']:.2f} s",
             f"{result['prefill_chunks']} chunks, state diff {result['max_state_difference']:.1e}"),
            ("exact pass over the whole prime", f"{result['exact_seconds']:.2f} s",
             f"{result['exact_tokens_per_s']:,.0f} tokens/s"),
            ("another row's longest gap, alone", f"{result['longest_gap_s_alone'] * 1000:.0f} ms", ""),
            ("... while the prime loads", f"{result['longest_gap_s_while_loading'] * 1000:.0f} ms", ""),
            ("serve: a stream's longest gap, alone", f"{result['server_longest_gap_s_alone'] * 1000:.0f} ms", ""),
            ("... while the prime loads", f"{result['server_longest_gap_s_while_loading'] * 1000:.0f} ms",
             f"server peak RSS {result['server_peak_rss_mb_before']:.0f} -> {result['server_peak_rss_mb']:.0f} MB")]
    print(f"{result['cpu']} ({result['cpu_features']}), torch {result['torch']}, {a.threads} threads")
    for name, t, extra in rows:
        print(f"{name:<36} {t:>10}  {extra}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
