"""The recurrent-state interface (charnn.models.state): what code outside a model may do with its state."""

import pytest
import torch

from charnn.config import ModelConfig
from charnn.models.lm import CharRNN
from charnn.models.seq2seq import Seq2Seq
from charnn.models.state import RNN_STATE, TensorState


def lstm_state(rows=3):
    h = torch.arange(2 * rows * 4, dtype=torch.float32).view(2, rows, 4)
    return h, -h


def test_rows_select_narrow_repeat_cat():
    ops, (h, c) = RNN_STATE, lstm_state()
    assert ops.rows((h, c)) == 3
    picked = ops.select((h, c), torch.tensor([2, 0, 0]))
    assert torch.equal(picked[0][:, 0], h[:, 2]) and torch.equal(picked[1][:, 2], c[:, 0])
    assert torch.equal(ops.narrow(h, 1, 2), h[:, 1:3])
    assert torch.equal(ops.repeat((h, c), 2)[1], torch.cat([c, c], 1))
    assert torch.equal(ops.cat([h, h[:, :1]]), torch.cat([h, h[:, :1]], 1))
    assert ops.select(None, torch.tensor([0])) is None and ops.detach(None) is None


def test_pack_unpack_round_trip_and_detach():
    ops, (h, c) = RNN_STATE, lstm_state()
    assert ops.unpack(ops.pack((h, c)))[0] is h and ops.unpack(ops.pack(h)) is h
    assert ops.pack(None) is None and ops.unpack(None) is None
    w = h.clone().requires_grad_()
    assert not ops.detach((w, w))[0].requires_grad


def test_another_batch_axis():
    ops = TensorState(axis=0)
    x = torch.arange(6.0).view(3, 2)
    assert ops.rows(x) == 3 and torch.equal(ops.select(x, torch.tensor([1])), x[1:2])
    with pytest.raises(ValueError):
        ops.cat([x, None])


def test_the_models_declare_their_state_and_their_optimiser_groups():
    lm = CharRNN(ModelConfig(vocab_size=7, layers=2, hidden=8, embed=4, labels=2, label_output=True))
    assert lm.state_ops is RNN_STATE
    decay, rest = lm.optimizer_groups(0.1)
    names = {id(p): n for n, p in lm.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {"rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.weight_ih_l1",
                                                       "rnn.weight_hh_l1", "head.weight"}
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    s2s = Seq2Seq(ModelConfig(vocab_size=7, layers=1, hidden=8, embed=4, kind="seq2seq", source_vocab=5))
    decayed = {n for n, p in s2s.named_parameters() if any(p is q for q in s2s.optimizer_groups(0.1)[0]["params"])}
    assert "src_embed.weight" in decayed and "embed.weight" not in decayed  # as the trainer always did
