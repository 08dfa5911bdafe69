"""The many-to-one classifier (issue 33): `train --label-by ... --classifier`, its windows, class weights,
--init-from, resume, and `classify` / `eval --label-by` / `info` / `Model.classify` serving it and the
label-conditioned language model alike."""

import json
import random

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import charnn
from charnn.checkpoint import build_from_checkpoint, load_checkpoint
from charnn.cli import app
from charnn.models.configs import ClassifierConfig
from charnn.data.textbatches import TextBatches, cut_windows
from charnn.models.classifier import TextClassifier
from charnn.scoring.classify import classifier_for
from charnn.scoring.discriminative import window_logprobs
from conftest import one_line_error

runner = CliRunner()
SMALL = ["--hidden", "24", "--embed", "12", "--batch-size", "16", "--seq-len", "48", "--threads", "1",
         "--precision", "fp32", "--device", "cpu", "-q"]


def pattern_text(label: str, r: random.Random) -> str:
    """Noise from "abcde " with the label's mark somewhere inside: q for "q", z for "z", none for "plain"."""
    chars = [r.choice("abcde ") for _ in range(r.randint(6, 30))]
    if label != "plain":
        chars.insert(r.randrange(len(chars) + 1), label)
    return "".join(chars)


def write_tsv(path, n: int, seed: int, shares=(("q", 1), ("z", 1), ("plain", 1))) -> list:
    r = random.Random(seed)
    labels = [name for name, k in shares for _ in range(k)]
    rows = [(lab, pattern_text(lab, r)) for lab in (r.choice(labels) for _ in range(n))]
    path.write_text("".join(f"{a}\t{b}\n" for a, b in rows), encoding="utf-8")
    return rows


def train(tsv, out, name, *extra):
    r = runner.invoke(app, ["train", str(tsv), "--label-by", "line", "--classifier", "--out", str(out), "--name",
                            name, *SMALL, *extra])
    assert r.exit_code == 0, (r.stderr, r.exception)
    return out / name


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("clf")
    write_tsv(root / "marks.tsv", 900, 0)
    return train(root / "marks.tsv", root / "runs", "marks", "--max-steps", "150", "--eval-every", "75",
                 "--lr", "2e-2")


def test_the_classifier_learns_which_mark_a_text_has(run, tmp_path):
    data = load_checkpoint(run / "best.pt")
    assert data["model_config"]["kind"] == "classifier" and data["model_config"]["labels"] == 3
    assert data["model_config"]["layers"] == 1 and data["labels"]["window"] == 48  # its own default: 1 layer
    assert data["labels"]["val_accuracy"] >= 0.9, data["labels"]
    # fresh texts through the CLI, one answer per line, in order
    rows = write_tsv(tmp_path / "test.tsv", 120, 99)
    r = runner.invoke(app, ["classify", str(run)], input="".join(t + "\n" for _, t in rows))
    answers = r.stdout.splitlines()
    assert r.exit_code == 0 and len(answers) == len(rows)
    assert np.mean([a == lab for a, (lab, _) in zip(answers, rows)]) >= 0.9


