"""Exact resume: an interrupted run continued with --resume ends bitwise-identical to one that never stopped."""

import json
import os
import shlex
import signal
from dataclasses import asdict

import pytest
import torch
from conftest import make_text
from typer.testing import CliRunner

from charnn.cli import app
from charnn.config import ModelConfig, TrainConfig
from charnn.data.corpus import Corpus
from charnn.errors import CharnnError, ConfigError
from charnn.training.trainer import StopRequest, Trainer, TrainingInterrupted, train

# dropout exercises the RNG; ~14 steps per epoch means 40 steps cross two epoch boundaries (new offsets,
# state reset) and step 20 falls mid-epoch with carried hidden state
MODEL = dict(cell="lstm", layers=2, hidden=24, embed=8, dropout=0.2)
TRAIN = dict(batch_size=4, seq_len=16, lr=1e-2, warmup=5, eval_every=15, max_steps=40, device="cpu", seed=11,
             save_every_secs=0)
TEXT = make_text(30, seed=4)


def weights(path):
    return torch.load(path, weights_only=True)


def assert_same_training_state(a, b):
    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)
    assert a["progress"]["epoch"] == b["progress"]["epoch"] and a["progress"]["offset"] == b["progress"]["offset"]


def stop_at(step, stop):
    def on_event(kind, info):
        if kind == "step" and info["step"] == step:
            stop.signum = signal.SIGINT
    return on_event


def test_interrupted_then_resumed_equals_straight_library(tmp_path):
    corpus = Corpus(TEXT, "t", "t")
    train(corpus, ModelConfig(vocab_size=1, **MODEL), TrainConfig(out=str(tmp_path), name="straight", **TRAIN))

    cfg = TrainConfig(out=str(tmp_path), name="resumed", **TRAIN)
    stop = StopRequest()
    trainer = Trainer(corpus, ModelConfig(vocab_size=1, **MODEL), cfg, stop_at(20, stop), stop=stop)
    with pytest.raises(TrainingInterrupted) as e:
        trainer.fit()
    half = weights(e.value.path)
    assert half["step"] == 20 and half["progress"]["epoch"] == 1 and half["progress"]["window"] > 0
    assert half["progress"]["hidden"] is not None  # the carried state travels in last.pt

    result = Trainer(corpus, ModelConfig(vocab_size=1, **MODEL), cfg, resume=True).fit()
    assert result.steps == 40
    assert_same_training_state(weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "resumed" / "last.pt"))


def test_schedule_follows_steps_not_the_clock(tmp_path):
    # with --max-time as well as --max-steps the lr still depends on the step alone, so resume stays exact
    corpus = Corpus(TEXT, "t", "t")
    seen = {}
    for name, extra in (("steps", {}), ("steps+time", {"max_time": 10_000.0})):
        lrs = []
        cfg = TrainConfig(out=str(tmp_path), name=name, **{**TRAIN, "max_steps": 8, **extra})
        train(corpus, ModelConfig(vocab_size=1, **MODEL), cfg, lambda k, i: lrs.append(i["lr"]) if k == "step" else None)
        seen[name] = lrs
    assert seen["steps"] == seen["steps+time"] and len(seen["steps"]) == 8


def test_last_pt_is_refreshed_on_a_time_interval(tmp_path):
    corpus = Corpus(TEXT, "t", "t")
    for every, expected in ((1e-9, list(range(1, 6)) + [5, 5]), (0, [5, 5])):
        saved = []
        cfg = TrainConfig(out=str(tmp_path), name=f"s{every}", **{**TRAIN, "max_steps": 5, "eval_every": 1000,
                                                                   "save_every_secs": every})
        train(corpus, ModelConfig(vocab_size=1, **MODEL), cfg, lambda k, i: saved.append(i["step"]) if k == "saved" else None)
        assert saved == expected  # every step (then the final last.pt and best.pt), or only at the end


