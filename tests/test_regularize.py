"""The training-time regularisers (charnn.models.regularize): each one does what it says to the forward, only in
training; the plain weights serve everything else; runs with them train, resume exactly and refuse bad values."""

import math
import signal

import pytest
import torch
import torch.nn as nn
from conftest import make_text
from typer.testing import CliRunner

from charnn.checkpoint import load_checkpoint
from charnn.cli import app
from charnn.config import ModelConfig, TrainConfig
from charnn.models.configs import LMConfig, MinRNNConfig, Seq2SeqConfig
from charnn.data.corpus import Corpus
from charnn.errors import ConfigError
from charnn.models import regularize
from charnn.models.lm import CharRNN
from charnn.models.minrnn import MinRNN
from charnn.models.minstep import MinStepper
from charnn.models.seq2seq import Seq2Seq
from charnn.models.stepper import FastStepper
from charnn.training.schedule import patience_after
from charnn.training.trainer import StopRequest, Trainer, TrainingInterrupted, train

ALL = dict(weight_drop=0.5, locked_dropout=True, input_dropout=0.2, embed_dropout=0.1, ar=2.0, tar=1.0)
MIN_ALL = {k: v for k, v in ALL.items() if k != "weight_drop"}  # --cell mingru/minlstm: no hidden-to-hidden matrix
TINY = dict(layers=2, hidden=16, embed=8, dropout=0.3)


def lm(**kw) -> CharRNN:
    torch.manual_seed(0)
    return CharRNN(LMConfig(vocab_size=11, **{**TINY, **kw}))


def test_every_regulariser_off_is_the_plain_forward_and_eval_ignores_them():
    x = torch.randint(0, 11, (3, 9))
    plain, regular = lm(), lm(**ALL)
    regular.load_state_dict(plain.state_dict())
    assert regular.state_dict().keys() == plain.state_dict().keys()  # no parameters of their own
    plain.eval(), regular.eval()
    a, b = plain(x)[0], regular(x)[0]
    assert torch.equal(a, b)  # evaluation reads the plain weights
    st = FastStepper(regular, 3)  # and so does sampling
    for t in range(9):
        logits = st.step(x[:, t])
    assert torch.allclose(logits, a[:, -1], atol=1e-5)
    regular.train()
    torch.manual_seed(1)
    assert not torch.allclose(regular(x)[0], a)  # training forwards are regularised


def test_weight_drop_drops_hidden_to_hidden_weights_and_keeps_the_stack_call():
    """With only weight drop, the layer runs as torch's fused stack with W_hh masked: the same outputs as the
    module's own forward with those masked weights, and gradients reach the plain parameters."""
    model = lm(weight_drop=0.5, dropout=0.0).train()
    x = torch.randint(0, 11, (2, 7))
    torch.manual_seed(3)
    out, _ = model(x)
    torch.manual_seed(3)
    w = dict(model.rnn.named_parameters())
    masked = {k: nn.functional.dropout(v, 0.5, True) if k.startswith("weight_hh") else v for k, v in w.items()}
    assert all((masked[k] == 0).float().mean() > 0.3 for k in masked if k.startswith("weight_hh"))
    ref = model.head(torch.func.functional_call(model.rnn, masked, (model.embed(x),))[0])
    assert torch.allclose(out, ref, atol=1e-6)
    out.sum().backward()
    assert model.rnn.weight_hh_l0.grad is not None and model.rnn.weight_hh_l0.grad.abs().sum() > 0


def test_locked_dropout_keeps_one_mask_per_sequence():
    x = torch.ones(4, 50, 6)
    y = regularize.dropout(x, 0.5, True, locked=True)
    assert torch.equal(y, y[:, :1].expand_as(y))  # the same mask at every step
    assert not torch.equal(y[0], y[1])  # but not the same for every sequence
    z = regularize.dropout(x, 0.5, True, locked=False)
    assert not torch.equal(z, z[:, :1].expand_as(z))


def test_locked_dropout_between_layers_runs_layer_by_layer_with_the_stacks_weights():
    model = lm(locked_dropout=True, dropout=0.0).train()  # p = 0 between layers: the split path must agree
    model.recurrence.between = 0.0
    x = torch.randint(0, 11, (2, 6))
    assert torch.allclose(model(x)[0], lm(dropout=0.0)(x)[0], atol=1e-6)
    split = regularize.Recurrence(model.rnn, 0.0, regularize.Regularisers(locked=True))
    split.between = 1e-9  # forces the per-layer path with a mask that drops nothing
    e = model.embed(x)
    a, (h, c) = split(e, None, True)
    b, (h2, c2) = model.rnn(e)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(h, h2, atol=1e-5) and torch.allclose(c, c2, atol=1e-5)
    for cell in ("gru", "rnn"):
        rnn = lm(cell=cell, dropout=0.0).rnn
        out, hn = regularize.Recurrence(rnn, 1e-9, regularize.Regularisers(locked=True))(e, None, True)
        ref, hn2 = rnn(e)
        assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(hn, hn2, atol=1e-5)


