"""Property: whatever values the numeric flags of `train` and `sample` get, the answer is an exit code
(0, 1 or 2) and at most a clear message: never a traceback."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from charnn.cli import app
from conftest import make_text

runner = CliRunner()
odd_floats = st.sampled_from([0.0, -1.0, math.nan, math.inf, -math.inf, 1e308, 1e-300, 0.5, 0.999, 1.0, 2.0])
odd_ints = st.sampled_from([-(2**70), -1, 0, 1, 2, 3, 2**31, 2**64, 10**30])
small_ints = st.sampled_from([-1, 0, 1, 2, 3, 8, 300, 70000])  # sizes: valid ones stay tiny


TRAIN_FLAGS = [("--layers", st.sampled_from([-1, 0, 1, 2, 300])), ("--hidden", small_ints), ("--embed", small_ints),
               ("--dropout", odd_floats), ("--val-frac", odd_floats), ("--batch-size", small_ints),
               ("--seq-len", small_ints), ("--lr", odd_floats), ("--warmup", odd_ints),
               ("--weight-decay", odd_floats), ("--grad-clip", odd_floats), ("--epochs", odd_floats),
               ("--max-time", st.sampled_from(["0", "-1", "1e9", "soon", "0.001", "30s", "2m", "99999999999d"])),
               ("--patience", odd_ints), ("--eval-every", odd_ints), ("--seed", odd_ints),
               ("--threads", st.sampled_from([-1, 0, 5000])), ("--save-every-secs", odd_floats),
               ("--precision", st.sampled_from(["auto", "fp32", "bf16", "fp16", "fp8"])),
               ("--device", st.sampled_from(["cpu", "auto", "tpu", "cuda"]))]
SAMPLE_FLAGS = [("--length", st.sampled_from([-5, -1, 0, 1, 7, 40])), ("--temp", odd_floats),
                ("--top-k", odd_ints), ("--seed", odd_ints), ("--device", st.sampled_from(["cpu", "auto", "tpu"])),
                ("--prime", st.text(max_size=5))]


def assert_no_traceback(r):
    assert r.exit_code in (0, 1, 2), (r.exit_code, r.stderr, r.exception)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.stderr
    if r.exit_code:
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("prop") / "p.txt"
    path.write_text(make_text(40, seed=1), encoding="utf-8")
    return path


def some_flags(table):
    """A few flags of `table` (so that runs where every value is valid come up often), each given a value."""
    pick = st.lists(st.sampled_from(range(len(table))), max_size=4, unique=True)
    return pick.flatmap(lambda idx: st.tuples(*(flag_value(*table[i]) for i in idx)))


def flag_value(name, values):
    return values.map(lambda v: [name, repr(v) if isinstance(v, float) else str(v)])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chosen=some_flags(TRAIN_FLAGS), steps=st.sampled_from(["-1", "0", "1", "2", "2"]))
def test_train_flags_never_traceback(corpus, tmp_path_factory, chosen, steps):
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("out")
    base = ["train", str(corpus), "--out", str(out), "--max-steps", steps, "--hidden", "8", "--embed", "4",
            "--batch-size", "2", "--seq-len", "8", "--eval-every", "1", "--quiet"]
    try:
        assert_no_traceback(runner.invoke(app, base + [a for f in chosen for a in f]))  # later flags win
    finally:
        torch.set_num_threads(threads)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chosen=some_flags(SAMPLE_FLAGS))
def test_sample_flags_never_traceback(trained_run, chosen):
    assert_no_traceback(runner.invoke(app, ["sample", str(trained_run.run_dir), "--quiet"] + [a for f in chosen for a in f]))


LABEL_FLAGS = [("--label-dropout", odd_floats), ("--label-contrast", odd_floats), ("--label-negatives", odd_ints),
               ("--val-frac", odd_floats), ("--batch-size", small_ints), ("--seq-len", small_ints)]


@pytest.fixture(scope="module")
def labelled_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("prop") / "rows.tsv"
    rows = [f"{'ab'[i % 2]}\t{line}" for i, line in enumerate(make_text(40, seed=2).splitlines()) if line]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chosen=some_flags(LABEL_FLAGS), steps=st.sampled_from(["0", "1", "2"]))
def test_label_flags_never_traceback(labelled_corpus, tmp_path_factory, chosen, steps):
    out = tmp_path_factory.mktemp("out")
    base = ["train", str(labelled_corpus), "--label-by", "line", "--out", str(out), "--max-steps", steps,
            "--hidden", "8", "--embed", "4", "--batch-size", "2", "--seq-len", "8", "--eval-every", "1", "--quiet",
            "--device", "cpu"]
    assert_no_traceback(runner.invoke(app, base + [a for f in chosen for a in f]))
