"""Real processes, real signals: kill -9 at any moment leaves loadable checkpoints; Ctrl-C and SIGTERM save
last.pt, say how to resume and exit 130 / 143."""

import random
import signal
import subprocess
import sys
import time

import pytest

from charnn.checkpoint import load_checkpoint
from conftest import make_text, subprocess_env, wait_for_save

# a few-MB last.pt written after every step, so a kill often lands in the middle of a save
FLAGS = ["--hidden", "192", "--embed", "16", "--layers", "2", "--batch-size", "8", "--seq-len", "32",
         "--eval-every", "1", "--save-every-secs", "0", "--max-steps", "100000", "--device", "cpu", "--threads", "1"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text(make_text(3000, seed=8), encoding="utf-8")
    return path


def start(corpus, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "charnn", "train", str(corpus), "--out", str(out), *FLAGS, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())


def test_kill_9_at_any_moment_leaves_loadable_checkpoints(tmp_path, corpus):
    run = tmp_path / "checkpoints" / "big"
    rng = random.Random(0)
    steps = []
    for attempt in range(3):  # a fresh start, then two resumes, each killed at a random moment mid-training
        t0 = time.time()
        proc = start(corpus, tmp_path / "checkpoints", *(["--resume"] if attempt else []))
        wait_for_save(proc, run / "last.pt", after=t0)
        time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        found = [load_checkpoint(run / n) for n in ("best.pt", "last.pt") if (run / n).exists()]
        assert found and all(d["format"] == "charnn" and d["step"] >= 1 for d in found)
        steps.append(load_checkpoint(run / "last.pt")["step"])
    assert steps == sorted(steps)  # each resume continued from where the last kill left it
    # temp files a kill leaves behind (planted too, in case no kill hit a save) do not confuse sampling,
    # whether the run is named or found as the newest run under ./checkpoints
    (run / ".last.pt.planted.tmp").write_bytes(b"half a checkpoint")
    for args in ([str(run)], []):
        p = subprocess.run([sys.executable, "-m", "charnn", "sample", *args, "--length", "20", "--seed", "1"],
                           capture_output=True, text=True, env=subprocess_env(), timeout=600, cwd=tmp_path)
        assert p.returncode == 0 and len(p.stdout) >= 20 and "Traceback" not in p.stderr, p.stderr


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_saves_last_pt_and_says_how_to_resume(tmp_path, corpus, sig, code):
    run = tmp_path / "runs" / "big"
    proc = start(corpus, tmp_path / "runs")
    wait_for_save(proc, run / "last.pt")
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert "Resume with: charnn train" in last and "--name big" in last and "--resume" in last
    step = load_checkpoint(run / "last.pt")["step"]
    assert f"stopped at step {step};" in last
    assert not list(run.glob(".*.tmp"))


def test_a_second_ctrl_c_quits_at_once(tmp_path, corpus):
    run = tmp_path / "runs" / "big"
    proc = start(corpus, tmp_path / "runs")
    wait_for_save(proc, run / "last.pt")
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert load_checkpoint(run / "last.pt")["step"] >= 1


def test_a_second_ctrl_c_during_a_save_is_held_until_the_file_is_in_place(tmp_path):
    """The second Ctrl-C raised KeyboardInterrupt inside torch.save: its zip writer broke and its own error came out
    as a traceback (exit 1). Now it waits for the file being written, then quits; outside a write, at once."""
    import os

    from charnn.data.files import atomic_file
    from charnn.training.stopping import StopRequest, graceful_signals

    stop = StopRequest()
    stop.training = True  # (before training began, a first signal stops at once)
    with graceful_signals(stop):
        with pytest.raises(KeyboardInterrupt):
            with atomic_file(tmp_path / "x.pt") as f:
                f.write(b"a" * 1000)
                os.kill(os.getpid(), signal.SIGINT)  # the first asks to stop
                os.kill(os.getpid(), signal.SIGINT)  # the second is held: the write goes on
                f.write(b"b" * 1000)
        assert (tmp_path / "x.pt").read_bytes() == b"a" * 1000 + b"b" * 1000 and stop.signum == signal.SIGINT
        with atomic_file(tmp_path / "y.pt") as f:  # nothing held is left over for the next file
            f.write(b"c")
        with pytest.raises(KeyboardInterrupt):  # a third (a save that hangs) is not held
            with atomic_file(tmp_path / "z.pt") as f:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):
                    pass
                raise AssertionError("not interrupted")
        with atomic_file(tmp_path / "y.pt") as f:  # ... and leaves nothing held behind
            f.write(b"c")
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # not writing: at once
            for _ in range(1000):
                pass
    assert (tmp_path / "y.pt").read_bytes() == b"c" and not list(tmp_path.glob(".*"))


