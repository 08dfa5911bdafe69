"""`charnn info` (text and JSON) and `charnn plot` (a real PNG, or one clear line without matplotlib)."""

import json
import math
import sys

import pytest
import torch
from typer.testing import CliRunner

from charnn.cli import app
from charnn.cli.textplot import POINT

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, corpus_file):
    """A run trained through the CLI, so it has metrics.jsonl and config.json."""
    out = tmp_path_factory.mktemp("info_runs")
    r = runner.invoke(app, ["train", str(corpus_file), "--out", str(out), "--name", "small", "--hidden", "24",
                            "--embed", "8", "--batch-size", "4", "--seq-len", "16", "--max-steps", "8",
                            "--eval-every", "4", "--log-every", "2", "--device", "cpu", "--threads", "1", "--quiet"])
    assert r.exit_code == 0, r.stderr
    return out / "small"


def test_info_json_describes_the_checkpoint(cli_run, corpus_file):
    r = runner.invoke(app, ["info", str(cli_run), "--json"])
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    data = torch.load(cli_run / "best.pt", weights_only=True)
    assert info["checkpoint"] == str(cli_run / "best.pt")
    assert info["format"] == "charnn" and info["format_version"] == 1
    assert info["model"] == {"cell": "lstm", "layers": 2, "hidden": 24, "embed": 8, "dropout": 0.1, "labels": 0,
                             "vocab_size": data["model_config"]["vocab_size"],
                             "parameters": sum(t.numel() for t in data["model"].values())}
    text = corpus_file.read_text()
    assert info["tokenizer"]["kind"] == "char" and info["tokenizer"]["vocab_size"] == len(set(text)) + 1
    assert info["tokenizer"]["preview"] == sorted(set(text))
    tr = info["training"]
    assert tr["steps"] == data["step"] and tr["chars_seen"] == data["chars_seen"] > 0
    assert tr["best_val_loss"] == pytest.approx(data["best_val_loss"])
    assert tr["best_val_bits_per_char"] == pytest.approx(data["best_val_loss"] / math.log(2))
    assert tr["device"] == "cpu" and tr["precision"] == "fp32" and tr["resumable"] is True
    assert tr["batch_size"] == 4 and tr["seq_len"] == 16 and tr["elapsed"] > 0
    assert info["corpus"] == str(corpus_file.resolve())
    assert info["metrics"]["records"] == 4  # steps 2, 4, 6, 8
    assert r.stderr == ""


def test_info_text_has_the_facts_and_the_curve(cli_run):
    facts = json.loads(runner.invoke(app, ["info", str(cli_run / "last.pt"), "--json"]).stdout)
    r = runner.invoke(app, ["info", str(cli_run / "last.pt")])
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    assert "format charnn v1" in out
    assert f"lstm, 2 layers x 24 hidden, embed 8, dropout 0.1: {facts['model']['parameters']:,} parameters" in out
    assert f"char, {facts['tokenizer']['vocab_size']} tokens: \\n ␠ a b" in out
    assert f"{facts['training']['steps']} steps" in out and "on cpu (fp32)" in out
    assert f"{facts['training']['best_val_bits_per_char']:.3f} bits/char" in out
    assert "loss (nats/char) over steps" in out and POINT in out


def test_info_on_a_run_without_metrics(trained_run):
    r = runner.invoke(app, ["info", str(trained_run.run_dir), "--json"])
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["metrics"] is None and info["training"]["steps"] == 150
    assert info["corpus"].endswith("tiny.txt")  # without config.json, from the checkpoint's own record
    text = runner.invoke(app, ["info", str(trained_run.run_dir)])
    assert text.exit_code == 0 and "over steps" not in text.stdout


def test_info_of_a_missing_checkpoint_is_one_line(tmp_path):
    r = runner.invoke(app, ["info", str(tmp_path / "nope.pt")])
    assert r.exit_code == 1 and "does not exist" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_plot_writes_a_real_png(cli_run, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "curves.png"
    r = runner.invoke(app, ["plot", str(cli_run), str(cli_run / "metrics.jsonl"), "-o", str(out), "--x", "time"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "" and str(out) in r.stderr
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000
    for name in ("c", "noext."):  # no known format: matplotlib writes a .png, and the line names that file
        r = runner.invoke(app, ["plot", str(cli_run), "-o", str(tmp_path / name)])
        assert r.exit_code == 0 and f"wrote {tmp_path / 'c.png'}" in r.stderr if name == "c" else r.exit_code == 0
        assert (tmp_path / (name.rstrip(".") + ".png")).read_bytes()[:8] == PNG_MAGIC


def test_plot_without_matplotlib_says_how_to_get_it(cli_run, tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if it were not installed
    r = runner.invoke(app, ["plot", str(cli_run), "-o", str(tmp_path / "c.png")])
    assert r.exit_code == 1
    assert "pip install matplotlib" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("args, code, words", [
    (["plot", "nowhere"], 1, "does not exist"),
    (["plot", "RUN", "--x", "epochs"], 2, "--x"),
])
def test_plot_errors_are_one_line(cli_run, args, code, words):
    r = runner.invoke(app, [str(cli_run) if a == "RUN" else a for a in args])
    assert r.exit_code == code and words in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_plot_of_a_run_without_metrics(trained_run, tmp_path):
    r = runner.invoke(app, ["plot", str(trained_run.run_dir), "-o", str(tmp_path / "c.png")])
    assert r.exit_code == 1 and "metrics.jsonl" in r.stderr


def test_plot_reads_a_metrics_file_under_another_name(cli_run, tmp_path):
    from charnn.reports.plot import run_records
    import shutil
    shutil.copy(cli_run / "metrics.jsonl", tmp_path / "first-try.jsonl")
    name, records, unit = run_records(str(tmp_path / "first-try.jsonl"))  # (it looked for metrics.jsonl beside it)
    assert name == "first-try" and records and unit == "char"
    (tmp_path / "notes.txt").write_text("just some text\n")
    r = runner.invoke(app, ["plot", str(tmp_path / "notes.txt"), "-o", str(tmp_path / "c.png")])
    assert r.exit_code == 1 and "holds no training records" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_damaged_config_json_does_not_stop_info(tmp_path, trained_run):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, run)
    (run / "config.json").write_text("{ half a file")
    r = runner.invoke(app, ["info", str(run), "--json"])
    assert r.exit_code == 0 and "Traceback" not in r.stderr, r.stderr
    assert json.loads(r.stdout)["checkpoint"].endswith("best.pt")


def test_one_of_a_thing_is_said_in_the_singular():
    """`info` said "1 layers x 64 hidden" and "(1 epochs done)" (a helper's read of the README's output)."""
    from charnn.models import registry
    one = {"cell": "lstm", "layers": 1, "hidden": 64, "embed": 16, "dropout": 0.0}
    assert registry.get("lm").info_line(one).startswith("lstm, 1 layer x 64 hidden")
    assert registry.get("lm").info_line({**one, "layers": 3}).startswith("lstm, 3 layers x")
    assert registry.get("minrnn").info_line({**one, "cell": "mingru"}).startswith("mingru, 1 layer x 64 wide")
    assert "1 layer x" in registry.get("classifier").info_line({**one, "labels": 2})
