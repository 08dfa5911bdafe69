"""`charnn train NEW --init-from BASE`: the base's weights, architecture and ids; new characters appended."""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import charnn
from charnn.checkpoint import build_from_checkpoint, load_checkpoint
from charnn.cli import app
from charnn.config import ModelConfig, TrainConfig
from charnn.data.corpus import Corpus
from charnn.errors import ConfigError
from charnn.scoring.evaluate import evaluate_text
from charnn.training.init_from import FINETUNE_LR
from charnn.training.trainer import Trainer
from conftest import TINY_MODEL, TINY_TRAIN, make_text, one_line_error

runner = CliRunner()
# Characters that sort before and among the base's ('A' < 'a', '-' < 'a'), so a sorted vocabulary
# would shift every base id: the torch-rnn -init_from bug (#147) this guards against.
NEW_TEXT = "\n".join(f"A-{line} é" for line in make_text(200, seed=5).splitlines()) + "\n"


def finetune(base_run, out, text=NEW_TEXT, events=None, model=None, explicit=frozenset(), **train):
    cfg = TrainConfig(out=str(out), name="ft", **{**TINY_TRAIN, "max_steps": 20, **train},
                      init_from=str(base_run))
    model_cfg = ModelConfig(vocab_size=1, **(model or {}))
    trainer = Trainer(Corpus(text, "ft", "new text"), model_cfg, cfg,
                      (lambda k, i: events.append((k, i))) if events is not None else None,
                      explicit=set(explicit) | set(train) | set(model or {}) | {"init_from"})
    return trainer


def test_base_ids_keep_their_meaning_and_new_characters_are_appended(trained_run, tmp_path):
    base = load_checkpoint(trained_run.run_dir / "best.pt")
    base_model, base_tok = build_from_checkpoint(base)
    events = []
    trainer = finetune(trained_run.run_dir, tmp_path, events=events)
    tok = trainer.tokenizer
    assert tok.chars[: len(base_tok.chars)] == base_tok.chars
    assert tok.chars[len(base_tok.chars):] == ["-", "A", "é"]  # appended (sorted among themselves)
    assert [i for k, i in events if k == "init_from"][0]["added_chars"] == "-Aé"
    assert trainer.model_cfg == ModelConfig(vocab_size=tok.vocab_size, **TINY_MODEL)
    # before any step the grafted model predicts base text as the base does, over the base's ids
    x = torch.from_numpy(base_tok.encode(make_text(5, seed=9))).unsqueeze(0)
    trainer.model.eval()
    with torch.no_grad():
        old, _ = base_model(x)
        new, _ = trainer.model(x)
    n = base_tok.vocab_size
    assert torch.equal(new[..., :n], old)
    # the new rows start as the unknown token's: unlikely, as the base found it
    assert (new[..., n:] == new[..., :1]).all()
    trainer.release()


def test_finetuning_learns_the_new_text_and_records_its_parent(trained_run, tmp_path):
    trainer = finetune(trained_run.run_dir, tmp_path, max_steps=40, eval_every=20)
    new_val = NEW_TEXT[-2000:]
    start = evaluate_text(trainer.model, trainer.tokenizer, new_val, torch.device("cpu")).nats_per_char
    result = trainer.fit()
    data = load_checkpoint(result.run_dir / "best.pt")
    base = load_checkpoint(trained_run.run_dir / "best.pt")
    parent = data["parent"]
    assert parent["path"] == str(trained_run.run_dir / "best.pt") and parent["step"] == base["step"]
    assert math.isclose(parent["val_loss"], base["best_val_loss"]) and parent["added_chars"] == "-Aé"
    assert data["train_config"]["lr"] == FINETUNE_LR and data["train_config"]["init_from"] == str(trained_run.run_dir)
    model, tok = build_from_checkpoint(data)
    # the new characters (and the new lines' habits) are learned: 'A-' after every newline, ' é' before it
    assert evaluate_text(model, tok, new_val, torch.device("cpu")).nats_per_char < start - 0.3
    assert tok.encode("A-é").tolist() == [tok.vocab_size - 2, tok.vocab_size - 3, tok.vocab_size - 1]
    r = runner.invoke(app, ["info", str(result.run_dir)])
    assert r.exit_code == 0, r.stderr
    assert f"parent      {trained_run.run_dir / 'best.pt'} (step {base['step']:,}" in r.stdout
    assert "added 3 characters: - A é" in r.stdout
    r = runner.invoke(app, ["info", str(result.run_dir), "--json"])
    assert json.loads(r.stdout)["parent"]["added_chars"] == "-Aé"