def test_a_second_signal_during_the_save_a_first_one_began_keeps_the_records_and_the_resume_line(
        tmp_path, corpus, monkeypatch):
    """SIGTERM, then another while the save it began was written (here the run's first): the held signal came
    out of the write itself, before the save's records (config.json, metrics.jsonl) and the "Resume with" line;
    the command said only "interrupted" and exited 130. Now it waits for the save and its records: exit 143."""
    import os

    from typer.testing import CliRunner

    from charnn.cli import app
    from charnn.training import runstate
    from charnn.training.trainer import Trainer

    step, write = Trainer._train_step, runstate.write

    def train_step(self, *a, **k):
        loss = step(self, *a, **k)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # the first: stop after this step, and save
        return loss

    def write_twice_asked(t, path, val):
        os.kill(os.getpid(), signal.SIGTERM)  # the second, while last.pt is written
        return write(t, path, val)

    monkeypatch.setattr(Trainer, "_train_step", train_step)
    monkeypatch.setattr(runstate, "write", write_twice_asked)
    flags = ["--hidden", "16", "--layers", "1", "--eval-every", "1000", "--save-every-secs", "0", "--device", "cpu",
             "--threads", "1"]
    r = CliRunner().invoke(app, ["train", str(corpus), "--out", str(tmp_path / "runs"), *flags])
    assert r.exit_code == 143, r.stderr
    assert "Resume with: charnn train" in r.stderr.strip().splitlines()[-1]
    run = tmp_path / "runs" / "big"
    assert load_checkpoint(run / "last.pt")["step"] == 3
    assert (run / "config.json").is_file() and (run / "metrics.jsonl").is_file()


def test_a_signal_before_training_began_stops_at_once(tmp_path):
    """Before the loop (reading, encoding, measuring, building the model) there is nothing to save: a first signal
    stops there and then, as Interrupted with its number (SIGTERM exits 143); it had only been noted for the loop."""
    import os

    from charnn.training.stopping import Interrupted, StopRequest, graceful_signals

    stop = StopRequest()
    with graceful_signals(stop):
        with pytest.raises(Interrupted) as e:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
            raise AssertionError("not interrupted")
    assert e.value.signum == signal.SIGTERM and isinstance(e.value, KeyboardInterrupt)


def test_a_signal_during_torchs_import_waits_for_it_to_finish(tmp_path):
    """A Ctrl-C in the first second of `charnn train` landed inside torch's import, whose C start-up swallowed it
    (the run trained to its end) or died of it (a RecursionError, an abort): it is held until the import is done."""
    script = ("import os, signal, sys, threading, time\n"
              "from charnn.cli.output import import_torch\n"
              "seen = []\n"
              "signal.signal(signal.SIGINT, lambda s, f: seen.append(hasattr(sys.modules.get('torch'), 'compile')))\n"
              "threading.Timer(0.1, lambda: os.kill(os.getpid(), signal.SIGINT)).start()\n"
              "import_torch()\n"
              "time.sleep(0.5)\n"
              "print(seen)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=subprocess_env(),
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "[True]", (r.stdout, r.stderr)  # (once, after the import)


def test_a_ctrl_c_while_the_command_line_loads_is_one_line():
    """A Ctrl-C in the command's first few hundred milliseconds (typer and rich loading) was a 30-line traceback."""
    code = ("import builtins, sys\n"
            "real = builtins.__import__\n"
            "def slow(name, *a, **k):\n"
            "    if name == 'rich' or name.startswith('rich.'):\n"
            "        raise KeyboardInterrupt\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = slow\n"
            "sys.argv = ['charnn', 'info']\n"
            "from charnn.cli import main\n"
            "main()\n")
    p = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                       timeout=120)
    assert (p.returncode, p.stdout, p.stderr) == (130, "", "interrupted\n"), p.stderr
