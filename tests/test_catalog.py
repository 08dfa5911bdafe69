"""The corpus catalog, downloading from a local HTTP server on 127.0.0.1 (never the internet)."""

import hashlib
import io
import json
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import free_port, make_text, one_line_error
from typer.testing import CliRunner

from charnn.cli import app
from charnn.data import catalog
from charnn.data.cache import cache_root
from charnn.data.corpus import load_corpus
from charnn.errors import CharnnError

TEXT = make_text(200, seed=5).encode("utf-8")
ZIPPED = io.BytesIO()
with zipfile.ZipFile(ZIPPED, "w") as _zf:
    _zf.writestr("bytes8", bytes(range(1, 256)) * 40)
ZIPPED = ZIPPED.getvalue()
PAIRS = "".join(f"{w}\t{w[::-1]}\n" for w in sorted(set(make_text(60, seed=6).split()))).encode("utf-8")


class Handler(BaseHTTPRequestHandler):
    requests = []

    def do_GET(self):
        Handler.requests.append(self.path)
        body = ZIPPED if self.path.endswith(".zip") else PAIRS if self.path.endswith(".tsv") else TEXT
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path.startswith("/drop"):  # the connection dies half way through the body
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def local_catalog(server, tmp_path, monkeypatch):
    monkeypatch.setenv("CHARNN_CACHE", str(tmp_path / "cache"))
    entries = [
        {"name": "tiny", "url": f"{server}/tiny.txt", "sha256": hashlib.sha256(TEXT).hexdigest(), "size": len(TEXT),
         "licence": "test", "description": "a good download"},
        {"name": "bad-sum", "url": f"{server}/bad.txt", "sha256": "0" * 64, "size": len(TEXT),
         "licence": "test", "description": "a checksum that does not match"},
        {"name": "dropped", "url": f"{server}/drop.txt", "sha256": hashlib.sha256(TEXT).hexdigest(),
         "size": len(TEXT), "licence": "test", "description": "the server hangs up half way"},
        {"name": "offline", "url": f"http://127.0.0.1:{free_port()}/x.txt", "sha256": None, "size": None,
         "licence": "test", "description": "nobody listens"},
        {"name": "bytes8", "url": f"{server}/bytes8.zip", "sha256": hashlib.sha256(ZIPPED).hexdigest(),
         "size": len(ZIPPED), "member": "bytes8", "encoding": "latin-1", "split": {"train": 8000, "val": 1000},
         "licence": "test", "description": "a zip archive, byte-level, with a fixed split"},
        {"name": "pairs", "url": f"{server}/pairs.tsv", "sha256": hashlib.sha256(PAIRS).hexdigest(),
         "size": len(PAIRS), "licence": "test", "description": "input<TAB>target lines"},
    ]
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"corpora": entries}), encoding="utf-8")
    monkeypatch.setenv("CHARNN_CATALOG", str(path))
    Handler.requests.clear()
    return {e["name"]: e for e in entries}


def _leftovers():
    return sorted(p.name for p in (cache_root() / "corpora").rglob("*") if p.is_file())


def test_a_good_download_is_verified_kept_and_fetched_only_once(local_catalog):
    events = []
    path = catalog.fetch(local_catalog["tiny"], lambda kind, info: events.append(info["stage"]))
    assert path.read_bytes() == TEXT and _leftovers() == ["tiny.txt"]
    assert events[0] == "start" and "progress" in events and events[-1] == "done"
    assert catalog.fetch(local_catalog["tiny"]) == path and Handler.requests == ["/tiny.txt"]
    assert [e["downloaded"] for e in catalog.listing()] == [True, False, False, False, False, False]


def test_a_checksum_mismatch_keeps_nothing(local_catalog):
    with pytest.raises(CharnnError, match="checksum mismatch for bad-sum.*pass the file.s path instead of .bad-sum."):
        catalog.fetch(local_catalog["bad-sum"])
    assert _leftovers() == []


def test_a_dropped_connection_leaves_no_half_file(local_catalog):
    with pytest.raises(CharnnError, match="dropped|broke off"):
        catalog.fetch(local_catalog["dropped"])
    assert _leftovers() == [] and not catalog.is_downloaded(local_catalog["dropped"])