def test_a_typed_lr_wins_and_dropout_may_change(trained_run, tmp_path):
    trainer = finetune(trained_run.run_dir, tmp_path, lr=5e-3, model={"dropout": 0.3})
    assert trainer.cfg.lr == 5e-3 and trainer.model_cfg.dropout == 0.3
    trainer.release()


def test_contradicting_architecture_flags_are_one_error_naming_them(trained_run, tmp_path):
    with pytest.raises(ConfigError) as e:
        finetune(trained_run.run_dir, tmp_path, model={"hidden": 128, "cell": "gru"})
    assert "--cell gru (the base has lstm)" in str(e.value) and "--hidden 128 (the base has 64)" in str(e.value)
    with pytest.raises(ConfigError, match="--tokenizer bpe"):
        finetune(trained_run.run_dir, tmp_path, tokenizer="bpe")
    # flags left at their defaults are not contradictions: the base's architecture is taken
    trainer = finetune(trained_run.run_dir, tmp_path)
    assert trainer.model_cfg.hidden == 64 and trainer.model_cfg.embed == 16
    trainer.release()


def test_cli_errors_are_one_line(trained_run, tmp_path):
    corpus = tmp_path / "new.txt"
    corpus.write_text(NEW_TEXT, encoding="utf-8")
    base = str(trained_run.run_dir)
    common = ["train", str(corpus), "--out", str(tmp_path / "runs"), "--max-steps", "2"]
    one_line_error(runner.invoke(app, common + ["--init-from", base, "--layers", "3"]), 2,
                   "--layers 3 (the base has 2)")
    one_line_error(runner.invoke(app, common + ["--init-from", str(tmp_path / "nope")]), 1, "does not exist")
    one_line_error(runner.invoke(app, common + ["--init-from", base, "--vocab-size", "500"]), 2,
                   "--vocab-size 500 (the base's vocabulary is reused)")  # (not: "applies to --tokenizer bpe")
    one_line_error(runner.invoke(app, common + ["--init-from", base, "--resume"]), 2, "--resume", "--init-from")
    one_line_error(runner.invoke(app, ["train", str(corpus), "--out", str(trained_run.run_dir.parent),
                                       "--name", trained_run.run_dir.name, "--init-from", base]), 2,
                   "another --name")
    assert (trained_run.run_dir / "best.pt").is_file()


def test_cli_finetune_then_resume(trained_run, tmp_path):
    corpus = tmp_path / "new.txt"
    corpus.write_text(NEW_TEXT, encoding="utf-8")
    out = str(tmp_path / "runs")
    r = runner.invoke(app, ["train", str(corpus), "--out", out, "--init-from", str(trained_run.run_dir),
                            "--max-steps", "6", "--eval-every", "3", "--batch-size", "4", "--seq-len", "16"])
    assert r.exit_code == 0, r.stderr
    assert "fine-tuning from" in r.stderr and "added 3 characters: - A é" in r.stderr
    config = json.loads((tmp_path / "runs" / "new" / "config.json").read_text())
    assert config["parent"]["added_chars"] == "-Aé" and config["train"]["lr"] == FINETUNE_LR
    r = runner.invoke(app, ["train", str(corpus), "--out", out, "--name", "new", "--resume", "--max-steps", "9"])
    assert r.exit_code == 0, r.stderr
    data = load_checkpoint(tmp_path / "runs" / "new" / "last.pt")
    assert data["step"] == 9 and data["parent"]["added_chars"] == "-Aé"