def test_resume_that_would_change_the_data_layout_is_refused(tmp_path):
    corpus = Corpus(TEXT, "t", "t")
    cfg = TrainConfig(out=str(tmp_path), name="r", **{**TRAIN, "max_steps": 3})
    train(corpus, ModelConfig(vocab_size=1, **MODEL), cfg)
    other = TrainConfig(out=str(tmp_path), name="r", **{**TRAIN, "max_steps": 6, "batch_size": 3})
    with pytest.raises(ConfigError, match="--batch-size 3"):
        Trainer(corpus, ModelConfig(vocab_size=1, **MODEL), other, resume=True)
    with pytest.raises(CharnnError, match="no run 'nope'.*runs there: r"):
        Trainer(corpus, ModelConfig(vocab_size=1, **MODEL),
                TrainConfig(out=str(tmp_path), name="nope", **TRAIN), resume=True)


# ---- the same through the command line --------------------------------------------------------------
FLAGS = ["--cell", "lstm", "--layers", "2", "--hidden", "24", "--embed", "8", "--dropout", "0.2", "--batch-size", "4",
         "--seq-len", "16", "--lr", "0.01", "--warmup", "5", "--eval-every", "15", "--max-steps", "40",
         "--device", "cpu", "--seed", "11", "--save-every-secs", "0", "--quiet"]
runner = CliRunner()


def ctrl_c_after(step: int):
    """Trainer._train_step that sends this process a real SIGINT once training reaches `step`."""
    original = Trainer._train_step

    def step_then_ctrl_c(self, x, y):
        loss = original(self, x, y)
        if self.step == step:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    return step_then_ctrl_c


def test_cli_interrupt_prints_a_resume_command_that_continues_exactly(tmp_path, monkeypatch):
    corpus = tmp_path / "text.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "runs"
    r = runner.invoke(app, ["train", str(corpus), "--out", str(out), "--name", "straight", *FLAGS])
    assert r.exit_code == 0, r.stderr

    original = Trainer._train_step
    monkeypatch.setattr(Trainer, "_train_step", ctrl_c_after(20))
    r = runner.invoke(app, ["train", str(corpus), "--out", str(out), "--name", "cut", *FLAGS])
    assert r.exit_code == 130, r.stderr
    assert weights(out / "cut" / "last.pt")["step"] == 20
    hint = r.stderr.split("Resume with: ")[1].strip()
    assert hint.startswith("charnn train ") and "--resume" in hint
    monkeypatch.setattr(Trainer, "_train_step", original)

    # the printed command repeats none of the run's flags: the resumed run takes them from last.pt
    r = runner.invoke(app, shlex.split(hint)[1:] + ["--quiet"])
    assert r.exit_code == 0, r.stderr
    assert_same_training_state(weights(out / "straight" / "last.pt"), weights(out / "cut" / "last.pt"))


