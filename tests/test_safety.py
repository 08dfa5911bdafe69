"""Never trust a file, never lose a run: safe checkpoint loading, bad input, non-finite loss, full disks.

Every user mistake must give one line on stderr, exit 1 (2 for a bad flag) and no traceback.
"""

import errno
import hashlib
import os
import pickle
import random
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import make_text, one_line_error
from typer.testing import CliRunner

import charnn.checkpoint
import charnn.training.trainer
from charnn.checkpoint import load_checkpoint
from charnn.cli import app
from charnn.config import ModelConfig, TrainConfig
from charnn.data.corpus import Corpus
from charnn.errors import CharnnError
from charnn.training.trainer import StopRequest, Trainer, TrainingInterrupted

runner = CliRunner()
SMALL = ["--hidden", "16", "--embed", "8", "--layers", "1", "--batch-size", "4", "--seq-len", "16", "--device", "cpu",
         "--save-every-secs", "0", "--quiet"]


def invoke(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def corpus_txt(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(make_text(60, seed=9), encoding="utf-8")
    return path


# ---- safe loading -----------------------------------------------------------------------------------
class Payload:
    """Unpickling this would run code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(tmp_path, trained_run):
    marker = tmp_path / "PWNED"
    real = torch.load(trained_run.run_dir / "best.pt", weights_only=True)
    zipped = tmp_path / "evil.pt"
    torch.save({**real, "extra": Payload(marker)}, zipped)  # a genuine-looking charnn checkpoint plus a payload
    raw = tmp_path / "evil-raw.pt"
    raw.write_bytes(pickle.dumps(Payload(marker), protocol=2))  # a bare pickle, no zip container
    for path in (zipped, raw):
        with pytest.raises(CharnnError, match="refusing to load"):
            load_checkpoint(path)
        one_line_error(invoke("sample", path), 1, "refusing to load", "pickled code", "exec")
        one_line_error(invoke("eval", path, trained_run.run_dir / "best.pt"), 1, "refusing to load")
    newer_pickle = tmp_path / "evil-raw4.pt"  # protocol 4 is not even parsed by the weights-only loader
    newer_pickle.write_bytes(pickle.dumps(Payload(marker), protocol=4))
    one_line_error(invoke("sample", newer_pickle), 1, "not a charnn checkpoint")
    assert not marker.exists()
    # the payload really is live: an unsafe load would have run it
    pickle.loads(raw.read_bytes())
    assert marker.exists()


def test_bad_checkpoint_files_give_one_clear_line(tmp_path, trained_run):
    good = (trained_run.run_dir / "best.pt").read_bytes()
    data = torch.load(trained_run.run_dir / "best.pt", weights_only=True)
    cases = {
        "truncated.pt": (good[: len(good) // 2], "truncated or corrupt"),
        "random.pt": (random.Random(0).randbytes(5000), "not"),
        "text.pt": (b"just some text\n", "is a text file, not a charnn checkpoint"),
        "e.pt": (b"e and some more text\n", "is a text file"),  # (as a legacy pickle: torch's IndexError)
        "empty.pt": (b"", "not"),
    }
    for name, (content, words) in cases.items():
        (tmp_path / name).write_bytes(content)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    torch.save({**data, "version": 99}, tmp_path / "newer.pt")
    cases.update({"other.pt": (None, "not a charnn checkpoint"), "tensor.pt": (None, "not a charnn checkpoint"),
                  "newer.pt": (None, "version 99")})
    for name, (_, words) in cases.items():
        for args in (("sample", tmp_path / name), ("eval", tmp_path / name, trained_run.run_dir / "best.pt")):
            one_line_error(invoke(*args), 1, words, name)
    one_line_error(invoke("sample", tmp_path / "newer.pt"), 1, "upgrade charnn")
    one_line_error(invoke("sample", tmp_path / "missing.pt"), 1, "does not exist")
    (tmp_path / "empty-run").mkdir()
    one_line_error(invoke("sample", tmp_path / "empty-run"), 1, "no best.pt or last.pt")


def test_a_tokenizer_that_does_not_cover_the_model_is_one_line(tmp_path, trained_run):
    """A hand-edited tokenizer of 2 characters for a model of many sampled runs of U+FFFD, exit 0."""
    data = torch.load(trained_run.run_dir / "best.pt", weights_only=True)
    torch.save({**data, "tokenizer": {"kind": "char", "chars": "ab"}}, tmp_path / "edited.pt")
    (tmp_path / "t.txt").write_text("ab ba\n", encoding="utf-8")
    for args in (("sample", tmp_path / "edited.pt", "--length", "20"),
                 ("eval", tmp_path / "edited.pt", tmp_path / "t.txt")):
        r = invoke(*args)
        one_line_error(r, 1, "tokenizer has 3 tokens where its model has", "damaged or was edited")
        assert r.stdout == ""


def test_resume_from_a_corrupt_last_pt_is_one_line(tmp_path, corpus_txt, trained_run):
    shutil.copytree(trained_run.run_dir, tmp_path / "runs" / "text")
    last = tmp_path / "runs" / "text" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    one_line_error(invoke("train", corpus_txt, "--out", tmp_path / "runs", "--resume"), 1, "truncated or corrupt")


# ---- bad input ----------------------------------------------------------------------------------------
def test_bad_corpora(tmp_path, monkeypatch):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    (tmp_path / "binary.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "latin.txt").write_bytes("caf\xe9 ".encode("latin-1") * 10)
    (tmp_path / "short.txt").write_text("too short for a batch\n", encoding="utf-8")
    out = ["--out", tmp_path / "runs"]
    one_line_error(invoke("train", tmp_path / "missing.txt", *out), 1, "does not exist")
    one_line_error(invoke("train", tmp_path / "empty.txt", *out), 1, "is empty")
    one_line_error(invoke("train", tmp_path / "folder", *out), 1, "is a directory")
    one_line_error(invoke("train", tmp_path / "binary.bin", *out), 1, "looks binary")
    one_line_error(invoke("train", tmp_path / "latin.txt", *out), 1, "not valid utf-8", "offset 3", "0xe9")
    one_line_error(invoke("train", tmp_path / "latin.txt", "--encoding", "klingon", *out), 2, "--encoding")
    # --encoding picks another codec: the same file then gets as far as the batch-size check
    one_line_error(invoke("train", tmp_path / "latin.txt", "--encoding", "latin-1", *out), 1, "fewer than one batch")
    (tmp_path / "wide").mkdir()  # UTF-16 text is all NUL bytes: binary, unless --encoding says what it is
    for where in (tmp_path / "wide.txt", tmp_path / "wide" / "a.txt"):
        where.write_text("caf\xe9 au lait\n" * 2, encoding="utf-16")
    one_line_error(invoke("train", tmp_path / "wide.txt", *out), 1, "looks binary", "--encoding")
    for corpus in (tmp_path / "wide.txt", tmp_path / "wide"):  # (both were refused as binary with utf-16 too)
        one_line_error(invoke("train", corpus, "--encoding", "utf-16", *out), 1, "fewer than one batch")
    one_line_error(invoke("train", tmp_path / "short.txt", *out), 1, "fewer than one batch", "lower --seq-len")

    def unreadable(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "open", unreadable)  # root reads anything, so deny it this way
    one_line_error(invoke("train", tmp_path / "short.txt", *out), 1, "cannot read", "Permission denied")


def test_val_split_too_small(tmp_path):
    (tmp_path / "t.txt").write_text(make_text(30), encoding="utf-8")
    r = invoke("train", tmp_path / "t.txt", "--val-frac", "0.0005", "--out", tmp_path, *SMALL)
    one_line_error(r, 1, "validation text", "--val-frac")


@pytest.mark.parametrize("flags", [
    ["--layers", "0"], ["--layers", "100000"], ["--hidden", "0"], ["--hidden", "70000"], ["--embed", "-1"],
    ["--dropout", "1.0"], ["--dropout", "nan"], ["--val-frac", "0"], ["--val-frac", "1.5"], ["--batch-size", "0"],
    ["--seq-len", "-3"], ["--lr", "0"], ["--lr", "nan"], ["--lr", "inf"], ["--warmup", "-1"],
    ["--weight-decay", "-0.1"], ["--weight-decay", "nan"], ["--grad-clip", "-1"], ["--grad-clip", "nan"],
    ["--max-steps", "0"], ["--max-time", "0"], ["--max-time", "-5"], ["--epochs", "0"], ["--epochs", "inf"],
    ["--patience", "0"], ["--eval-every", "0"], ["--seed", "-1"], ["--seed", str(2**64)], ["--threads", "0"],
    ["--threads", "1000000"], ["--save-every-secs", "-1"], ["--save-every-secs", "inf"], ["--precision", "fp64"],
    ["--cell", "transformer"], ["--device", "tpu"], ["--vocab-size", str(2**31), "--tokenizer", "bpe"],
    ["--init-from", ""], ["--val-file", ""], ["--out", ""], ["--name", " "], ["--label-by", ""],  # (empty: an unset
    # variable, ignored)
])
def test_out_of_range_train_flags_exit_2_naming_the_flag(tmp_path, flags):
    one_line_error(invoke("train", "--out", tmp_path, *flags), 2, flags[0])


@pytest.mark.parametrize("flags", [
    ["--length", "-1"], ["--temp", "-1"], ["--temp", "nan"], ["--temp", "inf"], ["--temp", "-1e-30"],
    ["--top-k", "0"], ["--seed", "-1"], ["--seed", str(2**64)], ["--device", "tpu"], ["--segment", str(2**64)],
])
def test_out_of_range_sample_flags_exit_2_naming_the_flag(flags):
    one_line_error(invoke("sample", *flags), 2, flags[0])


@pytest.mark.parametrize("args", [["train", "--layers", "two"], ["train", "--lr", "fast"], ["sample", "--length", "x"],
                                  ["train", "--no-such-flag"], ["eval", "--device", "tpu", "x.txt"]])
def test_malformed_flags_exit_2(args):
    one_line_error(invoke(*args), 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu(tmp_path, corpus_txt, trained_run):
    one_line_error(invoke("train", corpus_txt, "--out", tmp_path, "--device", "cuda"), 1, "no CUDA GPU", "--device cpu")
    one_line_error(invoke("sample", trained_run.run_dir, "--device", "cuda"), 1, "no CUDA GPU")


def test_an_output_folder_that_cannot_be_written(tmp_path, corpus_txt):
    blocker = tmp_path / "a-file.txt"
    blocker.write_text("not a folder")
    one_line_error(invoke("train", corpus_txt, "--out", blocker / "sub", *SMALL), 1, "cannot write", "--out")
    one_line_error(invoke("train", corpus_txt, "--out", "/proc/charnn-test", *SMALL), 1, "cannot write", "--out")


def test_sample_with_no_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke("sample"), 1, "no trained runs", "charnn train")


def test_debug_env_shows_the_traceback(tmp_path):
    r = invoke("train", tmp_path / "missing.txt", env={"CHARNN_DEBUG": "1"})
    assert isinstance(r.exception, CharnnError) and "does not exist" in str(r.exception)


# ---- disks fill up, losses blow up, runs fail -------------------------------------------------------------
def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, corpus_txt, monkeypatch):
    real_save, calls = torch.save, []

    def save_until_full(obj, f, *a, **k):
        calls.append(1)
        if len(calls) > 2:  # step 3 wrote last.pt and best.pt; the save at step 6 finds the disk full
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(charnn.checkpoint.torch, "save", save_until_full)
    r = invoke("train", corpus_txt, "--out", tmp_path, "--max-steps", "6", "--eval-every", "3", *SMALL)
    one_line_error(r, 1, "No space left on device", ".pt is kept")  # (best.pt first where step 6 improved)
    run = tmp_path / "text"
    names = sorted(p.name for p in run.iterdir())
    assert {"best.pt", "last.pt"} <= set(names) and not [n for n in names if n.endswith(".tmp")]  # no temp file
    assert load_checkpoint(run / "last.pt")["step"] == 3 and load_checkpoint(run / "best.pt")["step"] == 3


def test_non_finite_loss_stops_keeps_checkpoints_and_hints(tmp_path, corpus_txt, monkeypatch):
    calls = []

    def nan_on_fifth(logits, target, **kw):
        calls.append(1)
        loss = F.cross_entropy(logits, target, **kw)
        return loss * float("nan") if len(calls) == 5 else loss

    monkeypatch.setattr(charnn.training.trainer, "F", SimpleNamespace(cross_entropy=nan_on_fifth))
    r = invoke("train", corpus_txt, "--out", tmp_path, "--max-steps", "10", "--eval-every", "2", *SMALL)
    one_line_error(r, 1, "loss became nan at step 5", "--lr", "--grad-clip", "are kept")
    assert load_checkpoint(tmp_path / "text" / "last.pt")["step"] == 4
    assert load_checkpoint(tmp_path / "text" / "best.pt")["step"] in (2, 4)


def test_a_huge_lr_blows_up_with_the_hint(tmp_path, corpus_txt):
    r = invoke("train", corpus_txt, "--out", tmp_path / "runs", "--lr", "1e30", "--max-steps", "6", "--eval-every",
               "2", *SMALL)
    one_line_error(r, 1, "loss became", "Try a lower --lr")
    assert list((tmp_path / "runs").iterdir()) == []  # no empty run folder (a NaN before the first save left one)


def test_a_failed_run_leaves_a_good_run_of_the_same_name_untouched(tmp_path, corpus_txt, trained_run):
    run = tmp_path / "runs" / "text"
    shutil.copytree(trained_run.run_dir, run)
    before = digest(run)
    r = invoke("train", corpus_txt, "--out", tmp_path / "runs", "--lr", "1e30", "--max-steps", "6",
               "--eval-every", "2", *SMALL)
    assert r.exit_code == 1 and "this run had saved no checkpoint yet" in r.stderr  # (not the older run's)
    assert digest(run) == before
    # a stop before the first step saves nothing either
    stop = StopRequest()
    stop.signum = signal.SIGINT
    cfg = TrainConfig(out=str(tmp_path / "runs"), name="text", batch_size=4, seq_len=16, device="cpu", max_steps=5)
    trainer = Trainer(Corpus(corpus_txt.read_text(), "text", "t"), ModelConfig(vocab_size=1, hidden=16, embed=8),
                      cfg, stop=stop)
    with pytest.raises(TrainingInterrupted) as e:
        trainer.fit()
    assert e.value.path is None and digest(run) == before


def test_a_new_run_moves_an_old_run_into_previous_once_it_saves(tmp_path, corpus_txt, trained_run):
    # otherwise `charnn sample RUN` would pick the old model's best.pt over the new run's last.pt; and an
    # accidental rerun must not lose the old run's checkpoints (it overwrote them)
    run = tmp_path / "runs" / "text"
    shutil.copytree(trained_run.run_dir, run)
    old = {n: (run / n).read_bytes() for n in ("best.pt", "last.pt")}
    (run / ".last.pt.abc123.tmp").write_bytes(b"left by a kill -9")
    stop = StopRequest()
    cfg = TrainConfig(out=str(tmp_path / "runs"), name="text", batch_size=4, seq_len=16, device="cpu", max_steps=50,
                      eval_every=1000, save_every_secs=1e-9)
    trainer = Trainer(Corpus(corpus_txt.read_text(), "text", "t"), ModelConfig(vocab_size=1, hidden=16, embed=8), cfg,
                      lambda k, i: setattr(stop, "signum", signal.SIGINT) if k == "saved" else None, stop=stop)
    with pytest.raises(TrainingInterrupted):
        trainer.fit()
    assert sorted(p.name for p in run.iterdir()) == ["last.pt", "previous"]
    assert load_checkpoint(run / "last.pt")["model_config"]["hidden"] == 16
    assert {n: (run / "previous" / n).read_bytes() for n in old} == old


def test_a_file_where_the_run_folder_would_be_names_the_flag_to_change(tmp_path, corpus_txt):
    (tmp_path / "text").write_text("not a run")
    r = invoke("train", corpus_txt, "--out", tmp_path, "--max-steps", "1", *SMALL)
    one_line_error(r, 1, "is a file, not a run folder", "another --name")
    assert (tmp_path / "text").read_text() == "not a run"


def test_a_resume_stopped_before_its_first_step_does_not_say_it_saved(tmp_path, corpus_txt, monkeypatch):
    """It said "stopped at step 2; saved .../last.pt" where nothing had been written."""
    assert invoke("train", corpus_txt, "--out", tmp_path, "--max-steps", "2", *SMALL).exit_code == 0
    run = tmp_path / "text"
    before = digest(run)

    class Stopped(charnn.training.trainer.StopRequest):
        def __init__(self):
            super().__init__()
            self.signum = signal.SIGINT  # (as if Ctrl-C came just as the loop began)

    monkeypatch.setattr(charnn.training.trainer, "StopRequest", Stopped)
    r = invoke("train", corpus_txt, "--out", tmp_path, "--resume", "--max-steps", "1000")
    assert r.exit_code == 130, r.stderr
    assert "is as it was (no step was trained)" in r.stderr and "; saved" not in r.stderr, r.stderr
    assert digest(run) == before
