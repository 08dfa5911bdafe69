"""Shared fixtures and helpers: a tiny corpus the tests write themselves, a tiny trained run, the environment
for charnn subprocesses, and the checks a one-line error must pass."""

import asyncio
import contextlib
import json
import os
import random
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from charnn.config import ModelConfig, TrainConfig
from charnn.data.corpus import Corpus
from charnn.generation.batcher import Batcher
from charnn.training.trainer import train

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parent.parent


def _separate_stderr() -> None:
    """Typer's CliRunner on click before 8.2 (what typer 0.12-0.15 ran with) mixes stderr into stdout unless told
    not to; the tests read them apart, as click 8.2+ and typer's own click keep them."""
    import inspect

    from typer.testing import CliRunner

    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        init = CliRunner.__init__
        CliRunner.__init__ = lambda self, *a, mix_stderr=False, **k: init(self, *a, mix_stderr=mix_stderr, **k)


_separate_stderr()


def subprocess_env(**extra: str) -> dict:
    """The environment for a charnn subprocess, read at call time, so it shares the session's temporary
    CHARNN_CACHE (see _private_cache) and imports this checkout."""
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}


def free_port() -> int:
    """A local TCP port nobody listens on (just now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line_error(r, code, *words):
    """A CliRunner result that is one line on stderr naming `words`, nothing on stdout, no traceback."""
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr, r.exception)
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


def wait_for_save(proc, path: Path, after: float = 0.0, timeout: float = 600.0) -> None:
    """Until `path` exists and was written after `after` (a wall-clock time), while `proc` lives."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file() and path.stat().st_mtime > after:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.returncode} {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("training never saved")


def make_text(n_lines: int = 400, seed: int = 0) -> str:
    """Repetitive English-like lines: learnable in a few dozen steps."""
    rng = random.Random(seed)
    words = "the cat sat on a mat and the dog ran to the red barn while birds sang".split()
    return "\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(n_lines)) + "\n"


def train_tiny_pairs(root: Path, out: Path) -> Path:
    """A tiny sequence-to-sequence run (reversed words, 4 steps: it learns little) trained through the CLI into
    out/rev; returns that run folder."""
    from typer.testing import CliRunner

    from charnn.cli import app

    words = ["abc", "de", "cab", "cde", "ba", "ed", "bad", "ace"] * 30
    (root / "rev.tsv").write_text("".join(f"{w}\t{w[::-1]}\n" for w in words), encoding="utf-8")
    r = CliRunner().invoke(app, [str(a) for a in ("train", root / "rev.tsv", "--pairs", "--out", out, "--hidden", "16",
                                                  "--embed", "8", "--layers", "1", "--max-steps", "4", "--eval-every",
                                                  "2", "--device", "cpu", "--threads", "1", "-q")])
    assert r.exit_code == 0, r.stderr
    return out / "rev"


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Encoded corpora and downloads go to a temporary cache, never the user's ~/.cache/charnn (and the tests that
    unset CHARNN_CACHE see ~/.cache/charnn's rules, not a developer's XDG_CACHE_HOME)."""
    os.environ.pop("XDG_CACHE_HOME", None)
    old = os.environ.get("CHARNN_CACHE")
    os.environ["CHARNN_CACHE"] = str(tmp_path_factory.mktemp("charnn-cache"))
    yield
    if old is None:
        os.environ.pop("CHARNN_CACHE", None)
    else:
        os.environ["CHARNN_CACHE"] = old


TINY_MODEL = dict(cell="lstm", layers=2, hidden=64, embed=16, dropout=0.0)
# fp32: on a CPU with native bf16, `auto` times both precisions and may pick either, so runs that a test compares
# would not agree to rounding; the tests of auto itself ask for it
TINY_TRAIN = dict(batch_size=8, seq_len=32, lr=2e-2, warmup=5, eval_every=50, max_steps=150, device="cpu", seed=3,
                  precision="fp32")


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, corpus_file):
    """A run folder holding best.pt and last.pt of a tiny model trained for 150 steps."""
    out = tmp_path_factory.mktemp("runs")
    text = corpus_file.read_text(encoding="utf-8")
    result = train(Corpus(text, "tiny", str(corpus_file)), ModelConfig(vocab_size=1, **TINY_MODEL),
                   TrainConfig(out=str(out), **TINY_TRAIN))
    return result


def drain(batcher, rows, per_step: int = 4) -> list:
    """Step a Batcher until every row is done; each row's generated text, in the order of `rows`."""
    texts = {id(r): "" for r in rows}
    while batcher.active:
        for row, piece in batcher.step(per_step):
            texts[id(row)] += piece
    return [texts[id(r)] for r in rows]


class FakeGraph:
    """Stands in for torch.cuda.CUDAGraph off CUDA: replay runs the body that was recorded, after checking that
    every buffer a real graph would have recorded the address of (the stepper's state, the Batcher's input tokens,
    noise and draws) is still the same tensor memory (a stepper that rebuilt its state would leave a real graph
    stepping a stale copy)."""
    body = where = recorded = None

    def replay(self):
        assert self.where() == self.recorded, "a buffer the graph recorded was replaced"
        self.body()


def fake_cuda(monkeypatch, fail_capture=None):
    """torch.cuda's stream and graph calls as no-ops, so Batcher._capture runs on the CPU: its warm-up and its
    capture both really run the block body (a real capture would not), which the undo must cover."""
    stream = SimpleNamespace(wait_stream=lambda other: None)
    monkeypatch.setattr(torch.cuda, "Stream", lambda: stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)

    @contextlib.contextmanager
    def graph(g):
        yield
        if fail_capture:
            raise RuntimeError(fail_capture)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    real, captures = Batcher._capture, []

    def capture(self, n, k):
        g = real(self, n, k)
        g.body = lambda: self._body(n, k)
        g.where = lambda: [t.data_ptr() for t in (*self.stepper.state_tensors(), self.tokens, self.noise, self.drawn)]
        g.recorded = g.where()
        captures.append((n, k))
        return g
    monkeypatch.setattr(Batcher, "_capture", capture)
    monkeypatch.setattr(Batcher, "_records", lambda self: self.graphs)  # as on a CUDA device
    return captures


async def asgi_post(app, path: str, payload: dict):
    """One HTTP request through the ASGI app in this process (status, body), with its lifespan around it."""
    body, sent = json.dumps(payload).encode(), []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {}}
    requested = False

    async def receive():
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # the client stays connected until the answer is complete

    async def send(message):
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), 120)
    app.state.server.close()  # what the app's lifespan does at shutdown: its engines stop
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
