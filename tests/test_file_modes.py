"""Run files get the mode an ordinary new file gets under the user's umask (0644 under 022), not the
temporary file's 0600, so that the other users of a shared machine can read a run when the umask lets them."""

import os
import stat

import pytest
from conftest import make_text
from typer.testing import CliRunner

from charnn.cli import app
from charnn.data import catalog

runner = CliRunner()
SMALL = ["--hidden", "16", "--embed", "8", "--layers", "1", "--batch-size", "4", "--seq-len", "16", "--device", "cpu",
         "--save-every-secs", "0", "--quiet"]
RUN_FILES = ("best.pt", "last.pt", "config.json", "metrics.jsonl")


@pytest.fixture
def umask():
    """set(mask): the process umask for this test, restored after it."""
    old = os.umask(0o022)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, want", [(0o022, 0o644), (0o007, 0o660)])
def test_every_file_a_training_run_writes_follows_the_umask(tmp_path, umask, mask, want):
    corpus = tmp_path / "text.txt"
    corpus.write_text(make_text(60, seed=9), encoding="utf-8")
    umask(mask)
    r = runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path / "runs"), "--max-steps", "4",
                            "--eval-every", "2", *SMALL])
    assert r.exit_code == 0, r.stderr
    run = tmp_path / "runs" / "text"
    assert {name: oct(mode(run / name)) for name in RUN_FILES} == {name: oct(want) for name in RUN_FILES}
    # a resumed run rewrites them (last.pt, metrics.jsonl): still the same mode
    r = runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path / "runs"), "--resume", "--max-steps", "6",
                            "--quiet"])
    assert r.exit_code == 0, r.stderr
    assert {name: oct(mode(run / name)) for name in RUN_FILES} == {name: oct(want) for name in RUN_FILES}


def test_a_downloaded_corpus_follows_the_umask(tmp_path, umask, monkeypatch):
    monkeypatch.setenv("CHARNN_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src.txt"
    src.write_text(make_text(20), encoding="utf-8")
    umask(0o022)
    path = catalog.fetch({"name": "local", "url": src.as_uri(), "sha256": None, "size": None})
    assert path.read_bytes() == src.read_bytes() and mode(path) == 0o644


def test_a_compiled_kernel_library_follows_the_umask(tmp_path, umask, monkeypatch):
    """mkstemp's 0600 plus the linker's x bits: 0711, which other users of a shared CHARNN_CACHE could not load."""
    import shutil

    from charnn.models import native
    if not shutil.which(os.environ.get("CC") or "cc"):
        pytest.skip("no C compiler")
    monkeypatch.setenv("CHARNN_CACHE", str(tmp_path / "cache"))
    umask(0o022)
    assert mode(native._build()) == 0o755
