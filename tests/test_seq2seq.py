"""Sequence to sequence (`train --pairs`, `transduce`, `eval` of pairs): data, the encoder-decoder, decoding and
the command line. The tests write their own pairs: reversing short strings, which an attention model learns in
a few hundred steps."""

import json
import random
import select
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from charnn.checkpoint import build_seq2seq, load_checkpoint
from charnn.cli import app
from charnn.config import ModelConfig, TrainConfig
from charnn.sampling import TransduceConfig
from charnn.data.pairs import PairBatches, encode_side, load_pairs, read_pairs
from charnn.errors import CharnnError
from charnn.scoring.evaluate import pair_nats
from charnn.generation.seq2seq import Transducer
from charnn.models.seq2seq import Seq2Seq
from charnn.scoring.pairs import PairScore, edit_distance
from charnn.text.tokenizer import CharTokenizer, start_id
from charnn.training.trainer import Trainer
from conftest import one_line_error, subprocess_env, train_tiny_pairs

runner = CliRunner()
ALPHABET = "abcdef"


def words(n: int, seed: int, lo: int = 1, hi: int = 7) -> list:
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def write_pairs(path, inputs) -> None:
    path.write_text("".join(f"{w}\t{w[::-1]}\n" for w in inputs), encoding="utf-8")


@pytest.fixture(scope="session")
def reverse_run(tmp_path_factory):
    """A small attention model trained to reverse strings of 1-7 letters (about 10 s on 2 cores)."""
    root = tmp_path_factory.mktemp("s2s")
    write_pairs(root / "rev.tsv", words(3000, 0))
    text = load_pairs([str(root / "rev.tsv")], val_frac=0.05, seed=1)
    model = ModelConfig(vocab_size=1, layers=1, hidden=64, embed=16, dropout=0.0)
    cfg = TrainConfig(out=str(root), name="rev", pairs=True, batch_size=32, lr=1e-2, warmup=10, eval_every=200,
                      max_steps=400, device="cpu", seed=5, save_every_secs=0)
    Trainer(text, model, cfg).fit()
    return root


def loaded(run):
    data = load_checkpoint(run / "rev" / "best.pt")
    return (data, *build_seq2seq(data))


def test_resume_finds_the_run_of_a_linked_file_or_a_catalog_name_under_its_own_name(tmp_path, monkeypatch):
    """A plain run and a --pairs run name a linked file's run differently (its own stem; the real file's): --resume
    of the plain run read the --pairs run's options and trained that run instead; a catalog --pairs run (named by
    its local file) was not found without --pairs; charnn.train(Path(...), resume=True) was not looked up at all."""
    import os
    from pathlib import Path

    import charnn
    from charnn.data import catalog
    from charnn.data.training_text import TextOptions, run_names
    rows = "".join(f"{'ab'[i % 2]}{i % 5}\t{'xy'[i % 2]}\n" for i in range(60))
    (tmp_path / "pairs.tsv").write_text(rows, encoding="utf-8")
    os.symlink(tmp_path / "pairs.tsv", tmp_path / "words.txt")
    args = ["--out", str(tmp_path), "--hidden", "16", "--layers", "1", "--threads", "1", "-q"]
    r = runner.invoke(app, ["train", str(tmp_path / "pairs.tsv"), "--pairs", "--max-steps", "2", *args])
    assert r.exit_code == 0
    assert runner.invoke(app, ["train", str(tmp_path / "words.txt"), "--seq-len", "8", "--batch-size", "2",
                               "--max-steps", "2", *args]).exit_code == 0
    r = runner.invoke(app, ["train", str(tmp_path / "words.txt"), "--resume", "--max-steps", "4", *args])
    assert r.exit_code == 0, r.stderr
    step = lambda name: torch.load(tmp_path / name / "last.pt", weights_only=True)["step"]  # noqa: E731
    assert (step("words"), step("pairs")) == (4, 2)
    run = charnn.train(Path(tmp_path / "pairs.tsv"), resume=True, max_steps=4, out=str(tmp_path), threads=1)
    assert run.run_dir.name == "pairs" and step("pairs") == 4
    entry = {"name": "g2p-set", "url": "file:///nowhere/eng_train.tsv"}  # (nothing is read or downloaded)
    monkeypatch.setattr(catalog, "find", lambda name, path=None: entry if name == "g2p-set" else None)
    monkeypatch.setattr(catalog, "local_path", lambda e: tmp_path / "cache" / "eng_train.tsv")
    assert run_names("g2p-set", TextOptions()) == ["g2p-set", "eng_train"]
    assert run_names("g2p-set", TextOptions(pairs=True)) == ["eng_train", "g2p-set"]
    assert run_names(str(tmp_path / "words.txt"), TextOptions()) == ["words", "pairs"]


# ---- data ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", [["--pairs"], ["--label-by", "line"], ["--label-by", "line", "--classifier"]])
def test_a_run_of_lines_resumes_without_its_text_flags_given_again(tmp_path, how):
    """--pairs, --label-by, --classifier and --skip-bad-lines come from the saved run on --resume (the text was read
    with the command line's alone: "was trained with --pairs; resume it the same way", or the bad line's error)."""
    rows = "".join(f"{'ab'[i % 2]}\t{'xy'[i % 2]}{i % 7}\n" for i in range(80)) + "no tab here\n"
    (tmp_path / "p.tsv").write_text(rows, encoding="utf-8")
    args = ["train", str(tmp_path / "p.tsv"), "--out", str(tmp_path), "--hidden", "16", "--layers", "1",
            "--threads", "1", "-q"]
    assert runner.invoke(app, [*args, *how, "--skip-bad-lines", "--max-steps", "2"]).exit_code == 0
    r = runner.invoke(app, [*args, "--resume", "--max-steps", "4"])
    assert r.exit_code == 0, r.stderr
    saved = torch.load(tmp_path / "p" / "last.pt", weights_only=True)
    assert saved["step"] == 4 and saved["train_config"]["skip_bad_lines"]
    assert saved["model_config"]["kind"] == {"--pairs": "seq2seq", "line": "lm", "--classifier": "classifier"}[how[-1]]


def test_bad_lines_name_file_and_line_and_can_be_skipped(tmp_path):
    p = tmp_path / "p.tsv"
    p.write_text("ab\tba\n\nno tab here\nx\ty\tz\ncd\tdc\r\n", encoding="utf-8")
    with pytest.raises(CharnnError, match=r"p.tsv:3: the line has no tab"):
        read_pairs(p)
    f = read_pairs(p, skip_bad=True)
    assert [(x.source, x.target) for x in f.pairs] == [("ab", "ba"), ("cd", "dc")] and f.skipped == 2
    r = runner.invoke(app, ["train", str(p), "--pairs", "--out", str(tmp_path)])
    one_line_error(r, 1, "p.tsv:3", "--skip-bad-lines")
    import charnn
    with pytest.raises(CharnnError, match="p.tsv:3.*`skip_bad_lines` skips and counts such lines"):  # the API's
        charnn.train(str(p), pairs=True, out=str(tmp_path))  # words (were "charnn train skip_bad_lines skips")
    one_line_error(runner.invoke(app, ["train", "--pairs", "--out", str(tmp_path)]), 2, "--pairs", "CORPUS")  # (a
    # usage error, as `--label-by`'s: it exited 1)
    e = tmp_path / "e.tsv"  # (`word<TAB>` trained to write nothing, silently; in eval it scored CER 700%)
    e.write_text("ab\tba\ncd\t\n\tx\nef\tfe\n", encoding="utf-8")
    with pytest.raises(CharnnError, match=r"e.tsv:2: the line's target is empty"):
        read_pairs(e)
    f = read_pairs(e, skip_bad=True)
    assert [(x.source, x.target) for x in f.pairs] == [("ab", "ba"), ("ef", "fe")] and f.skipped == 2
    e.write_text("ab\tba\n\tx\n", encoding="utf-8")
    with pytest.raises(CharnnError, match=r"e.tsv:2: the line's input is empty"):
        read_pairs(e)
    e.write_text("ab\tba\rcd\tdc\ref\tfe\r", encoding="utf-8")  # (old Mac line ends: "the line has 3 tabs", no more)
    with pytest.raises(CharnnError, match=r"e.tsv:1: the line has 3 tabs, and lines that end in CR alone"):
        read_pairs(e)
    with pytest.raises(CharnnError, match=r"e.tsv: its lines end in CR alone"):  # (skipped: "holds no lines")
        read_pairs(e, skip_bad=True)


