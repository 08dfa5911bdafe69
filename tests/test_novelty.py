"""`charnn novelty`: the suffix-array index against brute force, the report through the CLI, the cached index,
stdin, --json, the fallbacks when the cached training text is gone, and one-line errors."""

import json
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, TINY_TRAIN, make_text, one_line_error, subprocess_env
from typer.testing import CliRunner

from charnn.cli import app
from charnn.config import ModelConfig, TrainConfig
from charnn.data import cache, textindex
from charnn.data.corpus import Corpus
from charnn.reports import novelty as report
from charnn.training.trainer import train


def invoke(*args, **kw):
    return CliRunner().invoke(app, [str(a) for a in args], **kw)


def brute_lengths(text: str, sample: str, cap: int):
    """torch-rnn's way: for each sample position, grow the window while it is a substring of the text."""
    out = []
    for i in range(len(sample)):
        n = 0
        while i + n < len(sample) and n < cap and sample[i: i + n + 1] in text:
            n += 1
        out.append(n)
    return out


def test_a_copied_span_is_found_whole_at_its_place(tmp_path):
    marker = "Unique line: forty-odd chars never seen before, really."
    lines = make_text(200, seed=1).splitlines()
    lines.insert(123, marker)
    text = "\n".join(lines) + "\n"
    index = textindex.build_index(tmp_path, [text.encode()])
    span = marker[3:43]  # 40 characters, bracketed below by characters the text lacks
    sample = "Z#" + span + "#Z" + lines[5][:20]
    q = textindex.Query.of(sample)
    lengths, where = textindex.match_lengths(index, q, np.arange(len(sample)), np.full(len(sample), 16))
    i, n, at = textindex.longest_match(index, q, lengths, where, 16)
    assert (i, n) == (2, 40)
    assert textindex.locate(index, at) == (text.index(marker) + 3, 124)


@pytest.mark.parametrize("seed", range(6))
def test_the_index_agrees_with_brute_force(tmp_path, seed):
    rng = random.Random(seed)
    alphabet = ["ab", "ab\n", "aé€😀", "abc "][seed % 4]
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(50, 400)))
    index = textindex.build_index(tmp_path, [text[:37].encode(), text[37:].encode()])  # chunks meet anywhere
    assert index.chars == len(text)
    for _ in range(10):
        sample = "".join(rng.choice(alphabet + "z") for _ in range(rng.randint(1, 80)))
        if rng.random() < 0.5:  # a long copied stretch, so that the cap cuts matches
            a = rng.randrange(len(text))
            sample = sample[:7] + text[a: a + rng.randint(10, 120)] + sample[7:]
        q, cap = textindex.Query.of(sample), rng.choice([1, 4, 16])
        lengths, where = textindex.match_lengths(index, q, np.arange(len(sample)), np.full(len(sample), cap))
        assert list(lengths) == brute_lengths(text, sample, cap)
        i, n, at = textindex.longest_match(index, q, lengths, where, cap)
        assert n == max(brute_lengths(text, sample, 10 ** 6))
        offset, line = textindex.locate(index, at)
        assert text[offset: offset + n] == sample[i: i + n] and line == text[:offset].count("\n") + 1


def test_shares_are_the_windows_found(tmp_path):
    text = make_text(100, seed=2)
    rng = random.Random(5)
    sample = "".join(text[a: a + 30] + "QQ" for a in rng.sample(range(len(text) - 30), 40))
    index = textindex.build_index(tmp_path, [text.encode()])
    lengths, _ = textindex.match_lengths(index, textindex.Query.of(sample), np.arange(len(sample)),
                                         np.full(len(sample), 32))
    for n in (4, 16, 32):
        windows = [sample[i: i + n] for i in range(len(sample) - n + 1)]
        got = report._windows(lengths, n)
        assert (got.windows, got.found) == (len(windows), sum(w in text for w in windows))
    assert report._windows(lengths, 32).found == 0 < report._windows(lengths, 16).found