def test_cli_resume_errors(tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    r = runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path), "--name", "ghost", "--resume"])
    assert r.exit_code == 1 and "no run 'ghost'" in r.stderr and "--name" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    short = [*FLAGS[:-5], "--max-steps", "3", "--quiet"]
    assert runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path), "--name", "a", *short]).exit_code == 0
    r = runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path), "--name", "a", "--resume", "--hidden", "64"])
    assert r.exit_code == 2 and "--hidden 64 (the run used 24)" in r.stderr
    for flags, says in ((["--tokenizer", "bpe", "--vocab-size", "300"], "--tokenizer bpe (the run used char)"),
                        (["--eval-tokens", "100"], "--eval-tokens 100"), (["--seed", "7"], "--seed 7")):
        r = runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path), "--name", "a", "--resume", *flags])
        assert r.exit_code == 2 and says in r.stderr, r.stderr  # (the tokenizer was recorded, not used; the best
        # so far was measured on another amount of validation text; the seed drew --label-by line's split)
    # extending a finished run: --max-steps counts total steps
    r = runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path), "--name", "a", "--resume", "--max-steps", "5",
                            "--quiet"])
    assert r.exit_code == 0, r.stderr
    assert weights(tmp_path / "a" / "last.pt")["step"] == 5
    # resumed on another text (a corpus left off, a --glob forgotten, the file edited): refused, the run kept
    other = tmp_path / "other.txt"
    other.write_text(TEXT + "ZQX" * 50, encoding="utf-8")
    before = (tmp_path / "a" / "last.pt").read_bytes()
    r = runner.invoke(app, ["train", str(other), "--out", str(tmp_path), "--name", "a", "--resume", "--max-steps",
                            "6"])
    assert r.exit_code == 2 and "on the text it was trained on" in r.stderr and "--init-from" in r.stderr, r.stderr
    assert (tmp_path / "a" / "last.pt").read_bytes() == before
    edited = tmp_path / "edited.txt"  # as many characters, one of them changed: refused too (it was resumed)
    edited.write_text(corpus.read_text(encoding="utf-8").replace("e", "a", 1), encoding="utf-8")
    r = runner.invoke(app, ["train", str(edited), "--out", str(tmp_path), "--name", "a", "--resume", "--max-steps",
                            "6"])
    assert r.exit_code == 2 and "as many characters but is not the same" in r.stderr, r.stderr
    assert (tmp_path / "a" / "last.pt").read_bytes() == before
    # a fresh run under the same name says that it replaces the older one
    r = runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path), "--name", "a", *short[:-1]])
    assert r.exit_code == 0 and "held a run (best.pt and last.pt)" in r.stderr, r.stderr


def test_best_pt_is_written_before_last_pt_records_its_score(tmp_path, monkeypatch):
    """last.pt records the best score so far; were it written first, a kill or a failed write before best.pt left a
    run whose best.pt was stale or missing while the run reported it (and resumed believing it)."""
    from charnn.training import runstate
    write = runstate.write

    def failing(t, path, val):
        if path.name == "last.pt" and t.step == 15:  # the first evaluation, which improves
            raise OSError(28, "No space left on device")
        return write(t, path, val)
    monkeypatch.setattr(runstate, "write", failing)
    with pytest.raises(OSError):
        train(Corpus(TEXT, "t", "t"), ModelConfig(vocab_size=1, **MODEL), TrainConfig(out=str(tmp_path), name="b", **TRAIN))
    assert weights(tmp_path / "b" / "best.pt")["step"] == 15


def test_a_last_pt_whose_weights_do_not_fit_its_config_is_one_line(tmp_path):
    """A hand-edited or foreign last.pt: --resume printed load_state_dict's traceback (sample and eval said it
    in one line)."""
    import torch
    corpus = tmp_path / "text.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    short = [*FLAGS[:-5], "--max-steps", "3", "--quiet"]
    assert runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path), "--name", "a", *short]).exit_code == 0
    data = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    data["model_config"]["hidden"] *= 2
    torch.save(data, tmp_path / "a" / "last.pt")
    r = runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path), "--name", "a", "--resume", "--max-steps",
                            "6"])
    assert r.exit_code == 1 and "do not fit its own model config" in r.stderr and "size mismatch" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_best_pt_newer_than_last_pt_is_not_replaced_by_a_worse_model(tmp_path):
    """A save writes best.pt, then last.pt: a run killed (or a disk filled) between the two left a best.pt better
    than the best loss last.pt records, and --resume replaced it at its first, worse, evaluation."""
    import shutil

    import charnn
    from charnn.checkpoint import load_checkpoint
    text = tmp_path / "t.txt"
    text.write_text(make_text(400, seed=8), encoding="utf-8")
    common = dict(out=str(tmp_path), name="r", eval_every=10, hidden=32, layers=1, batch_size=8, seq_len=32,
                  lr=2e-2, warmup=0, device="cpu", threads=1, seed=5)
    charnn.train(str(text), max_steps=10, **common)
    early = tmp_path / "early.pt"
    shutil.copy(tmp_path / "r" / "last.pt", early)
    charnn.train(str(text), max_steps=60, resume=True, **common)
    best = load_checkpoint(tmp_path / "r" / "best.pt")
    assert best["step"] > 10 and best["val_loss"] < load_checkpoint(early)["best_val_loss"]
    shutil.copy(early, tmp_path / "r" / "last.pt")  # as if killed after best.pt's write at a later save
    charnn.train(str(text), max_steps=20, resume=True, **common)  # its evaluation at 20: worse than best.pt's
    assert load_checkpoint(tmp_path / "r" / "last.pt")["val_loss"] > best["val_loss"]
    kept = load_checkpoint(tmp_path / "r" / "best.pt")
    assert (kept["step"], kept["val_loss"]) == (best["step"], best["val_loss"])