def test_subword_base_reuses_its_sentencepiece_model(tmp_path):
    text = make_text(1500, seed=2)
    base = charnn.train(text_file(tmp_path, "base.txt", text), out=str(tmp_path), tokenizer="bpe", vocab_size=300,
                        max_steps=3, hidden=32, embed=8, layers=1, eval_every=3, batch_size=4, seq_len=16)
    ft = charnn.train(text_file(tmp_path, "new.txt", NEW_TEXT), out=str(tmp_path), init_from=str(base.run_dir),
                      max_steps=3, eval_every=3, batch_size=4, seq_len=16)
    a, b = (load_checkpoint(r.run_dir / "best.pt") for r in (base, ft))
    assert a["tokenizer"]["model"] == b["tokenizer"]["model"]
    assert b["model_config"] == {**a["model_config"]} and b["parent"]["added_chars"] == ""
    assert np.isfinite(b["best_val_loss"])


def text_file(folder, name, text):
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_a_fine_tune_trains_with_its_own_regularisers(tmp_path):
    """The regularisers are this run's flags (or a language model's AR/TAR defaults), not the base's: a
    --weight-drop given for the fine-tune reaches its model (it used to be dropped with the base's config)."""
    base = charnn.train(text_file(tmp_path, "base.txt", make_text(300, seed=2)), out=str(tmp_path), max_steps=2,
                        hidden=16, embed=8, layers=1, eval_every=2, batch_size=2, seq_len=16, ar=0.0, tar=0.0)
    ft = charnn.train(text_file(tmp_path, "new.txt", NEW_TEXT), out=str(tmp_path), init_from=str(base.run_dir),
                      max_steps=2, eval_every=2, batch_size=2, seq_len=16, weight_drop=0.2)
    cfg = load_checkpoint(ft.run_dir / "best.pt")["model_config"]
    assert (cfg["weight_drop"], cfg["ar"], cfg["tar"]) == (0.2, 2.0, 1.0)
    assert load_checkpoint(base.run_dir / "best.pt")["model_config"]["ar"] == 0.0


def test_a_base_in_the_previous_folder_the_new_run_replaces_is_refused(trained_run, tmp_path):
    """--init-from RUN/previous --name RUN: the first save moved the run then in RUN into previous/, over the base
    being fine-tuned, and the new run's recorded parent named that other model."""
    import shutil

    run = tmp_path / "runs" / "gen"
    (run / "previous").mkdir(parents=True)
    for name in ("best.pt", "last.pt"):
        shutil.copy(trained_run.run_dir / name, run / name)
        shutil.copy(trained_run.run_dir / name, run / "previous" / name)
    corpus = tmp_path / "new.txt"
    corpus.write_text(NEW_TEXT, encoding="utf-8")
    before = (run / "previous" / "best.pt").read_bytes()
    r = runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path / "runs"), "--name", "gen", "--max-steps",
                            "2", "--init-from", str(run / "previous")])
    one_line_error(r, 2, "first save replaces", "another --name")
    assert (run / "previous" / "best.pt").read_bytes() == before
    for name in ("best.pt", "last.pt"):  # (no run in the folder: nothing moves into previous/, so it is allowed)
        (run / name).unlink()
    r = runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path / "runs"), "--name", "gen", "--max-steps",
                            "2", "--init-from", str(run / "previous"), "-q"])
    assert r.exit_code == 0 and (run / "previous" / "best.pt").read_bytes() == before, r.stderr


def test_the_parent_recorded_is_the_checkpoint_fine_tuned_from():
    """A fine-tune from a last.pt recorded the base run's best val loss, not that checkpoint's own."""
    from charnn.training.init_from import Parent

    parent = Parent(path="x/last.pt", data={"val_loss": 2.5, "best_val_loss": 1.9, "step": 7},
                    model_cfg=ModelConfig(vocab_size=5))
    assert parent.record()["val_loss"] == 2.5