def test_classify_flags_and_eval_report_serve_the_classifier(run, tmp_path):
    write_tsv(tmp_path / "test.tsv", 60, 7)
    r = runner.invoke(app, ["classify", str(run), "--top", "2"], input="abqcd\n")
    first, p1, second, p2 = r.stdout.strip().split("\t")
    assert first == "q" and float(p1) >= float(p2) and second in ("z", "plain")
    r = runner.invoke(app, ["classify", str(run), "--json"], input="zzz ab\n")
    d = json.loads(r.stdout)
    assert d["label"] == "z" and abs(sum(v["posterior"] for v in d["labels"].values()) - 1) < 1e-6
    (tmp_path / "one.txt").write_text("abc q de\n", encoding="utf-8")
    r = runner.invoke(app, ["classify", str(run), "--per-file", "--probs", str(tmp_path / "one.txt")])
    path, label, p = r.stdout.strip().split("\t")
    assert path.endswith("one.txt") and label == "q" and float(p) > 0.5
    # --per-file --json is JSON lines (a "file" key), and '-' is stdin, as a file or as lines
    r = runner.invoke(app, ["classify", str(run), "--per-file", "--json", str(tmp_path / "one.txt"), "-"],
                      input="zzz ab\n")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(d["file"][-7:], d["label"]) for d in rows] == [("one.txt", "q"), ("-", "z")]
    r = runner.invoke(app, ["classify", str(run), "-"], input="zzz ab\nabc q de\n")
    assert r.exit_code == 0 and r.stdout.split() == ["z", "q"]
    r = runner.invoke(app, ["eval", str(run), str(tmp_path / "test.tsv"), "--label-by", "line", "--json"])
    rep = json.loads(r.stdout)
    assert rep["texts"] == 60 and rep["accuracy"] >= 0.85 and np.array(rep["confusion"]).sum() == 60
    assert rep["names"] == ["plain", "q", "z"] and 0 < rep["macro_f1"] <= 1
    r = runner.invoke(app, ["eval", str(run), str(tmp_path / "test.tsv"), "--label-by", "line"])
    assert r.stdout.startswith("accuracy ") and "macro-F1" in r.stdout and "recall" in r.stdout
    r = runner.invoke(app, ["info", str(run)])
    assert "held out    accuracy" in r.stdout and "classifier over 3 labels" in r.stdout
    # its losses are per text and its steps count texts: said so (they read "nats/char", "characters seen")
    assert "texts seen" in r.stdout and "nats/text" in r.stdout and "loss (nats/text) over steps" in r.stdout
    assert "nats/char" not in r.stdout and "characters seen" not in r.stdout
    training = json.loads(runner.invoke(app, ["info", str(run), "--json"]).stdout)["training"]
    assert training["unit"] == "text" and training["best_val_bits_per_char"] is None  # (nats per text / ln 2 was
    # shown as bits per character)
    from charnn.reports.plot import run_records
    assert run_records(str(run))[2] == "text"
    model = charnn.load(str(run), device="cpu")
    out = model.classify(["ab q", "zab"])
    assert [o["label"] for o in out] == ["q", "z"]
    # what needs next-character predictions says so in one line (they crashed inside torch)
    calls = {"score": ("ab q",), "token_logprobs": ("ab q",), "surprisal": ("ab q",), "activations": ("ab q",),
             "adapt": ("ab q",), "for_label": ("q",), "gradient_reach": ("ab q",), "generate": (), "stream": ()}
    from charnn.errors import WrongKind
    for method, args in calls.items():  # ... and as another kind's calls: hasattr tells the kinds apart
        with pytest.raises(WrongKind, match=f"is a classifier .* no {method}\\(\\); use classify"):
            getattr(model, method)(*args)
        assert not hasattr(model, method)
    assert model.kind == "classifier" and not model.generates and hasattr(model, "classify")
    with pytest.raises(WrongKind, match="is a classifier: it labels whole texts .* transduce\\(\\) is a seq"):
        model.transduce("ab")


def test_training_reports_a_classifiers_loss_per_text(tmp_path):
    write_tsv(tmp_path / "t.tsv", 200, 3)
    r = runner.invoke(app, ["train", str(tmp_path / "t.tsv"), "--label-by", "line", "--classifier", "--out",
                            str(tmp_path), *[a for a in SMALL if a != "-q"], "--max-steps", "4", "--eval-every", "2"])
    assert r.exit_code == 0, r.stderr
    assert "nats/char" not in r.stderr and "chars/s" not in r.stderr  # (its steps read texts, its loss is per text)
    assert "step 2: val " in r.stderr and "texts/s" in r.stderr and "best val" in r.stderr and "nats/text" in r.stderr
    # a subword tokenizer's characters a token are its text's (the start line said 1.00: the step's texts per text)
    (tmp_path / "w.tsv").write_text("".join(f"{lab}\tthe {w} sat on the {w} mat and the {w} ran\n" for lab, w in
                                            [("a", "cat"), ("b", "dog")] * 150), encoding="utf-8")
    r = runner.invoke(app, ["train", str(tmp_path / "w.tsv"), "--label-by", "line", "--classifier", "--tokenizer",
                            "bpe", "--vocab-size", "300", "--out", str(tmp_path), "--name", "w",
                            *[a for a in SMALL if a != "-q"], "--max-steps", "2"])
    assert r.exit_code == 0, r.stderr
    per = float(r.stderr.split(" chars/token")[0].rsplit(", ", 1)[1])
    assert per > 1.5, r.stderr