def test_any_unicode_on_either_side(tmp_path):
    p = tmp_path / "u.tsv"
    p.write_text("straße\tSTRASSE\nмосква\tmoskva\n日本\tnihon 🗾\n", encoding="utf-8")
    f = read_pairs(p)
    assert [(x.source, x.target) for x in f.pairs][2] == ("日本", "nihon 🗾")
    from charnn.data.pairs import build_vocabularies
    src, tgt = build_vocabularies(f.pairs)
    assert src.decode(encode_side(src, ["москва"])[0][:-1]) == "москва" and "🗾" in tgt.chars


def test_the_split_holds_out_whole_inputs_at_random(tmp_path):
    """A sorted dictionary with pronunciation variants: held-out inputs are spread over the alphabet and an
    input's variants are all on one side; the same seed gives the same split."""
    inputs = sorted(set(words(400, 1, 3, 6)))
    rows = [f"{w}\t{w.upper()}{v}\n" for w in inputs for v in ("", "2")]
    (tmp_path / "d.tsv").write_text("".join(rows), encoding="utf-8")
    text = load_pairs([str(tmp_path / "d.tsv")], val_frac=0.2, seed=7)
    train_in, val_in = {p.source for p in text.train}, {p.source for p in text.val}
    assert not train_in & val_in and len(val_in) == round(0.2 * len(inputs))
    assert len({w[0] for w in val_in}) == len(ALPHABET)  # not one letter's tail
    assert all(sum(p.source == w for p in text.val) == 2 for w in val_in)
    again = load_pairs([str(tmp_path / "d.tsv")], val_frac=0.2, seed=7)
    assert [p.source for p in again.val] == [p.source for p in text.val]


def test_batches_group_lengths_and_cover_the_pairs(tmp_path):
    tok = CharTokenizer.build(ALPHABET + "\n")
    ws = words(640, 2, 1, 30)
    src = encode_side(tok, ws)
    batches = PairBatches(src, encode_side(tok, [w[::-1] for w in ws]), 32, start_id(tok))
    seen, padding, real = [], 0, 0
    for x, y, (s, lengths) in batches.epoch(123):
        assert x.shape == y.shape and s.shape[0] == x.shape[0] == 32
        assert (x[:, 0] == start_id(tok)).all()
        real += int((y != -100).sum())
        padding += int((y == -100).sum())
        seen += lengths.tolist()
    assert len(seen) == 640 and padding < 0.1 * real  # sorted by length: little padding
    assert batches.plan(123) is batches.plan(123) and [len(b) for b in batches.plan(5)] == [32] * 20


# ---- the model ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell,attention,bidirectional,score", [
    ("lstm", True, True, "general"), ("gru", True, False, "general"), ("rnn", False, True, "general"),
    ("lstm", True, True, "additive"), ("gru", True, False, "additive")])
