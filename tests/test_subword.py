"""Subword (sentencepiece) tokenizers: exact round trips, streaming, per-character scoring, self-contained checkpoints."""

import io
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, TINY_TRAIN, make_text, subprocess_env
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from charnn.cli import app
from charnn.config import ModelConfig, TrainConfig
from charnn.sampling import SampleConfig
from charnn.data.corpus import Corpus
from charnn.scoring.evaluate import evaluate_text
from charnn.generation.sampler import generate
from charnn.text import subword
from charnn.text.subword import SentencePieceTokenizer, sentences, training_sample
from charnn.text.tokenizer import CharTokenizer, build_tokenizer, tokenizer_from_state
from charnn.training.trainer import Trainer, train

runner = CliRunner()
TRAIN_TEXT = make_text(300, seed=4) + "    indented line\n\tand a tab\n" * 20
TRICKY = ["", " ", "\n", "\t", "  leading spaces", "trailing spaces   ", "\n\n\nnewlines\n\n", "\r\n windows\r\n",
          "\u2581", "a \u2581 b\u2581\u2581c ", "🙂", "emoji 🙂🙃👍🏽 and ZWJ 👩‍👩‍👧", "日本語のテキスト 中文", "tab\tin\tthe\tmiddle\t",
          "e\u0301 (a combining accent) and ﬁ ligature and Ａ full width", "\x00\x01 control \x7f"]


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def tok(request):
    return SentencePieceTokenizer.train(request.param, TRAIN_TEXT, 300, threads=1)


@pytest.fixture(scope="module")
def bpe():
    return SentencePieceTokenizer.train("bpe", TRAIN_TEXT, 300, threads=1)