def test_the_report_through_the_command_line(trained_run, corpus_file, monkeypatch):
    run = trained_run.run_dir
    text = corpus_file.read_text(encoding="utf-8")
    record = torch.load(run / "best.pt", weights_only=True)["data"]
    seen = text[: record["train_chars"]]
    shutil.rmtree(cache.entry_dir(record["cache_entry"]) / "novelty", ignore_errors=True)
    builds = []
    real_build = textindex.build_index
    monkeypatch.setattr(textindex, "build_index", lambda *a: builds.append(a) or real_build(*a))
    sample = "ZQ" + seen[1000:1040] + "QZ" + seen[5:24]  # 63 characters: no 64-window
    (run.parent / "sample.txt").write_text(sample, encoding="utf-8")

    first = invoke("novelty", run, run.parent / "sample.txt", "--json")
    assert first.exit_code == 0, first.stderr
    out = json.loads(first.stdout)
    assert len(builds) == 1 and out["index_built"] and "indexing" in first.stderr
    assert out["train_chars"] == len(seen) == record["train_chars"] and out["sample_chars"] == len(sample)
    span = out["longest"]
    assert (span["length"], span["text"], span["sample_offset"]) == (40, seen[1000:1040], 2)
    assert seen[span["train_offset"]: span["train_offset"] + 40] == span["text"]
    assert span["line"] == seen[: span["train_offset"]].count("\n") + 1 and span["source"] == str(corpus_file)
    for w, n in zip(out["windows"], (16, 32, 64)):
        windows = [sample[i: i + n] for i in range(len(sample) - n + 1)]
        assert (w["n"], w["windows"], w["found"]) == (n, len(windows), sum(x in seen for x in windows))
    assert out["windows"][2] == {"n": 64, "windows": 0, "found": 0, "share": None}

    again = invoke("novelty", run, "-", "--json", input=sample)  # stdin, and the index from the cache
    assert again.exit_code == 0 and len(builds) == 1 and again.stderr == ""
    second = json.loads(again.stdout)
    assert not second["index_built"]
    assert {k: v for k, v in second.items() if "seconds" not in k and k != "index_built"} == \
           {k: v for k, v in out.items() if "seconds" not in k and k != "index_built"}

    table = invoke("novelty", run, run.parent / "sample.txt", "--n", "8")
    assert table.exit_code == 0 and table.stderr == ""
    assert "longest verbatim span: 40 characters, at sample offset 2" in table.stdout
    assert repr(seen[1000:1040]) in table.stdout and "    8 " in table.stdout and "   16 " not in table.stdout


def moved_checkpoint(run_dir, tmp_path, **record) -> str:
    """A copy of the run's checkpoint whose data record says `record` (None: no record at all)."""
    data = torch.load(run_dir / "best.pt", weights_only=True)
    if record.get("drop"):
        data.pop("data")
    else:
        data["data"] = {**data["data"], **record}
    torch.save(data, tmp_path / "moved.pt")
    return str(tmp_path / "moved.pt")


def test_without_the_cached_text_it_asks_for_the_corpus_and_reads_it_again(trained_run, corpus_file, tmp_path):
    run = trained_run.run_dir
    sample = corpus_file.read_text(encoding="utf-8")[200:300]
    ckpt = moved_checkpoint(run, tmp_path, cache_entry="0" * 32)
    one_line_error(invoke("novelty", ckpt, "-", input=sample), 1, "no longer in the cache", "--corpus PATH",
                   str(corpus_file))
    one_line_error(invoke("novelty", moved_checkpoint(run, tmp_path, drop=True), "-", input=sample), 1,
                   "does not record its training text", "--corpus PATH")
    r = invoke("novelty", ckpt, "-", "--corpus", corpus_file, "--json", input=sample)
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["longest"]["length"] == 100 and out["windows"][0]["share"] == 1.0
    assert out["train_chars"] == torch.load(run / "best.pt", weights_only=True)["data"]["train_chars"]
    other = tmp_path / "other.txt"  # not the run's text: refused (it reported 0% copied from the wrong text)
    other.write_text(sample * 3, encoding="utf-8")
    ckpt = moved_checkpoint(run, tmp_path, cache_entry="0" * 32)  # (the record again: moved.pt was rewritten)
    r = invoke("novelty", ckpt, "-", "--corpus", other, input=sample)
    assert r.exit_code == 1 and r.stdout == "" and "Traceback" not in r.stderr, r.stderr
    assert "is not the text" in r.stderr.splitlines()[-1] and "training characters" in r.stderr
    edited = tmp_path / "edited.txt"  # as many characters, one changed: refused too (it gave a wrong answer)
    edited.write_text(corpus_file.read_text(encoding="utf-8").replace("e", "a", 1), encoding="utf-8")
    ckpt = moved_checkpoint(run, tmp_path, cache_entry="0" * 32)
    r = invoke("novelty", ckpt, "-", "--corpus", edited, input=sample)
    assert r.exit_code == 1 and "as many characters, but others" in r.stderr, r.stderr