def test_padding_never_leaks(cell, attention, bidirectional, score):
    """A row's logits are the same alone and padded in a batch of longer inputs and targets."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=9, source_vocab=11, hidden=16, embed=8, layers=2, dropout=0.0, kind="seq2seq",
                      cell=cell, attention=attention, bidirectional=bidirectional, attention_score=score)
    model = Seq2Seq(cfg).eval()
    src = [np.array([3, 4, 5, 1]), np.array([2, 6, 7, 8, 9, 10, 3, 1]), np.array([5, 1])]
    tgt = [np.array([2, 3, 1]), np.array([4, 4, 4, 4, 5, 6, 1]), np.array([7, 1])]
    from charnn.data.pairs import pair_batch

    x, y, source = pair_batch(src, tgt, 1)
    with torch.no_grad():
        together, _ = model(x, None, source)
        for r in range(3):
            xa, _, sa = pair_batch([src[r]], [tgt[r]], 1)
            alone, _ = model(xa, None, sa)
            n = len(tgt[r])
            torch.testing.assert_close(together[r, :n], alone[0, :n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("score", ["general", "additive"])
def test_one_token_at_a_time_is_teacher_forcing(score):
    """Decoding steps (what transduce and beam search do, with rows selected from the memory) give the logits
    of the one-call teacher-forced pass."""
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=9, source_vocab=11, hidden=16, embed=8, layers=2, dropout=0.0, kind="seq2seq",
                      attention_score=score)
    model = Seq2Seq(cfg).eval()
    from charnn.data.pairs import pair_batch

    x, _, source = pair_batch([np.array([3, 4, 5, 1]), np.array([2, 6, 7, 1])], [np.array([2, 3, 4, 5, 1])] * 2, 1)
    with torch.no_grad():
        full, _ = model(x, None, source)
        memory, state = model.encode(source)
        memory = memory.select(torch.tensor([1, 0]))  # rows reordered, as beam search does
        state = tuple(s[:, [1, 0]] for s in state)
        for t in range(x.shape[1]):
            logits, state = model.decode(x[[1, 0], t:t + 1], state, memory)
            torch.testing.assert_close(logits[:, 0], full[[1, 0], t], atol=1e-5, rtol=1e-5)
        # a beam's K = 3 rows per input read one memory row (Memory.grouped): rows 0-2 input 1, rows 3-5 input 0
        memory, state = model.encode(source)
        memory = memory.select(torch.tensor([1, 0])).grouped(3)
        rows = torch.tensor([1, 1, 1, 0, 0, 0])
        state = tuple(s[:, rows] for s in state)
        for t in range(x.shape[1]):
            logits, state = model.decode(x[rows, t:t + 1], state, memory)
            torch.testing.assert_close(logits[:, 0], full[rows, t], atol=1e-5, rtol=1e-5)


def test_an_old_checkpoint_config_reads_as_a_language_model():
    from charnn.config import from_dict

    cfg = from_dict(ModelConfig, {"vocab_size": 5, "cell": "lstm", "layers": 1, "hidden": 8, "embed": 4,
                                  "dropout": 0.0})
    assert cfg.kind == "lm" and cfg.attention_score == "general" and cfg.validate()


# ---- trained: decoding ----------------------------------------------------------------------------------
def test_it_learns_to_reverse(reverse_run):
    data, model, src_tok, tok = loaded(reverse_run)
    held = words(200, 99)
    tr = Transducer(model, src_tok, tok, TransduceConfig(), torch.device("cpu"), data["pairs"]["max_ratio"])
    outputs = [h[0].text for h in tr.run((w, "t") for w in held)]
    assert np.mean([o == w[::-1] for o, w in zip(outputs, held)]) > 0.8


@pytest.mark.parametrize("beam", [1, 4])
def test_output_does_not_depend_on_the_batch_size(reverse_run, tmp_path, beam):
    """transduce with --batch-size 1, 64 and the default (256) writes byte-identical output (greedy and beam), blank
    lines kept, in fp32 (bf16's rounding can tip a near-tie either way: test_bf16_decoding_...)."""
    held = words(150, 7, 1, 12)
    held[10] = held[40] = ""
    (tmp_path / "in.txt").write_text("\n".join(held) + "\n", encoding="utf-8")
    outs = []
    for b in (1, 64, None):
        r = runner.invoke(app, ["transduce", str(reverse_run / "rev"), str(tmp_path / "in.txt"), "--beam", str(beam),
                                "--scores", "--precision", "fp32", *(["--batch-size", str(b)] if b else [])])
        assert r.exit_code == 0, r.stderr
        outs.append(r.stdout)
    assert outs[0] == outs[1] == outs[2]
    lines = outs[0].split("\n")
    assert len(lines) == len(held) + 1 and lines[10] == lines[40] == "" and lines[-1] == ""


def test_beam_n_best_are_ranked_and_scores_are_the_models_log_probabilities(reverse_run):
    data, model, src_tok, tok = loaded(reverse_run)
    tr = Transducer(model, src_tok, tok, TransduceConfig(beam=5, n_best=3, precision="fp32"), torch.device("cpu"),
                    data["pairs"]["max_ratio"])  # (in fp32 the search's sums are the scores to 1e-3; bf16's to 0.05)
    held = words(30, 11)
    greedy = Transducer(model, src_tok, tok, TransduceConfig(precision="fp32"), torch.device("cpu"),
                        data["pairs"]["max_ratio"])
    for w, hyps, g in zip(held, tr.run((w, "t") for w in held), greedy.run((w, "t") for w in held)):
        assert len(hyps) == 3 and len({h.text for h in hyps}) == 3
        assert hyps[0].logprob >= hyps[1].logprob >= hyps[2].logprob
        assert hyps[0].logprob >= g[0].logprob - 1e-4  # the search never ends worse than greedy here
        for h in hyps:  # the reported score is the teacher-forced log-probability of that output
            nats = pair_nats(model, encode_side(src_tok, [w]), encode_side(tok, [h.text]), start_id(tok),
                             torch.device("cpu"))
            assert abs(-nats[0] - h.logprob) < 1e-3, (w, h)


def test_sampling_is_seeded_and_batch_independent(reverse_run):
    data, model, src_tok, tok = loaded(reverse_run)
    held = words(40, 12)

    def run(seed, batch):
        cfg = TransduceConfig(temperature=2.0, n_best=2, seed=seed, batch_size=batch, precision="fp32")  # (in
        # bf16 a draw near a tie can go either way between batch sizes: 1 of 40 inputs did once in a CI run)
        tr = Transducer(model, src_tok, tok, cfg, torch.device("cpu"), data["pairs"]["max_ratio"])
        return [[h.text for h in hyps] for hyps in tr.run((w, "t") for w in held)]

    a = run(1, 64)
    assert a == run(1, 3) and a != run(2, 64)
    assert any(x != y for x, y in a)  # the two samples of an input differ somewhere


def test_the_length_limit_stops_a_looping_decoder(reverse_run):
    data, model, src_tok, tok = loaded(reverse_run)
    tr = Transducer(model, src_tok, tok, TransduceConfig(max_length=3, beam=3), torch.device("cpu"))
    assert all(len(h[0].text) <= 3 for h in tr.run((w, "t") for w in ["abcdef", "fedcba"]))


# ---- the command line ---------------------------------------------------------------------------------
def test_eval_reports_exact_match_and_error_rates(reverse_run, tmp_path):
    write_pairs(tmp_path / "a.tsv", words(60, 21))
    (tmp_path / "b.tsv").write_text("ab\tb a\nabc\tc b a\n", encoding="utf-8")
    r = runner.invoke(app, ["eval", str(reverse_run / "rev"), str(tmp_path / "a.tsv"), str(tmp_path / "b.tsv"),
                            "--json"])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    a, b = out["files"]
    assert a["exact_match"] > 0.8 and a["cer"] < 0.1 and a["ser"] is None and a["nats_per_char"] < 0.5
    assert b["exact_match"] == 0.0 and b["ser"] is not None and out["pairs"] == 62
    assert b["target_chars"] == len("b a") + len("c b a") + 2  # what nats/char is over (each target's end: one)
    assert b["reference_chars"] == len("b a") + len("c b a")  # what the character error rate is over
    table = runner.invoke(app, ["eval", str(reverse_run / "rev"), str(tmp_path / "a.tsv"), "--beam", "3"])
    assert table.exit_code == 0 and "exact" in table.stdout.splitlines()[0]


def test_a_word_with_several_references_is_scored_against_the_closest(reverse_run, tmp_path):
    """G2P papers' WER/PER: a word is right if it matches any of its references (a dictionary's variants), and
    its errors count against the closest one; each distinct input is decoded once."""
    held = list(dict.fromkeys(w for w in words(80, 21) if len(w) > 3))[:10]
    rows = [f"{w}\t{w[::-1]}\n{w}\t{w}x\n" if i % 2 else f"{w}\t{w}x\n{w}\t{w[::-1]}\n" for i, w in enumerate(held)]
    (tmp_path / "multi.tsv").write_text("".join(rows), encoding="utf-8")
    write_pairs(tmp_path / "single.tsv", held)
    r = runner.invoke(app, ["eval", str(reverse_run / "rev"), str(tmp_path / "multi.tsv"), str(tmp_path / "single.tsv"),
                            "--json"])
    assert r.exit_code == 0, r.stderr
    multi, single = json.loads(r.stdout)["files"]
    assert multi["pairs"] == 2 * len(held) and multi["words"] == single["words"] == len(held)
    assert multi["exact_match"] == single["exact_match"] > 0.8  # the wrong variant ("...x") costs nothing
    assert multi["cer"] == single["cer"]
    score = PairScore(spaced=True)
    score.add_output("a b c", ["a b d", "a b c d", "x"])
    assert (score.exact, score.symbol_errors, score.symbols) == (0, 1, 3)  # the closer of two at distance 1: the shorter
    score.add_output("k", ["q", "k"])
    assert (score.words, score.exact) == (2, 1)
    for reference in ("AA B ", "AA  B", " AA B"):  # (a stray space: a word error with no symbol error)
        spaced = PairScore(spaced=True)
        spaced.add_output("AA B", [reference])
        assert (spaced.exact, spaced.symbol_errors) == (1, 0), reference
    plain = PairScore()
    plain.add_output("ab", ["ab "])
    assert plain.exact == 0  # (characters: a space is one)


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("", "abc") == 3
    assert edit_distance("K AE T".split(), "K AH T".split()) == 1


def test_info_shows_both_vocabularies_and_the_shape(reverse_run):
    r = runner.invoke(app, ["info", str(reverse_run / "rev")])
    assert r.exit_code == 0
    assert "bidirectional lstm encoder" in r.stdout and "attention" in r.stdout
    assert "encoder, 1 layer x " in " ".join(r.stdout.split())  # (it said "1 layers")
    assert "input       char" in r.stdout and "output      char" in r.stdout
    d = json.loads(runner.invoke(app, ["info", str(reverse_run / "rev"), "--json"]).stdout)
    assert d["seq2seq"]["attention"] == "luong-general" and d["seq2seq"]["input_vocabulary"]["vocab_size"] == 8


def test_user_errors_are_one_line(reverse_run, tmp_path):
    run = str(reverse_run / "rev")
    one_line_error(runner.invoke(app, ["transduce", run], input="abc\nabXc\n"), 1, "stdin:2", "'X'", "--unknown skip")
    one_line_error(runner.invoke(app, ["sample", run]), 1, "charnn transduce")
    one_line_error(runner.invoke(app, ["transduce", run, "--n-best", "3"]), 2, "--beam 3", "sample N outputs")
    greedy = runner.invoke(app, ["transduce", run, "--n-best", "3", "--temp", "0"])  # (--temp 0 is greedy: it was
    one_line_error(greedy, 2, "--beam 3")  # told to sample N outputs with --temp)
    assert "--temp" not in greedy.stderr
    one_line_error(runner.invoke(app, ["transduce", run, "--beam", "2", "--temp", "0.5"]), 2, "Choose one")
    one_line_error(runner.invoke(app, ["transduce", run, str(tmp_path / "nope.txt")]), 1, "does not exist")
    one_line_error(runner.invoke(app, ["train", "--no-attention"]), 2, "--pairs")
    r = runner.invoke(app, ["transduce", run, "--unknown", "skip"], input="abXc\n")
    assert r.exit_code == 0 and r.stdout == "cba\n"
    (tmp_path / "in.txt").write_text("abc\n")
    for args in ([str(tmp_path / "in.txt")], []):  # (a traceback from the first read; nothing said on stdin)
        one_line_error(runner.invoke(app, ["transduce", run, *args, "--encoding", "nope"], input="abc\n"), 2,
                       "unknown encoding 'nope'")
        for codec in ("rot13", "base64", "hex"):  # (codecs of other kinds: tracebacks)
            one_line_error(runner.invoke(app, ["transduce", run, *args, "--encoding", codec], input="abc\n"), 2,
                           f"{codec!r} is not a text encoding")
    for command in (["train", str(tmp_path / "in.txt"), "--out", str(tmp_path)], ["eval", run, str(tmp_path / "in.txt")],
                    ["novelty", run]):
        one_line_error(runner.invoke(app, [*command, "--encoding", "rot13"], input="abc\n"), 2, "not a text encoding")
    one_line_error(runner.invoke(app, ["show", run, "--attention"], input="\n\n"), 1, "only blank lines")
    one_line_error(runner.invoke(app, ["transduce", run, "--beam", "100000"]), 2, "--beam", "at most 1,000")
    r = runner.invoke(app, ["eval", run, str(tmp_path / "in.txt"), "--beam", "0"])  # (it named --n-best, not eval's)
    one_line_error(r, 2, "--beam")
    assert "--n-best" not in r.stderr


def test_stdin_is_dash_and_read_in_the_given_encoding(reverse_run, tmp_path):
    run = str(reverse_run / "rev")
    (tmp_path / "in.txt").write_text("abc\n", encoding="utf-8")
    r = runner.invoke(app, ["transduce", run, str(tmp_path / "in.txt"), "-"], input="cde\n")
    assert r.exit_code == 0 and r.stdout == "cba\nedc\n", r.stderr
    r = runner.invoke(app, ["transduce", run, "--encoding", "utf-16"], input="abc\n".encode("utf-16"))
    assert r.exit_code == 0 and r.stdout == "cba\n", r.stderr  # (stdin was read as UTF-8 whatever --encoding said)


def test_a_wide_beam_decodes_fewer_inputs_at_once(reverse_run, monkeypatch):
    import charnn
    import charnn.generation.seq2seq as s2s

    m = charnn.load(str(reverse_run / "rev"))
    held = words(40, 3)
    want = m.transduce(held, beam=4)
    sizes = []
    decode = s2s.Transducer.decode
    monkeypatch.setattr(s2s.Transducer, "decode", lambda self, inputs, pos: sizes.append(len(inputs)) or
                        decode(self, inputs, pos))
    monkeypatch.setattr(s2s, "DECODE_ROWS", 12)  # hypotheses at once: 3 inputs of a beam of 4
    assert m.transduce(held, beam=4) == want and max(sizes) == 3


def test_an_input_with_no_known_character_is_a_blank_line_under_skip(reverse_run):
    """--unknown skip on a line of unknown characters only: a blank output (it was decoded from the end alone and
    wrote a letter), and a note saying so."""
    import charnn
    from charnn.sampling import TransduceConfig
    from charnn.generation.seq2seq import Transducer

    m = charnn.load(str(reverse_run / "rev"))
    assert m.transduce(["XYZ", "abc", "ÄÖ"], unknown="skip") == ["", "cba", ""]
    t = Transducer(m.net, m.source_tokenizer, m.tokenizer, TransduceConfig(unknown="skip").validate(), m.device)
    assert [h for h in t.run([("XYZ", "stdin:1"), ("abXc", "stdin:2")])][0] == []
    assert t.notes() == ["dropped 4 input character(s) the model does not know (--unknown skip)",
                         "1 input line(s) had no character the model knows and got a blank output line: stdin:1"]
    r = runner.invoke(app, ["transduce", str(reverse_run / "rev"), "--unknown", "skip"], input="QQ\nabc\n")
    assert r.exit_code == 0 and r.stdout == "\ncba\n"
    assert "note: dropped 2 input character(s)" in r.stderr and "stdin:1" in r.stderr


def test_an_input_far_longer_than_training_gets_a_note(reverse_run):
    """A 5,000-character line took 24 s to decode with no word why: attention is quadratic in its length."""
    longest = load_checkpoint(reverse_run / "rev" / "best.pt")["pairs"]["max_source"]
    assert 1 < longest < 10
    r = runner.invoke(app, ["transduce", str(reverse_run / "rev"), "--max-length", "5"],
                      input="abc\n" + "ab" * 40 + "\nba\n")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 3, r.stderr
    assert "note: 1 input line(s) far longer than any the model was trained on (the longest had " \
           f"{longest} characters; stdin:2 has 80)" in " ".join(r.stderr.split()), r.stderr
    r = runner.invoke(app, ["transduce", str(reverse_run / "rev")], input="abc\nba\n")
    assert r.exit_code == 0 and "note" not in r.stderr


def test_training_resumes_exactly(tmp_path):
    from test_resume import assert_same_training_state, stop_at, weights

    from charnn.training.trainer import StopRequest, TrainingInterrupted

    write_pairs(tmp_path / "r.tsv", words(400, 3))
    text = load_pairs([str(tmp_path / "r.tsv")], val_frac=0.1, seed=2)
    model = ModelConfig(vocab_size=1, layers=2, hidden=16, embed=8, dropout=0.2)
    cfg = dict(pairs=True, batch_size=16, lr=1e-2, warmup=3, eval_every=10, max_steps=30, device="cpu", seed=2,
               save_every_secs=0, out=str(tmp_path), threads=1)  # (as test_resume's: two runs' measured thread
    # counts can differ on a busy machine, and with them the last bits of the sums; it failed once in a CI run)
    Trainer(text, model, TrainConfig(name="straight", **cfg)).fit()
    stop = StopRequest()
    with pytest.raises(TrainingInterrupted):
        Trainer(text, model, TrainConfig(name="resumed", **cfg), stop_at(13, stop), stop=stop).fit()
    assert Trainer(text, model, TrainConfig(name="resumed", **cfg), resume=True).fit().steps == 30
    assert_same_training_state(weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "resumed" / "last.pt"))


