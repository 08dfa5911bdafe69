"""The threads of `eval` (static, --dynamic, labelled, pairs), `sample --adapt`, `classify` and `transduce`:
their loops run each chunk, segment or block of rows through charnn.threadwatch (measured threads where
`--threads` is not given), covering every token once; `--threads N` runs on N; torch's count is put back."""

import pytest
import torch
from typer.testing import CliRunner

from charnn import threadwatch as th
from charnn.cli.app import app
from charnn.device import torch_threads
from conftest import one_line_error, train_tiny_pairs

runner = CliRunner()


class Spy(th.ThreadWatch):
    """A real ThreadWatch that also records how much each block covered."""

    made: list

    def block(self, run, made):
        return super().block(run, lambda out: self.made.append(made(out)) or self.made[-1])


@pytest.fixture
def spies(monkeypatch):
    """Every ThreadWatch `measuring` makes, on two torch threads."""
    made = []

    def watching(threads, device):
        if threads is not None or device.type != "cpu":
            return None
        spy = Spy(torch.get_num_threads())
        spy.made = []
        made.append(spy)
        return spy

    monkeypatch.setattr(th, "watching", watching)
    with torch_threads(2):
        yield made
        assert torch.get_num_threads() == 2  # put back after each command


def text_file(tmp_path, n=5000):
    path = tmp_path / "score.txt"
    line = "the cat sat on the mat and the dog ran to the tree\n"
    path.write_text((line * (n // len(line) + 1))[:n], encoding="utf-8")
    return path


def test_eval_scores_every_token_through_the_measured_loop(trained_run, tmp_path, spies):
    path = text_file(tmp_path)
    r = runner.invoke(app, ["eval", str(trained_run.run_dir), str(path), "--json"])
    assert r.exit_code == 0, r.stderr
    [spy] = spies
    assert sum(spy.made) == 5000 and len(spy.made) == 10  # two streams of 2,500 predictions, chunks of 256
    assert spy.choices  # a choice was made: measured, not fixed
    fixed = runner.invoke(app, ["eval", str(trained_run.run_dir), str(path), "--json", "--threads", "1"])
    assert fixed.exit_code == 0 and len(spies) == 1  # --threads: nothing measured
    import json
    assert json.loads(fixed.stdout)["nats_per_char"] == pytest.approx(json.loads(r.stdout)["nats_per_char"], 1e-6)


def test_dynamic_eval_and_sample_adapt_step_segment_by_segment_on_the_measured_threads(trained_run, tmp_path, spies):
    path = text_file(tmp_path, 1000)
    r = runner.invoke(app, ["eval", str(trained_run.run_dir), str(path), "--dynamic", "--segment", "50"])
    assert r.exit_code == 0, r.stderr
    assert sum(spies[0].made) == 2000 and set(spies[0].made) == {50}  # the static pass, then the dynamic one
    r = runner.invoke(app, ["sample", str(trained_run.run_dir), "--adapt", str(path), "--length", "20", "--seed", "1",
                            "-q"])
    assert r.exit_code == 0, r.stderr
    assert sum(spies[1].made) == 1000  # the adapting pass (the sample has its own watch: charnn.generation)


def test_a_labelled_model_classifies_and_evaluates_through_the_measured_loop(tmp_path, spies):
    rows = tmp_path / "rows.tsv"
    rows.write_text("".join(f"{'ab'[i % 2]}\t{'the cat sat' if i % 2 else 'der hund lief'} {i}\n" for i in range(200)),
                    encoding="utf-8")
    r = runner.invoke(app, ["train", str(rows), "--label-by", "line", "--out", str(tmp_path / "runs"), "--hidden",
                            "16", "--embed", "8", "--layers", "1", "--max-steps", "3", "--eval-every", "3",
                            "--threads", "1", "-q"])
    assert r.exit_code == 0, r.stderr
    run = tmp_path / "runs" / "rows"
    r = runner.invoke(app, ["classify", str(run)], input="the cat\nder hund\n")
    assert r.exit_code == 0, r.stderr
    assert sum(spies[-1].made) == 2 * (8 + 9)  # each line (and its newline) under each of the 2 labels
    r = runner.invoke(app, ["eval", str(run), str(rows), "--label-by", "line"])
    assert r.exit_code == 0, r.stderr
    assert spies[-1].made


def test_transduce_and_pairs_eval_decode_on_the_measured_threads(tmp_path, spies):
    run = train_tiny_pairs(tmp_path, tmp_path / "runs")
    r = runner.invoke(app, ["transduce", str(run)], input="abc\nde\n")
    assert r.exit_code == 0, r.stderr
    assert sum(spies[-1].made) == 7  # the inputs' tokens, each input with its end
    r = runner.invoke(app, ["eval", str(run), str(tmp_path / "rev.tsv")])
    assert r.exit_code == 0, r.stderr
    assert spies[-1].made


def test_outside_a_command_the_loops_run_as_they_are():
    with torch_threads(2):
        assert th.block(lambda: torch.get_num_threads(), lambda _: 1) == 2
        with th.measuring(1, torch.device("cpu")) as watch:
            assert watch is None and th.block(lambda: torch.get_num_threads(), lambda _: 1) == 1
        assert torch.get_num_threads() == 2


@pytest.mark.parametrize("command", [["eval", "FILE"], ["classify"], ["transduce"]])
def test_a_bad_thread_count_is_one_line(command, tmp_path):
    path = text_file(tmp_path, 100)
    args = [str(path) if a == "FILE" else a for a in command]
    one_line_error(runner.invoke(app, [*args, "--threads", "0"], input=""), 2, "--threads")
