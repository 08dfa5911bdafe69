"""Labels (issue 18): labelled corpora, the label-conditioned model, and `charnn classify`."""

import json
import random
import select
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from charnn.checkpoint import build_from_checkpoint, load_checkpoint
from charnn.scoring.classify import Classifier
from charnn.cli import app
from charnn.config import ModelConfig, TrainConfig
from charnn.data.batches import IGNORE, DocumentBatches, StreamBatches
from charnn.data.labels import Document, encode_documents, load_labelled
from charnn.api import ParamError
from charnn.errors import CharnnError, ConfigError
from charnn.models.lm import CharRNN
from charnn.text.tokenizer import CharTokenizer, start_id
from charnn.training.trainer import Trainer
from conftest import one_line_error, subprocess_env

runner = CliRunner()
WORDS = {"en": "the cat sat on a mat and the dog ran to the red barn".split(),
         "de": "ein hund lief über die wiese zum roten haus und".split(),
         "fr": "le chat noir dort sur la table de notre maison".split()}


def lines(lang: str, n: int, seed: int) -> list:
    r = random.Random(seed)
    return [" ".join(r.choice(WORDS[lang]) for _ in range(r.randint(3, 9))) for _ in range(n)]


@pytest.fixture(scope="session")
def lang_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("langs")
    for i, (lang, n) in enumerate((("en", 500), ("de", 250), ("fr", 120))):
        (root / f"{lang}.txt").write_text("\n".join(lines(lang, n, i)) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def labelled_run(tmp_path_factory, lang_files):
    out = tmp_path_factory.mktemp("labelled")
    r = runner.invoke(app, ["train", *(str(lang_files / f"{x}.txt") for x in ("en", "de", "fr")), "--label-by",
                            "file", "--out", str(out), "--name", "langs", "--hidden", "64", "--layers", "1",
                            "--embed", "16", "--max-steps", "200", "--eval-every", "100", "--batch-size", "8",
                            "--seq-len", "32", "--lr", "2e-2", "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.stderr
    return out / "langs"


# ---- data ---------------------------------------------------------------------------------------------
def test_file_labels_hold_out_the_tail_of_every_label(lang_files):
    text = load_labelled([str(lang_files / f"{x}.txt") for x in ("en", "de", "fr")], "file", val_frac=0.2)
    assert text.names == ["de", "en", "fr"] and text.name == "en"
    for doc_t, doc_v in zip(text.train, text.val):
        whole = (lang_files / f"{text.names[doc_t.label - 1]}.txt").read_text(encoding="utf-8")
        assert doc_t.label == doc_v.label and doc_t.text + doc_v.text == whole
        assert abs(len(doc_v.text) - 0.2 * len(whole)) <= 1
    rec = text.record()
    assert rec["by"] == "file" and rec["train_chars"] == [len(d.text) for d in text.train]


def test_folder_labels_are_subfolders(tmp_path):
    for lang in WORDS:
        (tmp_path / "c" / lang / "deep").mkdir(parents=True)
        (tmp_path / "c" / lang / "a.txt").write_text("\n".join(lines(lang, 30, 0)) + "\n")
        (tmp_path / "c" / lang / "deep" / "b.txt").write_text("\n".join(lines(lang, 30, 1)) + "\n")
    text = load_labelled([str(tmp_path / "c")], "folder")
    assert text.names == ["de", "en", "fr"]
    for d_train, d_val in zip(text.train, text.val):
        lang = text.names[d_train.label - 1]
        assert d_train.text + d_val.text == "\n".join(lines(lang, 30, 0) + lines(lang, 30, 1)) + "\n"
    (tmp_path / "c" / "stray.txt").write_text("no label\n")
    with pytest.raises(CharnnError, match="not inside a subfolder"):
        load_labelled([str(tmp_path / "c")], "folder")
    # by file, two files of one stem would be one label without a word: refused, naming both
    with pytest.raises(CharnnError, match="'.*en.a.txt' and '.*fr.a.txt' would both be label 'a'"):
        load_labelled([str(tmp_path / "c" / "en" / "a.txt"), str(tmp_path / "c" / "fr" / "a.txt")], "file")


def test_line_labels_split_at_random_and_bad_lines_name_file_and_line(tmp_path):
    rows = [f"{lang}\t{t}" for lang in WORDS for t in lines(lang, 50, 3)]
    random.Random(0).shuffle(rows)
    path = tmp_path / "rows.tsv"
    path.write_text("\n".join(rows[:40]) + "\n\n" + "\n".join(rows[40:]) + "\n", encoding="utf-8")
    text = load_labelled([str(path)], "line", val_frac=0.2, seed=5)
    assert len(text.train) + len(text.val) == 150 and len(text.val) == 30
    assert {d.label for d in text.val} == {1, 2, 3}  # a random share holds every label here
    assert load_labelled([str(path)], "line", val_frac=0.2, seed=5).val == text.val  # seeded
    assert load_labelled([str(path)], "line", val_frac=0.2, seed=6).val != text.val
    path.write_text("en\tfine\nno tab here\n", encoding="utf-8")
    with pytest.raises(CharnnError, match=r"rows.tsv:2: the line has no tab"):
        load_labelled([str(path)], "line")
    path.write_text("en\tone\nen\tuno\nno tab\nde\ttwo\nde\tzwei\nfr\tthree\n\tempty label\n", encoding="utf-8")
    text = load_labelled([str(path)], "line", val_frac=0.5, skip_bad_lines=True)
    assert text.skipped_lines == 2 and text.names == ["de", "en", "fr"]
    assert sorted(d.label for d in text.train) == [1, 2, 3] and sorted(d.label for d in text.val) == [1, 2]
    path.write_bytes(b"en\tone\rde\ttwo\ren\tthree\r")  # (CR line ends: one line, one label, and no word why)
    with pytest.raises(CharnnError, match="found one label .*its lines end in CR alone"):
        load_labelled([str(path)], "line")
    path.write_text("en\tone\nen \tuno\n de\ttwo\nde\tzwei\n", encoding="utf-8")  # (stray spaces: labels of
    assert load_labelled([str(path)], "line", val_frac=0.5).names == ["de", "en"]  # their own, "en " beside "en")
    # a label's only line stays in training: a random share of all lines could hold out a rare label's every line
    rows = [f"common\tline {i}" for i in range(60)] + ["rare\tthe only one"]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    for seed in range(20):
        text = load_labelled([str(path)], "line", val_frac=0.5, seed=seed)
        assert any(d.label == 2 for d in text.train) and len(text.val) == 30
    with pytest.raises(ConfigError, match="--label-by"):
        load_labelled([str(path)], "word")


def test_a_position_is_labelled_with_the_document_of_the_token_it_predicts():
    tok = CharTokenizer.build("abc\n")
    enc = encode_documents([Document(1, "aa\n"), Document(2, "bbb\n"), Document(1, "c\n")], tok, 2)
    assert enc.labels.tolist() == [1, 1, 1, 2, 2, 2, 2, 1, 1] and enc.per_label_chars == [5, 4]
    batches = StreamBatches(torch.from_numpy(enc.ids), 1, 4, torch.from_numpy(enc.labels))
    x, y, lab = next(iter(batches.epoch(0)))
    # x = "aa\nb" predicts y = "a\nbb": the newline ending doc 1 is read under label 2, doc 2's
    assert tok.decode(x[0].tolist()) == "aa\nb" and lab[0].tolist() == [1, 1, 2, 2]


def test_line_documents_train_alone_from_the_start_id():
    """--label-by line: each line is a row of its own, the start id before it, padding ignored; an epoch takes
    every document at most once, its batches within batch x seq_len tokens, the same plan for the same seed."""
    tok = CharTokenizer.build("abcdefgh\n")
    rng = random.Random(0)
    docs = [Document(1 + i % 3, "".join(rng.choice("abcdefgh") for _ in range(rng.randint(1, 40))) + "\n")
            for i in range(200)]
    enc = encode_documents(docs, tok, 3)
    batches = DocumentBatches(torch.from_numpy(enc.ids), enc.lengths, 4, 16, start_id(tok),
                              torch.from_numpy(enc.labels))
    plan = batches.plan(7)
    assert [(list(d), s) for d, s, _ in plan] == [(list(d), s) for d, s, _ in DocumentBatches(
        torch.from_numpy(enc.ids), enc.lengths, 4, 16, start_id(tok), torch.from_numpy(enc.labels)).plan(7)]
    starts = [d for d, _, fresh in plan if fresh]
    seen = np.concatenate(starts)
    assert len(set(seen.tolist())) == len(seen) > 200 - 64 * 4  # once each; a short tail waits for the next epoch
    assert all(len(d) % 4 == 0 and (len(d) == 4 or len(d) * np.asarray(enc.lengths)[d].max() <= 4 * 16) for d in starts)
    assert any(len(d) > 4 for d in starts)  # short lines share a step: more rows, the same tokens
    assert sum(1 for _ in batches.epoch(7)) == batches.steps_per_epoch(7) == len(plan)
    for (x, y, lab), (d, span, fresh) in zip(batches.epoch(7), plan):
        for r, i in enumerate(d):
            text = docs[i].text
            want = tok.encode(text)[span]
            assert y[r, :len(want)].tolist() == want.tolist() and (y[r, len(want):] == IGNORE).all()
            if fresh:
                assert x[r, 0] == start_id(tok) and tok.decode(x[r, 1:len(want)].tolist()) == text[:len(want) - 1]
            assert (lab[r] == docs[i].label).all()
    assert batches.fresh(7, 0) and [f for _, _, f in plan].count(False) > 0  # long rows go on in a second window


def test_line_labels_val_scores_each_document_alone(tmp_path):
    """A line-labelled run's val loss is its held-out lines scored each from a zero state, as classify does."""
    import charnn
    rows = [f"{lang}\t{t}" for lang in WORDS for t in lines(lang, 60, 9)]
    random.Random(1).shuffle(rows)
    (tmp_path / "rows.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = charnn.train([str(tmp_path / "rows.tsv")], label_by="line", out=str(tmp_path), name="l", max_steps=30,
                          eval_every=30, batch_size=8, seq_len=32, hidden=32, layers=1, embed=8, device="cpu")
    data = load_checkpoint(tmp_path / "l" / "last.pt")
    model, tok = build_from_checkpoint(data)
    text = load_labelled([str(tmp_path / "rows.tsv")], "line", val_frac=0.1, seed=1337)
    clf = Classifier(model, tok, data["labels"], torch.device("cpu"))
    ll = clf.loglik([tok.encode(d.text) for d in text.val])
    own = -sum(ll[i, d.label - 1] for i, d in enumerate(text.val)) / sum(len(d.text) for d in text.val)
    assert own == pytest.approx(result.last_val_loss, rel=1e-6)


def test_label_contrast_separates_the_labels_likelihoods(tmp_path):
    """--label-contrast trains a text's likelihood under its own label above the others': on the held-out lines
    the margin (own label's log-likelihood minus the best other's) grows against the same run without it."""
    import charnn
    rows = [f"{lang}\t{t}" for lang in WORDS for t in lines(lang, 80, 4)]
    random.Random(2).shuffle(rows)
    (tmp_path / "rows.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    text = load_labelled([str(tmp_path / "rows.tsv")], "line", val_frac=0.1, seed=1337)
    margins, losses = {}, {}
    for weight, negatives in ((0.0, 1), (1.0, 1), (1.0, 2)):  # 2: every other label, Bayes' rule over all three
        name = f"c{weight}-{negatives}"
        seen = []
        charnn.train([str(tmp_path / "rows.tsv")], label_by="line", label_contrast=weight, label_negatives=negatives,
                     out=str(tmp_path), name=name, max_steps=150, eval_every=150, batch_size=8, seq_len=32, hidden=32, layers=1, embed=8,
                     lr=1e-2, device="cpu", on_event=lambda k, i: seen.append(i["loss"]) if k == "step" else None)
        data = load_checkpoint(tmp_path / name / "last.pt")
        model, tok = build_from_checkpoint(data)
        ll = Classifier(model, tok, data["labels"], torch.device("cpu")).loglik([tok.encode(d.text) for d in text.val])
        own = np.array([ll[i, d.label - 1] for i, d in enumerate(text.val)])
        others = np.array([np.delete(ll[i], d.label - 1).max() for i, d in enumerate(text.val)])
        margins[weight, negatives], losses[weight, negatives] = float(np.mean(own - others)), seen[-1]
    for contrast in ((1.0, 1), (1.0, 2)):
        assert margins[contrast] > margins[0.0, 1] + 0.6, margins  # 5.4 -> 6.4 and 7.8 nats when written
        assert losses[contrast] < 2.5  # the reported loss is the language model's nats per token, not the sum


def test_other_labels_are_distinct_and_never_the_own():
    from charnn.tasks.labelled import other_labels as _other_labels
    torch.manual_seed(0)
    labels = torch.tensor([1, 2, 0, 4, 3, 1]).unsqueeze(1).expand(-1, 5)  # one label along a row; 0: unlabelled
    for k in (1, 2, 3):
        moved = _other_labels(labels, 4, k).view(k, 6, 5)
        assert (moved == moved[..., :1]).all()  # the same label along a row
        for i, own in enumerate(labels[:, 0].tolist()):
            got = set(moved[:, i, 0].tolist())
            assert got == {0} if own == 0 else (len(got) == k and own not in got and got <= {1, 2, 3, 4})
    assert set(_other_labels(labels, 4, 3).view(3, 6, 5)[:, 0, 0].tolist()) == {2, 3, 4}  # k = n - 1: all others


def test_line_labels_resume_exactly_mid_batch(tmp_path):
    """Documents, label dropout and --label-contrast draw randomly and a long line spans two windows: a run
    stopped mid-batch and resumed ends bitwise-identical to one that never stopped."""
    from test_resume import assert_same_training_state, stop_at, weights

    from charnn.training.trainer import StopRequest, TrainingInterrupted
    rows = [f"{lang}\t{t}" for lang in WORDS for t in lines(lang, 40, 6)]
    random.Random(3).shuffle(rows)
    (tmp_path / "rows.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    text = load_labelled([str(tmp_path / "rows.tsv")], "line", val_frac=0.1, seed=11)
    model = ModelConfig(vocab_size=1, layers=2, hidden=24, embed=8, dropout=0.2)
    cfg = dict(label_by="line", label_contrast=0.5, batch_size=4, seq_len=16, lr=1e-2, warmup=5, eval_every=15,
               max_steps=40, device="cpu", seed=11, save_every_secs=0, out=str(tmp_path))
    Trainer(text, model, TrainConfig(name="straight", **cfg)).fit()
    stop = StopRequest()
    trainer = Trainer(text, model, TrainConfig(name="resumed", **cfg), stop_at(0, stop), stop=stop)
    plan = trainer.batches.plan(trainer.offset or random.Random(11 * 100003).randint(0, trainer.batches.max_offset()))
    at = next(i for i in range(10, 40) if not plan[i][2])  # a step that ends in the middle of a batch
    trainer.on_event = stop_at(at, stop)
    with pytest.raises(TrainingInterrupted) as e:
        trainer.fit()
    assert weights(e.value.path)["progress"]["hidden"] is not None
    assert Trainer(text, model, TrainConfig(name="resumed", **cfg), resume=True).fit().steps == 40
    assert_same_training_state(weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "resumed" / "last.pt"))


# ---- model --------------------------------------------------------------------------------------------
def test_label_zero_is_the_plain_model_and_for_label_folds_a_label_in():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=7, hidden=16, embed=8, labels=3)).eval()
    with torch.no_grad():
        model.label_embed.weight[1:].normal_()
    x = torch.randint(0, 7, (2, 9))
    for label in range(4):
        want, _ = model(x, None, torch.full_like(x, label))
        got, _ = model.for_label(label)(x)
        assert torch.allclose(want, got, atol=1e-6), label
    plain, _ = model(x)
    assert torch.equal(plain, model(x, None, torch.zeros_like(x))[0])
    assert not torch.allclose(model(x, None, torch.ones_like(x))[0], plain)


# ---- training and classify ----------------------------------------------------------------------------
def test_the_checkpoint_keeps_labels_sizes_and_per_label_val(labelled_run):
    data = load_checkpoint(labelled_run / "best.pt")
    labels = data["labels"]
    assert data["model_config"]["labels"] == 3 and labels["by"] == "file" and labels["names"] == ["de", "en", "fr"]
    assert all(v is not None and 0 < v < 3 for v in labels["val_nats_per_char"])
    r = runner.invoke(app, ["info", str(labelled_run)])
    assert "conditioned on 3 labels" in r.stdout and "labels      3 by file" in r.stdout
    info = json.loads(runner.invoke(app, ["info", str(labelled_run), "--json"]).stdout)
    assert set(info["labels"]) == {"de", "en", "fr"} and info["labels"]["fr"]["train_docs"] == 1


def test_classify_held_out_lines(labelled_run):
    held = [(lang, t) for lang in WORDS for t in lines(lang, 40, 99)]
    r = runner.invoke(app, ["classify", str(labelled_run)], input="\n".join(t for _, t in held) + "\n")
    assert r.exit_code == 0, r.stderr
    got = r.stdout.splitlines()
    assert len(got) == len(held) > 64  # more than one block, in input order
    accuracy = np.mean([g == lang for g, (lang, _) in zip(got, held)])
    assert accuracy >= 0.9, accuracy


def test_classify_scores_match_the_model_under_each_label(labelled_run):
    data = load_checkpoint(labelled_run / "best.pt")
    model, tok = build_from_checkpoint(data)
    texts = ["the red barn", "", "le chat dort sur la table de notre maison et le chat"]
    clf = Classifier(model, tok, data["labels"], torch.device("cpu"))
    for text, scores in zip(texts, clf.classify(texts)):
        ids = torch.from_numpy(tok.encode(text + "\n"))
        x = torch.cat([torch.tensor([tok.encode("\n")[0]]), ids[:-1]]).unsqueeze(0)
        for j in range(3):
            logits, _ = model.for_label(j + 1)(x)
            want = -torch.nn.functional.cross_entropy(logits[0], ids, reduction="sum").item()
            assert scores.loglik[j] == pytest.approx(want, rel=1e-5, abs=1e-4)
        assert scores.posterior.sum() == pytest.approx(1.0)
    softmax = lambda v: np.exp(v - v.max()) / np.exp(v - v.max()).sum()  # noqa: E731
    uniform = Classifier(model, tok, data["labels"], torch.device("cpu"), uniform_prior=True).classify(texts)
    chars = np.array(data["labels"]["train_chars"], dtype=float)
    for u, s in zip(uniform, clf.classify(texts)):  # Bayes: the prior is uniform, or the training sizes
        assert u.posterior == pytest.approx(softmax(u.loglik))
        assert s.posterior == pytest.approx(softmax(s.loglik + np.log(chars / chars.sum())))


def test_classify_outputs(labelled_run, lang_files):
    args = ["classify", str(labelled_run)]
    r = runner.invoke(app, args + ["--probs"], input="the dog ran\n\nein hund\n")
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert [row[0] for row in rows][::2] == ["en", "de"] and len(rows) == 3 and all(0 < float(p) <= 1 for _, p in rows)
    r = runner.invoke(app, args + ["--top", "2"], input="le chat noir dort sur la table de notre maison\n")
    name1, p1, name2, p2 = r.stdout.strip().split("\t")
    assert name1 == "fr" and float(p1) >= float(p2) and name2 != name1
    r = runner.invoke(app, args + ["--json"], input="the cat\n")
    out = json.loads(r.stdout)
    assert out["label"] == "en" and set(out["labels"]) == {"de", "en", "fr"}
    assert sum(v["posterior"] for v in out["labels"].values()) == pytest.approx(1.0)
    r = runner.invoke(app, args + ["--per-file", str(lang_files / "de.txt"), str(lang_files / "fr.txt")])
    assert r.stdout.splitlines() == [f"{lang_files / 'de.txt'}\tde", f"{lang_files / 'fr.txt'}\tfr"]
    r = runner.invoke(app, args + [str(lang_files / "fr.txt")])
    assert r.stdout.count("\n") == (lang_files / "fr.txt").read_text().count("\n")
    empty = lang_files.parent / "empty.txt"  # no lines in, no lines out; --per-file answers it as a blank line
    empty.write_text("", encoding="utf-8")
    r = runner.invoke(app, args + [str(empty), str(lang_files / "fr.txt")])
    assert r.exit_code == 0 and r.stdout.count("\n") == (lang_files / "fr.txt").read_text().count("\n")
    r = runner.invoke(app, args + ["--per-file", str(empty)])
    assert r.exit_code == 0 and r.stdout.startswith(f"{empty}\t") and r.stdout.count("\n") == 1
    assert f"note: {empty} is empty: its answer is for no text at all" in r.stderr  # (there was no note)
    quiet = runner.invoke(app, args + ["--per-file", str(empty), "-q"])  # -q as sample's (it was refused)
    assert quiet.exit_code == 0 and quiet.stdout == r.stdout and quiet.stderr == ""


def test_classify_errors_are_one_line(labelled_run, trained_run, tmp_path):
    one_line_error(runner.invoke(app, ["classify", str(trained_run.run_dir)], input="x\n"), 1,
                   "trained without labels")
    one_line_error(runner.invoke(app, ["classify", str(labelled_run), str(tmp_path / "nope.txt")]), 1,
                   "does not exist")
    (tmp_path / "rows.tsv").write_text("a\tone\nb\ttwo\n", encoding="utf-8")
    one_line_error(runner.invoke(app, ["train", str(tmp_path / "rows.tsv"), "--label-by", "line", "--label-contrast",
                                       "-1", "--out", str(tmp_path)]), 2, "--label-contrast")
    one_line_error(runner.invoke(app, ["train", str(tmp_path / "rows.tsv"), "--label-by", "line", "--label-contrast",
                                       "1", "--label-negatives", "0", "--out", str(tmp_path)]), 2, "--label-negatives")
    for weight in ("nan", "inf"):  # not a silent "off", nor a loss that turns nan later
        one_line_error(runner.invoke(app, ["train", str(tmp_path / "rows.tsv"), "--label-by", "line",
                                           "--label-contrast", weight, "--out", str(tmp_path)]), 2, "finite number")
    many = tmp_path / "many.txt"
    many.write_text("the cat sat\n" * 5000)
    p = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m charnn classify {labelled_run} "
                                      f"< {many} | head -1 > /dev/null"],
                       env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "Traceback" not in p.stderr and "Error" not in p.stderr, p.stderr


def test_a_labelled_run_resumes_with_its_saved_labels(labelled_run, lang_files):
    """--resume takes --label-by from the saved run (it had to be given again); another one is refused."""
    files = [str(lang_files / f"{x}.txt") for x in ("en", "de", "fr")]
    out, name = str(labelled_run.parent), labelled_run.name
    one_line_error(runner.invoke(app, ["train", *files, "--label-by", "folder", "--out", out, "--name", name,
                                       "--resume", "--max-steps", "210"]), 2, "--label-by folder")
    r = runner.invoke(app, ["train", *files, "--out", out, "--name", name, "--resume", "--max-steps", "210", "-q"])
    assert r.exit_code == 0, r.stderr
    saved = load_checkpoint(labelled_run / "last.pt")
    assert saved["step"] == 210 and saved["labels"]["by"] == "file"


def test_trainer_takes_a_labelled_text_directly(lang_files, tmp_path):
    text = load_labelled([str(lang_files / f"{x}.txt") for x in ("en", "de")], "file")
    trainer = Trainer(text, ModelConfig(vocab_size=1, hidden=16, embed=8, layers=1),
                      TrainConfig(out=str(tmp_path), max_steps=3, eval_every=3, batch_size=4, seq_len=16,
                                  device="cpu", label_dropout=0.5))
    result = trainer.fit()
    assert result.run_dir.name == "en" and trainer.model_cfg.labels == 2


def test_sample_with_a_label_writes_in_its_voice(labelled_run):
    def words(label):
        args = ["sample", str(labelled_run), "--length", "600", "--seed", "4", "--temp", "0.7", "-q"]
        r = runner.invoke(app, args + (["--label", label] if label else []))
        assert r.exit_code == 0, r.stderr
        return r.stdout.split()

    for lang in WORDS:
        got = words(lang)
        own = np.mean([w in WORDS[lang] for w in got])
        assert own >= 0.6, (lang, own, got[:20])  # mostly its own words (the others share few)
    one_line_error(runner.invoke(app, ["sample", str(labelled_run), "--label", "es"]), 1,
                   "unknown label 'es'", "de, en, fr")


def test_sample_label_of_an_unlabelled_model_is_in_the_commands_words(trained_run):
    r = runner.invoke(app, ["sample", str(trained_run.run_dir), "--label", "bb"])  # (it said "for_label does not
    one_line_error(r, 1, "--label does not apply", "--label-by")                   # apply (... label_by ...)")
    assert "for_label" not in r.stderr and "label_by" not in r.stderr


def test_eval_reports_each_label(labelled_run, lang_files):
    fr = str(lang_files / "fr.txt")
    r = runner.invoke(app, ["eval", str(labelled_run), fr, "--json"])
    out = json.loads(r.stdout)["files"][0]
    per = {name: v["nats_per_char"] for name, v in out["labels"].items()}
    assert min(per, key=per.get) == "fr" and out["nats_per_char"] > per["fr"]  # its own label scores it best
    r = runner.invoke(app, ["eval", str(labelled_run), fr, "--label", "fr", "--json"])
    assert json.loads(r.stdout)["nats_per_char"] == pytest.approx(per["fr"], rel=1e-6)
    table = runner.invoke(app, ["eval", str(labelled_run), fr]).stdout
    assert "  as fr " in table and "  as de " in table


def test_the_python_api_has_labels(labelled_run):
    import charnn
    model = charnn.load(labelled_run, device="cpu")
    assert model.labels["names"] == ["de", "en", "fr"]
    assert model.classify("ein hund lief über die wiese")["label"] == "de"
    assert [d["label"] for d in model.classify(["the red barn", "le chat noir dort sur la table"])] == ["en", "fr"]
    de = model.for_label("de")
    assert de.label == "de" and de.score("ein hund lief").nats_per_char < model.score("ein hund lief").nats_per_char
    assert np.mean([w in WORDS["de"] for w in de.generate(length=300, temperature=0.7, seed=1).split()]) >= 0.6
    with pytest.raises(CharnnError, match="unknown label"):
        model.for_label("es")
    for call in (lambda: de.classify("the red barn"), lambda: de.for_label("en")):  # (was: "trained without labels")
        with pytest.raises(CharnnError, match="speaks as label 'de' .for_label.: call .* on the Model charnn.load"):
            call()
    for texts in (None, 5, [None], ["a", 3]):  # (was: Python's TypeError or AttributeError from deep inside)
        with pytest.raises(ParamError, match="`texts` must be a string or a list of strings"):
            model.classify(texts)
    # a blank line is answered (as `charnn classify` answers one), none are none, any iterable of strings is a list
    assert model.classify([]) == [] and len(model.classify(["the red barn", ""])) == 2
    assert model.classify(t for t in ("the red barn",)) == model.classify(["the red barn"])
    with pytest.raises(ParamError, match="`uniform_prior` must be True or False"):  # ("False" was a uniform prior)
        model.classify("the red barn", uniform_prior="False")
    assert model.classify("the red barn", uniform_prior=np.bool_(True)) == model.classify("the red barn",
                                                                                          uniform_prior=True)
    adapted = model.adapt("the red barn and the dog")  # adapted as the label-free twin: said so (it said "trained
    for call in (lambda: adapted.classify("the red barn"), lambda: adapted.for_label("en"),  # without labels")
                 lambda: adapted.adapt("the dog").classify("the red barn")):
        with pytest.raises(CharnnError, match="adapted .adapt. as its labelled model's label-free twin: call .* on"):
            call()
    assert de.adapt("ein hund").label == "de"  # a label's voice, adapted, is still that label's


def test_dynamic_evaluation_and_novelty_of_a_labelled_model(labelled_run, lang_files):
    fr = str(lang_files / "fr.txt")
    r = runner.invoke(app, ["eval", str(labelled_run), fr, "--dynamic", "--json"])
    assert r.exit_code == 0, r.stderr  # the label-free path adapts (its label vectors take no gradient)
    assert json.loads(r.stdout)["gain_nats_per_char"] > 0
    r = runner.invoke(app, ["eval", str(labelled_run), fr, "--dynamic", "--label", "fr", "--json"])
    assert r.exit_code == 0, r.stderr
    one_line_error(runner.invoke(app, ["novelty", str(labelled_run)], input="le chat\n"), 1, "labelled model")


def test_init_from_an_unlabelled_base_into_a_labelled_run(trained_run, lang_files, tmp_path):
    import charnn
    files = [str(lang_files / f"{x}.txt") for x in ("en", "de")]
    result = charnn.train(files, label_by="file", init_from=str(trained_run.run_dir), out=str(tmp_path),
                          max_steps=30, eval_every=30, batch_size=8, seq_len=32)
    data = load_checkpoint(result.run_dir / "best.pt")
    assert data["model_config"]["labels"] == 2 and data["parent"]["step"] == trained_run.steps
    # ...and a labelled base into an unlabelled run: its label vectors are left behind
    events = []
    again = charnn.train(files[0], init_from=str(result.run_dir), out=str(tmp_path), name="plain", max_steps=3,
                         eval_every=3, batch_size=8, seq_len=32,
                         on_event=lambda kind, info: events.append((kind, info)))
    assert "label_embed.weight" not in load_checkpoint(again.run_dir / "best.pt")["model"]
    names = load_checkpoint(result.run_dir / "best.pt")["labels"]["names"]
    assert [info.get("labels_dropped") for kind, info in events if kind == "init_from"] == [names]  # (silent before)
    r = runner.invoke(app, ["train", files[0], "--init-from", str(result.run_dir), "--out", str(tmp_path), "--name",
                            "plain2", "--max-steps", "2", "--batch-size", "8", "--seq-len", "32"])
    said = f"label{'s' if len(names) > 1 else ''} {', '.join(names)} are not in this run"
    assert r.exit_code == 0 and said in r.stderr


def test_init_from_a_labelled_base_keeps_the_vectors_of_the_labels_it_knows(labelled_run, lang_files, tmp_path):
    """A labelled run fine-tuned on some of its labels and a new one (a second phase with other flags, or a
    label added): before any step, a known label predicts as the base did under it; the new label starts
    fresh (its output vector the identity)."""
    (tmp_path / "it.txt").write_text((lang_files / "de.txt").read_text(encoding="utf-8"), encoding="utf-8")
    files = [str(lang_files / "fr.txt"), str(lang_files / "en.txt"), str(tmp_path / "it.txt")]
    text = load_labelled(files, "file", val_frac=0.1)
    assert text.names == ["en", "fr", "it"]
    trainer = Trainer(text, ModelConfig(vocab_size=1), TrainConfig(out=str(tmp_path), name="ft", label_by="file",
                                                                   init_from=str(labelled_run), max_steps=1,
                                                                   device="cpu"),
                      explicit={"init_from", "label_by", "max_steps", "device"})
    data = load_checkpoint(labelled_run / "best.pt")
    base, tok = build_from_checkpoint(data)
    assert data["labels"]["names"] == ["de", "en", "fr"]
    x = torch.from_numpy(tok.encode("le chat noir dort sur la table")).unsqueeze(0)
    model = trainer.model.eval()
    with torch.no_grad():
        for new, old in ((1, 2), (2, 3)):  # en, fr
            assert torch.equal(model.for_label(new)(x)[0], base.for_label(old)(x)[0])
        assert not model.label_out.weight[3].any() and model.label_out.weight[1:3].any()
    trainer.release()


def test_a_resumed_labelled_run_keeps_its_split_and_its_labels(lang_files, tmp_path):
    import charnn
    files = [str(lang_files / f"{x}.txt") for x in ("en", "de")]
    seen = []
    common = dict(label_by="file", out=str(tmp_path), name="r", eval_every=3, batch_size=8, seq_len=32)
    charnn.train(files, val_frac=0.3, max_steps=3, on_event=lambda k, i: seen.append(i) if k == "start" else None,
                 **common)
    charnn.train(files, resume=True, max_steps=6, on_event=lambda k, i: seen.append(i) if k == "start" else None,
                 **common)  # --val-frac not given again: the run's own 0.3 splits it, not the default 0.1
    assert seen[0]["val_tokens"] == seen[1]["val_tokens"] and seen[0]["train_tokens"] == seen[1]["train_tokens"]
    with pytest.raises(ConfigError, match="trained on labels de, en"):
        charnn.train(files + [str(lang_files / "fr.txt")], resume=True, max_steps=9, **common)


def test_classify_answers_each_line_as_it_arrives(labelled_run):
    p = subprocess.Popen([sys.executable, "-m", "charnn", "classify", str(labelled_run), "--encoding", "latin-1"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=subprocess_env())
    try:
        for line, want in (("the cat sat on the mat", "en"), ("le chat noir dort sur la table", "fr")):
            p.stdin.write(line + "\r\n")
            p.stdin.flush()
            ready, _, _ = select.select([p.stdout], [], [], 120)  # the answer comes before the next line is sent
            assert ready, "classify waited for more input before answering"
            assert p.stdout.readline() == want + "\n"
    finally:
        p.stdin.close()
        p.wait(timeout=60)
    assert p.returncode == 0


def test_labels_with_a_subword_tokenizer(lang_files, tmp_path):
    import charnn
    files = [str(lang_files / f"{x}.txt") for x in ("en", "de")]
    result = charnn.train(files, label_by="file", tokenizer="bpe", vocab_size=300, out=str(tmp_path), max_steps=6,
                          eval_every=6, batch_size=4, seq_len=16, hidden=16, embed=8, layers=1)
    data = load_checkpoint(result.run_dir / "best.pt")
    assert data["tokenizer"]["kind"] == "bpe" and all(v > 0 for v in data["labels"]["val_nats_per_char"])
    model = charnn.load(result.run_dir, device="cpu")
    out = model.classify(["ein hund", "the cat"])
    assert [set(d["labels"]) for d in out] == [{"de", "en"}] * 2
    assert out[0]["chars"] == len("ein hund\n")  # what is scored: the line and its end (as eval counts them)


def test_a_byte_order_mark_a_tab_in_a_name_and_a_tiny_label(tmp_path):
    """A BOM (Windows editors write one) made a label "\\ufeffgen" beside "gen"; a tab in a folder's name split
    classify's tab-separated answers; the too-few-characters error counted the closing newline."""
    rows = "".join(f"{lab}\t{t}\r\n" for lab, t in [("gen", "in the beginning"), ("ruth", "and naomi said")] * 6)
    (tmp_path / "bom.tsv").write_bytes(b"\xef\xbb\xbf" + rows.encode("utf-8"))
    assert load_labelled([str(tmp_path / "bom.tsv")], "line").names == ["gen", "ruth"]
    (tmp_path / "c" / "a\tb").mkdir(parents=True)
    (tmp_path / "c" / "d").mkdir()
    (tmp_path / "c" / "a\tb" / "x.txt").write_text("some text here\n")
    (tmp_path / "c" / "d" / "y.txt").write_text("more text here\n")
    with pytest.raises(CharnnError, match="control character; rename it"):
        load_labelled([str(tmp_path / "c")], "folder")
    (tmp_path / "small.txt").write_text("123456789")
    (tmp_path / "big.txt").write_text("x" * 100)
    with pytest.raises(CharnnError, match="'small' has 9 characters; .* needs at least 10"):
        load_labelled([str(tmp_path / "small.txt"), str(tmp_path / "big.txt")], "file")


def test_classify_reads_stdin_once_names_a_bad_lines_number_and_scores_the_newline(labelled_run):
    run = labelled_run
    one_line_error(runner.invoke(app, ["classify", str(run), "-", "-"], input="x\n"), 2, "stdin", "once")
    bad = b"".join(b"the cat sat %d\n" % i for i in range(3000)) + b"caf\xe9\n"
    r = runner.invoke(app, ["classify", str(run)], input=bad)
    assert r.exit_code == 1 and "stdin:3001: not valid utf-8" in r.stderr, r.stderr  # (the decoder's chunk offset)
    line = json.loads(runner.invoke(app, ["classify", str(run), "--json"], input="\ufeffthe cat\n").stdout)
    assert line["chars"] == len("the cat\n")  # the newline is scored, so counted; the BOM is not text


def test_classify_says_how_many_characters_the_model_does_not_know(labelled_run):
    """eval notes them; classify answered confidently about '日本語' and said nothing."""
    r = runner.invoke(app, ["classify", str(labelled_run)], input="the cat 日本語\nthe dog\n")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 2, r.stderr
    assert "note: 3 characters are not in the model's vocabulary" in r.stderr
    r = runner.invoke(app, ["classify", str(labelled_run), "-q"], input="the cat 日本語\n")
    assert r.exit_code == 0 and "vocabulary" not in r.stderr


def test_resuming_a_run_whose_labels_differed_only_by_spaces_says_why_not(tmp_path):
    """A run saved before labels were stripped ("pos " beside "pos") was told its own corpus was another one."""
    from conftest import one_line_error
    rows = "".join(f"{'pos' if i % 2 else 'neg'}\tline {i} of text\n" for i in range(40))
    (tmp_path / "l.tsv").write_text(rows, encoding="utf-8")
    args = ["train", str(tmp_path / "l.tsv"), "--label-by", "line", "--out", str(tmp_path), "--hidden", "16",
            "--layers", "1", "--threads", "1", "-q"]
    assert runner.invoke(app, [*args, "--max-steps", "2"]).exit_code == 0
    data = torch.load(tmp_path / "l" / "last.pt", weights_only=True)
    data["labels"]["names"] = ["neg", "pos", "pos "]  # (as such a run saved them)
    torch.save(data, tmp_path / "l" / "last.pt")
    one_line_error(runner.invoke(app, [*args, "--resume", "--max-steps", "4"]), 2, "differ only by spaces",
                   "--init-from")


@pytest.mark.parametrize("kind", [[], ["--classifier"]])
def test_a_labelled_run_with_a_val_file_resumes_without_it_given_again(tmp_path, kind):
    """Its text was read without the saved --val-file, split by --val-frac, and found "another text"."""
    rows = "".join(f"{'pos' if i % 2 else 'neg'}\tline {i} of some words\n" for i in range(60))
    (tmp_path / "l.tsv").write_text(rows, encoding="utf-8")
    (tmp_path / "v.tsv").write_text("".join(rows.splitlines(keepends=True)[:6]), encoding="utf-8")
    args = ["train", str(tmp_path / "l.tsv"), "--label-by", "line", *kind, "--out", str(tmp_path), "--hidden", "16",
            "--layers", "1", "--threads", "1", "-q"]
    assert runner.invoke(app, [*args, "--val-file", str(tmp_path / "v.tsv"), "--max-steps", "2"]).exit_code == 0
    r = runner.invoke(app, [*args, "--resume", "--max-steps", "4"])
    assert r.exit_code == 0, r.stderr
    assert torch.load(tmp_path / "l" / "last.pt", weights_only=True)["step"] == 4


def test_a_line_label_with_a_control_character_is_a_bad_line(tmp_path):
    """An ESC in a label went raw into eval's, classify's and info's tables (ESC [2J cleared the screen)."""
    rows = "".join(f"{'pos' if i % 2 else 'neg'}\tline {i} of some words\n" for i in range(40))
    (tmp_path / "l.tsv").write_text(rows + "\x1b[2Jx\tan odd one\n", encoding="utf-8")
    args = ["train", str(tmp_path / "l.tsv"), "--label-by", "line", "--out", str(tmp_path), "--hidden", "16",
            "--layers", "1", "--max-steps", "2", "--threads", "1", "-q"]
    one_line_error(runner.invoke(app, args), 1, "l.tsv:41", "control character in its label '\\x1b[2Jx'")
    r = runner.invoke(app, [*args, "--skip-bad-lines"])
    assert r.exit_code == 0, r.stderr
    assert load_checkpoint(tmp_path / "l" / "last.pt")["labels"]["names"] == ["neg", "pos"]
    odd = ["\U0001f469\u200d\U0001f4bb", "New\xa0York", "\u05e0\u05d1", "\u6771\u3000\u4eac"]  # (ZWJ, NBSP,
    rows = "".join(f"{odd[i % 4]}\tline {i} of some words\n" for i in range(40))  # ideographic space: ordinary
    (tmp_path / "u.tsv").write_text(rows, encoding="utf-8")  # text, no control characters: kept as they are)
    r = runner.invoke(app, ["train", str(tmp_path / "u.tsv"), *args[2:]])
    assert r.exit_code == 0, r.stderr
    assert load_checkpoint(tmp_path / "u" / "last.pt")["labels"]["names"] == sorted(odd)
    r = runner.invoke(app, ["info", str(tmp_path / "u")])
    assert r.exit_code == 0 and "New\xa0York" in r.stdout and "\\u" not in r.stdout, r.stdout


def test_a_label_is_found_in_either_unicode_form_and_without_its_spaces():
    """--label "Génesis" typed (NFC) for a label read from a macOS folder name (NFD) was "unknown label 'Génesis';
    the model's labels are: Génesis, ..." (the two looked the same); "mat " was refused though training drops
    the spaces around a label. An exact name still wins, and two labels alike but for that stay apart."""
    import unicodedata

    from charnn.scoring.classify import label_id

    nfd = unicodedata.normalize("NFD", "Génesis")
    labels = {"names": ["Exodus", nfd, "mat"]}
    assert label_id(labels, "Génesis") == 2 and label_id(labels, nfd) == 2 and label_id(labels, " mat ") == 3
    both = {"names": ["Génesis", nfd]}
    assert label_id(both, nfd) == 2 and label_id(both, "Génesis") == 1
    with pytest.raises(CharnnError, match="unknown label"):
        label_id(both, " Génesis")  # (alike to two: not a guess)
    with pytest.raises(CharnnError, match="unknown label 'Genesis'"):
        label_id(labels, "Genesis")


def test_a_combining_mark_in_a_message_is_named_not_drawn_onto_the_quote():
    from charnn.errors import chars_shown

    assert chars_shown(["\u0301", "x", "\x1b"]) == "U+0301 COMBINING ACUTE ACCENT, 'x', '\\x1b'"
    assert chars_shown("abcdefghijkl") == "'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j' and 2 more"
