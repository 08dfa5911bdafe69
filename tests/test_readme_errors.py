"""README's Errors table, row by row: each row is a scenario run here through the real CLI, so the list
cannot drift from the code. A row without a scenario, or a scenario without a row, fails."""

import errno
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, make_text, one_line_error, subprocess_env, wait_for_save
from typer.testing import CliRunner

import charnn.checkpoint
from charnn.cli import app
from charnn.training.runlock import RunLock

SMALL = ["--hidden", "16", "--embed", "8", "--layers", "1", "--batch-size", "4", "--seq-len", "16", "--device", "cpu",
         "--save-every-secs", "0", "-q"]


def readme_rows():
    section = ROOT.joinpath("README.md").read_text(encoding="utf-8").split("### Errors", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"^\| \*\*(.+?)\*\* \|", section, re.M)


def invoke(*args, **kw):
    return CliRunner().invoke(app, [str(a) for a in args], **kw)


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(make_text(60, seed=9), encoding="utf-8")
    return path


def _missing(tmp_path, text, run, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke("train", "nope.txt"), 1, "does not exist")
    one_line_error(invoke("train", "tinyshakespear"), 1, "does not exist", "tinyshakespeare")


def _empty(tmp_path, text, run):
    (tmp_path / "empty.txt").write_bytes(b"")
    one_line_error(invoke("train", tmp_path / "empty.txt", "--out", tmp_path), 1, "is empty")


def _binary(tmp_path, text, run):
    (tmp_path / "x.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    one_line_error(invoke("train", tmp_path / "x.bin", "--out", tmp_path), 1, "looks binary")


def _not_utf8(tmp_path, text, run):
    (tmp_path / "latin.txt").write_bytes("caf\xe9 ".encode("latin-1") * 10)
    one_line_error(invoke("train", tmp_path / "latin.txt", "--out", tmp_path), 1, "offset 3", "0xe9", "--encoding")


def _short(tmp_path, text, run):
    (tmp_path / "short.txt").write_text("too short for a batch\n", encoding="utf-8")
    one_line_error(invoke("train", tmp_path / "short.txt", "--out", tmp_path), 1, "1 stream x 128", "lower --seq-len")
    one_line_error(invoke("train", tmp_path / "short.txt", "--out", tmp_path, "--batch-size", "4"), 1,
                   "lower --batch-size or --seq-len")


def _flag(tmp_path, text, run):
    one_line_error(invoke("train", "--out", tmp_path, "--hidden", "0"), 2, "--hidden")
    one_line_error(invoke("sample", "--length", "many"), 2, "--length")


def _cuda(tmp_path, text, run):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    one_line_error(invoke("sample", run, "--device", "cuda"), 1, "no CUDA GPU", "--device cpu")


def _bad_checkpoint(tmp_path, text, run):
    good = (run / "best.pt").read_bytes()
    (tmp_path / "corrupt.pt").write_bytes(good[: len(good) // 2])
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    torch.save({**torch.load(run / "best.pt", weights_only=True), "version": 99}, tmp_path / "newer.pt")
    for name, words in [("missing.pt", "does not exist"), ("corrupt.pt", "truncated or corrupt"),
                        ("foreign.pt", "not a charnn checkpoint"), ("newer.pt", "upgrade charnn")]:
        for args in (["sample", tmp_path / name], ["info", tmp_path / name], ["eval", tmp_path / name, text]):
            one_line_error(invoke(*args), 1, words)
    shutil.copytree(run, tmp_path / "runs" / "text")
    (tmp_path / "runs" / "text" / "last.pt").write_bytes(good[:1000])
    one_line_error(invoke("train", text, "--out", tmp_path / "runs", "--resume", *SMALL), 1, "truncated or corrupt",
                   "best.pt' beside it reads whole")  # (the run's model is not lost)
    (tmp_path / "runs" / "text" / "best.pt").write_bytes(good[:-10])
    both = invoke("sample", tmp_path / "runs" / "text" / "last.pt")
    one_line_error(both, 1, "truncated or corrupt")
    assert "beside it" not in both.stderr


def _nan_weights(tmp_path, text, run):
    data = torch.load(run / "best.pt", weights_only=True)
    name = next(k for k, t in data["model"].items() if t.is_floating_point())
    data["model"][name].view(-1)[0] = float("nan")
    torch.save(data, tmp_path / "nan.pt")
    one_line_error(invoke("sample", tmp_path / "nan.pt"), 1, "NaN or infinite", name)
    one_line_error(invoke("eval", tmp_path / "nan.pt", text), 1, "NaN or infinite", name)
    shown = invoke("info", tmp_path / "nan.pt", "--json")
    assert shown.exit_code == 0 and name in shown.stdout


def _out(tmp_path, text, run):
    (tmp_path / "a-file").write_text("not a folder")
    one_line_error(invoke("train", text, "--out", tmp_path / "a-file" / "sub", *SMALL), 1, "cannot write", "--out")


def _full_disk(tmp_path, text, run, monkeypatch):
    real_save, calls = torch.save, []

    def save_until_full(obj, f, *a, **k):
        calls.append(1)
        if len(calls) > 2:  # the first evaluation saved last.pt and best.pt; the next finds the disk full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(charnn.checkpoint.torch, "save", save_until_full)
    r = invoke("train", text, "--out", tmp_path / "runs", "--max-steps", "6", "--eval-every", "3", *SMALL)
    one_line_error(r, 1, "No space left on device", str(tmp_path / "runs" / "text"), "free")
    names = sorted(p.name for p in (tmp_path / "runs" / "text").iterdir())
    assert {"best.pt", "last.pt"} <= set(names) and not [n for n in names if n.endswith(".tmp")]
    assert charnn.checkpoint.load_checkpoint(tmp_path / "runs" / "text" / "last.pt")["step"] == 3


def _stdout(tmp_path, text, run):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "charnn", "sample", str(run), "--length", "3000", "-q"],
                           stdout=full, stderr=subprocess.PIPE, text=True, env=subprocess_env(), timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip() == "charnn: error: cannot write the generated text: No space left on device"
    piped = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m charnn sample {run} --length 100000 "
                            "-q | head -c 10 >/dev/null"], capture_output=True, text=True, env=subprocess_env(),
                           timeout=300)
    assert piped.returncode == 0 and piped.stderr == ""