@pytest.mark.parametrize("damage", ["deleted", "cut short"])
def test_a_resumed_run_writes_a_best_pt_that_is_gone_or_unreadable(tmp_path, damage):
    """It was never written again: the run ended "done ... -> best.pt" of a file that was not there (or that no
    command could read)."""
    import charnn
    from charnn.checkpoint import load_checkpoint
    text = tmp_path / "t.txt"
    text.write_text(make_text(200, seed=3), encoding="utf-8")
    common = dict(out=str(tmp_path), name="r", eval_every=5, hidden=16, layers=1, batch_size=4, seq_len=16,
                  device="cpu", threads=1)
    charnn.train(str(text), max_steps=5, **common)
    last = torch.load(tmp_path / "r" / "last.pt", weights_only=True)  # a best so good no evaluation beats it:
    last["best_val_loss"], last["progress"]["best_score"] = 0.01, 0.01  # only a missing best.pt is rewritten
    torch.save(last, tmp_path / "r" / "last.pt")
    best = tmp_path / "r" / "best.pt"
    if damage == "deleted":
        best.unlink()
    else:
        best.write_bytes(best.read_bytes()[:1000])
    run = charnn.train(str(text), max_steps=10, resume=True, **common)
    data = load_checkpoint(best)
    assert data["step"] == 10 and run.best_val_loss == pytest.approx(data["val_loss"])


def test_a_run_log_that_is_not_utf8_is_rewritten_on_resume(tmp_path):
    """metrics.jsonl with bytes that are not UTF-8: --resume raised UnicodeDecodeError after it had saved."""
    import charnn
    from charnn.training.metrics import read_metrics
    text = tmp_path / "t.txt"
    text.write_text(make_text(200, seed=3), encoding="utf-8")
    common = dict(out=str(tmp_path), name="r", eval_every=5, hidden=16, layers=1, batch_size=4, seq_len=16,
                  device="cpu", threads=1, log_every=1)
    charnn.train(str(text), max_steps=5, **common)
    log = tmp_path / "r" / "metrics.jsonl"
    log.write_bytes(log.read_bytes() + bytes(range(128, 256)) + b"\n")
    charnn.train(str(text), max_steps=8, resume=True, **common)
    assert [r["step"] for r in read_metrics(log)] == list(range(1, 9))


def test_a_run_saved_with_the_old_default_patience_resumes_with_a_limit_to_its_limit(tmp_path):
    """Before --patience worked beside a limit, every run saved patience 5 as a value; resumed with --max-steps
    such a run (one that had stopped on patience, say) stopped on patience at once, 0 steps trained."""
    import charnn
    from charnn.checkpoint import load_checkpoint
    text = tmp_path / "t.txt"
    text.write_text(make_text(200, seed=3), encoding="utf-8")
    common = dict(out=str(tmp_path), name="r", eval_every=2, hidden=16, layers=1, batch_size=4, seq_len=16,
                  device="cpu", threads=1)
    charnn.train(str(text), max_steps=4, **common)
    last = torch.load(tmp_path / "r" / "last.pt", weights_only=True)  # as an older charnn saved it: patience 5,
    last["train_config"]["patience"], last["progress"]["bad_evals"] = 5, 5  # and it had stopped on patience
    del last["config_version"]
    torch.save(last, tmp_path / "r" / "last.pt")
    run = charnn.train(str(text), max_steps=8, resume=True, **common)
    assert (run.stopped, run.steps) == ("max_steps", 8) and load_checkpoint(tmp_path / "r" / "last.pt")["step"] == 8
    last = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    last["progress"]["bad_evals"] = 5
    torch.save(last, tmp_path / "r" / "last.pt")
    again = charnn.train(str(text), max_steps=12, resume=True, patience=5, **common)  # given: it applies
    assert (again.stopped, again.steps) == ("patience", 8)


