"""metrics.jsonl and config.json, sample previews, the terminal plot and the non-TTY progress fallback."""

import io
import json
import math
import re

import pytest
import torch
from conftest import TINY_MODEL, TINY_TRAIN, make_text
from rich.console import Console
from typer.testing import CliRunner

from charnn.cli import app
from charnn.cli.progress import TrainProgress
from charnn.cli.textplot import BRAILLE, POINT, line_plot
from charnn.config import ModelConfig, TrainConfig
from charnn.data.corpus import Corpus
from charnn.training.metrics import Callbacks, MetricsLogger, read_metrics
from charnn.tasks.preview import SamplePreview
from charnn.training.trainer import Trainer

runner = CliRunner()
FLAGS = ["--hidden", "24", "--embed", "8", "--layers", "2", "--batch-size", "4", "--seq-len", "16",
         "--device", "cpu", "--threads", "1"]
ANSI = re.compile(r"\x1b\[")


def step_event(step, loss=1.0, lr=0.1):
    return {"step": step, "loss": loss, "loss_avg": loss, "lr": lr, "chars_per_sec": 100.0, "elapsed": step / 10,
            "progress": step / 100, "epoch": step / 50}


def eval_event(step, val):
    return {"step": step, "val_loss": val, "best_val_loss": val, "improved": True, "elapsed": step / 10}


def test_cli_run_keeps_metrics_and_config(tmp_path, corpus_file):
    r = runner.invoke(app, ["train", str(corpus_file), "--out", str(tmp_path), "--max-steps", "10",
                            "--eval-every", "3", "--log-every", "2", "--quiet", *FLAGS])
    assert r.exit_code == 0, r.stderr
    run = tmp_path / "tiny"
    records = read_metrics(run / "metrics.jsonl")
    steps = [rec["step"] for rec in records]
    assert steps == [2, 3, 4, 6, 8, 9, 10]  # every 2nd step, every evaluation, and the last step
    for rec in records:
        assert {"step", "epoch", "train_loss", "lr", "chars_per_sec", "elapsed"} <= set(rec)
        assert math.isfinite(rec["train_loss"]) and rec["lr"] > 0 and rec["chars_per_sec"] > 0
    assert [rec["step"] for rec in records if "val_loss" in rec] == [3, 6, 9, 10]
    elapsed = [rec["elapsed"] for rec in records]
    assert elapsed == sorted(elapsed)
    last_val = torch.load(run / "last.pt", weights_only=True)["val_loss"]
    assert records[-1]["val_loss"] == pytest.approx(last_val)
    config = json.loads((run / "config.json").read_text())
    assert config["corpus"] == str(corpus_file.resolve())
    assert config["model"]["hidden"] == 24 and config["model"]["vocab_size"] > 1
    assert config["train"]["max_steps"] == 10 and config["tokenizer"]["kind"] == "char"


def test_train_loss_is_the_mean_since_the_previous_record(tmp_path):
    log = MetricsLogger(tmp_path, every=3)
    log("start", {"step": 0})
    for s, loss in enumerate([3.0, 2.0, 1.0, 6.0, 4.0], start=1):
        log("step", step_event(s, loss))
    log("saved", {"path": "last.pt", "step": 5})  # the trainer saves before it reports the evaluation
    log("eval", eval_event(5, 0.5))
    log("done", {})
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["train_loss"], r.get("val_loss")) for r in records] == [(3, 2.0, None), (5, 5.0, 0.5)]


