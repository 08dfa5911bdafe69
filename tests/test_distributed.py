"""Data-parallel training: real torchrun processes (gloo on the CPU) against one plain process.

Each torchrun start costs a few seconds of Python and torch imports per rank, so the tests share runs where
they can; all of them together take well under a minute on the 2-core CI machine.
"""

import faulthandler
import gc
import os
import shutil
import signal
import subprocess
import sys
import weakref

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import TINY_MODEL, free_port, make_text, subprocess_env, wait_for_save

from charnn.scoring import evaluate, rows
from charnn.checkpoint import build_from_checkpoint, load_checkpoint
from charnn.config import ModelConfig, TrainConfig
from charnn.data.batches import StreamBatches
from charnn.data.corpus import Corpus
from charnn.errors import ConfigError
from charnn.scoring.evaluate import evaluate_text, score_ids
from charnn.training.distributed import Dist
from charnn.training.metrics import read_metrics
from charnn.training.trainer import StopRequest, Trainer, TrainingInterrupted


# a rank left waiting by a bug fails the test in a minute instead of hanging for the default ten
def env() -> dict:
    return subprocess_env(CHARNN_DIST_TIMEOUT="60")
# dropout 0: dropout masks differ between one process and two, so only without it can the curves agree.
# fp32: on a CPU with native bf16, `--precision auto` times both per model and batch shape, and one process
# (batch 8) and each of two (batch 4 each) can decide differently: curves then differ by ~1e-4, not rounding.
FLAGS = ["--hidden", "64", "--embed", "16", "--layers", "2", "--dropout", "0", "--batch-size", "8", "--seq-len", "32",
         "--lr", "0.02", "--warmup", "5", "--eval-every", "10", "--device", "cpu", "--seed", "3", "--log-every", "1",
         "--threads", "1", "--save-every-secs", "0", "--precision", "fp32"]


def torchrun(nproc: int, *args: str) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "charnn", "train", *args]


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=300, **kw)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist") / "tiny.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


def test_two_processes_follow_one_process_at_the_same_global_batch(tmp_path, corpus):
    one = run([sys.executable, "-m", "charnn", "train", str(corpus), "--out", str(tmp_path), "--name", "one",
               *FLAGS, "--max-steps", "20"])
    assert one.returncode == 0, one.stderr
    two = run(torchrun(2, str(corpus), "--out", str(tmp_path), "--name", "two", *FLAGS, "--max-steps", "20"))
    assert two.returncode == 0, two.stderr
    a, b = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(tmp_path / "two" / "metrics.jsonl")
    # only rank 0 writes: one record per step, none twice, and one set of notes on stderr
    assert [r["step"] for r in b] == list(range(1, 21)) == [r["step"] for r in a]
    assert two.stderr.count("step 20: val") == 1 and "x 2 processes" in two.stderr
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["best.pt", "config.json", "last.pt", "metrics.jsonl"]
    # Rank r trains on rows [4r, 4r+4) of the same 8 streams, and DDP averages the two halves' gradients:
    # the same update as one process, up to float32 rounding (the mean of two means, gradients summed in
    # another order). Measured differences are ~1e-7 relative over 20 steps; 1e-4 leaves room for other
    # BLAS builds and is still far below what one step changes the loss by here (1e-2 and more).
    for ra, rb in zip(a, b):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-4), ra["step"]
    assert b[-1]["val_loss"] == pytest.approx(a[-1]["val_loss"], rel=1e-4)
    # the torchrun checkpoint is an ordinary one: no "module." prefix, and what `charnn eval` does reads it
    data = load_checkpoint(tmp_path / "two" / "last.pt")
    assert not any(k.startswith("module.") for k in data["model"])
    assert data["progress"]["hidden"][0].shape[1] == 8  # all 8 streams' carried state, gathered from both ranks
    text = corpus.read_text(encoding="utf-8")
    scores = [evaluate_text(*build_from_checkpoint(load_checkpoint(tmp_path / n / "last.pt")), text,
                            torch.device("cpu")).nats_per_char for n in ("one", "two")]
    assert scores[1] == pytest.approx(scores[0], rel=1e-4)