def _second_training(tmp_path, text, run):
    lock = RunLock.acquire(tmp_path / "runs" / "text")  # this process is "training" run text
    try:
        one_line_error(invoke("train", text, "--out", tmp_path / "runs", *SMALL), 1, "is being trained by",
                       "pick another --name")
    finally:
        lock.release()


def _bf16(tmp_path, text, run):
    from test_train import bf16_trains_here
    if bf16_trains_here():
        pytest.skip("bf16 trains on this CPU: nothing to refuse")
    one_line_error(invoke("train", text, "--out", tmp_path, "--precision", "bf16", *SMALL), 1, "--precision fp32")


def _out_of_memory(tmp_path, text, run, monkeypatch):
    from charnn.generation.sampler import Sampler
    from charnn.tasks.lm import LanguageModelTask

    real, calls = LanguageModelTask.evaluate, []

    def evaluate(self, *a, **k):  # the second validation pass (step 6) runs out of CUDA's memory
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(self, *a, **k)

    monkeypatch.setattr(LanguageModelTask, "evaluate", evaluate)
    r = invoke("train", text, "--out", tmp_path / "runs", "--max-steps", "9", "--eval-every", "3",
               "--save-every-secs", "0", *SMALL)
    one_line_error(r, 1, "out of memory in the validation pass at step 6", "last.pt", "--batch-size")
    assert charnn.checkpoint.load_checkpoint(tmp_path / "runs" / "text" / "last.pt")["step"] == 6

    def no_memory(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 8.00 GiB")

    monkeypatch.setattr(Sampler, "__init__", no_memory)
    one_line_error(invoke("sample", run, "-n", "4096"), 1, "out of memory", "--num-samples")


def _nan_loss(tmp_path, text, run):
    r = invoke("train", text, "--out", tmp_path, "--lr", "1e30", "--max-steps", "6", "--eval-every", "2", *SMALL)
    one_line_error(r, 1, "loss became", "Try a lower --lr")


def _signal(tmp_path, text, run):
    (tmp_path / "big.txt").write_text(make_text(3000, seed=3), encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "charnn", "train", "big.txt", "--out", "runs", "--max-steps",
                             "100000", "--eval-every", "5", *SMALL], cwd=tmp_path, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_save(proc, tmp_path / "runs" / "big" / "last.pt")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143 and "Traceback" not in stderr, stderr
    assert "Resume with: charnn train big.txt --name big" in stderr and "--resume" in stderr
    # before training began (here: training its tokenizer) a signal stops at once: nothing to save; it had gone on
    # reading, encoding, measuring and building the model first (38 s of a large corpus's encoding)
    proc = subprocess.Popen([sys.executable, "-m", "charnn", "train", "big.txt", "--out", "early", "--tokenizer", "bpe",
                             "--vocab-size", "600", *SMALL[:-1]], cwd=tmp_path, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    while not any("tokenizer" in line for line in lines) and proc.poll() is None:
        lines.append(proc.stderr.readline())
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    stderr = "".join(lines) + stderr
    assert proc.returncode == 143 and "Traceback" not in stderr and "interrupted" in stderr, stderr
    assert "parameters" not in stderr and not (tmp_path / "early" / "big" / "last.pt").exists(), stderr


def _pipe(tmp_path, text, run):
    os.mkfifo(tmp_path / "fifo")
    one_line_error(invoke("train", tmp_path / "fifo", "--out", tmp_path, *SMALL), 1, "a pipe or a device",
                   "save the text to a file")


def _resume_other_text(tmp_path, text, run):
    assert invoke("train", text, "--out", tmp_path, "--name", "r", "--max-steps", "2", *SMALL).exit_code == 0
    other = tmp_path / "other.txt"
    other.write_text(make_text(80, seed=2), encoding="utf-8")
    before = (tmp_path / "r" / "last.pt").read_bytes()
    one_line_error(invoke("train", other, "--out", tmp_path, "--name", "r", "--resume", "--max-steps", "4", *SMALL), 2,
                   "on the text it was trained on", "--init-from")
    assert (tmp_path / "r" / "last.pt").read_bytes() == before


def _replacing_run(tmp_path, text, run):
    args = ["train", text, "--out", tmp_path, "--name", "r", "--max-steps", "2", *SMALL[:-1]]
    assert invoke(*args).exit_code == 0
    again = invoke(*args)
    assert again.exit_code == 0 and "held a run (best.pt and last.pt); this one moves it into" in again.stderr
    assert "replaces the older run" not in again.stderr
    assert {p.name for p in (tmp_path / "r" / "previous").iterdir()} == {"best.pt", "last.pt", "metrics.jsonl",
                                                                       "config.json"}  # (kept, not overwritten)
    third = invoke(*args)  # one generation is kept: the first run goes, and the note says so
    assert third.exit_code == 0 and "at its first save, where it replaces the older run kept there" in third.stderr
    one_line_error(invoke("train", text, "--out", tmp_path, "--name", "a/b", *SMALL), 2, "`--name`", "one name")


def _novelty_no_text(tmp_path, text, run):
    data = torch.load(run / "best.pt", weights_only=True)
    data["data"] = {**data["data"], "cache_entry": "0" * 32}  # an entry that is not (or no longer) in the cache
    torch.save(data, tmp_path / "moved.pt")
    one_line_error(invoke("novelty", tmp_path / "moved.pt", text), 1, "no longer in the cache", "--corpus PATH")


def _novelty_empty(tmp_path, text, run):
    one_line_error(invoke("novelty", run, input=""), 1, "the sample is empty", "| charnn novelty RUN")


def _control_characters(tmp_path, text, run):
    named = tmp_path / "a\x1b]0;title\x07b.txt"
    named.write_text(make_text(20, seed=1), encoding="utf-8")
    r = invoke("eval", run, named)
    assert r.exit_code == 0 and "a\\x1b]0;title\\x07b.txt" in r.stdout and "\x1b" not in r.stdout, r.stdout
    one_line_error(invoke("eval", run, tmp_path / "no\x1b[2Jpe.txt"), 1, "no\\x1b[2Jpe.txt")
    (tmp_path / "l.tsv").write_text("".join(f"{'ab'[i % 2]}\tline {i}\n" for i in range(20)) + "\x1b[2J\tx\n",
                                    encoding="utf-8")
    one_line_error(invoke("train", tmp_path / "l.tsv", "--label-by", "line", "--out", tmp_path, *SMALL), 1,
                   "l.tsv:21", "control character", "--skip-bad-lines")


SCENARIOS = {
    "a missing corpus": _missing, "an empty corpus": _empty,
    "a pipe or a device as the corpus (`/dev/stdin`, a FIFO)": _pipe, "a binary corpus": _binary,
    "a corpus that is not UTF-8": _not_utf8, "a text shorter than one batch": _short,
    "an out-of-range or malformed flag": _flag, "`--device cuda` without a GPU": _cuda,
    "a missing, corrupt, foreign or newer checkpoint": _bad_checkpoint,
    "a checkpoint whose weights are NaN or infinite": _nan_weights, "an `--out` that cannot be written": _out,
    "a full disk": _full_disk, "results that cannot be written to stdout": _stdout,
    "a second training of a run that is training": _second_training,
    "`--precision bf16` where this machine cannot run it": _bf16, "out of memory": _out_of_memory,
    "a NaN or infinite loss": _nan_loss,
    "Ctrl-C, SIGTERM or a closed terminal (SIGHUP) while training": _signal,
    "`--resume` on another text than the run's": _resume_other_text,
    "a fresh run under an existing `--name`": _replacing_run,
    "`charnn novelty` for a run whose training text is gone": _novelty_no_text,
    "`charnn novelty` with an empty sample": _novelty_empty,
    "control characters (ESC, BEL, bidi overrides) in a file name, a label or the model's text": _control_characters,
}


def test_every_row_has_a_scenario_and_every_scenario_a_row():
    assert readme_rows() == list(SCENARIOS)


@pytest.mark.parametrize("row", list(SCENARIOS))
def test_readme_error_row(row, tmp_path, text, trained_run, monkeypatch):
    scenario = SCENARIOS[row]
    args = (tmp_path, text, trained_run.run_dir)
    if "monkeypatch" in scenario.__code__.co_varnames:
        scenario(*args, monkeypatch)
    else:
        scenario(*args)