def test_embedding_dropout_drops_whole_characters():
    emb = nn.Embedding(5, 3)
    nn.init.constant_(emb.weight, 1.0)
    x = torch.tensor([[0, 1, 2, 3, 4] * 4])
    torch.manual_seed(0)
    e = regularize.embed(emb, x, 0.5, True)
    for ch in range(5):
        rows = e[x == ch]
        assert torch.equal(rows, rows[:1].expand_as(rows))  # a character is dropped everywhere or nowhere
        assert rows[0, 0].item() in (0.0, 2.0)  # kept rows scaled by 1 / (1 - p)


def test_ar_and_tar_add_to_the_training_loss():
    x = torch.randint(0, 11, (2, 8))
    model = lm(ar=2.0, tar=1.0, dropout=0.0).train()
    model(x)
    penalty = model.training_penalty()
    h, _ = model.rnn(model.embed(x))
    expected = 2.0 * h.pow(2).mean() + 1.0 * (h[:, 1:] - h[:, :-1]).pow(2).mean()
    assert torch.allclose(penalty, expected, atol=1e-6)
    assert model.training_penalty() is None  # taken once


def test_seq2seq_takes_them_too():
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(vocab_size=9, source_vocab=7, layers=2, hidden=8, embed=4, dropout=0.2, **ALL)
    model = Seq2Seq(cfg).train()
    src = (torch.randint(0, 7, (3, 5)), torch.tensor([5, 3, 4]))
    logits, _ = model(torch.randint(0, 9, (3, 4)), source=src)
    assert logits.shape == (3, 4, 9) and torch.isfinite(logits).all()
    assert model.training_penalty() is not None
    model.eval()
    plain = Seq2Seq(Seq2SeqConfig(vocab_size=9, source_vocab=7, layers=2, hidden=8, embed=4, dropout=0.2))
    plain.load_state_dict(model.state_dict())
    x = torch.randint(0, 9, (3, 4))
    assert torch.equal(model(x, source=src)[0], plain.eval()(x, source=src)[0])


def minrnn(**kw) -> MinRNN:
    torch.manual_seed(0)
    return MinRNN(MinRNNConfig(vocab_size=11, **{**TINY, "expand": 1, "ffn": 2, **kw}))


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_the_parallel_cells_take_them_in_training_only(cell):
    x = torch.randint(0, 11, (3, 9))
    plain, regular = minrnn(cell=cell), minrnn(cell=cell, **MIN_ALL)
    regular.load_state_dict(plain.state_dict())
    assert regular.state_dict().keys() == plain.state_dict().keys()
    plain.eval(), regular.eval()
    a = plain(x)[0]
    assert torch.equal(regular(x)[0], a)
    st = MinStepper(regular, 3)
    for t in range(9):
        logits = st.step(x[:, t])
    assert torch.allclose(logits, a[:, -1], atol=1e-5)
    regular.train()
    assert not torch.allclose(regular(x)[0], a) and regular.training_penalty() is not None


def test_the_parallel_cells_locked_masks_and_activation_penalty():
    model = minrnn(locked_dropout=True, dropout=0.5).train()
    seen = {}
    model.head.register_forward_hook(lambda m, i, o: seen.__setitem__("dropped", i[0]))
    model(torch.randint(0, 11, (4, 30)))
    kept = seen["dropped"] != 0
    assert torch.equal(kept, kept[:, :1].expand_as(kept)) and not kept.all()  # the head's mask: one per sequence
    y = model.blocks[0]._dropped(torch.ones(4, 30, 16))  # and each block's
    assert torch.equal(y, y[:, :1].expand_as(y)) and not torch.equal(y[0], y[1])
    model = minrnn(ar=2.0, tar=1.0, dropout=0.0).train()  # AR/TAR: on the head's inputs
    model.head.register_forward_hook(lambda m, i, o: seen.__setitem__("h", i[0]))  # (dropout 0: the norm's h)
    model(torch.randint(0, 11, (2, 8)))
    h = seen["h"]
    expected = 2.0 * h.pow(2).mean() + 1.0 * (h[:, 1:] - h[:, :-1]).pow(2).mean()
    assert torch.allclose(model.training_penalty(), expected, atol=1e-6)
    assert model.training_penalty() is None


def test_bad_values_are_one_clear_error():
    for flags, message in ((dict(weight_drop=1.0), "--weight-drop"), (dict(embed_dropout=-0.1), "--embed-dropout"),
                           (dict(ar=float("nan")), "--ar")):
        with pytest.raises(ConfigError, match=message):
            LMConfig(vocab_size=5, **flags).validate()