class Uniform(torch.nn.Module):
    """A stand-in model with all-zero logits: every token costs exactly log(V) nats."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, x, state=None):
        return torch.zeros(*x.shape, self.vocab_size), state


def uniform_charrnn(vocab_size: int):
    """A real (steppable) CharRNN whose head is all zeros: every token equally likely, as Uniform."""
    from charnn.models.lm import CharRNN

    model = CharRNN(ModelConfig(vocab_size=vocab_size, layers=1, hidden=8, embed=4)).eval()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    return model


# -- text survives ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", TRICKY)
def test_tricky_texts_round_trip(tok, text):
    ids = tok.encode(text)
    assert ids.dtype == np.int64
    assert tok.decode(ids) == text
    assert tok.token_chars(ids) == len(text)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_round_trip_any_unicode(tok, data):
    alphabet = st.one_of(st.characters(blacklist_categories=("Cs",)), st.sampled_from(list(" \t\n\r\u2581🙂日本語")))
    text = data.draw(st.text(alphabet=alphabet))
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_text_survives_a_tokenizer_trained_on_text_without_spaces(kind):
    """Trained on Japanese (no space in it), a space went as the bytes of sentencepiece's marker and came back as
    "▁": a model fine-tuned from it on spaced text sampled "qsrstuv▁xwyv"."""
    import random
    rng = random.Random(0)
    text = "".join(rng.choice(["日本", "語", "の", "です", "。", "\n"]) for _ in range(5000))
    tok = SentencePieceTokenizer.train(kind, text, 300, threads=1)
    for sample in [*TRICKY, " lead", "abc def  ghi\n", "日本 語"]:
        assert tok.decode(tok.encode(sample)) == sample, sample
        assert tok.token_chars(tok.encode(sample)) == len(sample)


def test_a_tokenizer_saved_before_spaces_went_as_bytes_keeps_its_ids_and_a_fine_tune_of_it_does_not(tmp_path):
    """Runs saved before (their tokenizer state says nothing of spaces) encode as they were trained, so --resume
    finds the same text; --init-from such a base spaces as now (its text had no spaces to learn)."""
    import random

    from charnn.checkpoint import load_checkpoint
    from charnn.text.tokenizer import tokenizer_from_state
    rng = random.Random(0)
    text = "".join(rng.choice(["日本", "語", "の", "です", "。", "\n"]) for _ in range(5000))
    new = SentencePieceTokenizer.train("bpe", text, 300, threads=1)
    assert new.state()["space"] == "byte"
    old = tokenizer_from_state({k: v for k, v in new.state().items() if k != "space"})
    assert "space" not in old.state() and tokenizer_from_state(new.state()).decode(new.encode(" a")) == " a"
    assert list(old.encode(" a")) != list(new.encode(" a")) and old.decode(old.encode(" a")) == "\u2581a"  # (as then)
    (tmp_path / "ja.txt").write_text(text, encoding="utf-8")
    args = ["--hidden", "16", "--layers", "1", "--seq-len", "16", "--batch-size", "4", "--max-steps", "2", "--threads",
            "1", "-q", "--out", str(tmp_path)]
    assert runner.invoke(app, ["train", str(tmp_path / "ja.txt"), "--tokenizer", "bpe", "--vocab-size", "300",
                               *args]).exit_code == 0
    for name in ("best.pt", "last.pt"):  # (as a run saved before)
        data = torch.load(tmp_path / "ja" / name, weights_only=True)
        data["tokenizer"].pop("space")
        torch.save(data, tmp_path / "ja" / name)
    (tmp_path / "en.txt").write_text("the cat sat on the mat\n" * 200, encoding="utf-8")
    info = runner.invoke(app, ["info", str(tmp_path / "ja")])  # (info said nothing of which rule a run keeps)
    assert info.exit_code == 0 and "a space is the marker's bytes" in info.stdout, info.stdout
    r = runner.invoke(app, ["train", str(tmp_path / "en.txt"), "--init-from", str(tmp_path / "ja"), *args])
    assert r.exit_code == 0, r.stderr
    assert load_checkpoint(tmp_path / "en" / "last.pt")["tokenizer"]["space"] == "byte"
    info = runner.invoke(app, ["info", str(tmp_path / "en"), "--json"])
    assert json.loads(info.stdout)["tokenizer"]["spacing"] == "byte"  # (the base's pieces: still no space piece)
    assert SentencePieceTokenizer.train("bpe", "the cat sat on the mat\n" * 200, 300, threads=1).spacing is None


def test_pieces_span_words_and_whitespace_is_kept(bpe):
    ids = bpe.encode("the cat sat on the mat\n")
    assert len(ids) < 0.6 * 23  # real subwords (only ~25 merges fit in 300), not one id per character
    assert bpe.decode(ids) == "the cat sat on the mat\n"
    assert bpe.vocab_size == 300 and bpe.unk_id == 0


def test_lone_surrogate_is_the_only_unknown(bpe):
    text = "ok \udcff ok"  # what Python makes of an invalid byte on a command line
    assert bpe.unknown(text) == ["\udcff"] and bpe.count_unknown(text) == 1
    ids = bpe.encode(text)
    assert (ids == bpe.unk_id).sum() == 1
    assert bpe.decode(ids) == "ok \ufffd ok"
    assert bpe.unknown("日本 🙂 \u2581") == []  # byte fallback covers everything else


# -- streaming ---------------------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_streamed_decoding_equals_one_shot(tok, data):
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=60))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(ids)), max_size=8)))
    dec, out, prev = tok.decoder(), [], 0
    for c in cuts + [len(ids)]:
        out.append(dec.push(ids[prev:c]))
        prev = c
    assert "".join(out) + dec.flush() == tok.decode(ids)


def test_a_character_split_over_byte_pieces_comes_out_once_whole(bpe):
    ids = list(bpe.encode("a🙂b"))
    assert len(ids) == 6  # 'a', four byte pieces, 'b': the emoji is not in the vocabulary
    dec = bpe.decoder()
    assert [dec.push([i]) for i in ids] == ["a", "", "", "", "🙂", "b"]
    assert dec.flush() == ""


# -- bookkeeping: characters, state, training data ------------------------------------------------------------------
def test_token_chars_of_any_split_add_up_to_the_text(bpe):
    text = "the 🙂 cat\n日本\u2581 sat"
    ids = bpe.encode(text)
    for k in range(len(ids) + 1):
        assert bpe.token_chars(ids[:k]) + bpe.token_chars(ids[k:]) == len(text)


def test_state_is_plain_data_and_rebuilds_the_same_tokenizer(tok):
    state = tok.state()
    assert state["kind"] == tok.kind and isinstance(state["model"], bytes)
    buf = io.BytesIO()
    torch.save({"tokenizer": state}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["tokenizer"]
    again = tokenizer_from_state(loaded)
    text = "the dog ran 🙂\n\tto the barn"
    assert list(again.encode(text)) == list(tok.encode(text)) and again.vocab_size == tok.vocab_size
    as_tensor = tokenizer_from_state({**state, "model": torch.frombuffer(bytearray(state["model"]), dtype=torch.uint8)})
    assert list(as_tensor.encode(text)) == list(tok.encode(text))


def test_tokenizer_learns_from_the_training_split_only(tmp_path):
    text = make_text(300, seed=1)
    val = "zyxwvut zyxwvut zyxwvut\n" * 200  # frequent enough to become pieces, if it were seen
    cfg = TrainConfig(out=str(tmp_path), tokenizer="bpe", vocab_size=400, val_file=str(tmp_path / "val.txt"),
                      **TINY_TRAIN)
    (tmp_path / "val.txt").write_text(val, encoding="utf-8")
    trainer = Trainer(Corpus(text, "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL), cfg)
    pieces = [p.decode("utf-8", "replace") for p in trainer.tokenizer.pieces]
    assert not any("zy" in p or "wv" in p for p in pieces)
    assert any("the" in p for p in pieces)
    assert trainer.tokenizer.decode(trainer.val_ids) == val


def test_large_text_trains_on_a_capped_sample(monkeypatch):
    monkeypatch.setattr(subword, "SAMPLE_CHARS", 6000)
    monkeypatch.setattr(subword, "SAMPLE_BLOCKS", 6)
    events = []
    text = make_text(2000, seed=2)
    tok = build_tokenizer(text, "unigram", 300, on_event=lambda k, i: events.append((k, i)), threads=1)
    start, done = [i for k, i in events if k == "tokenizer"]
    assert start["stage"] == "start" and start["of_chars"] == len(text) and start["chars"] <= 6000 + 5
    assert done["stage"] == "done" and done["vocab_size"] == tok.vocab_size
    sample = training_sample("0123456789" * 10, cap=20, blocks=4)
    assert sample == "01234\n56789\n01234\n56789"  # evenly spaced blocks, 20 characters of text in all
    assert "".join(sentences("ab\ncd\nefghij\u2581k", size=4)) == "ab\ncd\nefghijk"


def test_vocab_size_errors_name_the_flag(tmp_path):
    text = make_text(200) + "".join(chr(0x4E00 + i) for i in range(60))  # 60 distinct CJK characters
    with pytest.raises(Exception) as e:
        build_tokenizer(text, "bpe", 270, threads=1)
    assert "--vocab-size" in str(e.value) and "use at least" in str(e.value)
    for args, words in [(["--tokenizer", "wordpiece"], "--tokenizer"), (["--vocab-size", "500"], "--vocab-size"),
                        (["--tokenizer", "bpe", "--vocab-size", "100"], "--vocab-size")]:
        r = runner.invoke(app, ["train", "x.txt", *args])
        assert r.exit_code == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1


# -- evaluation normalises by characters ----------------------------------------------------------------------------
def test_eval_normalisation_hand_computed(bpe):
    V, dev = bpe.vocab_size, torch.device("cpu")
    # "🙂x" is four byte pieces and 'x': all five are predicted (the first from the start id), and they stand
    # for two characters (the emoji counts once, where its first byte is).
    r = evaluate_text(Uniform(V), bpe, "🙂x", dev)
    assert (r.tokens, r.chars, r.unknown) == (5, 2, 0)
    assert r.nats == pytest.approx(5 * math.log(V))
    assert r.nats_per_token == pytest.approx(math.log(V)) and r.nats_per_char == pytest.approx(2.5 * math.log(V))
    text = "the cat sat"
    ids = bpe.encode(text)
    r = evaluate_text(Uniform(V), bpe, text, dev)
    assert (r.tokens, r.chars) == (len(ids), len(text))
    assert r.nats_per_token * r.tokens == pytest.approx(r.nats_per_char * r.chars) == pytest.approx(r.nats)
    assert r.nats_per_char == pytest.approx(len(ids) * math.log(V) / len(text))
    char = CharTokenizer.build("abc")  # V = 4 with the unknown id; the snowman is unknown
    r = evaluate_text(Uniform(char.vocab_size), char, "abc\u2603", dev)
    assert (r.tokens, r.chars, r.unknown) == (4, 4, 1)
    assert r.nats_per_char == pytest.approx(math.log(4)) == pytest.approx(r.nats_per_token)


def test_unknown_character_in_val_text_of_a_char_model(tmp_path, trained_run):
    val = tmp_path / "val.txt"
    val.write_text("the cat sat \u2603 on the mat \u2603\n", encoding="utf-8")
    r = runner.invoke(app, ["eval", str(trained_run.run_dir / "best.pt"), str(val), "--json"])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["unknown_chars"] == 2 and "2 characters are not in the model's vocabulary" in r.stderr
    quiet = runner.invoke(app, ["eval", str(trained_run.run_dir / "best.pt"), str(val), "--json", "-q"])
    assert quiet.exit_code == 0 and quiet.stdout == r.stdout and quiet.stderr == ""  # -q as sample's (was refused)
    assert math.isfinite(out["nats_per_char"]) and out["chars"] == len(val.read_text(encoding="utf-8"))
    events = []
    cfg = TrainConfig(out=str(tmp_path), val_file=str(val), **{**TINY_TRAIN, "max_steps": 2})
    result = train(Corpus(make_text(100), "t", "t"), ModelConfig(vocab_size=1, **TINY_MODEL), cfg,
                   on_event=lambda k, i: events.append((k, i)))
    assert [i["val_unknown"] for k, i in events if k == "start"] == [2]
    assert math.isfinite(result.best_val_loss)


# -- training, sampling and self-contained checkpoints through the CLI -----------------------------------------------
@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory):
    """A tiny bpe model trained through the CLI in a folder that holds only its corpus."""
    work = tmp_path_factory.mktemp("bpe_work")
    (work / "corpus.txt").write_text(TRAIN_TEXT, encoding="utf-8")
    old = os.getcwd()
    os.chdir(work)
    try:
        r = runner.invoke(app, ["train", "corpus.txt", "--tokenizer", "bpe", "--vocab-size", "320", "--hidden", "48",
                                "--embed", "8", "--batch-size", "4", "--seq-len", "16", "--max-steps", "30",
                                "--eval-every", "15", "--device", "cpu", "--threads", "1", "--lr", "0.02"])
    finally:
        os.chdir(old)
    assert r.exit_code == 0, r.stderr
    return work, r


def test_training_leaves_no_stray_files(bpe_run):
    work, r = bpe_run
    assert sorted(p.name for p in work.iterdir()) == ["checkpoints", "corpus.txt"]
    assert sorted(p.name for p in (work / "checkpoints" / "corpus").iterdir()) == ["best.pt", "config.json", "last.pt",
                                                                               "metrics.jsonl"]
    assert "bpe tokenizer ready" in r.stderr and "nats/char" in r.stderr and r.stdout == ""


def test_checkpoint_alone_samples_and_evaluates_elsewhere(bpe_run, tmp_path):
    work, _ = bpe_run
    shutil.copy(work / "checkpoints" / "corpus" / "best.pt", tmp_path / "model.pt")
    (tmp_path / "text.txt").write_text("the red dog sat\n\ton a mat 🙂\n", encoding="utf-8")
    run = lambda *a: subprocess.run([sys.executable, "-m", "charnn", *a], cwd=tmp_path, env=subprocess_env(),  # noqa: E731
                                    capture_output=True, timeout=300)
    p = run("sample", "model.pt", "--length", "150", "--seed", "2", "--prime", "the 🙂 ", "--device", "cpu", "-q")
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode("utf-8")
    assert out.startswith("the 🙂 ")
    body = out[len("the 🙂 "):]
    assert len(body) == 150 or (len(body) == 151 and body.endswith("\n") and body[-2] != "\n")
    p = run("eval", "model.pt", "text.txt", "--json", "--device", "cpu")
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["chars"] == len("the red dog sat\n\ton a mat 🙂\n") and result["tokens"] < result["chars"] + 4
    assert result["nats_per_token"] * result["tokens"] == pytest.approx(result["nats_per_char"] * result["chars"])
    assert sorted(x.name for x in tmp_path.iterdir()) == ["model.pt", "text.txt"]


def test_length_counts_characters_for_a_bpe_model(bpe_run, bpe):
    work, _ = bpe_run
    r = runner.invoke(app, ["sample", str(work / "checkpoints" / "corpus"), "--length", "137", "--seed", "4",
                            "--prime", "the cat", "-q"])
    assert r.exit_code == 0, r.stderr
    body = r.stdout[len("the cat"):]
    assert r.stdout.startswith("the cat")
    assert len(body) == 137 or (len(body) == 138 and body.endswith("\n") and body[-2] != "\n")
    # an untrained uniform model draws byte pieces freely: characters split over pieces
    for length in (1, 2, 3, 17, 200):
        cfg = SampleConfig(length=length, prime="a🙂", device="cpu")
        pieces = list(generate(uniform_charrnn(bpe.vocab_size), bpe, cfg, torch.device("cpu"), seed=length))
        assert len("".join(pieces)) == len("a🙂") + length


# -- drawn byte pieces make UTF-8 -----------------------------------------------------------------------------------
def test_the_utf8_tables_take_every_character_and_nothing_else(bpe):
    """Every code point's UTF-8 bytes walk the tables from state 0 back to 0 (as byte pieces), the bytes UTF-8 never
    has where they stand are refused, and random walks over what the tables allow decode strictly."""
    from charnn.text.subword import UTF8_STATES

    allowed, nxt = bpe.utf8_tables()
    byte = bpe._byte_ids
    rng = np.random.default_rng(0)
    cps = [0, 0x7F, 0x80, 0x7FF, 0x800, 0xFFF, 0x1000, 0xD7FF, 0xE000, 0xFFFF, 0x10000, 0x3FFFF, 0x40000, 0xFFFFF,
           0x100000, 0x10FFFF, *rng.integers(0, 0x110000, 3000)]
    for cp in (int(c) for c in cps if not 0xD800 <= c <= 0xDFFF):
        state = 0
        for b in chr(cp).encode():
            assert allowed[state, byte[b]], (hex(cp), state, b)
            state = nxt[state, byte[b]]
        assert state == 0
    for bad in (b"\x80", b"\xbf", b"\xc0", b"\xc1", b"\xf5", b"\xff", b"\xe0\x80", b"\xed\xa0", b"\xf0\x80",
                b"\xf4\x90", b"\xc3a", b"\xe6\x97a"):  # the last two: a text piece inside a character
        state, ids = 0, [byte[b] for b in bad[:-1]] + [int(bpe.encode(chr(bad[-1]))[0]) if bad[-1] < 0x80
                                                       else byte[bad[-1]]]
        for i in ids[:-1]:
            state = nxt[state, i]
        assert not allowed[state, ids[-1]], bad
    assert allowed.shape == (len(UTF8_STATES), bpe.vocab_size) and allowed[0].sum() == bpe.vocab_size - 64 - 13
    assert allowed[1:, [i for i in range(bpe.vocab_size) if not bpe.sp.is_byte(i)]].sum() == 0
    for _ in range(200):
        state, ids = 0, []
        for _ in range(40):
            ids.append(int(rng.choice(np.flatnonzero(allowed[state]))))
            state = nxt[state, ids[-1]]
        while state:
            ids.append(int(rng.choice(np.flatnonzero(allowed[state]))))
            state = nxt[state, ids[-1]]
        bpe._bytes(ids).decode("utf-8")  # strict: raises on anything that is not UTF-8


def byte_hungry(cell: str, vocab: int, bpe):
    """An untrained model whose head prefers continuation bytes (0x80-0xBF) by far, then lead bytes: drawn freely,
    nearly every token would be a byte no character has there."""
    from charnn.models.configs import MinRNNConfig
    from charnn.models.lm import CharRNN
    from charnn.models.minrnn import MinRNN

    torch.manual_seed(0)
    model = (MinRNN(MinRNNConfig(vocab_size=vocab, cell=cell, layers=1, hidden=64, embed=8, ffn=0))
             if cell.startswith("min") else CharRNN(ModelConfig(vocab_size=vocab, cell=cell, layers=1, hidden=16,
                                                                 embed=4))).eval()
    with torch.no_grad():
        model.head.weight.mul_(0.01)
        for b in range(0x80, 0x100):
            model.head.bias[bpe._byte_ids[b]] += 6.0 if b < 0xC0 else 3.0
    return model


@pytest.mark.parametrize("cell,int8", [("lstm", False), ("lstm", True), ("gru", True), ("mingru", False),
                                       ("minlstm", True)])
@pytest.mark.parametrize("settings", [{}, {"temperature": 1.5, "top_k": 40}, {"top_p": 0.95}, {"greedy": True}])
def test_drawn_byte_pieces_always_make_utf8_on_every_path(bpe, cell, int8, settings):
    """A model that would draw continuation bytes anywhere writes only whole characters (byte fallback's pieces are
    drawn only where UTF-8 has them), and the same text on each path: one stream (its head and draw in C, or with
    --int8 a whole block in C) and the first of three streams (torch's draw), whatever the filters. Before, such a
    model's text was mostly U+FFFD."""
    from charnn.models import native

    if int8 and not native.int8_products(native.library()):
        pytest.skip("no int8 products here")
    model = byte_hungry(cell, bpe.vocab_size, bpe)
    texts = []
    for n in (1, 3):
        cfg = SampleConfig(length=300, prime="a", device="cpu", int8=int8, num_samples=n, separator="\ufffd",
                           **settings)  # (the one character the samples cannot have)
        texts.append("".join(generate(model, bpe, cfg, torch.device("cpu"), seed=5)).split("\ufffd")[0])
    assert texts[0] == texts[1]
    text = texts[0]
    assert len(text) == 301 and "\ufffd" not in text
    assert sum(c > "\x7f" for c in text) > 100  # the model's taste for bytes survives where it may: characters


def test_the_utf8_guard_holds_through_a_recorded_block_and_rows_that_move(monkeypatch, bpe):
    """Rows joining, leaving (the last row moves into a slot) and CUDA-graph blocks (conftest's stand-in) keep
    each row's place in its character: the texts are whole characters and equal sampling without graphs."""
    from conftest import fake_cuda
    from charnn.generation.batcher import Batcher, RowSpec
    from charnn.sampling import SamplingParams

    model = byte_hungry("mingru", bpe.vocab_size, bpe)

    def run(graphs: bool):
        b = Batcher(model, bpe, torch.device("cpu"), capacity=3, block=4, graphs=graphs)
        rows = [b.add(RowSpec(prompt="a", length=n, sampling=SamplingParams(temperature=1.0, seed=s)))
                for n, s in ((9, 1), (60, 2))]
        texts = {id(r): "" for r in rows}
        for _ in range(6):
            for row, piece in b.step(4):
                texts[id(row)] += piece
        rows.append(b.add(RowSpec(prompt="b", length=40, sampling=SamplingParams(seed=3))))
        texts[id(rows[-1])] = ""
        while b.active:
            for row, piece in b.step(4):
                texts[id(row)] += piece
        return [texts[id(r)] for r in rows]

    plain = run(False)
    fake_cuda(monkeypatch)
    assert run(True) == plain and [len(t) for t in plain] == [9, 60, 40]
    assert not any("\ufffd" in t for t in plain)


def test_every_rows_guard_state_is_where_its_text_is_as_rows_come_and_go(bpe):
    """The invariant behind the guard: a live row's state is non-zero exactly when its decoder holds the first bytes
    of a character. Rows leave mid-character (a client gone: `remove`), the last row moves into the freed slot, new
    rows join the slot it left (its old state must not carry over), one Batcher is used again (the API keeps idle
    ones), on torch's draw and one stream's C draw."""
    import random

    from charnn.generation.batcher import Batcher, RowSpec
    from charnn.sampling import SamplingParams

    model, rng = byte_hungry("lstm", bpe.vocab_size, bpe), random.Random(0)
    b = Batcher(model, bpe, torch.device("cpu"), capacity=4, block=3)
    mid = 0
    for turn in range(120):
        if b.rows and (rng.random() < 0.15 or len(b.rows) == 4):
            b.remove(rng.choice(b.rows))
        elif len(b.rows) < 4 and rng.random() < 0.4:
            b.add(RowSpec(prompt="a", length=rng.randint(1, 40), sampling=SamplingParams(seed=turn)))
        assert not any("\ufffd" in piece for _, piece in b.step(rng.randint(1, 3)))
        for row in b.rows:
            held = bool(row.decoder._utf8.getstate()[0])
            assert bool(b.utf8.state[row.slot]) == held, (turn, row.slot)
            mid += held
    assert mid > 20  # (the rows were often inside a character when they moved or left)


# -- token healing: a prime cut mid-word ---------------------------------------------------------------------------
def test_a_prime_cut_mid_word_gives_its_last_piece_back(bpe):
    from charnn.generation.prompt import heal

    ids = [int(i) for i in bpe.encode("birds s")]
    kept, allowed, skip = heal(bpe, ids)
    assert kept == ids[:-1] and skip == bpe.pieces[ids[-1]] and bpe.decode(kept) + skip.decode() == "birds s"
    assert ids[-1] in allowed and all(bpe.pieces[j].startswith(skip) for j in allowed)
    assert bpe.encode(" sang")[0] in allowed  # the whole word the prime was cut from may now come in one piece
    assert heal(bpe, [int(i) for i in bpe.encode("a🙂")])[1] is None  # a byte piece at the end: left alone
    chars = CharTokenizer(list("abc "))
    assert heal(chars, [1, 2]) == ([1, 2], None, b"")  # characters need no healing
    assert heal(bpe, []) == ([], None, b"")


def test_the_first_draw_completes_the_piece_taken_back_and_the_output_still_starts_with_the_prime(bpe):
    """A model that always prefers "x" most and " sang" next, decoded greedily: after the prime "birds s" the
    healed first draw must be " sang" (its text then continues the prime's "s"), and "x" after that."""
    sang, x = int(bpe.encode(" sang")[0]), int(bpe.encode("x")[0])

    prefers = uniform_charrnn(bpe.vocab_size)
    with torch.no_grad():
        prefers.head.bias[x], prefers.head.bias[sang] = 10.0, 5.0

    def sample(prime, length, heal=True):
        cfg = SampleConfig(length=length, prime=prime, greedy=True, device="cpu", heal=heal)
        return "".join(generate(prefers, bpe, cfg, torch.device("cpu"), seed=0))

    assert sample("birds s", 3, heal=False) == "birds sxxx"  # the plain way conditions on " s" and goes on

    for length in (1, 3, 12):
        assert sample("birds s", length) == ("birds sang" + "x" * 20)[: len("birds s") + length]
        assert sample("birds ", length) == ("birds sang" + "x" * 20)[: len("birds ") + length]  # " " -> " sang"
        assert sample("birds", length) == "birds" + "x" * length  # "irds" extends to nothing else: plain "x"


def test_metrics_and_info_read_a_subword_run_per_character_and_per_token(bpe_run, tmp_path):
    """train_loss was written per token beside val_loss per character (the curves were 3-4x apart on one axis
    labelled nats/char); info said `x 16 chars` for 16 tokens and previewed only byte pieces."""
    from charnn.checkpoint import load_checkpoint
    from charnn.training.metrics import read_metrics
    from charnn.training.metrics import MetricsLogger
    work, _ = bpe_run
    run = work / "checkpoints" / "corpus"
    data = load_checkpoint(run / "last.pt")["data"]
    per_token = data["train_chars"] / data["train_tokens"]
    assert per_token > 1.5
    logger = MetricsLogger(tmp_path, every=1)
    logger("start", {"step": 0, "chars_per_token": per_token})
    logger("saved", {})
    logger("step", {"step": 1, "epoch": 0.1, "loss": 2.0 * per_token, "lr": 1e-3, "chars_per_sec": 1.0, "elapsed": 1})
    logger("done", {})
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["train_loss"] == pytest.approx(2.0)
    out = runner.invoke(app, ["info", str(run)]).stdout
    assert "x 16 tokens" in out and "x 16 chars" not in out
    preview = out.split("tokenizer   bpe, 320 tokens: ")[1].split("\n")[0].split()
    assert preview and all(len(p) > 1 for p in preview[:5]), preview  # learned pieces, not \x00 \x01 ...


def test_token_logprobs_of_a_subword_model_cover_the_text_exactly(bpe_run):
    """A byte piece's decoded text was U+FFFD and offsets summed from pieces drifted after the first character of
    more than one byte: each token now shows the characters that start in it, and the offsets are theirs."""
    import charnn
    work, _ = bpe_run
    model = charnn.load(work / "checkpoints" / "corpus", device="cpu")
    text = "the cat über 日本 and ünïcödé"
    r = model.token_logprobs(text)
    assert "".join(r["tokens"]) == text and "\ufffd" not in "".join(r["tokens"])
    assert len(r["tokens"]) == len(r["token_logprobs"]) == len(r["text_offset"])
    for token, at in zip(r["tokens"], r["text_offset"]):
        assert text[at:at + len(token)] == token
    assert r["text_offset"] == sorted(r["text_offset"])


def test_byte_pieces_among_the_alternatives_are_named_each_by_its_byte(bpe_run):
    """Alternatives are keyed by their text: the byte pieces of no whole character all decoded as U+FFFD, so 5 of
    them were one key and `logprobs: 5` gave fewer than 5; each is now "bytes:\\xNN", as OpenAI names them."""
    import charnn
    work, _ = bpe_run
    model = charnn.load(work / "checkpoints" / "corpus", device="cpu")
    tok = model.tokenizer
    high = [i for i in range(tok.vocab_size) if tok.sp.is_byte(i) and tok.pieces[i][0] >= 0x80]
    with torch.no_grad():  # the head made to favour bytes 0x80..0x84 (as a model mid-character would)
        model.net.head.weight.zero_()
        model.net.head.bias.zero_()
        model.net.head.bias[high[:5]] = 5.0
    r = model.token_logprobs("the cat", top=5)
    assert all(len(t) >= 5 for t in r["top_logprobs"])
    assert sorted(r["top_logprobs"][0])[:5] == [f"bytes:\\x{0x80 + b:02x}" for b in range(5)]
    assert len(set(tok.names())) == tok.vocab_size
    assert {name for name, _ in model.surprisal("the", top_k=5).top(0)} == set(sorted(r["top_logprobs"][0])[:5])


def test_resume_and_init_from_take_the_runs_own_vocab_size_and_refuse_another(bpe_run, tmp_path):
    """--vocab-size alone on a --resume of a bpe run was "applies to --tokenizer bpe or unigram" (the check ran
    before the saved tokenizer was known), its own value too; --init-from refused the base's own value."""
    work, _ = bpe_run
    run = work / "checkpoints" / "corpus"
    out = tmp_path / "runs"
    shutil.copytree(run, out / "corpus")
    common = ["train", str(work / "corpus.txt"), "--out", str(out), "--threads", "1", "--device", "cpu", "-q"]
    r = runner.invoke(app, common + ["--resume", "--name", "corpus", "--max-steps", "32", "--vocab-size", "320"])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(app, common + ["--resume", "--name", "corpus", "--max-steps", "34", "--vocab-size", "400"])
    assert r.exit_code == 2 and "cannot change --vocab-size 400 (the run used 320)" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    base = ["--init-from", str(run), "--max-steps", "1", "--tokenizer", "bpe"]
    r = runner.invoke(app, common + base + ["--name", "same", "--vocab-size", "320"])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(app, common + base + ["--name", "other", "--vocab-size", "400"])
    assert r.exit_code == 2 and "--vocab-size 400 (the base's vocabulary is reused; it was trained with 320)" \
        in r.stderr, r.stderr


def test_healing_takes_back_one_piece_so_a_whole_word_may_still_end_where_the_prime_ends(bpe):
    """Taking back as many pieces as some piece still starts with (" ", "d" -> " d"...) completed more primes cut
    mid-word (56.6% against 54.6% of 1,000), but forced a whole word to grow where no piece is exactly it: "and the
    soul" went on "sould" every time, "I hate" on "hater" (benchmarks/TOKENIZERS.md). One piece keeps the prime's own
    last piece among the first draw's choices, so every word of the prime may end there."""
    from charnn.generation.prompt import heal

    words = sorted(set(make_text(300, seed=4).split()))
    for prime in (f"the {w[:m]}" for w in words for m in range(1, len(w) + 1)):
        ids = [0] + [int(i) for i in bpe.encode(prime)]
        kept, allowed, text = heal(bpe, ids)
        assert kept == ids[:-1] and ids[-1] in allowed and text == bpe.pieces[ids[-1]], prime


def test_a_fine_tune_of_a_subword_base_says_how_much_of_its_text_the_pieces_spell_in_bytes(bpe, bpe_run, tmp_path):
    """A subword base adds no characters (its pieces spell anything, new characters in bytes), so "no new
    characters" hid a text mostly spelled in bytes (a French text on an English base)."""
    assert bpe.byte_chars(bpe.encode("the cat 🙂 sat 🙃")) == 2 and bpe.byte_chars(bpe.encode("the cat")) == 0
    assert bpe.byte_chars(bpe.encode("🙂" * 50), block=7) == 50  # (read in blocks)
    work, _ = bpe_run
    (tmp_path / "new.txt").write_text("the cat sat 🙂🙃\n" * 200, encoding="utf-8")
    r = runner.invoke(app, ["train", str(tmp_path / "new.txt"), "--init-from", str(work / "checkpoints" / "corpus"),
                            "--out", str(tmp_path / "runs"), "--max-steps", "1", "--threads", "1", "--device", "cpu"])
    assert r.exit_code == 0, r.stderr
    assert "360 of the training text's 2,700 characters (13.3%) are not in its pieces: spelled in bytes" in r.stderr, \
        r.stderr  # (the training split: 180 of the 200 lines)


def test_a_tokens_own_text_is_its_piece_never_a_bytes_name(bpe):
    """Where the characters counted per token do not add up to the text, each token shows its piece's text; the
    `bytes:\\xNN` names are for choosing among alternatives (a review saw them leak into the token's own text)."""
    from types import SimpleNamespace

    from charnn.inspect.surprisal import token_texts

    ids = bpe.encode("über")
    skewed = SimpleNamespace(kind="bpe", token_chars=lambda ids_: 0, decode=bpe.decode)  # (counts add up to 0)
    shown = token_texts(skewed, "über", ids)
    assert shown == [bpe.decode([i]) for i in ids] and not any(t.startswith("bytes:") for t in shown)