def assert_same_curves(one, two, steps: int) -> None:
    """Two runs' metrics.jsonl: a record every step, train losses and the last val loss within 1e-4."""
    a, b = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, steps + 1))
    for ra, rb in zip(a, b):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-4), ra["step"]
    assert b[-1]["val_loss"] == pytest.approx(a[-1]["val_loss"], rel=1e-4)


def test_line_labels_under_two_processes_follow_one_process(tmp_path):
    """--label-by line: every rank takes its share of each batch of whole lines, padding and all; the loss is
    the mean over both ranks' real targets, so two processes follow one (label dropout off: its draws differ
    per rank, as dropout's do)."""
    import random
    rng = random.Random(0)
    words = {"a": "the cat sat on a mat".split(), "b": "ein hund lief zum haus".split()}
    rows = [f"{k}\t" + " ".join(rng.choice(words[k]) for _ in range(rng.randint(1, 12)))
            for k in rng.choices("ab", k=300)]
    tsv = tmp_path / "rows.tsv"
    tsv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    flags = [str(tsv), "--label-by", "line", "--label-dropout", "0", "--out", str(tmp_path), *FLAGS, "--max-steps", "12"]
    one = run([sys.executable, "-m", "charnn", "train", *flags, "--name", "one"])
    assert one.returncode == 0, one.stderr
    two = run(torchrun(2, *flags, "--name", "two"))
    assert two.returncode == 0, two.stderr
    assert_same_curves(tmp_path / "one", tmp_path / "two", 12)
    da, db = (load_checkpoint(tmp_path / n / "last.pt") for n in ("one", "two"))
    assert db["labels"]["val_nats_per_char"] == pytest.approx(da["labels"]["val_nats_per_char"], rel=1e-4)


def test_pairs_under_two_processes_follow_one_process(tmp_path):
    """--pairs: every rank takes its share of each batch of pairs (its own padding width), validation blocks
    are shared out and summed; two processes follow one."""
    import random
    rng = random.Random(1)
    inputs = ["".join(rng.choice("abcde") for _ in range(rng.randint(1, 9))) for _ in range(300)]
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{w}\t{w[::-1]}\n" for w in inputs), encoding="utf-8")
    at = FLAGS.index("--seq-len")  # (a --pairs model reads each pair whole: the flag is refused)
    flags = [str(tsv), "--pairs", "--out", str(tmp_path), *FLAGS[:at], *FLAGS[at + 2:], "--max-steps", "12"]
    one = run([sys.executable, "-m", "charnn", "train", *flags, "--name", "one"])
    assert one.returncode == 0, one.stderr
    two = run(torchrun(2, *flags, "--name", "two"))
    assert two.returncode == 0, two.stderr
    assert_same_curves(tmp_path / "one", tmp_path / "two", 12)


def test_a_batch_that_does_not_divide_among_the_processes_is_one_usage_error(tmp_path, corpus):
    r = run(torchrun(2, str(corpus), "--out", str(tmp_path), *FLAGS, "--batch-size", "7", "--max-steps", "3"))
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.startswith("charnn: error")]
    assert len(lines) == 1 and "--batch-size` 7" in lines[0] and "2 processes" in lines[0], r.stderr
    assert "Traceback" not in r.stderr.split("charnn: error")[0]  # no rank printed a traceback of its own
    assert not (tmp_path / "tiny").exists()


