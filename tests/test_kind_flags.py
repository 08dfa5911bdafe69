"""`charnn train`'s model flags come from the model registry: a kind from another package (an entry point in the
`charnn.kinds` group) brings its own flags to the CLI and to `charnn.train`, `--kind` picks it, `--cell` picks
the kind that has the cell, and a flag the run's kind does not take is one clear error."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import bag_kind  # noqa: F401  (registers the toy kind "bag" in this process)
import pytest
from conftest import make_text

import charnn
from charnn.checkpoint import load_checkpoint
from charnn.config import ModelConfig
from charnn.errors import ConfigError
from charnn.training.run import train_configs

HERE = Path(__file__).parent
TINY = ["--max-steps", "3", "--batch-size", "2", "--seq-len", "8", "--threads", "1", "--precision", "fp32",
        "--device", "cpu", "--eval-every", "3"]


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    """A folder that is an installed package as far as Python knows: bag_kind.py and a dist-info whose
    entry_points.txt names it in the charnn.kinds group."""
    root = tmp_path_factory.mktemp("plugin")
    shutil.copy(HERE / "bag_kind.py", root / "bag_kind.py")
    info = root / "charnn_bag-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: charnn-bag\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[charnn.kinds]\nbag = bag_kind\n")
    return root


def cli(args, plugin_path, cwd):
    # this checkout's charnn, not the one installed in the environment (which may be another worktree's)
    env = {"PYTHONPATH": f"{plugin_path}{os.pathsep}{HERE.parent}", "PATH": "/usr/bin:/bin",
           "CHARNN_CACHE": str(cwd / "cache"),
           "HOME": str(cwd)}
    return subprocess.run([sys.executable, "-m", "charnn", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def test_a_plugin_kind_trains_from_the_command_line_with_its_own_flags(plugin_path, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(30))
    shown = cli(["train", "--help"], plugin_path, tmp_path)
    assert "--decay" in shown.stdout and "bag" in shown.stdout, shown.stdout
    r = cli(["train", str(corpus), "--kind", "bag", "--decay", "0.5", "--embed", "12", "--out", "runs", *TINY],
            plugin_path, tmp_path)
    assert r.returncode == 0, r.stderr
    saved = load_checkpoint(tmp_path / "runs" / "c" / "last.pt")["model_config"]
    assert saved["kind"] == "bag" and saved["decay"] == 0.5 and saved["embed"] == 12
    info = cli(["info", "runs/c"], plugin_path, tmp_path)  # another command finds the kind through the plug-in
    assert info.returncode == 0 and "bag" in info.stdout, info.stderr
    sampled = cli(["sample", "runs/c", "--length", "20", "--seed", "1"], plugin_path, tmp_path)
    assert sampled.returncode == 0 and len(sampled.stdout) >= 20, sampled.stderr
    # a kind's flag on another kind's run, and a flag the kind does not take: one line each, no traceback
    for args, message in ((["--decay", "0.5"], "`--decay` is a flag of bag models; this run trains a lm model"),
                          # every kind that takes --cell is named (lm, seq2seq, classifier, and others' kinds)
                          (["--kind", "bag", "--cell", "gru"], "`--cell` is a flag of lm and seq2seq"),
                          (["--kind", "bag", "--pairs"], "a bag model trains on text, not --pairs"),
                          (["--kind", "nosuch"], "model kind 'nosuch' is not one this charnn knows"),
                          (["--cell", "lstmm"], "`--cell` must be one of lstm, gru, rnn, mingru, minlstm, not 'lstmm'")):
        r = cli(["train", str(corpus), "--out", "runs", "--name", "x", *TINY, *args], plugin_path, tmp_path)
        assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_without_the_plugin_its_checkpoints_say_what_is_missing(plugin_path, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(30))
    assert cli(["train", str(corpus), "--kind", "bag", "--out", "runs", *TINY], plugin_path, tmp_path).returncode == 0
    r = cli(["sample", "runs/c", "--length", "5"], tmp_path / "nowhere", tmp_path)
    assert r.returncode != 0 and "model kind 'bag' is not one this charnn knows" in r.stderr
    assert "install the package that provides it" in r.stderr


def test_the_api_takes_a_kinds_flags_and_keeps_them_on_resume(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(make_text(30))
    flags = dict(out=str(tmp_path), name="b", max_steps=4, batch_size=2, seq_len=8, threads=1, precision="fp32",
                 device="cpu", eval_every=2, save_every_secs=0)
    charnn.train(str(text), kind="bag", decay=0.25, embed=10, **flags)
    saved = load_checkpoint(tmp_path / "b" / "last.pt")["model_config"]
    assert (saved["kind"], saved["decay"], saved["embed"]) == ("bag", 0.25, 10)
    result = charnn.train(str(text), resume=True, **{**flags, "max_steps": 6})
    assert result.steps == 6
    again = load_checkpoint(tmp_path / "b" / "last.pt")["model_config"]
    assert (again["kind"], again["decay"]) == ("bag", 0.25)
    with pytest.raises(ConfigError, match="`decay` is a flag of bag models"):
        charnn.train(str(text), decay=0.5, **flags)


def test_the_flat_config_keeps_a_kinds_own_flags_beside_its_fields():
    model_cfg, _ = train_configs({"kind": "bag", "decay": 0.3, "embed": 8})
    assert model_cfg.kind == "bag" and model_cfg.extra == {"decay": 0.3}
    saved = model_cfg.saved()
    assert saved["decay"] == 0.3 and "extra" not in saved
    assert ModelConfig.from_saved(saved) == model_cfg
    plain, _ = train_configs({"cell": "gru"})  # every flag of the kind, at its default where not given
    assert plain.kind == "lm" and plain.extra == {"ar": 2.0, "tar": 1.0, "weight_drop": 0.0, "locked_dropout": False,
                                                  "input_dropout": 0.0, "embed_dropout": 0.0}
    ar_tar = lambda flags: {k: train_configs(flags)[0].extra[k] for k in ("ar", "tar")}  # noqa: E731
    assert ar_tar({"cell": "gru"}) == {"ar": 2.0, "tar": 1.0}  # a language model's own defaults
    assert ar_tar({"cell": "gru", "ar": 0.5}) == {"ar": 0.5, "tar": 1.0}
    assert ar_tar({"cell": "gru", "label_by": "line"}) == {"ar": 0.0, "tar": 0.0}  # labelled runs: not measured
    assert ar_tar({"cell": "mingru"}) == {"ar": 0.0, "tar": 0.0}  # measured: AR/TAR cost the minGRU
    pairs, _ = train_configs({"pairs": True, "attention": False}, given=("attention",))
    assert pairs.kind == "seq2seq" and pairs.attention is False
    with pytest.raises(ConfigError, match="shapes a --pairs"):
        train_configs({"attention": False})
    with pytest.raises(ConfigError, match="decay must be in|decay in"):
        train_configs({"kind": "bag", "decay": 1.5})


def test_a_kind_whose_config_lacks_one_of_its_flags_is_refused_at_registration():
    from dataclasses import dataclass

    from charnn.models.registry import ModelKind, TrainFlag, register

    @dataclass
    class Small:
        vocab_size: int
        embed: int = 8

    with pytest.raises(ValueError, match=r"flags \['decay'\] are not fields of Small"):
        register(ModelKind("small", "x:y", Small, flags=(TrainFlag("embed", int, 64, ""),
                                                          TrainFlag("decay", float, 0.5, ""))))


def test_the_parallel_cells_train_at_their_own_learning_rate_unless_given_one():
    assert train_configs({"cell": "mingru"})[1].lr == 3e-3  # measured: benchmarks/PARALLEL.md
    assert train_configs({"cell": "minlstm", "lr": 2e-2})[1].lr == 2e-2
    assert train_configs({"cell": "mingru", "lr": 1e-2}, given=())[1].lr == 3e-3  # the CLI's default, not given
    assert train_configs({"cell": "lstm"})[1].lr == 1e-2


def test_a_kinds_flags_on_resume_and_init_from_are_checked_against_the_saved_run(tmp_path):
    """--expand/--ffn without --cell: the run resumed (or fine-tuned from) is a minLSTM, not the default LSTM."""
    from charnn.cli.app import app
    from typer.testing import CliRunner
    text = tmp_path / "t.txt"
    text.write_text(make_text(30))
    base = ["train", str(text), "--out", str(tmp_path), *TINY]
    run = lambda *a: CliRunner().invoke(app, [*base, *a])  # noqa: E731
    assert run("--cell", "minlstm", "--hidden", "16", "--name", "m").exit_code == 0
    same = run("--resume", "--name", "m", "--expand", "1", "--max-steps", "4")
    assert same.exit_code == 0, same.stderr
    changed = run("--resume", "--name", "m", "--expand", "2", "--max-steps", "5")
    assert changed.exit_code == 2 and "cannot change --expand 2 (the run used 1)" in changed.stderr
    tuned = run("--init-from", str(tmp_path / "m"), "--name", "f", "--ffn", "2")
    assert tuned.exit_code == 0, tuned.stderr
    assert load_checkpoint(tmp_path / "f" / "last.pt")["model_config"]["cell"] == "minlstm"
    other = run("--init-from", str(tmp_path / "m"), "--name", "g", "--ffn", "1")
    assert other.exit_code == 2 and "cannot take --ffn 1 (the base has 2)" in other.stderr
    lstm = run("--name", "l")  # an LSTM run: --expand is still another kind's flag
    assert lstm.exit_code == 0
    wrong = run("--resume", "--name", "l", "--expand", "1", "--max-steps", "4")
    assert wrong.exit_code == 2 and "`--expand` is a flag of minrnn models" in wrong.stderr


def test_the_api_saves_every_flag_of_the_kind_and_fine_tunes_a_parallel_cell_run(tmp_path):
    """charnn.train without --expand/--ffn saved neither (the CLI passes every default), and --init-from then built
    the base's config with None for them: a TypeError deep in the config's checks."""
    import torch
    text = tmp_path / "t.txt"
    text.write_text(make_text(30))
    flags = dict(out=str(tmp_path), max_steps=2, batch_size=2, seq_len=8, threads=1, precision="fp32", device="cpu",
                 eval_every=2, save_every_secs=0)
    charnn.train(str(text), cell="minlstm", hidden=16, name="m", **flags)
    saved = load_checkpoint(tmp_path / "m" / "best.pt")["model_config"]
    assert (saved["expand"], saved["ffn"]) == (1, 2)
    assert charnn.train(str(text), init_from=str(tmp_path / "m"), name="f", **flags).steps == 2
    data = torch.load(tmp_path / "m" / "best.pt", weights_only=True)  # as an older charnn.train saved it
    del data["model_config"]["expand"], data["model_config"]["ffn"]
    torch.save(data, tmp_path / "old.pt")
    assert charnn.train(str(text), init_from=str(tmp_path / "old.pt"), name="g", **flags).steps == 2
    assert charnn.load(tmp_path / "old.pt").generate(length=5, seed=1)


def test_charnn_train_keywords_of_the_wrong_type_are_one_clear_error():
    """The API's keywords arrive as any Python value: each is checked against its flag's type before anything
    runs (hidden="64" failed deep in torch, hidden=True trained a model 1 wide, resume="no" resumed)."""
    for flags, words in [({"hidden": "64"}, "`hidden` takes a whole number, got \"64\""),
                         ({"hidden": True}, "`hidden` takes a whole number"), ({"seq_len": 32.5}, "`seq_len`"),
                         ({"lr": "0.01"}, "`lr` takes a number"), ({"resume": "no"}, "`resume` takes True or False"),
                         ({"name": 5}, "`name` takes a string or None"), ({"seed": None}, "`seed` takes a whole"),
                         ({"cell": 3}, "`cell` takes a string")]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            train_configs(flags)
    for fine in ({"lr": 1}, {"max_time": "5m"}, {"max_time": 30}, {"threads": None}, {"dropout": 0}):
        train_configs(fine)


def test_kind_on_resume_or_init_from_names_the_saved_kind(tmp_path):
    """--kind was ignored on --resume and --init-from (the run stayed its saved kind, exit 0)."""
    from typer.testing import CliRunner
    from charnn.cli import app
    from conftest import make_text, one_line_error
    (tmp_path / "t.txt").write_text(make_text(40), encoding="utf-8")
    small = ["--hidden", "16", "--layers", "1", "--embed", "8", "--batch-size", "2", "--seq-len", "8", "--device",
             "cpu", "--threads", "1", "--out", str(tmp_path), "-q"]
    runner = CliRunner()
    r = runner.invoke(app, ["train", str(tmp_path / "t.txt"), "--name", "a", "--max-steps", "2", *small])
    assert r.exit_code == 0, r.stderr
    one_line_error(runner.invoke(app, ["train", str(tmp_path / "t.txt"), "--name", "a", "--resume", "--kind", "minrnn",
                                       "--max-steps", "4", *small]), 2, "cannot change --kind minrnn")
    one_line_error(runner.invoke(app, ["train", str(tmp_path / "t.txt"), "--name", "b", "--init-from",
                                       str(tmp_path / "a"), "--kind", "minrnn", "--max-steps", "2", *small]), 2,
                   "--init-from keeps the base's kind")