def test_offline_is_one_clear_error(local_catalog):
    with pytest.raises(CharnnError, match="could not download offline .*pass the file.s path instead of .offline."):
        catalog.fetch(local_catalog["offline"])
    r = CliRunner().invoke(app, ["train", "offline", "--max-steps", "1"])
    one_line_error(r, 1, "could not download offline", "Connection refused")


def test_zip_archives_are_unpacked_and_keep_their_fixed_split(local_catalog):
    corpus = load_corpus("bytes8")
    assert corpus.encoding == "latin-1" and corpus.split == {"train": 8000, "val": 1000}
    assert corpus.files[0].path.read_bytes() == bytes(range(1, 256)) * 40 and _leftovers() == ["bytes8"]


def test_cli_trains_on_a_catalog_name_and_lists_what_is_downloaded(local_catalog, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["corpora", "--json"])
    assert r.exit_code == 0 and [c["downloaded"] for c in json.loads(r.stdout)["corpora"]] == [False] * 6
    args = ["train", "bytes8", "--out", str(tmp_path / "runs"), "--max-steps", "2", "--batch-size", "4",
            "--seq-len", "16", "--hidden", "16", "--embed", "8", "--device", "cpu"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.stderr
    assert "downloading bytes8" in r.stderr and "8,000 train / 1,000 val tokens" in r.stderr
    assert (tmp_path / "runs" / "bytes8" / "best.pt").is_file()
    r = runner.invoke(app, args + ["--name", "again"])
    assert r.exit_code == 0 and "downloading" not in r.stderr and Handler.requests == ["/bytes8.zip"]
    r = runner.invoke(app, ["corpora"])
    row = next(line for line in r.stdout.splitlines() if line.startswith("bytes8"))
    assert " yes " in row


def test_val_file_pairs_and_eval_take_catalog_names(local_catalog, tmp_path):
    """--val-file, a --pairs corpus and `eval`'s files name catalog entries as a plain corpus does."""
    runner = CliRunner()
    small = ["--max-steps", "2", "--hidden", "16", "--embed", "8", "--layers", "1", "--device", "cpu"]
    r = runner.invoke(app, ["train", "pairs", "--pairs", "--val-file", "pairs", "--batch-size", "4",
                            "--out", str(tmp_path / "runs")] + small)
    assert r.exit_code == 0, r.stderr
    assert "downloading pairs" in r.stderr and Handler.requests == ["/pairs.tsv"]
    r = runner.invoke(app, ["eval", str(tmp_path / "runs" / "pairs" / "best.pt"), "pairs", "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["pairs"] == PAIRS.count(b"\n") and Handler.requests == ["/pairs.tsv"]
    r = runner.invoke(app, ["train", "pairs", "--val-file", "tiny", "--seq-len", "8", "--batch-size", "2",
                            "--out", str(tmp_path / "lm")] + small)
    assert r.exit_code == 0, r.stderr
    assert "downloading tiny" in r.stderr and Handler.requests == ["/pairs.tsv", "/tiny.txt"]


def test_eval_scores_a_split_corpus_on_its_test_split_and_val_file_refuses_it(local_catalog, tmp_path):
    """bytes8 (latin-1, 8,000 train / 1,000 val of 10,200 characters) scores as its last 1,200 characters,
    read as latin-1, not as the whole file in UTF-8; given to --val-file it is one error line."""
    runner = CliRunner()
    small = ["--max-steps", "2", "--hidden", "16", "--embed", "8", "--layers", "1", "--device", "cpu",
             "--batch-size", "4", "--seq-len", "16", "--out", str(tmp_path / "runs")]
    assert runner.invoke(app, ["train", "bytes8"] + small).exit_code == 0
    r = runner.invoke(app, ["eval", str(tmp_path / "runs" / "bytes8"), "bytes8", "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["chars"] == 255 * 40 - 9000 and "scoring its test split" in r.stderr
    assert json.loads(r.stdout)["unknown_chars"] == 0  # read as latin-1: every byte a character the model knows
    (tmp_path / "notes.txt").write_bytes(TEXT)
    r = runner.invoke(app, ["train", str(tmp_path / "notes.txt"), "--val-file", "bytes8"] + small)
    one_line_error(r, 1, "has its own encoding and train/val/test split")


def test_eval_of_the_newest_run_takes_catalog_names_as_its_first_files(local_catalog, tmp_path, monkeypatch):
    """`charnn eval NAME NAME ...` (no checkpoint: the newest run) with three or more catalog names scores them (the
    first was refused as "neither a checkpoint nor an input file", not being a path)."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["train", "bytes8", "--max-steps", "2", "--hidden", "16", "--embed", "8", "--layers", "1",
                            "--device", "cpu", "--batch-size", "4", "--seq-len", "16"])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(app, ["eval", "bytes8", "tiny", "bytes8", "--json"])
    assert r.exit_code == 0, r.stderr
    assert len(json.loads(r.stdout)["files"]) == 3


def test_a_typo_of_a_catalog_name_is_one_line_that_suggests_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["train", "tinyshakespear"])
    one_line_error(r, 1, "does not exist", "did you mean 'tinyshakespeare'")
    r = CliRunner().invoke(app, ["train", "zzqx-nothing-like-it.txt"])
    assert r.exit_code == 1 and "did you mean" not in r.stderr


def test_a_missing_file_is_named_when_the_catalog_cannot_be_read(tmp_path, monkeypatch):
    """A corpus path that does not exist is the error, not the catalog its name was checked against for a typo (an
    install without the catalog answered every mistyped path with "cannot read the corpus catalog")."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHARNN_CATALOG", str(tmp_path / "no-catalog.json"))
    one_line_error(CliRunner().invoke(app, ["train", "nosuch.txt"]), 1, "corpus 'nosuch.txt' does not exist")


def test_the_cache_follows_xdg_cache_home_below_charnn_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("CHARNN_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "charnn"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # (the XDG spec: a relative path is to be ignored)
    assert cache_root() == tmp_path / "home" / ".cache" / "charnn"
    (tmp_path / "home" / ".cache" / "charnn").mkdir(parents=True)  # a cache from before XDG_CACHE_HOME was read
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "home" / ".cache" / "charnn"  # kept (not its corpora made again elsewhere)
    (tmp_path / "xdg" / "charnn").mkdir(parents=True)
    assert cache_root() == tmp_path / "xdg" / "charnn"
    monkeypatch.delenv("HOME")
    monkeypatch.setattr("pathlib.Path.home", lambda: (_ for _ in ()).throw(RuntimeError("no home")))
    assert cache_root() == tmp_path / "xdg" / "charnn"  # (no home folder, but a cache folder all the same)
    monkeypatch.setenv("CHARNN_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


def test_a_malformed_catalog_is_one_line(tmp_path):
    for content in ("[]", '{"corpora": 5}', '{"corpora": [{"name": 3}]}', '{"corpora": ["x"]}', "not json"):
        (tmp_path / "cat.json").write_text(content)
        with pytest.raises(CharnnError, match="corpus catalog") as e:
            catalog.load_catalog(tmp_path / "cat.json")
        assert "indices" not in str(e.value) and ("is not {" in str(e.value) or content == "not json")  # (Python's
        # "list indices must be integers or slices, not str" for "[]")
    (tmp_path / "cat.json").write_text('{"corpora": [{"name": "x"}]}')  # (`charnn corpora`: a KeyError traceback)
    with pytest.raises(CharnnError, match="entry 'x' has no \"url\""):
        catalog.load_catalog(tmp_path / "cat.json")
    for field, value in (("size", '"big"'), ("size", "NaN"), ("member", "5"), ("description", "[1]")):
        (tmp_path / "cat.json").write_text(f'{{"corpora": [{{"name": "x", "url": "https://e.org/x.txt", '
                                           f'"{field}": {value}}}]}}')  # (TypeErrors, or NaN in --json)
        with pytest.raises(CharnnError, match=f"entry 'x''s \"{field}\" must be"):
            catalog.load_catalog(tmp_path / "cat.json")
    (tmp_path / "cat.json").write_text('{"corpora": [{"name": "mine", "url": "https://e.org/m.txt"}]}')
    assert [e["name"] for e in catalog.load_catalog(tmp_path / "cat.json")] == ["mine"]  # the rest is optional