def _long_run_with_a_checkpoint(tmp_path, corpus) -> subprocess.Popen:
    """A 2-process torchrun run with no end in sight, once it has written tmp_path/tiny/last.pt."""
    proc = subprocess.Popen(torchrun(2, str(corpus), "--out", str(tmp_path), *FLAGS, "--max-steps", "1000000"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    wait_for_save(proc, tmp_path / "tiny" / "last.pt", timeout=120)
    return proc


def test_sigterm_to_torchrun_saves_last_pt_and_the_run_resumes_under_torchrun(tmp_path, corpus):
    run_dir = tmp_path / "tiny"
    proc = _long_run_with_a_checkpoint(tmp_path, corpus)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    stopped = [line for line in stderr.splitlines() if line.startswith("stopped at step")]
    assert len(stopped) == 1, stderr
    assert "Resume with: torchrun --standalone --nproc-per-node 2 -m charnn train" in stopped[0], stderr
    step = load_checkpoint(run_dir / "last.pt")["step"]
    assert f"stopped at step {step};" in stopped[0] and not list(run_dir.glob(".*.tmp"))
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == list(range(1, step + 1))
    # --resume under torchrun: both ranks load the same last.pt and take their rows of the carried state
    r = run(torchrun(2, str(corpus), "--out", str(tmp_path), "--resume", "--max-steps", str(step + 3), "--log-every", "1",
                           "--quiet"))
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(run_dir / "last.pt")["step"] == step + 3
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == list(range(1, step + 4))


def test_a_killed_torchrun_stops_its_ranks_as_sigterm_does(tmp_path, corpus):
    """Was: `kill -9` of torchrun left both ranks training, holding the run's lock (a new run or --resume was
    refused); now each rank gets SIGTERM when its launcher dies (Linux), saves and lets go."""
    import time

    from charnn.training.runlock import holder_pid
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    run_dir = tmp_path / "tiny"
    proc = _long_run_with_a_checkpoint(tmp_path, corpus)
    assert holder_pid(run_dir) is not None
    import threading
    proc.kill()
    proc.wait(timeout=60)
    out = []  # the ranks hold the pipes: drained meanwhile, so a full pipe cannot stop them
    readers = [threading.Thread(target=lambda f=f: out.append(f.read()), daemon=True) for f in (proc.stdout, proc.stderr)]
    for r in readers:
        r.start()
    deadline = time.time() + 60
    while holder_pid(run_dir) is not None and time.time() < deadline:
        time.sleep(0.2)
    assert holder_pid(run_dir) is None, out  # the ranks stopped (they trained on for good)
    assert load_checkpoint(run_dir / "last.pt")["step"] > 0 and not list(run_dir.glob(".*.tmp"))


# ---- exact resume with two ranks, in-process (a deterministic stop at step 12 needs a callback) -------------
MODEL = dict(TINY_MODEL, hidden=24, embed=8, dropout=0.1)  # (dropout too: its masks follow the same generators)
TRAIN = dict(batch_size=4, seq_len=16, lr=1e-2, warmup=5, eval_every=10, max_steps=24, device="cpu", seed=11,
             save_every_secs=0, threads=1)
# every training-time regulariser on (charnn.models.regularize): their masks follow each rank's seeded generator
REGULARISED = dict(weight_drop=0.3, locked_dropout=True, input_dropout=0.1, embed_dropout=0.1, ar=1.0, tar=1.0)


def _rank(rank: int, world: int, port: int, out: str) -> None:
    faulthandler.enable()  # should a rank abort, its Python stack says where
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), CHARNN_DIST_TIMEOUT="60")
    corpus = Corpus(make_text(30, seed=4), "t", "t")
    with Dist.from_env() as dist:
        straight = Trainer(corpus, ModelConfig(vocab_size=1, **MODEL, extra=REGULARISED), TrainConfig(out=out, name="straight", **TRAIN),
                           dist=dist)
        wrapper = weakref.ref(straight.net)
        straight.fit()
        gc.collect()  # the DDP wrapper must not outlive fit: it holds the process group, which then outlives
        assert wrapper() is None  # destroy_process_group and is torn down at interpreter exit (a SIGABRT)
        stop = StopRequest()

        def signal_on_rank_1(kind, info):  # as if only rank 1 had been sent SIGINT: both must stop together
            if kind == "step" and info["step"] == 12 and rank == 1:
                stop.signum = signal.SIGINT

        cfg = TrainConfig(out=out, name="cut", **TRAIN)
        try:
            Trainer(corpus, ModelConfig(vocab_size=1, **MODEL, extra=REGULARISED), cfg, signal_on_rank_1, stop=stop, dist=dist).fit()
            raise AssertionError("rank 0 did not stop with rank 1")
        except TrainingInterrupted as e:
            assert e.signum == signal.SIGINT
        Trainer(corpus, ModelConfig(vocab_size=1, **MODEL, extra=REGULARISED), cfg, resume=True, dist=dist).fit()


def test_two_ranks_stop_together_and_resume_exactly(tmp_path):
    mp.spawn(_rank, args=(2, free_port(), str(tmp_path)), nprocs=2)
    straight, cut = (torch.load(tmp_path / n / "last.pt", weights_only=True) for n in ("straight", "cut"))
    assert straight["step"] == cut["step"] == 24
    for k in straight["model"]:
        assert torch.equal(straight["model"][k], cut["model"][k]), k