def test_a_typed_patience_beside_a_limit_is_kept_on_resume(tmp_path):
    """A run given --patience 5 beside --max-steps was resumed without it as if it had none (the old runs' saved
    default was 5): it trained on past its patience."""
    import charnn
    text = tmp_path / "t.txt"
    text.write_text(make_text(200, seed=3), encoding="utf-8")
    common = dict(out=str(tmp_path), name="r", eval_every=2, hidden=16, layers=1, batch_size=4, seq_len=16,
                  device="cpu", threads=1)
    charnn.train(str(text), max_steps=4, patience=5, **common)
    last = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    last["progress"]["bad_evals"] = 5  # as if it had stopped on patience
    torch.save(last, tmp_path / "r" / "last.pt")
    run = charnn.train(str(text), max_steps=12, resume=True, **common)
    assert (run.stopped, run.steps) == ("patience", 4)


def test_a_run_stopped_by_its_max_time_is_refused_on_resume_though_its_reserve_was_unspent():
    """A run stopped by --max-time 8 saves at 7.5 s (the final evaluation's reserve unspent): a resume trained 0
    steps and said only done; the refusal fired only past the limit itself."""
    from charnn.training.resume import check_steps_left
    saved = {"progress": {"step": 40}, "elapsed": 7.49}
    with pytest.raises(ConfigError, match=r"has used its --max-time \(7.5 seconds\)"):
        check_steps_left(saved, TrainConfig(name="r", max_time=8), explicit=set())
    with pytest.raises(ConfigError, match="give more than 11s"):
        check_steps_left(saved, TrainConfig(name="r", max_time=10), explicit={"max_time"})
    check_steps_left(saved, TrainConfig(name="r", max_time=60), explicit={"max_time"})  # time to train: fine
    with pytest.raises(ConfigError, match="run stdlib has used"):  # (named by its folder: a run of the built-in
        check_steps_left(saved, TrainConfig(max_time=8), explicit=set(), run="stdlib")  # corpus said "run NAME")


def test_a_run_saved_with_an_empty_val_file_or_init_from_still_resumes(tmp_path):
    """Before an empty --val-file/--init-from was refused (an unset variable), it was taken as not given and saved
    as ''; resuming such a run was refused over flags its user could not change."""
    from charnn.training.resume import resume_config
    saved = {"train_config": {**TrainConfig(out=str(tmp_path), name="r", max_steps=10).__dict__, "val_file": "",
                              "init_from": "", "label_by": ""}}
    cfg = resume_config(saved, TrainConfig(out=str(tmp_path), name="r", max_steps=20), ModelConfig(vocab_size=5),
                        {"max_steps"})
    assert cfg.val_file is None and cfg.init_from is None and cfg.label_by is None and cfg.max_steps == 20


