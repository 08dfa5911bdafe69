"""Load on `charnn serve`: concurrent streaming clients, aggregate chars/s, time to first character, errors,
and a soak of repeated requests with the server's RSS at its start and end.

    python benchmarks/serve_load.py                      # the default model's shape (2x256 LSTM), random weights
    python benchmarks/serve_load.py checkpoints/shakespeare --soak 300 --levels 1 4 16 64

The server runs as a subprocess (`python -m charnn serve`), as it would in use; the clients are asyncio
streams in this process reading the server-sent events over raw HTTP/1.1, so the client side costs little.
Prints a table and writes JSON to benchmarks/results/serve_load.json. Results: benchmarks/SERVING.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import CORPORA, cpu_features, cpu_name  # noqa: E402

CORPUS = CORPORA / "tinyshakespeare.txt"
MIN_REQUESTS = 32  # requests per level at least


def random_default_model(folder: Path) -> Path:
    """A checkpoint of `charnn train`'s default shape (2x256 LSTM, embed 64) with random weights, over the
    characters of tinyshakespeare when it is there (else printable ASCII): sampling speed depends on the
    shape and vocabulary only."""
    import torch

    from charnn.checkpoint import save_checkpoint
    from charnn.config import ModelConfig
    from charnn.models.lm import CharRNN
    from charnn.text.tokenizer import CharTokenizer

    chars = sorted(set(CORPUS.read_text(encoding="utf-8"))) if CORPUS.is_file() else [chr(c) for c in range(32, 127)] + ["\n"]
    tok = CharTokenizer(chars)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size)
    run = folder / "default-random"
    run.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"model_config": vars(cfg), "tokenizer": tok.state(), "model": CharRNN(cfg).state_dict(),
                     "step": 0}, run / "best.pt")
    return run


async def one_request(port: int, body: dict) -> dict:
    """POST a streaming completion; (seconds to the first character, characters, seconds in all, error)."""
    t0 = time.perf_counter()
    first, chars, error = None, 0, None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data = json.dumps(body).encode()
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(status.decode().strip())
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        buffer = b""
        while True:  # chunked transfer encoding: size line, that many bytes, CRLF
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                break
            buffer += (await reader.readexactly(size + 2))[:-2]
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                payload = event[len(b"data: "):]
                if payload == b"[DONE]":
                    continue
                for c in json.loads(payload)["choices"]:
                    if c["text"] and first is None:
                        first = time.perf_counter() - t0
                    chars += len(c["text"])
        writer.close()
        if chars != body["max_tokens"]:
            raise RuntimeError(f"{chars} characters, not {body['max_tokens']}")
    except Exception as e:  # counted as an error of this request
        error = repr(e)
    return {"first": first, "chars": chars, "seconds": time.perf_counter() - t0, "error": error}


async def level(port: int, clients: int, chars: int, rounds: int) -> dict:
    """`clients` concurrent clients, each making `rounds` streaming requests of `chars` characters (more for
    few clients: every level makes at least MIN_REQUESTS requests, so one client is not timed over 0.2 s)."""
    rounds = max(rounds, -(-MIN_REQUESTS // clients))
    async def client(i: int):
        return [await one_request(port, {"prompt": "\n", "max_tokens": chars, "stream": True, "temperature": 0.8,
                                         "seed": 1000 * i + r}) for r in range(rounds)]

    t0 = time.perf_counter()
    results = [r for rs in await asyncio.gather(*(client(i) for i in range(clients))) for r in rs]
    wall = time.perf_counter() - t0
    firsts = sorted(r["first"] for r in results if r["first"] is not None)
    return {"clients": clients, "requests": len(results), "chars": sum(r["chars"] for r in results),
            "seconds": wall, "chars_per_s": sum(r["chars"] for r in results) / wall,
            "first_p50_ms": 1000 * _quantile(firsts, 0.5), "first_p99_ms": 1000 * _quantile(firsts, 0.99),
            "errors": sum(1 for r in results if r["error"]), "error_examples": [r["error"] for r in results if r["error"]][:3]}


async def soak(port: int, pid: int, seconds: float, clients: int, chars: int) -> dict:
    """Repeated requests for `seconds` from `clients` clients (lengths vary; every 5th client gives up early)."""
    rss0, t_end, counts = rss_mb(pid), time.perf_counter() + seconds, {"requests": 0, "errors": 0, "dropped": 0}

    async def client(i: int):
        r = 0
        while time.perf_counter() < t_end:
            body = {"prompt": "\n", "max_tokens": chars // 2 + (97 * (i + r)) % chars, "stream": True, "seed": i * 7919 + r}
            if i % 5 == 4:  # a client that leaves mid-stream: its rows must be freed
                try:
                    await asyncio.wait_for(one_request(port, body), 0.05 + 0.01 * (r % 5))
                except asyncio.TimeoutError:
                    counts["dropped"] += 1
            else:
                result = await one_request(port, body)
                counts["errors"] += result["error"] is not None
            counts["requests"] += 1
            r += 1

    await asyncio.gather(*(client(i) for i in range(clients)))
    await asyncio.sleep(1.0)
    health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health").read())
    return {"seconds": seconds, "clients": clients, **counts, "rss_start_mb": rss0, "rss_end_mb": rss_mb(pid),
            "rss_growth_mb": rss_mb(pid) - rss0, "active_rows_after": health["active_rows"]}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _quantile(xs, q: float) -> float:
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def start_server(run: Path, port: int, args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "charnn", "serve", str(run), "--port", str(port), "--device", "cpu",
           "--max-batch", str(args.max_batch), "--max-queue", "256"] + (["--threads", str(args.threads)] if args.threads else []) \
        + (["--int8"] if args.int8 else [])
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"charnn serve exited: {proc.stderr.read()}")
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("charnn serve never answered")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", help="checkpoint or run folder (default: random weights, default shape)")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64], help="concurrent clients per level")
    ap.add_argument("--chars", type=int, default=500, help="characters per request")
    ap.add_argument("--rounds", type=int, default=2, help="requests per client per level")
    ap.add_argument("--soak", type=float, default=300.0, help="soak seconds (0: none)")
    ap.add_argument("--soak-clients", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="the server's --threads")
    ap.add_argument("--int8", action="store_true", help="the server's --int8 (int8 recurrent weights)")
    ap.add_argument("--note", default="", help="a note stored with the results (e.g. the machine's load)")
    args = ap.parse_args()

    run = Path(args.checkpoint) if args.checkpoint else random_default_model(Path(tempfile.mkdtemp()))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start_server(run, port, args)
    try:
        asyncio.run(level(port, 1, 50, 1))  # warm-up
        rows = [asyncio.run(level(port, n, args.chars, args.rounds)) for n in args.levels]
        soaked = asyncio.run(soak(port, proc.pid, args.soak, args.soak_clients, args.chars)) if args.soak else None
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    cpu = f"{cpu_name()} ({cpu_features()}), {os.cpu_count()} CPUs"
    base = rows[0]["chars_per_s"]
    print(f"charnn serve{' --int8' if args.int8 else ''}, {run}; {cpu}; torch threads {args.threads or 'default'}; "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"{'clients':>7} {'requests':>8} {'chars/s':>9} {'x one':>6} {'first p50':>10} {'first p99':>10} {'errors':>6}")
    for r in rows:
        print(f"{r['clients']:>7} {r['requests']:>8} {r['chars_per_s']:>9,.0f} {r['chars_per_s'] / base:>6.2f} "
              f"{r['first_p50_ms']:>8.0f}ms {r['first_p99_ms']:>8.0f}ms {r['errors']:>6}")
    if soaked:
        print(f"soak {soaked['seconds']:.0f}s, {soaked['clients']} clients: {soaked['requests']} requests "
              f"({soaked['dropped']} left early), {soaked['errors']} errors; RSS {soaked['rss_start_mb']:.0f} -> "
              f"{soaked['rss_end_mb']:.0f} MB ({soaked['rss_growth_mb']:+.1f}); active rows after: "
              f"{soaked['active_rows_after']}")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "cpu": cpu,
              "python": platform.python_version(), "checkpoint": str(run), "random_weights": args.checkpoint is None,
              "threads": args.threads, "int8": args.int8, "max_batch": args.max_batch, "chars": args.chars, "rounds": args.rounds,
              "levels": rows, "soak": soaked, "note": args.note}
    (out / "serve_load.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