def _locked_rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), CHARNN_DIST_TIMEOUT="30")
    from charnn.errors import CharnnError
    with Dist.from_env() as dist:
        try:
            Trainer(Corpus(make_text(30, seed=4), "t", "t"), ModelConfig(vocab_size=1, **MODEL),
                    TrainConfig(out=out, name="held", **TRAIN), dist=dist).fit()
            said = "trained"
        except CharnnError as e:
            said = f"{type(e).__name__}: {e}"
    with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
        f.write(said)


def test_a_run_folder_another_process_trains_stops_every_rank_together(tmp_path):
    """Only rank 0 takes the run's lock: when it was taken, rank 0 said so at once, but rank 1 went on and waited
    for it in its first collective until the timeout (torchrun ended 30 s later, with a c10d error)."""
    from charnn.training.runlock import RunLock
    held = RunLock.acquire(tmp_path / "held")
    try:
        mp.spawn(_locked_rank, args=(2, free_port(), str(tmp_path)), nprocs=2)
    finally:
        held.release()
    said = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert "being trained by another process" in said[0], said
    assert said[1] == "CharnnError: another process stopped (it says why)", said


# ---- the pieces, without processes ----------------------------------------------------------------------------
def test_shards_are_the_one_process_layout_cut_into_rows():
    ids = torch.arange(1000)
    whole = StreamBatches(ids, 6, 10)
    parts = [StreamBatches(ids, 6, 10) for _ in range(3)]
    for r, p in enumerate(parts):
        p.shard(r, 3)
    for batches in zip(whole.epoch(3), *(p.epoch(3) for p in parts)):
        (x, y), shards = batches[0], batches[1:]
        assert torch.equal(torch.cat([s[0] for s in shards]), x) and torch.equal(torch.cat([s[1] for s in shards]), y)


def test_validation_shards_add_up_to_the_whole(monkeypatch):
    monkeypatch.setattr(evaluate, "MIN_STREAM", 40)  # short streams keep the test fast
    model, _ = build_from_checkpoint({"model_config": dict(vocab_size=19, **MODEL), "tokenizer": {"kind": "char",
                                      "chars": "abcdefghijklmnopqr"}, "model": _fresh_weights()})
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 19, 5 * 40 + 7))  # 5 streams and a tail
    assert evaluate.stream_layout(len(ids) - 1) == (5, 41)
    whole = score_ids(model, ids, torch.device("cpu"))
    for world in (2, 3, 7):  # 7 > 5 streams: some ranks score nothing
        parts = [score_ids(model, ids, torch.device("cpu"), part=(r, world)) for r in range(world)]
        assert sum(parts) == pytest.approx(whole, rel=1e-6)


def test_scoring_calls_hold_a_bounded_amount_of_logits_and_score_the_same(monkeypatch):
    """A large vocabulary is scored in fewer time steps per call (LOGITS_BYTES; 64 streams x 256 steps x 40,000
    tokens were 2.6 GB of logits a copy): the same nats, and the shards still add up to the whole."""
    monkeypatch.setattr(evaluate, "MIN_STREAM", 40)
    model, _ = build_from_checkpoint({"model_config": dict(vocab_size=19, **MODEL), "tokenizer": {"kind": "char",
                                      "chars": "abcdefghijklmnopqr"}, "model": _fresh_weights()})
    ids = torch.from_numpy(np.random.default_rng(1).integers(0, 19, 5 * 40 + 7))
    whole = score_ids(model, ids, torch.device("cpu"))
    assert rows.chunk_steps(model, 5) == evaluate.CHUNK
    monkeypatch.setattr(rows, "LOGITS_BYTES", 4 * 5 * 19 * 6)  # six steps of five streams
    assert rows.chunk_steps(model, 5) == 6 and rows.chunk_steps(model, 10**6) == 1
    made = []
    forward = model.forward

    def counted(*a, **k):
        out = forward(*a, **k)
        made.append(out[0].numel())
        return out

    monkeypatch.setattr(model, "forward", counted)
    bounded = score_ids(model, ids, torch.device("cpu"))
    assert max(made) * 4 <= rows.LOGITS_BYTES and len(made) == 7 + 1  # 41 steps in sixes, and the tail
    assert bounded == pytest.approx(whole, rel=1e-6)
    parts = [score_ids(model, ids, torch.device("cpu"), part=(r, 3)) for r in range(3)]
    assert sum(parts) == pytest.approx(bounded, rel=1e-6)
    # padded rows (documents of a labelled run, classify) too: 5 rows of 41 steps, the same nats per row
    x, y = ids[:205].view(5, 41), ids[1:206].view(5, 41).clone()
    y[2, 30:] = rows.IGNORE  # a row that ends early
    made.clear()
    bounded_rows = rows.row_nats(model, x, y, None, torch.device("cpu"))
    assert max(made) * 4 <= rows.LOGITS_BYTES and len(made) == 7
    monkeypatch.setattr(rows, "LOGITS_BYTES", 1 << 30)
    assert torch.allclose(bounded_rows, rows.row_nats(model, x, y, None, torch.device("cpu")), rtol=1e-6)