def test_the_saved_steps_record_is_written_with_its_checkpoint(tmp_path):
    """A kill -9 after a save lost that step's record for good (it waited for the next step or the eval event,
    and a resume keeps only records up to the checkpoint's step): written at the save, and an evaluation's
    val_loss then rewrites that last line."""
    log = MetricsLogger(tmp_path, every=2)
    log("start", {"step": 0})
    for s in (1, 2):
        log("step", step_event(s, 1.0))
    log("saved", {"path": "last.pt", "step": 2})  # a time save (--save-every-secs)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [2]  # (before the next step)
    for s in (3, 4):
        log("step", step_event(s, 2.0))
    log("saved", {"path": "best.pt", "step": 4})
    log("saved", {"path": "last.pt", "step": 4})
    assert [(r["step"], r.get("val_loss")) for r in read_metrics(tmp_path / "metrics.jsonl")] == [(2, None), (4, None)]
    log("eval", eval_event(4, 0.5))
    text = (tmp_path / "metrics.jsonl").read_text()
    assert [(r["step"], r["train_loss"], r.get("val_loss")) for r in read_metrics(tmp_path / "metrics.jsonl")] == \
        [(2, 1.0, None), (4, 2.0, 0.5)] and text.count("\n") == 2
    log("done", {})
    assert (tmp_path / "metrics.jsonl").read_text() == text


def test_a_fresh_run_starts_the_file_anew_and_a_resume_keeps_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "train_loss": 1.0}) + "\n" for s in (1, 2, 3, 4)))
    resumed = MetricsLogger(tmp_path, every=1, resume=True)
    resumed("start", {"step": 2})  # resuming from step 2: steps 3 and 4 are about to be trained again
    resumed("step", step_event(3))
    resumed("saved", {"path": "last.pt", "step": 3})
    resumed("done", {})
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    fresh = MetricsLogger(tmp_path, every=1)
    fresh("start", {"step": 0})
    fresh("step", step_event(1))
    fresh("saved", {"path": "last.pt", "step": 1})
    fresh.close()
    fresh.close()  # closing twice writes nothing twice
    assert [r["step"] for r in read_metrics(path)] == [1]


def test_nothing_is_written_before_the_first_checkpoint_save(tmp_path):
    # a run that fails before saving must leave an existing run folder of the same name untouched
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 7, "train_loss": 1.0}\n')
    log = MetricsLogger(tmp_path, every=1, config={"a": 1})
    log("start", {"step": 0})
    log("step", step_event(1))
    log("step", step_event(2))
    log.close()
    assert path.read_text() == '{"step": 7, "train_loss": 1.0}\n' and not (tmp_path / "config.json").exists()
    log("saved", {"path": "last.pt", "step": 2})
    assert [r["step"] for r in read_metrics(path)] == [1, 2] and (tmp_path / "config.json").exists()


def test_a_half_written_last_line_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train_loss": 2.0}\n{"step": 2, "train_lo')
    assert read_metrics(path) == [{"step": 1, "train_loss": 2.0}]


def _train(tmp_path, name, previews=None):
    cfg = TrainConfig(out=str(tmp_path), name=name, **{**TINY_TRAIN, "max_steps": 12, "eval_every": 6,
                                                       "threads": 1})
    events = Callbacks()
    model_cfg = ModelConfig(vocab_size=1, **{**TINY_MODEL, "dropout": 0.3})  # dropout draws from the global RNG
    trainer = Trainer(Corpus(make_text(200, seed=5), "t", "t"), model_cfg, cfg, events)
    if previews is not None:
        events.add(SamplePreview(trainer.model, trainer.tokenizer, trainer.device, 4,
                                 lambda step, text: previews.append((step, text, trainer.model.training))))
    trainer.fit()
    return torch.load(tmp_path / name / "last.pt", weights_only=True)["model"]


def test_previews_do_not_change_training(tmp_path):
    previews = []
    plain, watched = _train(tmp_path, "plain"), _train(tmp_path, "watched", previews)
    assert all(torch.equal(plain[k], watched[k]) for k in plain)
    assert [p[0] for p in previews] == [4, 8, 12]
    assert all(len(text) == 200 for _, text, _ in previews)
    assert all(training for _, _, training in previews)  # back in train mode before the next step


def test_cli_previews_go_to_stderr_only(tmp_path, corpus_file):
    r = runner.invoke(app, ["train", str(corpus_file), "--out", str(tmp_path), "--max-steps", "4",
                            "--eval-every", "4", "--preview-every", "2", "--quiet", *FLAGS])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""
    assert "preview at step 2" in r.stderr and "preview at step 4" in r.stderr