def test_errors_are_one_line(run, tmp_path):
    write_tsv(tmp_path / "t.tsv", 40, 1)
    plain = tmp_path / "plain.txt"
    plain.write_text("some text\n" * 50, encoding="utf-8")
    one_line_error(runner.invoke(app, ["train", str(plain), "--classifier", "--out", str(tmp_path)]), 2,
                   "--classifier", "--label-by")
    one_line_error(runner.invoke(app, ["train", str(plain), "--kind", "classifier", "--out", str(tmp_path)]), 2,
                   "--label-by")
    one_line_error(runner.invoke(app, ["train", str(tmp_path / "t.tsv"), "--label-by", "line", "--classifier",
                                       "--kind", "lm", "--out", str(tmp_path)]), 2, "--classifier", "--kind lm")
    one_line_error(runner.invoke(app, ["train", str(tmp_path / "t.tsv"), "--label-by", "line", "--classifier",
                                       "--class-weights", "heavy", "--out", str(tmp_path)]), 2, "--class-weights")
    one_line_error(runner.invoke(app, ["sample", str(run)]), 1, "charnn classify")  # (no "sampling ..." line first)
    from conftest import free_port
    one_line_error(runner.invoke(app, ["serve", str(run), "--port", str(free_port())]), 1, "is a classifier",
                   "charnn classify")
    one_line_error(runner.invoke(app, ["eval", str(run), str(tmp_path / "t.tsv")]), 2, "--label-by")
    one_line_error(runner.invoke(app, ["transduce", str(run), str(plain)]), 1, "is a classifier", "charnn classify")
    for args in ([str(tmp_path / "t.tsv"), "--label-by", "line"], [str(plain)],  # (tracebacks, or a classifier
                 [str(tmp_path / "t.tsv"), "--label-by", "line", "--classifier"]):  # dropped for a fresh LSTM)
        one_line_error(runner.invoke(app, ["train", *args, "--init-from", str(run), "--out", str(tmp_path),
                                           "--max-steps", "2"]), 2, "is a classifier", "--resume")
    r = runner.invoke(app, ["show", str(run), str(plain)])  # nothing per character to show: one line
    assert r.exit_code != 0 and "Traceback" not in r.stderr and "charnn classify" in r.stderr
    r = runner.invoke(app, ["show", str(run), str(plain), "--cells", "--format", "json"])  # its encoder's units
    assert r.exit_code == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["units"] > 0 and shown["tokens"][:5] == list("some ")


# ---- windows ---------------------------------------------------------------------------------------------
def test_texts_longer_than_the_window_are_read_in_windows():
    s, n, lab = cut_windows([0, 10], [10, 3], [1, 0], 4)
    assert s.tolist() == [0, 4, 8, 10] and n.tolist() == [4, 4, 2, 3] and lab.tolist() == [1, 1, 1, 0]
    # a label's long document (file, folder labels): whole windows on a grid moved by the shift
    s, n, _ = cut_windows([0], [11], [0], 4, shift=2, stream=True)
    assert s.tolist() == [2, 6] and n.tolist() == [4, 4]
    torch.manual_seed(0)
    model = TextClassifier(ClassifierConfig(vocab_size=7, labels=3, hidden=5, embed=4)).eval()
    long = np.arange(11) % 7
    got = window_logprobs(model, [long], 4, torch.device("cpu"))[0]
    with torch.no_grad():  # by hand: each window alone, log-probs averaged by length, renormalised
        parts = [(torch.log_softmax(model(torch.from_numpy(long[a:a + 4])[None])[0][0, 0], -1).numpy(),
                  len(long[a:a + 4])) for a in (0, 4, 8)]
    mean = sum(lp * k for lp, k in parts) / 11
    assert np.allclose(got, mean - np.logaddexp.reduce(mean), atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "mingru", "minlstm"])
