"""Corpora of many files, streamed encoding and its cache."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_text, one_line_error
from typer.testing import CliRunner

from charnn.cli import app
from charnn.config import TrainConfig
from charnn.data import encode, sources
from charnn.data.batches import split_text
from charnn.data.cache import id_dtype
from charnn.data.corpus import Corpus, load_corpus
from charnn.data.encode import prepare, prepare_corpus
from charnn.data.sources import SEPARATOR, SourceFile, find_files
from charnn.errors import CharnnError
from charnn.text.tokenizer import CharTokenizer

CHAR = {"kind": "char", "vocab_size": None}


def forbid_encoding(monkeypatch):
    """From here on, encoding a corpus (not finding it in the cache) fails with "encoded again"."""
    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded again")

    monkeypatch.setattr(encode, "_build", no_encoding)


def _tree(root):
    (root / "b").mkdir(parents=True)
    (root / "a.py").write_text("print('açé')\n", encoding="utf-8")
    (root / "b" / "c.py").write_text("x = 'çé'\n", encoding="utf-8")
    (root / "b" / "notes.txt").write_text("notes\n", encoding="utf-8")
    (root / "b" / "image.py").write_bytes(b"\x89PNG\x00\x00binary")
    (root / "b" / "latin.py").write_bytes("caf\xe9\n".encode("latin-1"))
    (root / ".git").mkdir()
    (root / ".git" / "config.py").write_text("hidden\n", encoding="utf-8")
    return root


def test_directories_are_walked_sorted_filtered_and_binary_files_skipped(tmp_path):
    root = _tree(tmp_path / "src")
    skipped = []
    files = find_files([str(root)], "*.py", lambda p, why: skipped.append((p, why)))
    assert [f.path.relative_to(root).as_posix() for f in files] == ["a.py", "b/c.py", "b/latin.py"]
    assert all(f.optional for f in files)
    assert skipped == [(str(root / "b" / "image.py"), sources.BINARY)]
    everything = find_files([str(root)])
    assert [f.path.name for f in everything] == ["a.py", "c.py", "latin.py", "notes.txt"]
    # an explicit file comes first, once, even when a folder also holds it
    again = find_files([str(root / "b" / "notes.txt"), str(root)])
    assert [f.path.name for f in again] == ["notes.txt", "a.py", "c.py", "latin.py"] and not again[0].optional


def test_undecodable_files_in_a_folder_are_skipped_with_a_note_and_the_rest_joined(tmp_path):
    root = _tree(tmp_path / "src")
    events = []
    corpus = load_corpus([str(root)], glob="*.py", on_event=lambda k, i: events.append((k, i)))
    data = prepare_corpus(corpus, TrainConfig(val_frac=0.2), on_event=lambda k, i: events.append((k, i)))
    skips = [i["path"] for k, i in events if k == "corpus_skip"]
    assert skips == [str(root / "b" / "image.py"), str(root / "b" / "latin.py")]
    text = "print('açé')\n" + SEPARATOR + "x = 'çé'\n"
    train, val = split_text(text, 0.2)
    tok = data.tokenizer
    assert tok.decode(data.train_ids.tolist()) == train and tok.decode(data.val_ids.tolist()) == val
    assert data.skipped == [(str(root / "b" / "latin.py"), "is not valid utf-8: bad byte 0xe9 at offset 3")]


def test_an_explicit_undecodable_file_is_an_error(tmp_path):
    bad = tmp_path / "latin.txt"
    bad.write_bytes("caf\xe9 ".encode("latin-1") * 10)
    with pytest.raises(CharnnError, match="not valid utf-8"):
        prepare_corpus(load_corpus(str(bad)), TrainConfig())


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64])
def test_streamed_encoding_matches_encoding_the_whole_text(tmp_path, monkeypatch, block):
    """Tiny read blocks cut UTF-8 sequences apart; the ids must not change, nor the nanoGPT-style split."""
    monkeypatch.setattr(sources, "BLOCK_BYTES", block)
    monkeypatch.setattr(sources, "BLOCK_CHARS", block)
    monkeypatch.setattr(sources.read_chunks, "__defaults__", (block,))
    text = "héllo wörld ✓ 😀 naïve\n" * 7 + "tail ½\n"
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    for parts in ([SourceFile(path, False)], [text]):
        data = prepare(parts, "utf-8", {"val_frac": 0.25}, CHAR)
        train, val = split_text(text, 0.25)
        ref = CharTokenizer.build(train)
        assert data.tokenizer.chars == ref.chars
        assert data.train_ids.numpy().tolist() == ref.encode(train).tolist()
        assert np.asarray(data.val_ids).tolist() == ref.encode(val).tolist()
        assert (data.train_chars, data.val_chars) == (len(train), len(val))


@pytest.mark.parametrize("block", [1, 2, 64, sources.BLOCK_BYTES])
def test_each_files_byte_order_mark_is_left_out(tmp_path, monkeypatch, block):
    """Windows editors begin a UTF-8 file with a BOM; it was read as a character (in the vocabulary, and drawn
    after every file's separator). Each file's leading one is left out, however the reads cut its three bytes;
    a BOM inside the text stays (it is the text's)."""
    monkeypatch.setattr(sources.read_chunks, "__defaults__", (block,))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("the cat\n" * 5, encoding="utf-8-sig")
    (tmp_path / "d" / "b.txt").write_text("A DOG\ufeff\n" * 5, encoding="utf-8-sig")
    data = prepare_corpus(load_corpus(str(tmp_path / "d")), TrainConfig(val_frac=0.1))
    text = "the cat\n" * 5 + SEPARATOR + "A DOG\ufeff\n" * 5
    train, val = split_text(text, 0.1)
    assert data.tokenizer.decode(data.train_ids.tolist()) == train
    assert data.tokenizer.decode(np.asarray(data.val_ids).tolist()) == val


def test_ids_are_compact_and_unseen_validation_characters_are_counted(tmp_path):
    text = "abcabcabc" * 10 + "xyzzy"
    data = prepare([text], "utf-8", {"val_frac": 0.1}, CHAR)
    assert data.train_ids.dtype == torch.uint8 and data.val_ids.dtype == np.uint8
    train, val = split_text(text, 0.1)  # val is "cabcxyzzy": x, y, z, z, y are not in the training text
    assert data.val_unknown == sum(c not in train for c in val) == 5
    assert (np.asarray(data.val_ids) == 0).sum() == 5
    wide = "".join(chr(0x4E00 + i) for i in range(300)) * 3
    assert prepare([wide], "utf-8", {"val_frac": 0.1}, CHAR).val_ids.dtype == np.uint16
    assert id_dtype(256) == np.uint8 and id_dtype(257) == np.uint16 and id_dtype(70000) == np.uint32


def test_the_second_run_reads_the_cache_and_new_content_gets_a_new_key(tmp_path, monkeypatch):
    path = tmp_path / "c.txt"
    path.write_text(make_text(50), encoding="utf-8")
    part = [SourceFile(path, False)]
    first = prepare(part, "utf-8", {"val_frac": 0.1}, CHAR)
    assert not first.cached

    forbid_encoding(monkeypatch)
    second = prepare(part, "utf-8", {"val_frac": 0.1}, CHAR)
    assert second.cached and second.path == first.path
    assert second.train_ids.tolist() == first.train_ids.tolist() and second.tokenizer.chars == first.tokenizer.chars
    with pytest.raises(AssertionError, match="encoded again"):  # another split is another entry
        prepare(part, "utf-8", {"val_frac": 0.2}, CHAR)
    path.write_text(make_text(50, seed=1), encoding="utf-8")  # same size, other content
    with pytest.raises(AssertionError, match="encoded again"):
        prepare(part, "utf-8", {"val_frac": 0.1}, CHAR)


def test_a_corpus_written_to_while_it_is_encoded_is_not_cached_under_its_old_hash(tmp_path):
    """The key is the hash of the bytes before encoding; a file appended to meanwhile was encoded with the new bytes
    and cached under the old hash (a later run of the old content trained on text the file no longer held)."""
    path = tmp_path / "c.txt"
    path.write_text(make_text(50) + "written to while it is read\n", encoding="utf-8")  # (not cached yet)
    part = [SourceFile(path, False)]

    def append(kind, info):
        if kind == "data" and info.get("stage") == "encode":
            with path.open("a", encoding="utf-8") as f:
                f.write("more text\n" * 30)
    with pytest.raises(CharnnError, match="changed while it was read; run again"):
        prepare(part, "utf-8", {"val_frac": 0.1}, CHAR, on_event=append)
    data = prepare(part, "utf-8", {"val_frac": 0.1}, CHAR)  # (it stopped changing: encoded now, not found cached)
    assert not data.cached and data.train_chars + data.val_chars == len(path.read_text(encoding="utf-8"))


def test_a_build_killed_midway_leaves_no_folder_for_good(tmp_path):
    """A process killed while it encoded left its temporary folder in the cache forever (65 MB of a 138 MB corpus):
    the next build sweeps those nobody is building (the lock of a build in progress keeps its own)."""
    import fcntl

    from charnn.data import cache

    path = tmp_path / "c.txt"
    path.write_text(make_text(50) + "a build killed midway\n", encoding="utf-8")  # (not cached yet)
    folder = cache.entry_dir("x").parent
    (folder / ".locks").mkdir(parents=True, exist_ok=True)
    stale, busy, no_lock = (folder / f".{k * 32}-tmp1234" for k in "abc")
    for d in (stale, busy, no_lock):
        d.mkdir()
        (d / "ids.bin").write_bytes(b"\0" * 1000)
    for k in "ab":
        (folder / ".locks" / (k * 32)).touch()
    with open(folder / ".locks" / ("b" * 32)) as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process's build of b... in progress
        prepare([SourceFile(path, False)], "utf-8", {"val_frac": 0.1}, CHAR)
    assert not stale.exists() and busy.exists() and no_lock.exists()  # (no lock file: it cannot be told; kept)
    assert not [p for p in folder.glob(".*-*") if p not in (busy, no_lock)]


def test_a_checkpoint_tokenizer_encodes_new_text_with_its_own_vocabulary(tmp_path):
    state = CharTokenizer(list("ab\n")).state()
    data = prepare(["abcab\n" * 20], "utf-8", {"val_frac": 0.1}, {"state": state})
    assert data.tokenizer.chars == ["\n", "a", "b"]
    assert (data.train_ids == 0).sum().item() == 18  # the c's of the training split are unknown too


def test_fixed_split_and_a_separate_validation_file(tmp_path):
    text = "0123456789" * 10
    data = prepare([text], "latin-1", {"train": 60, "val": 25}, CHAR)
    assert (data.train_chars, data.val_chars) == (60, 25)
    assert data.tokenizer.decode(np.asarray(data.val_ids).tolist()) == text[60:85]
    val = tmp_path / "val.txt"
    val.write_text("98765\n", encoding="utf-8")
    data = prepare([text], "utf-8", {"val_frac": 0.1}, CHAR, val_parts=[SourceFile(val, False)])
    assert data.train_chars == 100 and data.tokenizer.decode(np.asarray(data.val_ids).tolist()) == "98765\ufffd"
    with pytest.raises(CharnnError, match="validation text has 1 character; it needs"):
        prepare(["ab"], "utf-8", {"val_frac": 0.5}, CHAR)


def test_subword_encoding_in_line_chunks_gives_the_text_back(tmp_path, monkeypatch):
    monkeypatch.setattr(encode, "SPM_CHARS", 300)
    text = make_text(300, seed=4)
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    data = prepare([SourceFile(path, False)], "utf-8", {"val_frac": 0.1}, {"kind": "bpe", "vocab_size": 300})
    train, val = split_text(text, 0.1)
    tok = data.tokenizer
    assert tok.kind == "bpe" and data.train_ids.dtype.itemsize == 2
    assert tok.decode(data.train_ids.tolist()) == train and tok.decode(np.asarray(data.val_ids).tolist()) == val
    assert data.train_chars == len(train)


def test_train_takes_folders_and_glob_from_the_command_line(tmp_path, monkeypatch):
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    for i in range(3):
        (root / "sub" / f"part{i}.txt").write_text(make_text(60, seed=i), encoding="utf-8")
    (root / "skip.md").write_text("# not this\n" * 500, encoding="utf-8")
    (root / "blob.txt").write_bytes(b"\x00\x01binary" * 10)
    runner = CliRunner()
    args = ["train", str(root), "--glob", "*.txt", "--out", str(tmp_path / "runs"), "--max-steps", "3",
            "--batch-size", "4", "--seq-len", "16", "--hidden", "16", "--embed", "8", "--device", "cpu"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.stderr
    assert "note: skipped" in r.stderr and "blob.txt" in r.stderr and r.stdout == ""
    config = json.loads((tmp_path / "runs" / "src" / "config.json").read_text())
    assert config["corpus"] == str(root)
    text = SEPARATOR.join(make_text(60, seed=i) for i in range(3))
    assert "#" not in text and f"{int(len(text) * 0.9):,} train" in r.stderr  # skip.md stayed out

    files = ["train", str(root / "sub" / "part0.txt"), *args[2:]]  # --glob with only files: it was ignored
    r = runner.invoke(app, files)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "--glob '*.txt' picks files inside folders" in r.stderr

    forbid_encoding(monkeypatch)  # the second run must come from the cache
    r2 = runner.invoke(app, args + ["--name", "again"])
    assert r2.exit_code == 0, r2.stderr


def test_no_corpus_means_the_builtin_one():
    corpus = load_corpus(None)
    assert isinstance(corpus, Corpus) and corpus.text is not None and corpus.name == "stdlib"


def test_periodic_validation_scores_at_most_eval_tokens(tmp_path):
    from charnn.config import ModelConfig
    from charnn.errors import ConfigError
    from charnn.training.trainer import Trainer

    text = make_text(300)
    model = ModelConfig(vocab_size=1, hidden=16, embed=8)
    capped = Trainer(Corpus(text, "t", "t"), model, TrainConfig(out=str(tmp_path), name="capped", eval_tokens=500,
                                                                device="cpu", batch_size=4, seq_len=16))
    full = Trainer(Corpus(text, "t", "t"), ModelConfig(vocab_size=1, hidden=16, embed=8),
                   TrainConfig(out=str(tmp_path), name="full", eval_tokens=0, device="cpu", batch_size=4,
                               seq_len=16))  # two live trainers need two run folders (one training per folder)
    _, val = split_text(text, 0.1)
    assert len(full.val_ids) == len(val) and len(capped.val_ids) == 500
    assert np.asarray(capped.val_ids).tolist() == np.asarray(full.val_ids)[:500].tolist()
    with pytest.raises(ConfigError, match="--eval-tokens"):
        TrainConfig(eval_tokens=-1).validate()


def test_a_second_writer_of_an_entry_keeps_the_first_one(tmp_path):
    """Two torchrun ranks encode the same corpus at once: the later commit must not pull the entry away."""
    from charnn.data import cache
    first = prepare(["abc\n" * 50], "utf-8", {"val_frac": 0.1}, CHAR)
    inode = (first.path / "ids.bin").stat().st_ino
    late = cache.EntryWriter(first.path.name)
    late.ids.write(b"\x01\x02")
    late.commit({"dtype": "uint8", "tokens": 2})
    assert (first.path / "ids.bin").stat().st_ino == inode
    assert not [p for p in first.path.parent.iterdir() if p.name.startswith(f".{first.path.name}")]  # no temp left


def test_a_resumed_run_finds_the_entry_its_first_run_wrote(tmp_path, monkeypatch):
    path = tmp_path / "r.txt"
    path.write_text(make_text(50), encoding="utf-8")
    part = [SourceFile(path, False)]
    first = prepare(part, "utf-8", {"val_frac": 0.1}, CHAR)
    other = prepare(["XYZ" + make_text(20, seed=9)], "utf-8", {"val_frac": 0.1}, CHAR).tokenizer

    forbid_encoding(monkeypatch)
    resumed = prepare(part, "utf-8", {"val_frac": 0.1}, {"state": first.tokenizer.state(), "fresh": CHAR})
    assert resumed.cached and resumed.path == first.path
    assert resumed.train_ids.tolist() == first.train_ids.tolist()
    with pytest.raises(AssertionError, match="encoded again"):  # another vocabulary: not those ids
        prepare(part, "utf-8", {"val_frac": 0.1}, {"state": other.state(), "fresh": CHAR})


def test_processes_encoding_one_corpus_at_once_take_turns_and_encode_it_once(tmp_path):
    """Like torchrun ranks starting together: one encodes while the other waits, then reuses its entry."""
    import threading

    path = tmp_path / "big.txt"
    path.write_text(make_text(40_000), encoding="utf-8")  # a few MB: the two would overlap without the lock
    start, results, events = threading.Barrier(2), [], []

    def rank():
        start.wait()
        on_event = lambda kind, info: events.append(info["stage"])  # noqa: E731
        results.append(prepare([SourceFile(path, False)], "utf-8", {"val_frac": 0.1}, CHAR, on_event=on_event))

    threads = [threading.Thread(target=rank) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.cached for r in results) == [False, True]
    assert events.count("encode") == 1 and events.count("wait") <= 1  # the one that waited (if it came first) is told
    assert results[0].path == results[1].path and torch.equal(results[0].train_ids, results[1].train_ids)


def test_a_process_that_must_wait_for_the_build_lock_is_told_so_and_then_let_in():
    import threading

    from charnn.data import cache
    told, inside = threading.Event(), threading.Event()

    def other():
        with cache.build_lock("k" * 16, on_wait=told.set):
            inside.set()

    with cache.build_lock("k" * 16):
        t = threading.Thread(target=other)
        t.start()
        assert told.wait(10) and not inside.is_set()  # it waits while the lock is held...
    t.join(10)
    assert inside.is_set()  # ...and gets in once it is released


def test_an_unusable_cache_folder_is_one_line_naming_charnn_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x", encoding="utf-8")
    monkeypatch.setenv("CHARNN_CACHE", str(blocker))  # a file where the cache folder should be
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(40), encoding="utf-8")
    r = CliRunner().invoke(app, ["train", str(corpus), "--max-steps", "1", "--out", str(tmp_path / "out"), "-q"])
    one_line_error(r, 1, "set CHARNN_CACHE to a writable folder")


def test_a_pipe_or_a_device_is_refused_in_one_line_and_a_run_name_is_one_folder(tmp_path):
    """A FIFO, /dev/stdin or /dev/zero reads once (or never ends) and has no size: said, not called "empty"."""
    import os

    from charnn.errors import ConfigError
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (str(fifo), "/dev/zero"):
        with pytest.raises(CharnnError, match="a pipe or a device, not a file"):
            find_files([path])
    for name in ("a/b", "..", ".", ""):
        with pytest.raises(ConfigError, match="--name"):
            TrainConfig(name=name).validate()
    TrainConfig(name="run-1.b").validate()


def test_a_folders_broken_links_pipes_and_unreadable_files_are_skipped_with_a_note(tmp_path):
    import os
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text(make_text(2))
    (folder / "b.txt").symlink_to(tmp_path / "gone.txt")
    os.mkfifo(folder / "c.txt")  # (opening it would wait for a writer forever)
    skipped = []
    found = find_files([str(folder)], on_skip=lambda path, why: skipped.append((Path(path).name, why)))
    assert [f.path.name for f in found] == ["a.txt"]
    assert [name for name, _ in skipped] == ["b.txt", "c.txt"] and all("not a file" in w for _, w in skipped)


def test_a_runs_folder_is_never_read_as_text(tmp_path):
    """`charnn train .` in a project trained on ./checkpoints/RUN/config.json and metrics.jsonl too (the .pt files
    were skipped as binary), and `charnn train checkpoints/RUN` (or `--resume checkpoints/RUN`) on them alone."""
    project = tmp_path / "project"
    (project / "checkpoints" / "run").mkdir(parents=True)
    (project / "my.txt").write_text(make_text(30, seed=1), encoding="utf-8")
    run = project / "checkpoints" / "run"
    (run / "config.json").write_text('{"corpus": "my.txt"}', encoding="utf-8")
    (run / "metrics.jsonl").write_text('{"step": 1}\n', encoding="utf-8")
    (run / "last.pt").write_bytes(b"PK\x03\x04\x00\x00")
    skipped = []
    found = find_files([str(project)], on_skip=lambda path, why: skipped.append((path, why)))
    assert [f.path.name for f in found] == ["my.txt"]
    assert skipped == [(str(run) + os.sep, "is a charnn run's folder (checkpoints and logs, not text)")]
    r = CliRunner().invoke(app, ["train", str(run), "--max-steps", "1", "--out", str(tmp_path / "out")])
    one_line_error(r, 2, "is a charnn run's folder", "--name run --resume", "--init-from")
    assert not (tmp_path / "out").exists()


def test_an_unreadable_folder_inside_a_corpus_is_named_in_a_note(tmp_path, monkeypatch):
    """A subfolder that cannot be listed was left out without a word (an unreadable file had its note)."""
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "a.txt").write_text(make_text(20), encoding="utf-8")
    (tmp_path / "secret").mkdir()
    real = os.scandir

    def scandir(path="."):
        if str(path).endswith("secret"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)
    skipped = []
    found = find_files([str(tmp_path)], on_skip=lambda path, why: skipped.append((path, why)))
    assert [f.path.name for f in found] == ["a.txt"]
    assert skipped == [(str(tmp_path / "secret") + os.sep, "cannot be read (Permission denied)")]


def test_a_full_disk_with_space_left_says_inodes():
    """ENOSPC where space is free (tmpfs nr_inodes, a filesystem of many small files) said "free some space"."""
    import errno
    from unittest import mock

    from charnn.data import files
    e = OSError(errno.ENOSPC, "No space left on device")
    with mock.patch.object(files, "free_space", return_value=10_300_000), \
            mock.patch.object(files, "free_inodes", return_value=0):
        message = str(files.write_failed(e, Path("/x/metrics.jsonl"), 4_000, hint="choose another --out"))
    assert "10.3 MB free, but no free inodes" in message and "it needs" not in message
    with mock.patch.object(files, "free_space", return_value=1_000), mock.patch.object(files, "free_inodes",
                                                                                       return_value=50):
        assert "it needs about 4.0 kB, 1.0 kB free" in str(files.write_failed(e, Path("/x/m"), 4_000))


@pytest.mark.parametrize("tokenizer, damage", [("char", "ids"), ("bpe", "tokenizer")])
def test_a_damaged_cache_entry_is_built_again(tmp_path, monkeypatch, tokenizer, damage):
    """Bytes of ids.bin changed past the vocabulary were torch's IndexError in training; a bpe entry whose
    tokenizer.model was gone (or unreadable) failed every run, naming the file or blaming the checkpoint."""
    monkeypatch.setenv("CHARNN_CACHE", str(tmp_path / "cache"))
    (tmp_path / "t.txt").write_text(make_text(400, seed=4), encoding="utf-8")
    corpus = load_corpus([str(tmp_path / "t.txt")])
    cfg = TrainConfig(val_frac=0.1, tokenizer=tokenizer, vocab_size=300 if tokenizer == "bpe" else None)
    first = prepare_corpus(corpus, cfg)
    ids = first.train_ids.clone()  # (the memory map sees the damage too)
    if damage == "ids":
        with open(first.path / "ids.bin", "r+b") as f:
            f.seek(100)
            f.write(b"\xff" * 50)
        later = (first.path / "meta.json").stat().st_mtime + 1  # (written later than the entry, as damage is;
        os.utime(first.path / "ids.bin", (later, later))  # the clock's tick may not have moved in this test)
    else:
        (first.path / "tokenizer.model").unlink()
    again = prepare_corpus(corpus, cfg)
    assert not again.cached and int(again.train_ids.numpy().max()) < again.tokenizer.vocab_size
    assert torch.equal(again.train_ids, ids)