def test_the_corpus_is_read_again_in_the_runs_own_encoding(tmp_path):
    """A run trained with --encoding latin-1: `novelty --corpus` read its text as utf-8 ("not valid utf-8")."""
    text = make_text(300, seed=4).replace("e", "\u00e9")
    (tmp_path / "l1.txt").write_bytes(text.encode("latin-1"))
    r = invoke("train", tmp_path / "l1.txt", "--encoding", "latin-1", "--out", tmp_path / "runs", "--hidden", "16",
               "--layers", "1", "--max-steps", "2", "--threads", "1", "-q")
    assert r.exit_code == 0, r.stderr
    run = tmp_path / "runs" / "l1"
    assert torch.load(run / "best.pt", weights_only=True)["data"]["encoding"] == "latin-1"
    ckpt = moved_checkpoint(run, tmp_path, cache_entry="0" * 32)
    r = invoke("novelty", ckpt, "-", "--corpus", tmp_path / "l1.txt", "--json", input=text[100:160])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["longest"]["length"] == 60


def test_the_builtin_corpus_is_read_again_by_itself(tmp_path):
    root = tmp_path / "lib"
    (root / "pkg").mkdir(parents=True)
    (root / "alpha.py").write_text(make_text(80, seed=3), encoding="utf-8")
    beta = "def beta():\n    return 'a line that only beta has'\n" * 40
    (root / "pkg" / "beta.py").write_text(beta, encoding="utf-8")
    from charnn.data.corpus import builtin_corpus
    corpus = builtin_corpus(root=str(root))
    result = train(corpus, ModelConfig(vocab_size=1, **TINY_MODEL),
                   TrainConfig(out=str(tmp_path / "runs"), **{**TINY_TRAIN, "max_steps": 2, "eval_every": 2}))
    ckpt = moved_checkpoint(result.run_dir, tmp_path, cache_entry="0" * 32)
    got = report.novelty(ckpt, "xx return 'a line that only beta has'")
    assert got.longest.length == 35 and got.longest.source == "pkg/beta.py"
    assert got.longest.line <= 80 and got.longest.line % 2 == 0  # beta.py's own line (the joined text's was given)
    assert got.corpus.startswith("python-stdlib:") and got.index_built


def test_a_subword_run_is_checked_in_characters(tmp_path, corpus_file):
    text = corpus_file.read_text(encoding="utf-8")
    cfg = TrainConfig(out=str(tmp_path), tokenizer="bpe", vocab_size=300, **{**TINY_TRAIN, "max_steps": 2,
                                                                             "eval_every": 2})
    result = train(Corpus(text, "bpe", str(corpus_file)), ModelConfig(vocab_size=1, **TINY_MODEL), cfg)
    cut = torch.load(result.run_dir / "best.pt", weights_only=True)["data"]["train_chars"]
    sample = "QQ" + text[cut - 57: cut] + "QQ"
    got = report.novelty(str(result.run_dir), sample, ns=(8, 50))
    assert got.train_chars == cut and (got.longest.length, got.longest.train_offset) == (57, cut - 57)
    assert [w.found for w in got.windows] == [sum(sample[i:i + n] in text[:cut] for i in range(len(sample) - n + 1))
                                              for n in (8, 50)]


def test_one_line_errors(trained_run, tmp_path):
    run = trained_run.run_dir
    one_line_error(invoke("novelty", run, "-", input=""), 1, "the sample is empty", "charnn sample RUN |")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    one_line_error(invoke("novelty", run, tmp_path / "empty.txt"), 1, "is empty")
    one_line_error(invoke("novelty", run, tmp_path / "nope.txt"), 1, "does not exist")
    one_line_error(invoke("novelty", run, "-", input=b"caf\xe9"), 1, "not valid utf-8", "0xe9")
    one_line_error(invoke("novelty", tmp_path / "none.pt", "-", input="x"), 1, "does not exist")
    one_line_error(invoke("novelty", run, "--n", "0", input="x"), 2, "--n")
    one_line_error(invoke("novelty", run, "--encoding", "bogus", input="x"), 2, "unknown encoding")  # (was taken
    # without a word when no --corpus was read)
    one_line_error(invoke("novelty", run, "--glob", "*.txt", input="x"), 2, "--glob", "add --corpus")  # (ignored)


