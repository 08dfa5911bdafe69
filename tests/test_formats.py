"""Every checkpoint format charnn has written still loads, gives the same outputs for the same seeds, and resumes
(tests/fixtures/formats, written by tests/fixtures/make_formats.py with the version that first wrote each)."""

import json
import shutil

import pytest
from fixtures.make_formats import COMMON, HERE, KINDS, corpus, flags_of, outputs

import charnn
from charnn.checkpoint import load_checkpoint
from charnn.device import torch_threads

GOLDEN = json.loads((HERE / "golden.json").read_text(encoding="utf-8"))


@pytest.fixture
def one_thread():
    with torch_threads(1):
        yield


@pytest.mark.parametrize("kind", list(KINDS))
def test_an_old_checkpoint_gives_the_same_outputs(kind, one_thread):
    want = {k: v for k, v in GOLDEN["kinds"][kind].items() if k != "flags"}
    got = outputs(kind, HERE / f"{kind}.pt")
    if "int8" in want:  # compared where the golden file has this machine's int8 arithmetic
        want["int8"] = {k: v for k, v in want["int8"].items() if k in got["int8"]}
        got["int8"] = {k: v for k, v in got["int8"].items() if k in want["int8"]}
    nats = want.pop("nats", None)
    if nats is not None:
        assert got.pop("nats") == pytest.approx(nats, rel=1e-5)
    assert json.loads(json.dumps(got, ensure_ascii=False)) == want  # tuples as the JSON's lists


@pytest.mark.parametrize("kind", list(KINDS))
def test_an_old_checkpoint_resumes(kind, tmp_path):
    (tmp_path / "runs" / kind).mkdir(parents=True)
    shutil.copy(HERE / f"{kind}.pt", tmp_path / "runs" / kind / "last.pt")
    flags = {**flags_of(kind), "max_steps": COMMON["max_steps"] + 3}
    for fixed in ("cell", "layers", "hidden", "embed", "tokenizer", "vocab_size"):
        flags.pop(fixed, None)  # the run's own
    result = charnn.train(corpus(kind, tmp_path), out=str(tmp_path / "runs"), name=kind, resume=True, **flags)
    assert result.steps == COMMON["max_steps"] + 3
    data = load_checkpoint(tmp_path / "runs" / kind / "last.pt")
    assert data["step"] == COMMON["max_steps"] + 3
    assert data["model_config"] == load_checkpoint(HERE / f"{kind}.pt")["model_config"]