def test_a_run_resumes_in_its_own_encoding_and_an_edited_val_file_is_named(tmp_path):
    """A run trained with --encoding latin-1 resumed without it read its text as utf-8 ("not valid utf-8"); another
    --encoding typed was "not the same text"; an edited --val-file was blamed on the corpus."""
    from conftest import one_line_error
    text = make_text(300, seed=8).replace("e", "\u00e9")
    (tmp_path / "l1.txt").write_bytes(text.encode("latin-1"))
    (tmp_path / "v.txt").write_bytes(text[:400].encode("latin-1"))
    args = ["train", str(tmp_path / "l1.txt"), "--out", str(tmp_path), "--hidden", "16", "--layers", "1",
            "--seq-len", "16", "--batch-size", "4", "--threads", "1", "-q"]
    assert runner.invoke(app, [*args, "--encoding", "latin-1", "--val-file", str(tmp_path / "v.txt"),
                               "--max-steps", "2"]).exit_code == 0
    r = runner.invoke(app, [*args, "--resume", "--max-steps", "4"])
    assert r.exit_code == 0, r.stderr
    assert torch.load(tmp_path / "l1" / "last.pt", weights_only=True)["step"] == 4
    one_line_error(runner.invoke(app, [*args, "--resume", "--max-steps", "6", "--encoding", "cp1252"]), 2,
                   "read as latin-1", "read as cp1252", "drop --encoding")
    (tmp_path / "u8.txt").write_text(text, encoding="utf-8")  # (another length under latin-1: it said only "Pass
    u8 = ["train", str(tmp_path / "u8.txt"), *args[2:]]  # that text again")
    assert runner.invoke(app, [*u8, "--max-steps", "2"]).exit_code == 0
    one_line_error(runner.invoke(app, [*u8, "--resume", "--max-steps", "4", "--encoding", "latin-1"]), 2,
                   "read as utf-8", "read as latin-1")
    assert runner.invoke(app, [*u8, "--name", "old", "--encoding", "latin-1", "--max-steps", "2"]).exit_code == 0
    saved = torch.load(tmp_path / "old" / "last.pt", weights_only=True)
    del saved["data"]["encoding"]  # (as a run saved before the encoding was kept: it cannot be taken from the run)
    torch.save(saved, tmp_path / "old" / "last.pt")
    one_line_error(runner.invoke(app, [*u8, "--name", "old", "--resume", "--max-steps", "4"]), 2,
                   "does not record its --encoding")
    (tmp_path / "v.txt").write_bytes(text[:400].replace("a", "b").encode("latin-1"))
    one_line_error(runner.invoke(app, [*args, "--resume", "--max-steps", "6"]), 2, "validation file", "v.txt")


def test_a_resume_that_moves_a_limit_says_the_schedule_moves_with_it(tmp_path):
    """--resume --max-steps 8 of a run saved with 4 stretched the learning rate's curve without a word (the run
    does not continue as one started with 8 would have: docs/CHECKPOINTS.md)."""
    (tmp_path / "t.txt").write_text(make_text(200, seed=3), encoding="utf-8")
    args = ["train", str(tmp_path / "t.txt"), "--out", str(tmp_path), "--hidden", "16", "--layers", "1", "--threads",
            "1", "--eval-every", "2"]
    assert runner.invoke(app, [*args, "--max-steps", "4", "-q"]).exit_code == 0
    r = runner.invoke(app, [*args, "--resume", "--max-steps", "8"])
    assert r.exit_code == 0, r.stderr
    assert "note: --max-steps 8 (the run was saved with 4): the learning rate's schedule spans the new limit" in \
        " ".join(r.stderr.split())
    r = runner.invoke(app, [*args, "--resume", "--max-steps", "10", "--max-time", "100h"])  # (steps drive it: time
    assert r.exit_code == 0 and "--max-time" not in r.stderr, r.stderr  # is no note; in-process, --max-time counts
    # from the test process's start, hence hours)


def test_the_stop_hint_of_a_resumed_run_names_the_runs_own_encoding(tmp_path, monkeypatch):
    """A latin-1 run resumed without --encoding (it comes from the run) and stopped printed a resume command without
    it: one the version before could not run, and one that hid how the text is read."""
    (tmp_path / "l1.txt").write_bytes((make_text(200, seed=3).replace("e", "\u00e9")).encode("latin-1"))
    args = ["train", str(tmp_path / "l1.txt"), "--out", str(tmp_path), "--hidden", "16", "--layers", "1",
            "--seq-len", "16", "--batch-size", "4", "--threads", "1", "--eval-every", "100"]
    assert runner.invoke(app, [*args, "--encoding", "latin-1", "--max-steps", "2", "-q"]).exit_code == 0
    monkeypatch.setattr(Trainer, "_train_step", ctrl_c_after(4))
    r = runner.invoke(app, [*args, "--resume", "--max-steps", "30"])
    assert r.exit_code == 130, r.stderr
    assert "--encoding latin-1" in r.stderr.split("Resume with: ")[1], r.stderr