def test_the_table_quotes_a_long_span_in_part(trained_run, corpus_file):
    """A memorised page was quoted whole (a 100,000-character line); --json keeps it whole."""
    from charnn.cli.novelty import SPAN_SHOWN
    run = trained_run.run_dir
    trained = torch.load(run / "best.pt", weights_only=True)["data"]["train_chars"]
    seen = corpus_file.read_text(encoding="utf-8")[:trained]
    sample = seen[:SPAN_SHOWN + 100]
    table = invoke("novelty", run, "-", input=sample)
    assert table.exit_code == 0, table.stderr
    assert repr(sample[:SPAN_SHOWN]) in table.stdout and "... (100 more; --json: all)" in table.stdout
    assert json.loads(invoke("novelty", run, "-", "--json", input=sample).stdout)["longest"]["text"] == sample


def test_a_shell_pipeline_from_sample(trained_run):
    run = trained_run.run_dir
    cmd = (f"set -o pipefail; {sys.executable} -m charnn sample {run} --length 300 --seed 4 -q | "
           f"{sys.executable} -m charnn novelty {run} --json -q")
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    out = json.loads(p.stdout)
    assert out["sample_chars"] > 300 and out["longest"]["length"] >= 1
    assert [w["n"] for w in out["windows"]] == [16, 32, 64]


def test_a_run_whose_cache_entry_is_of_an_older_format_finds_it(tmp_path, monkeypatch):
    """A cache format change made every older run's novelty say its text was "no longer in the cache" (its entry
    was there, in its day's format, which training no longer reuses)."""
    monkeypatch.setenv("CHARNN_CACHE", str(tmp_path / "cache"))
    (tmp_path / "t.txt").write_text(make_text(60, seed=5), encoding="utf-8")
    assert invoke("train", tmp_path / "t.txt", "--out", tmp_path, "--max-steps", "2", "--hidden", "16", "--layers",
                  "1", "--threads", "1", "-q").exit_code == 0
    key = torch.load(tmp_path / "t" / "best.pt", weights_only=True)["data"]["cache_entry"]
    meta_path = cache.entry_dir(key) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format": 2}))
    (tmp_path / "t.txt").unlink()  # (so only the entry can answer)
    r = invoke("novelty", tmp_path / "t", input="the cat sat on the mat\n")
    assert r.exit_code == 0 and "no longer in the cache" not in r.stderr, r.stderr


def test_an_index_build_sweeps_a_killed_builds_temp_files_and_leaves_no_half_index(tmp_path, monkeypatch):
    """A novelty killed mid-build left a 172 MB .sa.bin.*.tmp in the cache for good; a full cache left text.utf8
    without its suffix array."""
    import pydivsufsort
    folder = tmp_path / "novelty"
    folder.mkdir()
    (folder / ".sa.bin.deadbeef.tmp").write_bytes(b"x" * 1000)
    chunks = [make_text(30, seed=2).encode("utf-8")]
    monkeypatch.setattr(pydivsufsort, "divsufsort", lambda text: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(MemoryError):
        textindex.build_index(folder, chunks)
    assert list(folder.iterdir()) == []  # the leftover swept, the text written for it removed again
    monkeypatch.undo()
    index = textindex.build_index(folder, chunks)
    assert index is not None and sorted(p.name for p in folder.iterdir()) == ["index.json", "sa.bin", "text.utf8"]


def test_a_span_in_a_folder_corpus_says_its_line_is_of_the_joined_files(tmp_path):
    """A folder corpus's span was "(line 34)": the joined text's line, which matched no file's and named none."""
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "a.txt").write_text(make_text(60, seed=1), encoding="utf-8")
    (tmp_path / "books" / "b.txt").write_text(make_text(60, seed=2), encoding="utf-8")
    r = invoke("train", tmp_path / "books", "--out", tmp_path / "runs", "--hidden", "16", "--layers", "1",
               "--max-steps", "2", "--threads", "1", "-q")
    assert r.exit_code == 0, r.stderr
    sample = make_text(60, seed=2)[500:560]
    r = invoke("novelty", tmp_path / "runs" / "books", "-", input=sample)
    assert r.exit_code == 0 and "of the training files joined" in r.stdout, (r.stdout, r.stderr)
