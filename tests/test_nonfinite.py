"""A checkpoint whose weights hold NaN or infinity: `sample`, `eval` and `--resume` refuse it with one line;
`info` still shows it and names the tensors that are not finite (text and JSON)."""

import json
import shutil

import pytest
import torch
from conftest import one_line_error
from typer.testing import CliRunner

from charnn.checkpoint import load_checkpoint
from charnn.cli import app
from charnn.errors import CharnnError

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def broken(tmp_path, trained_run):
    """A copy of the tiny run whose best.pt and last.pt have NaN in one weight and infinity in another."""
    run = tmp_path / "broken"
    shutil.copytree(trained_run.run_dir, run)
    for name in ("best.pt", "last.pt"):
        data = torch.load(run / name, weights_only=True)
        names = [k for k, t in data["model"].items() if t.is_floating_point()]
        data["model"][names[0]].view(-1)[:3] = float("nan")
        data["model"][names[-1]].view(-1)[0] = float("-inf")
        torch.save(data, run / name)
    return run, names[0], names[-1]


def test_sample_refuses_weights_that_are_not_finite(broken):
    run, nan_name, inf_name = broken
    r = invoke("sample", run, "--length", "50", "--seed", "1")
    one_line_error(r, 1, str(run / "best.pt"), "NaN or infinite", nan_name, inf_name, "charnn info")


def test_eval_refuses_weights_that_are_not_finite(broken, corpus_file):
    run, nan_name, _ = broken
    r = invoke("eval", run / "last.pt", corpus_file)
    one_line_error(r, 1, str(run / "last.pt"), "NaN or infinite", nan_name)


def test_resume_refuses_weights_that_are_not_finite(broken, corpus_file):
    run, nan_name, _ = broken
    r = invoke("train", corpus_file, "--out", run.parent, "--name", run.name, "--resume", "--max-steps", "200",
               "--quiet")
    one_line_error(r, 1, str(run / "last.pt"), "NaN or infinite", nan_name)


def test_info_shows_it_and_names_the_tensors(broken):
    run, nan_name, inf_name = broken
    r = invoke("info", run)
    assert r.exit_code == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if l.startswith("not finite"))
    assert f"2 weight tensors: {nan_name} (3 nan), {inf_name} (1 inf)" in line and "sample and eval refuse" in line
    r = invoke("info", run, "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["non_finite"] == [{"name": nan_name, "nan": 3, "inf": 0}, {"name": inf_name, "nan": 0, "inf": 1}]
    assert info["model"]["parameters"] > 0


def test_a_good_checkpoint_has_nothing_to_report(trained_run, tmp_path):
    from charnn.checkpoint import non_finite_tensors
    r = invoke("info", trained_run.run_dir, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["non_finite"] == []
    assert "not finite" not in invoke("info", trained_run.run_dir).stdout
    data = load_checkpoint(trained_run.run_dir / "best.pt")
    assert non_finite_tensors(data["model"]) == []
    bad = {**data["model"], "x": torch.tensor([1.0, float("inf"), float("nan")]), "n": torch.tensor([3])}
    assert non_finite_tensors(bad) == [{"name": "x", "nan": 1, "inf": 1}]
    torch.save({**data, "model": bad}, tmp_path / "bad.pt")
    with pytest.raises(CharnnError, match=r"NaN or infinite \(in x\)"):
        load_checkpoint(tmp_path / "bad.pt")
    assert load_checkpoint(tmp_path / "bad.pt", finite=False)["model"]["x"].isnan().any()