def test_padding_does_not_change_a_texts_answer(cell):
    torch.manual_seed(1)
    for pooling in ("attention", "mean", "max", "final"):
        model = TextClassifier(ClassifierConfig(vocab_size=9, labels=4, hidden=6, embed=5, pooling=pooling,
                                                cell=cell, layers=2)).eval()
        short, long = torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5, 6, 7, 8, 1]])
        batch = torch.tensor([[1, 2, 3, 0, 0, 0], [4, 5, 6, 7, 8, 1]])
        with torch.no_grad():
            together = model(batch, None, lengths=torch.tensor([3, 6]))[0]
            alone = torch.cat([model(short)[0], model(long)[0]])
        assert torch.allclose(together, alone, atol=1e-5), pooling


def test_batches_hold_windows_of_similar_length_and_cover_every_text():
    ids = torch.arange(200) % 13
    lengths = [5, 30, 7, 12, 50, 9, 3, 40, 8, 36]
    b = TextBatches(ids, np.cumsum([0] + lengths[:-1]), lengths, list(range(10)), 2, 16, False)
    seen = []
    for x, y, n in b.epoch(3):
        assert x.shape[0] == 2 and y.shape == (2, 1) and int(n.max()) == x.shape[1] <= 16
        seen += y[:, 0].tolist()
    assert b.steps_per_epoch(3) == len(seen) // 2 and all(b.fresh(3, w) for w in range(3))
    assert sorted(set(seen)) <= list(range(10)) and len(seen) >= 16  # 22 windows: 11 batches of 2


# ---- class weights, resume, --init-from ------------------------------------------------------------------
def test_balanced_class_weights_weigh_the_rare_label_up(tmp_path):
    tsv = tmp_path / "skew.tsv"
    write_tsv(tsv, 300, 3, shares=(("q", 8), ("plain", 1)))
    runs = {}
    for w in ("none", "balanced"):
        runs[w] = train(tsv, tmp_path, f"skew-{w}", "--max-steps", "4", "--eval-every", "4", "--class-weights", w)
    none, balanced = (load_checkpoint(runs[w] / "last.pt") for w in ("none", "balanced"))
    assert balanced["labels"]["class_weights"] == "balanced"
    # the same batches from the same weights, another loss: the rare label's logit gains more
    rare = balanced["labels"]["names"].index("plain")
    gain = {w: d["model"]["head.bias"][rare] - d["model"]["head.bias"].mean() for w, d in (("none", none),
                                                                                        ("balanced", balanced))}
    assert gain["balanced"] > gain["none"] + 1e-4, gain


def test_class_weights_scale_each_texts_loss():
    from charnn.tasks.classify import ClassifierTask

    task = ClassifierTask(None)
    task.weights = torch.tensor([0.5, 3.0])
    nll, y = torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([[0], [1], [1]])
    added, _ = task.step_loss(nll, y, 3.0, None, None, None, None)
    assert float(nll.sum() / 3 + added) == pytest.approx((0.5 * 1 + 3 * 2 + 3 * 4) / 3)


