"""Tasks (charnn.tasks): each corpus kind is one task object that the trainer's loop asks for data, batches,
loss extras, validation, checkpoint records and previews; the run's kind is decided once; the trainer touches
the recurrent state only through the model's state_ops; one assembly serves the CLI and charnn.train."""

from __future__ import annotations

import inspect
import random
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import charnn
from charnn.cli import app
from charnn.config import ModelConfig, TrainConfig
from charnn.data.corpus import Corpus
from charnn.data.labels import LabelledText
from charnn.data.pairs import PairText
from charnn.data.training_text import TextOptions, load_training_text
from charnn.errors import ConfigError
from charnn.models.lm import CharRNN
from charnn.models.state import TensorState
from charnn.tasks import LabelledTask, LanguageModelTask, PairsTask, task_for
from charnn.tasks.preview import PairPreview, SamplePreview
from charnn.training import trainer as trainer_module
from charnn.training.run import start_run, train_configs
from charnn.training.trainer import Trainer
from conftest import TINY_MODEL, TINY_TRAIN, make_text

runner = CliRunner()
WORDS = "red green blue amber violet grey".split()


def write_lines(path: Path, n: int = 240, seed: int = 4) -> str:
    rng = random.Random(seed)
    path.write_text("".join(f"{lab}\t{' '.join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))} {lab}\n"
                            for lab in (rng.choice(["up", "down", "side"]) for _ in range(n))), encoding="utf-8")
    return str(path)


def write_pairs(path: Path, n: int = 300, seed: int = 5) -> str:
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdef") for _ in range(rng.randint(1, 6))) for _ in range(n)]
    path.write_text("".join(f"{w}\t{w[::-1]}\n" for w in words), encoding="utf-8")
    return str(path)


def test_the_kind_is_decided_once_from_the_loaded_text(tmp_path):
    lines, pairs = write_lines(tmp_path / "l.tsv"), write_pairs(tmp_path / "p.tsv")
    plain = load_training_text([lines], options=TextOptions())
    labelled = load_training_text([lines], options=TextOptions(label_by="line"))
    paired = load_training_text([pairs], options=TextOptions(pairs=True))
    assert isinstance(plain, Corpus) and isinstance(labelled, LabelledText) and isinstance(paired, PairText)
    tasks = [task_for(t) for t in (plain, labelled, paired)]
    assert [type(t) for t in tasks] == [LanguageModelTask, LabelledTask, PairsTask]
    assert [t.kind for t in tasks] == ["lm", "labelled", "pairs"]
    # the typed options are what a TrainConfig says
    cfg = TrainConfig(val_frac=0.2, seed=9, label_by="line", skip_bad_lines=True, tokenizer="bpe", vocab_size=300)
    assert TextOptions.of(cfg) == TextOptions(val_frac=0.2, seed=9, label_by="line", skip_bad_lines=True,
                                              tokenizer="bpe", vocab_size=300)


def test_the_trainer_asks_no_kind_and_knows_no_state_layout():
    source = inspect.getsource(trainer_module)
    for kind_question in ("PairText", "LabelledText", "isinstance(", ".pairs", "labels", "seq2seq"):
        assert kind_question not in source, kind_question
    for layout in (".narrow(", "repeat(1,", "dim=1", "len(hidden)", "map_state", "detach_state", "h[:, "):
        assert layout not in source, layout
    assert len(source.splitlines()) <= 360


class SpyState(TensorState):
    """The RNN state interface, counting what the trainer asks of it."""

    def __init__(self):
        super().__init__(axis=1)
        self.calls = []

    def __getattribute__(self, name):
        if name in ("repeat", "narrow", "detach", "pack", "unpack", "map", "to", "rows"):
            object.__getattribute__(self, "calls").append(name)
        return object.__getattribute__(self, name)


def test_every_state_operation_goes_through_the_models_state_ops(tmp_path, monkeypatch):
    spy = SpyState()
    monkeypatch.setattr(CharRNN, "state_ops", spy)
    text = load_training_text([write_lines(tmp_path / "l.tsv")], options=TextOptions(label_by="line", val_frac=0.2))
    cfg = TrainConfig(out=str(tmp_path), name="spy", **{**TINY_TRAIN, "max_steps": 6, "eval_every": 3,
                                                        "label_contrast": 0.5, "threads": 1})
    Trainer(text, ModelConfig(vocab_size=1, **TINY_MODEL), cfg).fit()
    assert {"repeat", "narrow", "detach", "map", "pack"} <= set(spy.calls)  # contrast rows, BPTT, last.pt
    spy.calls.clear()
    Trainer(text, ModelConfig(vocab_size=1, **TINY_MODEL), TrainConfig(**{**cfg.__dict__, "max_steps": 8}),
            resume=True).fit()
    assert "unpack" in spy.calls  # the carried state of last.pt, back