def test_a_subword_runs_default_vocab_size_typed_again_on_resume_is_its_own():
    """A bpe run trained without --vocab-size saved None and trained 1,024 pieces: typing --vocab-size 1024 on its
    resume was refused as "the run used none"; another size is refused naming 1,024."""
    from charnn.config import DEFAULT_VOCAB, ModelConfig, TrainConfig
    from charnn.errors import ConfigError
    from charnn.training.resume import resume_config

    saved = {"train_config": {**asdict(TrainConfig(tokenizer="bpe")), "vocab_size": None}, "config_version": 2}
    cfg = resume_config(saved, TrainConfig(tokenizer="bpe", vocab_size=DEFAULT_VOCAB), ModelConfig(vocab_size=1),
                        {"vocab_size"})
    assert cfg.vocab_size is None and cfg.pieces == DEFAULT_VOCAB
    with pytest.raises(ConfigError, match="--vocab-size 900 \\(the run used 1024\\)"):
        resume_config(saved, TrainConfig(tokenizer="bpe", vocab_size=900), ModelConfig(vocab_size=1), {"vocab_size"})
    chars = {"train_config": asdict(TrainConfig()), "config_version": 2}
    with pytest.raises(ConfigError, match="the run used none: its tokenizer is chars"):
        resume_config(chars, TrainConfig(vocab_size=900), ModelConfig(vocab_size=1), {"vocab_size"})


def test_the_flags_check_reads_a_resumed_runs_configs_without_its_weights(tmp_path, monkeypatch):
    """Checking a kind's flags against the run --resume continues (or --init-from starts from) read the whole
    last.pt, optimiser state and all (612 MB for a 2x2048 LSTM: 1.0 s before training began; now 6 ms), which the
    trainer then read again: its configs are read with the tensors mapped, not loaded."""
    import torch as real_torch

    from charnn.training import run

    train(Corpus(make_text(40), "t", "t"), ModelConfig(vocab_size=1, **MODEL),
          TrainConfig(out=str(tmp_path), name="r", **{**TRAIN, "max_steps": 2}))
    loads, load = [], real_torch.load
    monkeypatch.setattr(real_torch, "load", lambda *a, **k: (loads.append(k.get("mmap")), load(*a, **k))[1])
    for flags in ({"resume": True, "name": "r", "out": str(tmp_path)}, {"init_from": str(tmp_path / "r")}):
        assert run._saved_model(flags)["hidden"] == MODEL["hidden"]
    assert loads == [True, True]


def test_a_validation_pass_out_of_memory_keeps_every_step_in_last_pt(tmp_path, corpus_file, monkeypatch):
    """CUDA's out of memory in the second validation pass (step 20): the error went up as it was and last.pt held
    step 10; now last.pt takes step 20, the error is one line, and --resume continues from there."""
    from conftest import one_line_error

    from charnn.tasks.lm import LanguageModelTask as LMTask

    real, calls = LMTask.evaluate, []

    def evaluate(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, *a, **k)

    monkeypatch.setattr(LMTask, "evaluate", evaluate)
    args = ("train", corpus_file, "--out", tmp_path, "--name", "oom", "--hidden", "16", "--layers", "1",
            "--eval-every", "10", "--save-every-secs", "0", "--device", "cpu", "--threads", "1", "-q")
    r = runner.invoke(app, [str(a) for a in (*args, "--max-steps", "30")])
    one_line_error(r, 1, "out of memory in the validation pass at step 20", "last.pt", "--resume")
    assert torch.load(tmp_path / "oom" / "last.pt", weights_only=True)["step"] == 20
    r = runner.invoke(app, [str(a) for a in (*args, "--max-steps", "30", "--resume")])
    assert r.exit_code == 0, r.stderr
    assert torch.load(tmp_path / "oom" / "last.pt", weights_only=True)["step"] == 30