def test_interrupted_then_resumed_equals_straight(tmp_path):
    import signal

    from charnn.config import ModelConfig, TrainConfig
    from charnn.data.labels import load_labelled
    from charnn.training.trainer import StopRequest, Trainer, TrainingInterrupted

    tsv = tmp_path / "r.tsv"
    write_tsv(tsv, 300, 4)
    text = load_labelled([str(tsv)], "line")
    model = dict(vocab_size=1, kind="classifier", layers=1, hidden=24, embed=12)
    train = dict(out=str(tmp_path), label_by="line", classifier=True, batch_size=16, seq_len=48, max_steps=30,
                 eval_every=10, device="cpu", threads=1, precision="fp32", save_every_secs=0, seed=3)
    Trainer(text, ModelConfig(**model), TrainConfig(name="straight", **train)).fit()
    stop = StopRequest()

    def stop_at_20(kind, info):
        if kind == "step" and info["step"] == 20:
            stop.signum = signal.SIGINT

    cfg = TrainConfig(name="resumed", **train)
    with pytest.raises(TrainingInterrupted):
        Trainer(text, ModelConfig(**model), cfg, stop_at_20, stop=stop).fit()
    half = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert half["step"] == 20 and half["progress"]["epoch"] == 1 and half["progress"]["window"] > 0  # mid-epoch
    Trainer(text, ModelConfig(**model), cfg, resume=True).fit()
    a, b = (load_checkpoint(tmp_path / n / "last.pt") for n in ("straight", "resumed"))
    assert a["step"] == b["step"] == 30
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for i, state in a["optimizer"]["state"].items():
        for k in state:
            assert torch.equal(state[k], b["optimizer"]["state"][i][k]), (i, k)


def test_init_from_a_language_model_copies_its_embedding(tmp_path):
    rows = write_tsv(tmp_path / "i.tsv", 300, 5)
    plain = tmp_path / "plain.txt"
    plain.write_text("".join(t + "\n" for _, t in rows), encoding="utf-8")
    r = runner.invoke(app, ["train", str(plain), "--out", str(tmp_path), "--name", "lm", "--max-steps", "3",
                            "--eval-every", "3", "--layers", "1", *SMALL])
    assert r.exit_code == 0, r.stderr
    run = train(tmp_path / "i.tsv", tmp_path, "clf", "--init-from", str(tmp_path / "lm"), "--max-steps", "1",
                "--eval-every", "1", "--lr", "1e-12", "--dropout", "0")
    lm, clf = load_checkpoint(tmp_path / "lm" / "last.pt"), load_checkpoint(run / "last.pt")
    v = lm["model"]["embed.weight"].shape[0]
    assert torch.allclose(clf["model"]["embed.weight"][:v], lm["model"]["embed.weight"], atol=1e-6)
    assert torch.allclose(clf["model"]["encoder.weight_hh_l0"], lm["model"]["rnn.weight_hh_l0"], atol=1e-6)
    assert clf["parent"]["path"].endswith(".pt")


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_a_parallel_scan_encoder_learns_and_reads_both_ways(cell, tmp_path):
    """--classifier --cell mingru|minlstm: the registry's parallel-scan cells as the encoder, both directions.
    The mark sits in the first or the last three characters, so either direction alone sees half of them at
    the start of its scan; the model must learn it, classify fresh texts, and show its units."""
    write_tsv(tmp_path / "m.tsv", 900, 3)
    run = train(tmp_path / "m.tsv", tmp_path, cell, "--cell", cell, "--max-steps", "150", "--eval-every", "75",
                "--lr", "2e-2", "--layers", "2")
    data = load_checkpoint(run / "best.pt")
    assert data["model_config"]["cell"] == cell and data["model_config"]["kind"] == "classifier"
    assert any(k.startswith("encoder.bwd.1.") for k in data["model"])  # the backward stack, two blocks
    assert data["labels"]["val_accuracy"] >= 0.9, data["labels"]
    rows = write_tsv(tmp_path / "t.tsv", 100, 98)
    r = runner.invoke(app, ["classify", str(run)], input="".join(t + "\n" for _, t in rows))
    assert r.exit_code == 0
    assert np.mean([a == lab for a, (lab, _) in zip(r.stdout.splitlines(), rows)]) >= 0.9
    r = runner.invoke(app, ["info", str(run)])
    assert r.exit_code == 0 and f"bidirectional {cell}" in r.stdout