def test_each_task_records_and_previews_its_own_kind(tmp_path):
    pairs = load_training_text([write_pairs(tmp_path / "p.tsv")], options=TextOptions(pairs=True))
    cfg = TrainConfig(out=str(tmp_path), name="pairs", pairs=True, batch_size=8, max_steps=2, eval_every=2,
                      device="cpu", threads=1, precision="fp32")
    trainer = Trainer(pairs, ModelConfig(vocab_size=1, layers=1, hidden=16, embed=8), cfg)
    try:
        task = trainer.task
        assert trainer.model_cfg.kind == "seq2seq" and trainer.model_cfg.source_vocab == task.source_tokenizer.vocab_size
        assert set(task.record()) == {"pairs", "source_tokenizer"}
        preview = task.preview(trainer.model, trainer.device, 1, lambda step, text: None, 0)
        assert isinstance(preview, PairPreview) and preview.inputs == [t for t in task.data.val_inputs if t.strip()][:4]
    finally:
        trainer.release()
    lm = Trainer(Corpus(make_text(80), "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL),
                 TrainConfig(out=str(tmp_path), name="lm", **{**TINY_TRAIN, "threads": 1}))
    try:
        assert lm.task.record() == {} and lm.task.probes_eval
        assert isinstance(lm.task.preview(lm.model, lm.device, 1, lambda s, t: None, 3), SamplePreview)
    finally:
        lm.release()


def test_a_resumed_run_must_be_the_same_kind(tmp_path):
    path = write_lines(tmp_path / "l.tsv")
    cfg = TrainConfig(out=str(tmp_path), name="r", **{**TINY_TRAIN, "max_steps": 2, "eval_every": 2, "threads": 1})
    labelled = load_training_text([path], options=TextOptions(label_by="line"))
    Trainer(labelled, ModelConfig(vocab_size=1, **TINY_MODEL), cfg).fit()
    with pytest.raises(ConfigError, match="was trained with --label-by line"):
        Trainer(load_training_text([path]), ModelConfig(vocab_size=1, **TINY_MODEL), cfg, resume=True)


def test_one_assembly_for_the_cli_and_the_api(tmp_path):
    with pytest.raises(ConfigError, match="unknown flags: colour"):
        charnn.train(str(tmp_path / "x.txt"), colour="red")
    with pytest.raises(ConfigError, match="add --pairs"):  # the CLI's rule, now charnn.train's too
        train_configs({"attention": False})
    model_cfg, cfg = train_configs({"hidden": 32, "max_time": "2m", "pairs": True, "attention": False})
    assert (model_cfg.hidden, model_cfg.attention, cfg.max_time, cfg.pairs) == (32, False, 120.0, True)
    (tmp_path / "t.txt").write_text(make_text(120), encoding="utf-8")
    seen = []
    run = start_run([str(tmp_path / "t.txt")], ModelConfig(vocab_size=1, **TINY_MODEL),
                    TrainConfig(out=str(tmp_path), name="a", **{**TINY_TRAIN, "max_steps": 3, "threads": 1}),
                    lambda kind, info: seen.append(kind), loaded=lambda: seen.append("loaded"))
    result = run.fit()
    assert result.steps == 3 and run.task.kind == "lm" and seen.index("loaded") < seen.index("start")
    assert (tmp_path / "a" / "metrics.jsonl").is_file() and (tmp_path / "a" / "config.json").is_file()


def test_train_help_is_grouped_and_shows_every_default():
    r = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    for panel in ("Common", "Model", "Schedule and budget", "Labels", "Pairs", "System"):
        assert r.stdout.count(f"─ {panel}") == 1, panel  # one box each (the argument has its own)
    command = typer.main.get_command(app).commands["train"]
    for p in command.params:
        if p.name in ("help", "corpus", "ctx"):
            continue
        assert p.show_default is not False, p.name
        assert p.default is not None or isinstance(p.show_default, str), p.name
        assert getattr(p, "rich_help_panel", None), p.name
