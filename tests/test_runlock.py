"""One training per run folder (issue 15.3): a second training or a --resume of a run being trained stops
at once with one line naming the holder's pid; a run killed with SIGKILL leaves nothing that blocks."""

import signal
import subprocess
import sys
import time

import pytest
from conftest import TINY_MODEL, TINY_TRAIN, make_text, subprocess_env

from charnn.config import ModelConfig, TrainConfig
from charnn.data.corpus import Corpus
from charnn.errors import CharnnError
from charnn.training.runlock import RunLock, holder_pid
from charnn.training.trainer import Trainer

TINY = ["--hidden", "32", "--embed", "8", "--batch-size", "4", "--seq-len", "16", "--device", "cpu", "-q"]


def _charnn(tmp_path, *args, **kw):
    return subprocess.Popen([sys.executable, "-m", "charnn", "train", "a.txt", "--name", "x", "--out", "runs",
                             *TINY, *args], cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _wait_for_holder(proc, run_dir, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if run_dir.is_dir() and holder_pid(run_dir) == proc.pid:
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    raise AssertionError("the first training never took the run folder")


def test_a_second_training_of_one_name_stops_at_once_and_a_killed_one_blocks_nothing(tmp_path):
    (tmp_path / "a.txt").write_text(make_text(300), encoding="utf-8")
    run_dir = tmp_path / "runs" / "x"
    first = _charnn(tmp_path, "--max-time", "120", "--eval-every", "20", "--save-every-secs", "0.5")
    try:
        _wait_for_holder(first, run_dir)
        for extra, hint in [((), "pick another --name"), (("--resume",), "then --resume")]:
            second = _charnn(tmp_path, "--max-steps", "5", *extra)
            out, err = second.communicate(timeout=120)
            assert second.returncode == 1 and out == "", (second.returncode, err)
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
            assert f"pid {first.pid}" in err and hint in err and "'x'" in err, err
            assert first.poll() is None  # the first run goes on, untouched
        # the first run's folder holds only its own files (the refused ones wrote nothing there); a hidden file
        # that comes and goes is the first run's own atomic save in flight (every 0.5 s): a leftover stays
        leftovers = {p.name for p in run_dir.iterdir() if p.name.startswith(".")}
        deadline = time.time() + 5
        while leftovers and time.time() < deadline:
            time.sleep(0.1)
            leftovers &= {p.name for p in run_dir.iterdir() if p.name.startswith(".")}
        assert not leftovers, leftovers
        while not (run_dir / "last.pt").is_file():
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert holder_pid(run_dir) is None  # the kernel let go with the process
    from charnn.checkpoint import load_checkpoint
    step = load_checkpoint(run_dir / "last.pt")["step"]  # (--max-steps counts from the run's start)
    again = _charnn(tmp_path, "--max-steps", str(step + 30), "--eval-every", "10", "--resume")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err


def test_the_lock_is_released_when_fit_ends_or_setup_fails(tmp_path):
    text = make_text(200, seed=2)
    cfg = TrainConfig(out=str(tmp_path), name="r", **{**TINY_TRAIN, "max_steps": 5})
    held = Trainer(Corpus(text, "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL), cfg)
    with pytest.raises(CharnnError, match="being trained by another process"):  # the same process, twice
        Trainer(Corpus(text, "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL), cfg)
    held.fit()  # ends, and lets go
    more = TrainConfig(out=str(tmp_path), name="r", **{**TINY_TRAIN, "max_steps": 6})  # (5 again: nothing to train)
    Trainer(Corpus(text, "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL), more, resume=True).fit()
    # a start that fails (the text is shorter than one batch) removes the folder it made and unlocks
    short = TrainConfig(out=str(tmp_path), name="short", **{**TINY_TRAIN, "max_steps": 5})
    with pytest.raises(CharnnError):
        Trainer(Corpus("ab\n" * 3, "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL), short)
    assert not (tmp_path / "short").exists()
    lock = RunLock.acquire(tmp_path / "short")
    assert lock is not None and holder_pid(tmp_path / "short") is None  # its own lock is not "another"
    lock.release()