def test_end_of_training_curve_on_stderr(tmp_path, corpus_file):
    r = runner.invoke(app, ["train", str(corpus_file), "--out", str(tmp_path), "--max-steps", "6",
                            "--eval-every", "3", "--log-every", "1", *FLAGS])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""
    assert "loss (nats/char) over steps" in r.stderr and POINT in r.stderr
    assert any(BRAILLE < ord(c) <= BRAILLE + 0xFF for c in r.stderr)


def test_text_plot_puts_high_values_at_the_top():
    train = [(s, 10.0 - s) for s in range(1, 10)]
    lines = line_plot([("train", train, "line"), ("val", [(9, 1.0)], "points")], width=20, height=6)
    assert lines[0].startswith("9.00 ┤") and lines[5].startswith("1.00 ┤")
    assert lines[0][6] != " " and lines[5][6] == " "  # the falling line starts top left...
    assert lines[5].rstrip().endswith(POINT)  # ...and the val point sits bottom right
    assert lines[-1].split() == ["⠤", "train", POINT, "val"]
    assert line_plot([("train", [], "line")]) == []


def _plain_view(every, quiet=False, open_ended=False):
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=120)
    view = TrainProgress(console, open_ended=open_ended, quiet=quiet, plain_every=every)
    with view:
        for s in (1, 2, 3):
            view("step", step_event(s, loss=2.5))
        view("eval", eval_event(3, 1.25))
    return view, buf.getvalue()


def test_no_terminal_means_plain_periodic_lines():
    view, out = _plain_view(every=0)
    assert not view.live and view.progress is None
    lines = out.splitlines()
    assert lines[:3] == [f"{s:3d}%  step {s}  train 2.5000  val — nats/char  100 chars/s  0s  eta 10s"
                         for s in (1, 2, 3)]  # (eta: elapsed 0.1 s per 1% of the run; the README lists it)
    _, open_ended = _plain_view(every=0, open_ended=True)
    assert "eta" not in open_ended and "step 1  train 2.5000" in open_ended
    assert "step 3: val 1.2500 nats/char" in lines[3]
    assert not ANSI.search(out)
    _, sparse = _plain_view(every=3600)  # a long period: only the first step gets a line
    assert [line for line in sparse.splitlines() if "train" in line] == [lines[0]]
    _, silent = _plain_view(every=0, quiet=True)
    assert silent == ""


def test_no_color_is_honoured(monkeypatch):
    def render():
        buf = io.StringIO()
        Console(file=buf, force_terminal=True).print("[red]val[/]", markup=True)
        return buf.getvalue()

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert "\x1b[31m" in render()
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[31m" not in render()


def test_shell_completion_script(monkeypatch):
    # the shell named, not detected: detection reads the parent processes (none is a shell when pytest runs in the
    # background, and `--show-completion` then takes no value: "Shell  not supported")
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    r = runner.invoke(app, ["--show-completion", "bash"], prog_name="charnn")
    assert r.exit_code == 0
    assert "_charnn_completion" in r.stdout and "complete" in r.stdout


def test_a_run_waiting_for_another_ones_encoding_says_so():
    buf = io.StringIO()
    view = TrainProgress(Console(file=buf, force_terminal=False, width=120), open_ended=False, quiet=False,
                         plain_every=0)
    with view:
        view("data", {"stage": "wait", "key": "k"})
    assert "waiting for another charnn process that is encoding this corpus" in buf.getvalue()


def test_a_callback_that_raises_does_not_keep_the_event_from_the_others():
    """A user's on_event that raised on `saved` kept the metrics writer from it: no config.json or metrics.jsonl,
    and the records up to then lost for good. Every callback sees the event; then the first exception is raised."""
    seen = []

    def bad(kind, info):
        raise ValueError("the user's callback")

    events = Callbacks(bad, lambda kind, info: seen.append(kind))
    with pytest.raises(ValueError, match="the user's callback"):
        events("saved", {})
    assert seen == ["saved"]