def test_a_parallel_scan_encoder_takes_a_minrnn_language_models_blocks(tmp_path):
    rows = write_tsv(tmp_path / "i.tsv", 300, 5)
    plain = tmp_path / "plain.txt"
    plain.write_text("".join(t + "\n" for _, t in rows), encoding="utf-8")
    r = runner.invoke(app, ["train", str(plain), "--out", str(tmp_path), "--name", "lm", "--max-steps", "3",
                            "--eval-every", "3", "--cell", "mingru", "--ffn", "0", *SMALL])
    assert r.exit_code == 0, r.stderr
    run = train(tmp_path / "i.tsv", tmp_path, "clf", "--init-from", str(tmp_path / "lm"), "--cell", "mingru",
                "--layers", "2", "--max-steps", "1", "--eval-every", "1", "--lr", "1e-12", "--dropout", "0")
    lm, clf = load_checkpoint(tmp_path / "lm" / "last.pt"), load_checkpoint(run / "last.pt")
    for own, theirs in (("encoder.inp.weight", "inp.weight"), ("encoder.fwd.1.gates.weight", "blocks.1.gates.weight")):
        assert torch.allclose(clf["model"][own], lm["model"][theirs], atol=1e-6), own


def test_label_flags_without_labels_are_one_line(tmp_path):
    plain = tmp_path / "p.txt"
    plain.write_text("some plain text\n" * 50, encoding="utf-8")
    one_line_error(runner.invoke(app, ["train", str(plain), "--label-contrast", "10", "--out", str(tmp_path)]), 2,
                   "--label-contrast", "--label-by")
    write_tsv(tmp_path / "l.tsv", 60, 1)
    one_line_error(runner.invoke(app, ["train", str(tmp_path / "l.tsv"), "--label-by", "line", "--class-weights",
                                       "balanced", "--out", str(tmp_path)]), 2, "--class-weights", "--classifier")


def test_a_classifier_cell_outside_the_registry_is_one_line(tmp_path):
    write_tsv(tmp_path / "c.tsv", 60, 1)
    r = runner.invoke(app, ["train", str(tmp_path / "c.tsv"), "--label-by", "line", "--classifier", "--cell", "xlstm",
                            "--out", str(tmp_path), *SMALL])
    one_line_error(r, 2, "--cell", "mingru", "lstm")


def test_either_kind_classifies_through_the_same_interface(tmp_path):
    tsv = tmp_path / "b.tsv"
    rows = write_tsv(tsv, 200, 6)
    r = runner.invoke(app, ["train", str(tsv), "--label-by", "line", "--out", str(tmp_path), "--name", "bayes",
                            "--max-steps", "4", "--eval-every", "4", "--layers", "1", *SMALL])
    assert r.exit_code == 0, r.stderr
    data = load_checkpoint(tmp_path / "bayes" / "last.pt")
    model, tok = build_from_checkpoint(data)
    scores = classifier_for(model, tok, data["labels"], torch.device("cpu")).classify([t for _, t in rows[:5]])
    assert len(scores) == 5 and all(abs(s.posterior.sum() - 1) < 1e-6 for s in scores)
    r = runner.invoke(app, ["eval", str(tmp_path / "bayes"), str(tsv), "--label-by", "line", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["texts"] == 200


def test_ngram_buckets_are_the_same_for_the_same_ngram_and_zero_in_the_padding():
    from charnn.models.classifier import ngram_ids

    x = torch.tensor([[5, 6, 7, 0, 0], [9, 5, 6, 7, 8]])
    got = ngram_ids(x, torch.tensor([3, 5]), 3, 1000)
    assert got.shape == (2, 5 + 4 + 3) and int(got.min()) >= 0 and int(got.max()) < 1000
    unigrams, bigrams, trigrams = got[:, :5], got[:, 5:9], got[:, 9:]
    assert unigrams[0, :3].tolist() == unigrams[1, 1:4].tolist() and unigrams[0, 3:].tolist() == [0, 0]
    assert bigrams[0, :2].tolist() == bigrams[1, 1:3].tolist() and bigrams[0, 2:].tolist() == [0, 0]
    assert trigrams[0, 0] == trigrams[1, 1] and trigrams[0, 1:].tolist() == [0, 0]
    assert (got[1] > 0).all()  # a full row has no padding