def _fresh_weights():
    from charnn.models.lm import CharRNN

    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=19, **MODEL)).state_dict()


def test_outside_torchrun_everything_is_a_no_op(monkeypatch):
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    dist = Dist.from_env()
    assert (dist.rank, dist.world, dist.active, dist.is_main) == (0, 1, False, True)
    model = torch.nn.Linear(2, 3)
    assert dist.wrap(model) is model and dist.start(torch.device("cpu")) == torch.device("cpu")
    assert dist.sum(2.5) == 2.5 and dist.max_ints([3, -1]) == [3, -1] and dist.any(True) is True
    dist.check_batch_size(7)
    with pytest.raises(ConfigError, match="divide evenly among the 2 processes; try --batch-size 6 or 8"):
        Dist(0, 2).check_batch_size(7)


@pytest.mark.skipif(shutil.which("pgrep") is None, reason="needs pgrep to find the ranks")
def test_a_dying_rank_ends_the_run_and_the_last_checkpoint_stays_good(tmp_path, corpus):
    run_dir = tmp_path / "tiny"
    proc = _long_run_with_a_checkpoint(tmp_path, corpus)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(workers[-1]), signal.SIGKILL)  # one rank dies without a word
    _, stderr = proc.communicate(timeout=120)  # every other process must end too, not wait in a collective
    assert proc.returncode != 0
    said = [line for line in stderr.splitlines() if line.startswith("charnn: error: another training process")]
    assert len(said) == 1, stderr  # rank 0 says so (torchrun's SIGTERM killed it first about half the time)
    assert subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True).stdout == b""
    for w in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(int(w), 0)
    data = load_checkpoint(run_dir / "last.pt")  # the last good checkpoint, intact and loadable
    assert data["step"] >= 1 and not list(run_dir.glob(".*.tmp"))


@pytest.mark.parametrize("env, words", [
    ({"WORLD_SIZE": "abc", "RANK": "0"}, "WORLD_SIZE='abc' in the environment"),  # (a ValueError traceback)
    ({"WORLD_SIZE": "0", "RANK": "0"}, "WORLD_SIZE='0'"),  # (ZeroDivisionError)
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 in the environment is not below WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2", "RANK": "0", "CHARNN_DIST_TIMEOUT": "abc"}, "CHARNN_DIST_TIMEOUT='abc'"),
    ({"WORLD_SIZE": "2", "RANK": "0", "CHARNN_DIST_TIMEOUT": "0"}, "a number from 1"),  # (failed at once)
    ({"WORLD_SIZE": "2", "RANK": "0", "CHARNN_DIST_TIMEOUT": "1e-320"}, "a number from 1"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "abc"},
     "could not join the other torchrun processes"),  # (a ValueError traceback from torch's rendezvous)
])
def test_a_torchrun_environment_that_makes_no_sense_is_one_line(env, words, monkeypatch, tmp_path):
    from conftest import one_line_error
    from typer.testing import CliRunner

    from charnn.cli import app
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "t.txt").write_text("some text " * 200, encoding="utf-8")
    one_line_error(CliRunner().invoke(app, ["train", str(tmp_path / "t.txt"), "--out", str(tmp_path),
                                            "--max-steps", "1"]), 1, words)