def test_cli_trains_the_ablations(tmp_path):
    write_pairs(tmp_path / "r.tsv", words(300, 4))
    expected = {"--no-attention": (False, True, "general"), "--unidirectional": (True, False, "general"),
                "--attention-score": (True, True, "additive")}
    for flags in (["--no-attention"], ["--unidirectional"], ["--attention-score", "additive"]):
        r = runner.invoke(app, ["train", str(tmp_path / "r.tsv"), "--pairs", *flags, "--max-steps", "5",
                                "--batch-size", "16", "--hidden", "16", "--layers", "1", "--out", str(tmp_path),
                                "--name", flags[0][2:], "--quiet", "--device", "cpu"])
        assert r.exit_code == 0, r.stderr
        cfg = load_checkpoint(tmp_path / flags[0][2:] / "best.pt")["model_config"]
        assert (cfg["attention"], cfg["bidirectional"], cfg["attention_score"]) == expected[flags[0]]
        out = runner.invoke(app, ["transduce", str(tmp_path / flags[0][2:])], input="abc\n\nde\n")
        assert out.exit_code == 0 and len(out.stdout.split("\n")) == 4
    info = runner.invoke(app, ["info", str(tmp_path / "attention-score" / "best.pt"), "--json"])
    assert json.loads(info.stdout)["seq2seq"]["attention"] == "bahdanau-additive"
    for bad in (["--attention-score", "additive"], ["--pairs", "--attention-score", "dot"],  # one line, exit 2
                ["--pairs", "--no-attention", "--attention-score", "additive"]):
        r = runner.invoke(app, ["train", str(tmp_path / "r.tsv"), *bad, "--max-steps", "1", "--out", str(tmp_path)])
        assert r.exit_code == 2 and "--attention-score" in r.stderr and "Traceback" not in r.stderr
    for name, change, said in (("unidirectional", ["--no-attention"], "--no-attention (the run used attention)"),
                               ("no-attention", ["--unidirectional"], "--unidirectional (the run used bidirectional)"),
                               ("unidirectional", ["--attention-score", "additive"],
                                "--attention-score additive (the run used general)"),
                               ("unidirectional", ["--locked-dropout"],  # (a switch as typed: not "--x True")
                                "--locked-dropout (the run used no --locked-dropout)")):  # a resume went on, silently
        r = runner.invoke(app, ["train", str(tmp_path / "r.tsv"), "--pairs", "--resume", *change, "--name", name,
                                "--out", str(tmp_path), "--max-steps", "6", "--quiet"])
        assert r.exit_code == 2 and f"cannot change {said}" in r.stderr, r.stderr