@pytest.mark.parametrize("kind", ["lm", "minrnn"])
def test_a_regularised_run_trains_and_resumes_bit_identically(tmp_path, kind):
    corpus = Corpus(make_text(30, seed=4), "t", "t")
    own = dict(kind="minrnn", cell="mingru") if kind == "minrnn" else {}
    model = ModelConfig(vocab_size=1, **TINY, **own, extra=dict(MIN_ALL if own else ALL))
    common = dict(batch_size=4, seq_len=16, lr=1e-2, warmup=5, eval_every=15, max_steps=30, device="cpu",
                  seed=11, save_every_secs=0, threads=1, precision="fp32")
    train(corpus, model, TrainConfig(out=str(tmp_path), name="straight", **common))
    stop = StopRequest()

    def at_12(kind, info):
        if kind == "step" and info["step"] == 12:
            stop.signum = signal.SIGINT
    cfg = TrainConfig(out=str(tmp_path), name="resumed", **common)
    with pytest.raises(TrainingInterrupted):
        Trainer(corpus, model, cfg, at_12, stop=stop).fit()
    Trainer(corpus, ModelConfig(vocab_size=1, **TINY, **own), cfg, resume=True).fit()  # the run's flags come back
    a, b = (torch.load(tmp_path / n / "last.pt", weights_only=True) for n in ("straight", "resumed"))
    assert a["step"] == b["step"] == 30 and a["model_config"]["tar"] == 1.0
    assert a["model_config"]["embed_dropout"] == 0.1 and a["model_config"]["locked_dropout"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    flag = "tar" if own else "weight_drop"
    with pytest.raises(ConfigError, match="--" + flag.replace("_", "-")):
        Trainer(corpus, ModelConfig(vocab_size=1, **TINY, **own, extra={flag: 0.1}), cfg, resume=True,
                explicit={flag})


def test_the_cli_takes_the_flags(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(20))
    r = CliRunner().invoke(app, ["train", str(corpus), "--out", str(tmp_path / "runs"), "--max-steps", "4",
                                 "--hidden", "16", "--embed", "8", "--batch-size", "2", "--seq-len", "8",
                                 "--threads", "1", "--weight-drop", "0.3", "--locked-dropout", "--embed-dropout",
                                 "0.1", "--input-dropout", "0.2", "--ar", "1", "--tar", "1", "--quiet"])
    assert r.exit_code == 0, r.stderr
    saved = load_checkpoint(next((tmp_path / "runs").iterdir()) / "last.pt")["model_config"]
    assert (saved["weight_drop"], saved["locked_dropout"], saved["tar"]) == (0.3, True, 1.0)
    r = CliRunner().invoke(app, ["train", str(corpus), "--weight-drop", "1.5", "--max-steps", "1"])
    assert r.exit_code != 0 and "--weight-drop" in r.stderr
    r = CliRunner().invoke(app, ["train", str(corpus), "--cell", "mingru", "--weight-drop", "0.3"])
    assert r.exit_code == 2 and "`--weight-drop` is a flag of lm and seq2seq models" in r.stderr
    r = CliRunner().invoke(app, ["train", str(corpus), "--out", str(tmp_path / "min"), "--max-steps", "4",
                                 "--cell", "minlstm", "--hidden", "16", "--embed", "8", "--batch-size", "2",
                                 "--seq-len", "8", "--threads", "1", "--locked-dropout", "--embed-dropout", "0.1",
                                 "--input-dropout", "0.2", "--ar", "1", "--tar", "1", "--quiet"])
    assert r.exit_code == 0, r.stderr
    saved = load_checkpoint(next((tmp_path / "min").iterdir()) / "last.pt")["model_config"]
    assert (saved["cell"], saved["locked_dropout"], saved["input_dropout"], saved["ar"]) == ("minlstm", True, 0.2, 1)


def test_patience_counts_small_gains_once_they_add_up():
    """A model improving by 0.0005 nats/char per evaluation (as regularised ones do late) keeps training; the old
    rule (each evaluation must beat the best by 0.001) stopped it after `patience` evaluations. Noise around a
    plateau still stops."""
    def bad_counts(vals):
        best, mark, bad, out = math.inf, math.inf, 0, []
        for v in vals:
            best, mark, bad = patience_after(v, best, mark, bad)
            out.append(bad)
        return out
    creeping = [2.0 - 0.0005 * i for i in range(12)]
    assert max(bad_counts(creeping)) <= 2  # never 3: with --patience 3 it keeps going
    assert bad_counts([2.0, 2.0005, 1.9995, 2.0002, 1.9998, 2.0001]) == [0, 1, 2, 3, 4, 5]
    assert bad_counts([2.0, 1.95, 1.9495, 1.90]) == [0, 0, 1, 0]