TINY_CLI = ["--hidden", "16", "--layers", "1", "--eval-every", "5", "--device", "cpu", "--threads", "1"]


def train_then_resume_from(folder, monkeypatch, first: list, again: list):
    """`charnn train *first` here (the tiny model, 5 steps), then from `folder` (made) `charnn train *again` given no
    CORPUS (to 10 steps); the second command's result."""
    r = runner.invoke(app, ["train", *first, *TINY_CLI, "--max-steps", "5"])
    assert r.exit_code == 0, r.stderr
    folder.mkdir()
    monkeypatch.chdir(folder)
    return runner.invoke(app, ["train", *again, "--resume", *TINY_CLI, "--max-steps", "10"])


def test_resume_without_corpus_reads_the_runs_own_text_again(tmp_path, monkeypatch):
    """`charnn train --name N --resume` with no CORPUS read the built-in corpus (4.5M characters encoded) and then
    refused it as another text; the run's corpus arguments (absolute) and --glob are in its config.json, read again.
    Where they are gone, one line asks for the text."""
    from conftest import one_line_error

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text(make_text(300, seed=3), encoding="utf-8")
    (tmp_path / "src" / "skip.txt").write_text("not this\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    common = TINY_CLI
    r = train_then_resume_from(tmp_path / "elsewhere", monkeypatch, ["src", "--glob", "*.py", "--name", "code"],
                               ["--out", "../checkpoints", "--name", "code"])
    assert r.exit_code == 0, r.stderr
    assert f"resuming on the run's own text: {tmp_path / 'src'} (--glob '*.py')" in r.stderr
    assert torch.load(tmp_path / "checkpoints" / "code" / "last.pt", weights_only=True)["step"] == 10
    (tmp_path / "src").rename(tmp_path / "moved")
    r = runner.invoke(app, ["train", "--out", "../checkpoints", "--name", "code", "--resume", *common,
                            "--max-steps", "15"])
    one_line_error(r, 1, "trained on", str(tmp_path / "src"), "not there now",
                   "give its text: charnn train TEXT --out ../checkpoints --name code --resume")
    config = json.loads((tmp_path / "checkpoints" / "code" / "config.json").read_text(encoding="utf-8"))
    del config["corpus_args"]  # a run recorded before its arguments were: asked for its text at once
    (tmp_path / "checkpoints" / "code" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    r = runner.invoke(app, ["train", "--out", "../checkpoints", "--name", "code", "--resume", *common])
    one_line_error(r, 1, "not the built-in corpus", "give its text")


def test_a_relative_val_file_is_found_by_a_resume_from_another_folder(tmp_path, monkeypatch):
    """--val-file was kept as typed: a resume from another folder (given no CORPUS, which is found) failed on
    "validation file 'v.txt' does not exist"; it is recorded absolute, and typed again relative it is the same."""
    (tmp_path / "a.txt").write_text(make_text(300, seed=4), encoding="utf-8")
    (tmp_path / "v.txt").write_text(make_text(40, seed=5), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    common = TINY_CLI
    r = train_then_resume_from(tmp_path / "sub", monkeypatch, ["a.txt", "--val-file", "v.txt", "--name", "vf"],
                               ["--out", "../checkpoints", "--name", "vf"])
    assert r.exit_code == 0, r.stderr
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["train", "a.txt", "--val-file", "v.txt", "--name", "vf", "--resume", *common,
                            "--max-steps", "15"])
    assert r.exit_code == 0, r.stderr
    assert torch.load(tmp_path / "checkpoints" / "vf" / "last.pt", weights_only=True)["step"] == 15