def test_a_slow_producer_gets_each_result_before_sending_the_next(reverse_run):
    """Lines written one at a time: each output line arrives while stdin is still open (no one-line lag)."""
    proc = subprocess.Popen([sys.executable, "-m", "charnn", "transduce", str(reverse_run / "rev"), "--device", "cpu"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env(), bufsize=1)
    try:
        for w in ["abc", "", "fedd"]:
            proc.stdin.write(w + "\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 60)  # a one-line lag would wait here forever
            assert ready, f"no output for {w!r} while its input was the last line sent"
            assert proc.stdout.readline() == w[::-1] + "\n"
        proc.stdin.close()
        assert proc.wait(60) == 0
    finally:
        proc.kill()


def test_a_closed_pipe_is_quiet(reverse_run, tmp_path):
    (tmp_path / "in.txt").write_text("abc\n" * 5000, encoding="utf-8")
    cmd = (f"{sys.executable} -m charnn transduce {reverse_run / 'rev'} {tmp_path / 'in.txt'} --device cpu "
           "| head -n 2")
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, env=subprocess_env())
    assert r.returncode == 0 and r.stdout == "cba\ncba\n" and r.stderr == ""


def test_the_python_api_transduces_and_scores_with_the_cli_code(reverse_run, tmp_path):
    import charnn

    model = charnn.load(reverse_run / "rev")
    assert isinstance(model, charnn.Seq2SeqModel) and model.info["seq2seq"]["attention"]
    assert model.transduce("abc") == "cba"
    from charnn.api.params import ParamError
    for bad in ("ab\ncd", ["abc", None], ["x\ry"]):  # (a line break read as the end of the input: a wrong answer)
        with pytest.raises(ParamError, match="must be one line of text"):
            model.transduce(bad)
    for kwargs, param, says in ((dict(n_best=3), "n_best", "`beam=3`"), (dict(temperature=-1), "temperature", ">= 0"),
                                (dict(beam=2, top_k=3), "beam", "Choose one"), (dict(beam=5000), "beam", "1,000")):
        with pytest.raises(ParamError, match=says) as e:  # (the keywords, not the command's --n-best/--temp)
            model.transduce("abc", **kwargs)
        assert e.value.param == param and "--" not in str(e.value)
    held = words(20, 31)
    outs = model.transduce(held, beam=3)
    (tmp_path / "in.txt").write_text("\n".join(held) + "\n", encoding="utf-8")
    r = runner.invoke(app, ["transduce", str(reverse_run / "rev"), str(tmp_path / "in.txt"), "--beam", "3"])
    assert r.stdout.split("\n")[:-1] == outs
    best = model.transduce("abcd", beam=4, n_best=2, scores=True)
    assert len(best) == 2 and best[0][1] >= best[1][1]
    found = model.score([(w, w[::-1]) for w in held])
    assert found["exact_match"] > 0.8 and found["unknown_input_chars"] == found["unknown_target_chars"] == 0
    odd = model.score([("a\u2603b", "ba"), ("ab", "b\u2603\u2603a")])  # (scored as the unknown token, silently)
    assert (odd["unknown_input_chars"], odd["unknown_target_chars"]) == (1, 2)
    with pytest.raises(ParamError, match="`pairs` is empty"):  # (was: every number None)
        model.score([])
    with pytest.raises(CharnnError, match="not in the model's input characters .`unknown=skip` drops them.") as e:
        model.transduce("ab\u2603")  # (the command's words were `--unknown skip`)
    assert "--" not in str(e.value)
    with pytest.raises(CharnnError, match="^`line` needs a non-blank input line$"):  # (was "line needs a ... line")
        model.attention(" ")
    from charnn.errors import WrongKind
    for name in ("generate", "stream", "token_logprobs", "adapt", "classify", "for_label"):  # (was: AttributeError)
        with pytest.raises(WrongKind, match=f"sequence-to-sequence model .train --pairs.: it has no {name}"):
            getattr(model, name)
        assert not hasattr(model, name)
    with pytest.raises(CharnnError, match="serves language models"):
        from charnn.serve.server import load_models
        load_models([str(reverse_run / "rev")], "cpu")


def test_language_model_commands_say_what_to_use_for_a_pairs_model(reverse_run, tmp_path):
    run = str(reverse_run / "rev")
    (tmp_path / "t.txt").write_text("abc\n", encoding="utf-8")
    one_line_error(runner.invoke(app, ["novelty", run, str(tmp_path / "t.txt")]), 1, "sequence-to-sequence")
    one_line_error(runner.invoke(app, ["classify", run], input="abc\n"), 1, "charnn transduce")
    one_line_error(runner.invoke(app, ["train", str(tmp_path / "t.txt"), "--init-from", run, "--out",
                                       str(tmp_path)]), 2, "--init-from")
    one_line_error(runner.invoke(app, ["eval", run, str(tmp_path / "t.txt"), "--dynamic"]), 2, "--dynamic")
    one_line_error(runner.invoke(app, ["eval", run, str(tmp_path / "t.txt"), "--label-by", "line"]), 2,
                   "--label-by")  # (it was ignored)


def test_previews_show_validation_inputs_and_their_outputs(tmp_path):
    write_pairs(tmp_path / "r.tsv", words(300, 5))
    r = runner.invoke(app, ["train", str(tmp_path / "r.tsv"), "--pairs", "--max-steps", "4", "--preview-every", "2",
                            "--batch-size", "16", "--hidden", "16", "--layers", "1", "--out", str(tmp_path),
                            "--device", "cpu"])
    assert r.exit_code == 0, r.stderr
    assert "preview at step 2" in r.stderr and "preview at step 4" in r.stderr
    shown = [line for line in r.stderr.splitlines() if " -> " in line and not line.startswith(("training", "use it", "done"))]
    assert len(shown) == 8 and all(set(line.replace(" -> ", "")) <= set(ALPHABET) for line in shown), shown
    assert r.stdout == ""


def test_best_pt_is_the_checkpoint_with_the_lowest_validation_wer(tmp_path):
    """--pairs picks best.pt by the validation inputs' greedy WER (--best-by auto), against every reference of a
    word, and says so in the checkpoint; --best-by loss picks by val loss as before."""
    words_ = sorted(set(words(600, 7)))
    lines = [f"{w}\t{w[::-1]}\n" for w in words_] + [f"{w}\t{w}\n" for w in words_[::5]]  # some with two targets
    (tmp_path / "r.tsv").write_text("".join(lines), encoding="utf-8")
    text = load_pairs([str(tmp_path / "r.tsv")], val_frac=0.2, seed=3)
    model = ModelConfig(vocab_size=1, layers=1, hidden=32, embed=16, dropout=0.0)
    cfg = dict(pairs=True, batch_size=32, lr=1e-2, warmup=5, eval_every=25, max_steps=150, device="cpu", seed=3,
               save_every_secs=0, out=str(tmp_path), threads=1)
    evals = []
    record = lambda kind, info: evals.append(info) if kind == "eval" else None  # noqa: E731
    result = Trainer(text, model, TrainConfig(name="wer", **cfg), on_event=record).fit()
    scores = [e["score"] for e in evals]
    assert all(e["by"] == "wer" for e in evals) and len(set(scores)) > 1
    best = load_checkpoint(tmp_path / "wer" / "best.pt")
    assert best["selection"] == {"by": "wer", "score": min(scores), "best": min(scores)}
    assert best["step"] == evals[scores.index(min(scores))]["step"]
    assert result.best_by == "wer" and result.best_score == min(scores)
    # the score is the share of held-out words whose greedy output is none of their targets
    data, m, src_tok, tok = loaded_ckpt(tmp_path / "wer" / "best.pt")
    refs = {}
    for p in text.val:
        refs.setdefault(p.source, []).append(p.target)
    t = Transducer(m, src_tok, tok, TransduceConfig(unknown="skip").validate(), torch.device("cpu"), 4.0)
    outs = [h[0].text if h else "" for h in t.run((w, "v") for w in refs)]
    assert best["selection"]["score"] == pytest.approx(1 - sum(o in r for o, r in zip(outs, refs.values())) / len(refs))

    evals.clear()
    Trainer(text, model, TrainConfig(name="loss", best_by="loss", **cfg), on_event=record).fit()
    losses = [e["val_loss"] for e in evals]
    best = load_checkpoint(tmp_path / "loss" / "best.pt")
    assert "selection" not in best and best["val_loss"] == min(losses) and all(e["by"] == "loss" for e in evals)


def loaded_ckpt(path):
    data = load_checkpoint(path)
    return (data, *build_seq2seq(data))


def test_patience_counts_whole_word_gains():
    from charnn.training.schedule import MIN_GAIN, patience_after

    assert patience_after(0.30, 0.30, 0.30, 2, MIN_GAIN["wer"]) == (0.30, 0.30, 3)  # no new best
    assert patience_after(0.299, 0.30, 0.30, 2, MIN_GAIN["wer"]) == (0.299, 0.299, 0)  # one word fewer wrong
    assert patience_after(0.2995, 0.30, 0.30, 2, MIN_GAIN["loss"])[2] == 3  # a loss must drop 0.001


def test_best_by_wer_needs_pairs(tmp_path):
    (tmp_path / "t.txt").write_text("hello world\n" * 50, encoding="utf-8")
    for flags, words_ in ((["--best-by", "wer"], "needs --pairs"), (["--best-by", "bleu"], "must be one of")):
        r = runner.invoke(app, ["train", str(tmp_path / "t.txt"), "--max-steps", "1", "--out", str(tmp_path), *flags])
        one_line_error(r, 2, words_)


def test_a_run_picked_by_loss_resumes_picking_by_wer(tmp_path):
    """A checkpoint from before --best-by (or trained with --best-by loss) resumed under wer: its loss-based best
    is not compared with a WER; the first evaluation starts the WER record."""
    write_pairs(tmp_path / "r.tsv", words(300, 3))
    text = load_pairs([str(tmp_path / "r.tsv")], val_frac=0.1, seed=2)
    model = ModelConfig(vocab_size=1, layers=1, hidden=16, embed=8, dropout=0.0)
    cfg = dict(pairs=True, batch_size=16, lr=1e-2, warmup=3, eval_every=10, device="cpu", seed=2,
               save_every_secs=0, out=str(tmp_path), name="r", threads=1)
    Trainer(text, model, TrainConfig(best_by="loss", max_steps=20, **cfg)).fit()
    evals = []
    Trainer(text, model, TrainConfig(max_steps=30, **cfg), resume=True,
            on_event=lambda k, i: evals.append(i) if k == "eval" else None).fit()
    assert [e["by"] for e in evals] == ["wer"] and evals[0]["improved"]
    assert load_checkpoint(tmp_path / "r" / "best.pt")["selection"]["best"] == evals[0]["score"]
    # and back to the loss: best.pt (picked by WER) is replaced only by a lower loss than its own, and the best
    # val reported is best.pt's (it was replaced by the first evaluation, while the message quoted an older best)
    before = load_checkpoint(tmp_path / "r" / "best.pt")
    result = Trainer(text, model, TrainConfig(best_by="loss", max_steps=40, **cfg), resume=True).fit()
    best = load_checkpoint(tmp_path / "r" / "best.pt")
    assert best["val_loss"] <= before["val_loss"] and result.best_val_loss == best["val_loss"]


def test_a_pairs_model_is_sized_for_its_data_where_the_flags_leave_it_open(tmp_path):
    from charnn.tasks.pairs import PAIR_SIZES, SIZED, sized_for

    assert sized_for(1) == PAIR_SIZES[0][1] and sized_for(PAIR_SIZES[0][0] + 1) == PAIR_SIZES[1][1]
    assert sized_for(10**9) == PAIR_SIZES[-1][1] and all(set(flags) == SIZED for _, flags in PAIR_SIZES)
    write_pairs(tmp_path / "r.tsv", words(300, 4))
    small = sized_for(300)
    base = ["train", str(tmp_path / "r.tsv"), "--pairs", "--max-steps", "2", "--eval-every", "2", "--out",
            str(tmp_path), "--device", "cpu", "--threads", "1"]
    r = runner.invoke(app, [*base, "--name", "s", "--hidden", "16"])
    assert r.exit_code == 0, r.stderr
    cfg = load_checkpoint(tmp_path / "s" / "best.pt")["model_config"]
    assert cfg["hidden"] == 16 and all(cfg[k] == v for k, v in small.items() if k != "hidden")
    note = next(line for line in r.stderr.splitlines() if "model sized for" in line)
    assert "--hidden" not in note and f"--embed {small['embed']}" in note
    # every size flag given: nothing is sized, and nothing said
    r = runner.invoke(app, [*base, "--name", "g", "--hidden", "16", "--layers", "2", "--embed", "8", "--dropout", "0.2"])
    assert r.exit_code == 0 and "model sized" not in r.stderr
    cfg = load_checkpoint(tmp_path / "g" / "best.pt")["model_config"]
    assert (cfg["hidden"], cfg["layers"], cfg["embed"], cfg["dropout"]) == (16, 2, 8, 0.2)
    # a resumed run keeps its model, and a language model is never sized
    before = load_checkpoint(tmp_path / "s" / "last.pt")["model_config"]
    r = runner.invoke(app, [*base, "--name", "s", "--resume", "--max-steps", "4"])
    assert r.exit_code == 0 and "model sized" not in r.stderr, r.stderr
    assert load_checkpoint(tmp_path / "s" / "last.pt")["model_config"] == before
    from charnn.training.run import train_configs
    assert train_configs({"hidden": 64})[1].sized == ()
    assert train_configs({"pairs": True, "hidden": 64})[1].sized == ("dropout", "embed", "layers")


def test_a_pairs_batch_on_the_cpu_follows_the_data_unless_given_and_resume_keeps_it(tmp_path, monkeypatch):
    from charnn.tasks import pairs as pairs_task

    assert [pairs_task.batch_for(n) for n in (1, 20_000, 20_001, 10**9)] == [32, 32, 64, 64]
    monkeypatch.setattr(pairs_task, "PAIR_BATCHES", ((100, 8), (None, 12)))  # this test's data: 270 pairs
    write_pairs(tmp_path / "r.tsv", words(300, 5))
    base = ["train", str(tmp_path / "r.tsv"), "--pairs", "--max-steps", "2", "--eval-every", "2", "--out",
            str(tmp_path), "--device", "cpu", "--threads", "1", "--hidden", "16", "--layers", "1", "--embed", "8",
            "--dropout", "0"]

    def batch_of(name):
        return load_checkpoint(tmp_path / name / "last.pt")["train_config"]["batch_size"]
    r = runner.invoke(app, [*base, "--name", "auto"])
    assert r.exit_code == 0, r.stderr
    assert batch_of("auto") == 12 and "batch 12," in r.stderr  # the start line says what it chose
    r = runner.invoke(app, [*base, "--name", "given", "--batch-size", "5"])
    assert r.exit_code == 0 and batch_of("given") == 5, r.stderr
    monkeypatch.setattr(pairs_task, "PAIR_BATCHES", ((None, 7),))  # a later charnn with other defaults
    r = runner.invoke(app, [*base, "--name", "auto", "--resume", "--max-steps", "4"])
    assert r.exit_code == 0 and batch_of("auto") == 12, r.stderr


def test_edge_values_and_wrong_types_are_one_line_or_param_errors(reverse_run, tmp_path):
    """Were: tracebacks (--max-length 2**63-1, --length-penalty 600, --encoding utf-16 without a BOM), a BOM read
    as an input character, an empty pairs file scored as a row of dashes, a missing run folder taken for an input
    file; the API's wrong types raised Python's and torch's errors or were taken silently."""
    import charnn
    from charnn.api.params import ParamError
    run = str(reverse_run / "rev")
    (tmp_path / "in.txt").write_text("abc\n", encoding="utf-8")
    one_line_error(runner.invoke(app, ["transduce", run, str(tmp_path / "in.txt"), "--max-length",
                                       str(2**63 - 1)]), 2, "--max-length")
    one_line_error(runner.invoke(app, ["transduce", run, "--length-penalty", "600", "--beam", "2"], input="abc\n"), 2,
                   "--length-penalty")
    for search in ([], ["--beam", "2"]):  # a seed with nothing to sample (it was ignored)
        one_line_error(runner.invoke(app, ["transduce", run, "--seed", "3", *search], input="abc\n"), 2, "--seed")
    one_line_error(runner.invoke(app, ["transduce", run, str(tmp_path / "in.txt"), "--encoding", "utf-16"]), 1,
                   "not valid utf-16")
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfabc\n")
    r = runner.invoke(app, ["transduce", run, str(tmp_path / "bom.txt")])
    assert r.exit_code == 0 and r.stdout == "cba\n", r.stderr
    (tmp_path / "empty.tsv").write_text("\n\n")
    one_line_error(runner.invoke(app, ["eval", run, str(tmp_path / "empty.tsv")]), 1, "no input<TAB>target lines")
    (tmp_path / "unk.tsv").write_text("abc\tcbaQ\n")
    assert "1 target characters are not in" in runner.invoke(app, ["eval", run, str(tmp_path / "unk.tsv")]).stderr
    one_line_error(runner.invoke(app, ["transduce", str(tmp_path / "no-such-run"), str(tmp_path / "in.txt")]), 1,
                   "neither a checkpoint", "nor an input file")
    model = charnn.load(run, device="cpu")
    for kwargs, param in ((dict(beam=2.5), "beam"), (dict(beam="3"), "beam"), (dict(max_length=True), "max_length"),
                          (dict(scores="yes"), "scores"), (dict(batch_size=True), "batch_size")):
        with pytest.raises(ParamError) as e:
            model.transduce("abc", **kwargs)
        assert e.value.param == param, kwargs
    for bad in (None, 123):
        with pytest.raises(ParamError, match="inputs"):
            model.transduce(bad)
    for pairs in ([("abc",)], ("abc", "cba"), [("abc", None)], [("a\nb", "c")]):
        with pytest.raises(ParamError, match="pair"):
            model.score(pairs)
    with pytest.raises(ParamError, match="one line"):
        model.attention("a\nb")


def test_the_pairs_line_says_where_validation_came_from():
    """With --val-file it said "held out by input"; one skipped line was "1 lines"."""
    import io
    from rich.console import Console
    from charnn.cli.progress import TrainProgress
    buf = io.StringIO()
    progress = TrainProgress(Console(file=buf, width=200), open_ended=True)
    info = {"train_pairs": 10, "val_pairs": 3, "max_ratio": 1.5, "skipped_lines": 1, "sized": {}}
    progress("pairs", {**info, "val_file": "dev.tsv"})
    progress("pairs", {**info, "val_file": None})
    out = buf.getvalue()
    assert "(from dev.tsv)" in out and "(held out by input)" in out and "skipped 1 line that" in out


def test_validation_inputs_the_training_pairs_never_had_are_noted(tmp_path):
    """Only the targets' unknown characters were counted: a --val-file of inputs never seen said nothing."""
    words = ["abc", "de", "cab", "cde", "ba", "ed", "bad", "ace"] * 30
    (tmp_path / "t.tsv").write_text("".join(f"{w}\t{w[::-1]}\n" for w in words), encoding="utf-8")
    (tmp_path / "v.tsv").write_text("xyz\tcba\nab\tQQ\n", encoding="utf-8")
    r = runner.invoke(app, [str(a) for a in ("train", tmp_path / "t.tsv", "--pairs", "--val-file", tmp_path / "v.tsv",
                                             "--out", tmp_path, "--hidden", "16", "--embed", "8", "--layers", "1",
                                             "--max-steps", "2", "--device", "cpu", "--threads", "1")])
    assert r.exit_code == 0, r.stderr
    assert "note: 5 validation characters are not in" in r.stderr, r.stderr  # x, y, z and Q, Q


def test_resuming_on_other_pairs_points_at_what_works(tmp_path):
    """The refusal suggested --init-from, which a --pairs run refuses."""
    run = train_tiny_pairs(tmp_path, tmp_path / "out")
    with open(tmp_path / "rev.tsv", "a", encoding="utf-8") as f:
        f.write("zz\tzz\n")
    r = runner.invoke(app, [str(a) for a in ("train", tmp_path / "rev.tsv", "--pairs", "--out", run.parent, "--name",
                                             "rev", "--resume", "-q")])
    one_line_error(r, 2, "Pass those pairs again", "a --pairs model trains from scratch")
    assert "with --init-from and" not in r.stderr


def test_a_pairs_run_with_its_own_seed_and_val_frac_resumes_without_them(tmp_path):
    """The pairs were split with the command line's defaults before the saved settings came in: "this text has
    1,821 training tokens", the same file."""
    words = ["cat", "dog", "bird", "fish", "cow", "ant", "bee", "owl", "yak", "elk"]
    (tmp_path / "p.tsv").write_text("".join(f"{a}{b}\t{(a + b)[::-1]}\n" for a in words for b in words),
                                    encoding="utf-8")
    small = ["--out", str(tmp_path), "--hidden", "16", "--embed", "8", "--layers", "1", "--threads", "1", "-q"]
    assert runner.invoke(app, ["train", str(tmp_path / "p.tsv"), "--pairs", "--seed", "1", "--val-frac", "0.2",
                               "--max-steps", "2", *small]).exit_code == 0
    r = runner.invoke(app, ["train", str(tmp_path / "p.tsv"), "--pairs", "--resume", "--max-steps", "4", *small])
    assert r.exit_code == 0, r.stderr
    assert torch.load(tmp_path / "p" / "last.pt", weights_only=True)["step"] == 4
    (tmp_path / "v.tsv").write_text("catdog\tgodtac\nowlyak\tkaylwo\n", encoding="utf-8")  # its --val-file too
    assert runner.invoke(app, ["train", str(tmp_path / "p.tsv"), "--pairs", "--val-file", str(tmp_path / "v.tsv"),
                               "--name", "v", "--max-steps", "2", *small]).exit_code == 0
    r = runner.invoke(app, ["train", str(tmp_path / "p.tsv"), "--pairs", "--name", "v", "--resume", "--max-steps", "4",
                            *small])
    assert r.exit_code == 0, r.stderr


def test_max_time_foresees_the_wer_decoding_before_any_evaluation(tmp_path, monkeypatch):
    """A --pairs run picks best.pt by WER: each evaluation also decodes every validation input, which nothing
    foresaw before the first evaluation (often the final one: a 20-s run of a 2x512 model took 33 s on a busy
    CPU). A first batch is decoded at the start and scaled by the batches; best.pt picked by loss needs none."""
    import itertools

    from charnn.sampling import DECODE_BATCH
    from charnn.tasks import pairs as pairs_task

    write_pairs(tmp_path / "r.tsv", words(1200, 6))
    text = load_pairs([str(tmp_path / "r.tsv")], val_frac=0.5, seed=2)
    model = ModelConfig(vocab_size=1, layers=1, hidden=16, embed=8, dropout=0.0)
    ticks = itertools.count()
    decoded = []
    real = pairs_task.PairsTask._decoded
    monkeypatch.setattr(pairs_task.PairsTask, "_decoded", lambda self, m, d, refs: (decoded.append(len(refs)),
                                                                                     real(self, m, d, refs))[1])
    cfg = dict(pairs=True, batch_size=16, max_time=600.0, device="cpu", seed=2, out=str(tmp_path), threads=1)
    trainer = Trainer(text, model, TrainConfig(name="wer", **cfg))
    trainer.release()
    assert decoded == [DECODE_BATCH] and trainer.budget.select_cost > 0
    assert trainer.budget.eval_estimate() >= trainer.budget.select_cost  # (in the reserve before any evaluation)
    task = trainer.task
    probe = task.probe_select(trainer.model, trainer.device, trainer.dist, lambda: float(next(ticks)))
    assert probe == -(-len(task.references) // DECODE_BATCH)  # one tick a batch decoded, scaled by the batches
    by_loss = Trainer(text, model, TrainConfig(name="loss", best_by="loss", **cfg))
    by_loss.release()
    assert by_loss.budget.select_cost is None


def decoding(run, precision: str, batch: int, inputs, beam: int = 1):
    """(outputs, the precision the decode ran in, the dtypes of the decoder's logits) of `inputs`."""
    data, model, src_tok, tok = loaded(run)
    dtypes = set()
    real = model.decode

    def decode(*a, **k):
        logits, state = real(*a, **k)
        dtypes.add(logits.dtype)
        return logits, state

    model.decode = decode
    tr = Transducer(model, src_tok, tok, TransduceConfig(beam=beam, batch_size=batch, precision=precision).validate(),
                    torch.device("cpu"), data["pairs"]["max_ratio"])
    return [h[0].text for h in tr.run((w, "t") for w in inputs)], tr.precision, dtypes


def test_bf16_decoding_autocasts_and_agrees_with_fp32(reverse_run):
    """--precision bf16 runs the search's products in bf16 (the logits come out in bf16), with almost every output
    fp32's and every batch size's (its rounding can tip a near-tie: 1 of 150 inputs longer than any trained on
    differed between batch sizes once); where this CPU cannot run a bf16 decoder, it is one clear error."""
    from charnn.generation import precision as DP

    held = words(200, 99, 1, 10)
    fp32, choice, dtypes = decoding(reverse_run, "fp32", 64, held, beam=3)
    assert choice.how == "forced" and dtypes == {torch.float32}
    data, model, _, _ = loaded(reverse_run)
    if DP._runs(model, torch.device("cpu")):  # (oneDNN runs no bf16 LSTM on an AVX2-only CPU)
        with pytest.raises(CharnnError, match="--precision bf16 cannot decode"):
            decoding(reverse_run, "bf16", 64, held)
        return
    outs = {}
    for batch in (1, 64):
        outs[batch], choice, dtypes = decoding(reverse_run, "bf16", batch, held, beam=3)
        assert choice.precision == "bf16" and dtypes == {torch.bfloat16}
    assert np.mean([a == b for a, b in zip(outs[1], outs[64])]) >= 0.97
    assert np.mean([a == b for a, b in zip(outs[64], fp32)]) >= 0.97


def test_auto_precision_is_measured_once_for_the_model_and_remembered(reverse_run, monkeypatch, tmp_path):
    """auto measures the decoder at the default batch's rows once per model and search width, whatever
    --batch-size is (so an input's output does not depend on it), and takes the remembered decision after;
    without native bf16 it is fp32, unmeasured."""
    from charnn.generation import precision as DP

    monkeypatch.setenv("CHARNN_CACHE", str(tmp_path))
    monkeypatch.setattr(DP, "_decided", {})  # (this process's decisions: the suite's earlier ones)
    monkeypatch.setattr(DP, "native_bf16", lambda device: (True, ""))  # (measured wherever the suite runs)
    measured, real = [], DP._measure
    monkeypatch.setattr(DP, "_measure", lambda model, inputs, per_input, device: measured.append(
        (inputs, per_input)) or real(model, inputs, per_input, device))
    held = words(20, 5)
    choices = [decoding(reverse_run, "auto", batch, held, beam=3)[1] for batch in (1, 7, 256)]
    assert measured == [(256, 3)]
    assert [c.how for c in choices] == ["measured", "cached", "cached"]
    assert len({c.precision for c in choices}) == 1 and choices[0].precision in ("fp32", "bf16")
    remembered = json.loads((tmp_path / "precision.json").read_text())
    assert [k for k in remembered if k.startswith("decode | ") and k.endswith("| rows 768")]
    decoding(reverse_run, "auto", 64, held)  # (greedy: another width, measured on its own)
    assert measured == [(256, 3), (256, 1)]
    monkeypatch.setattr(DP, "native_bf16", lambda device: (False, "no native bf16"))
    monkeypatch.setenv("CHARNN_CACHE", str(tmp_path / "other"))
    _, choice, dtypes = decoding(reverse_run, "auto", 64, held)
    assert (choice.precision, choice.how, dtypes) == ("fp32", "rule", {torch.float32})
    assert len(measured) == 2


def test_precision_flags_are_checked(reverse_run, tmp_path, trained_run):
    run = str(reverse_run / "rev")
    one_line_error(runner.invoke(app, ["transduce", run, "--precision", "fp16"], input="abc\n"), 2, "--precision",
                   "auto, fp32, bf16")
    (tmp_path / "p.tsv").write_text("abc\tcba\n", encoding="utf-8")
    one_line_error(runner.invoke(app, ["eval", run, str(tmp_path / "p.tsv"), "--precision", "x"]), 2, "--precision")
    (tmp_path / "t.txt").write_text("some text\n", encoding="utf-8")
    one_line_error(runner.invoke(app, ["eval", str(trained_run.run_dir), str(tmp_path / "t.txt"), "--precision",
                                       "fp32"]), 2, "--precision", "--pairs")
    r = runner.invoke(app, ["transduce", run, "--precision", "fp32"], input="abc\n")
    assert r.exit_code == 0 and r.stdout == "cba\n", r.stderr
    r = runner.invoke(app, ["eval", run, str(tmp_path / "p.tsv"), "--precision", "fp32", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["exact_match"] == 1.0, r.stderr
    assert json.loads(r.stdout)["precision"] == "fp32"  # (what the outputs were decoded in)


def test_one_long_pair_is_not_padded_into_every_pair_of_its_block(reverse_run, monkeypatch):
    """eval of 300 short pairs and one of 5,000 characters padded 255 others to it: 26 GB of attention weights, and
    the process was killed. Blocks now stop at a memory budget; the scores are the same however pairs are cut."""
    from charnn.scoring import evaluate as E

    data, model, src_tok, tok = loaded(reverse_run)
    inputs = words(40, 3) + ["abcdef" * 30]
    src, tgt = encode_side(src_tok, inputs), encode_side(tok, [w[::-1] for w in inputs])
    order = np.argsort([len(t) for t in tgt], kind="stable")
    room = 4 * 41 * 181 * 64  # (the 40 short pairs fit in it; with the long one padded to 181 x 180 they do not)
    blocks = E.pair_blocks(order, src, tgt, 256, 64, most=room)
    assert [len(b) for b in blocks] == [40, 1] and blocks[1] == [40]
    assert [len(b) for b in E.pair_blocks(order, src, tgt, 16, 64)] == [16, 16, 9]  # (never more rows than asked)
    whole = E.pair_nats(model, src, tgt, start_id(tok), torch.device("cpu"))
    for most in (room, 1):  # (1 byte: a pair a block)
        monkeypatch.setattr(E, "LOGITS_BYTES", most)
        assert np.allclose(E.pair_nats(model, src, tgt, start_id(tok), torch.device("cpu")), whole, atol=1e-4)


def test_a_pairs_file_not_in_the_encoding_names_the_flag(reverse_run, tmp_path):
    """A Latin-1 pairs file said "is not valid utf-8: bad byte 0xe9 at offset 3" with no hint (a plain corpus's
    message names --encoding, and the README's faults table promises it)."""
    (tmp_path / "l.tsv").write_bytes("caf\xe9\tx\n".encode("latin-1"))
    for args in (["train", str(tmp_path / "l.tsv"), "--pairs", "--out", str(tmp_path)],
                 ["eval", str(reverse_run / "rev"), str(tmp_path / "l.tsv")]):
        one_line_error(runner.invoke(app, args), 1, "bad byte 0xe9", "--encoding")


def test_a_pairs_file_trained_without_pairs_gets_a_note(tmp_path):
    """`charnn train g2p.tsv` (--pairs left out) trained a language model on the whole lines without a word."""
    write_pairs(tmp_path / "p.tsv", words(300, 4))
    flags = ["--out", str(tmp_path), "--hidden", "16", "--layers", "1", "--max-steps", "2", "--eval-every", "2",
             "--device", "cpu", "--threads", "1"]
    r = runner.invoke(app, ["train", str(tmp_path / "p.tsv"), *flags])
    assert r.exit_code == 0 and "look like input<TAB>output pairs" in r.stderr and "add --pairs" in r.stderr, r.stderr
    for extra in (["--pairs"], ["-q"]):
        r = runner.invoke(app, ["train", str(tmp_path / "p.tsv"), *flags, *extra, "--name", "x" + extra[0]])
        assert r.exit_code == 0 and "look like" not in r.stderr, r.stderr
    (tmp_path / "t.txt").write_text("".join(f"{w} {w[::-1]}\n" for w in words(300, 4)), encoding="utf-8")
    r = runner.invoke(app, ["train", str(tmp_path / "t.txt"), *flags])
    assert r.exit_code == 0 and "look like" not in r.stderr, r.stderr


def test_auto_is_measured_once_in_a_process_whose_cache_cannot_be_written_and_eval_says_it(reverse_run, monkeypatch,
                                                                                            tmp_path):
    """With a cache folder that cannot be written (a read-only home), every Seq2SeqModel.transduce call measured
    again (2.5-3 s each); eval decoded in a precision it measured without a word."""
    from charnn.generation import precision as DP

    (tmp_path / "f").write_text("a file, not a folder")
    monkeypatch.setenv("CHARNN_CACHE", str(tmp_path / "f"))
    monkeypatch.setattr(DP, "_decided", {})
    monkeypatch.setattr(DP, "native_bf16", lambda device: (True, ""))
    measured, real = [], DP._measure
    monkeypatch.setattr(DP, "_measure", lambda *a: measured.append(1) or real(*a))
    import charnn
    m = charnn.load(str(reverse_run / "rev"), device="cpu")
    assert [m.transduce("abc", beam=2) for _ in range(3)] == [m.transduce("abc", beam=2)] * 3 and measured == [1]
    (tmp_path / "p.tsv").write_text("abc\tcba\nde\ted\n", encoding="utf-8")
    r = runner.invoke(app, ["eval", str(reverse_run / "rev"), str(tmp_path / "p.tsv"), "--beam", "3"])
    assert r.exit_code == 0 and "decoded in " in r.stderr and "remembered" in r.stderr, r.stderr
    assert measured == [1, 1]
    r = runner.invoke(app, ["eval", str(reverse_run / "rev"), str(tmp_path / "p.tsv"), "--beam", "3"])
    assert r.exit_code == 0 and "decoded in" not in r.stderr and measured == [1, 1], r.stderr
