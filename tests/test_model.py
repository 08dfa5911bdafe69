import pytest
import torch

from charnn.config import ModelConfig
from charnn.models.lm import CharRNN


def naive_lstm(model: CharRNN, x: torch.Tensor) -> torch.Tensor:
    """Gate-by-gate LSTM written out by hand (torch-rnn's reference check), returning logits."""
    c, rnn = model.config, model.rnn
    inp = model.embed(x)  # (N, T, D)
    N, T, _ = inp.shape
    for layer in range(c.layers):
        W_ih, W_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
        b = getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}")
        h, cell, outs = torch.zeros(N, c.hidden), torch.zeros(N, c.hidden), []
        for t in range(T):
            a = inp[:, t] @ W_ih.T + h @ W_hh.T + b
            i, f, g, o = a.chunk(4, dim=1)
            cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(cell)
            outs.append(h)
        inp = torch.stack(outs, dim=1)
    return model.head(inp)


def small_model(cell="lstm", **kw) -> CharRNN:
    torch.manual_seed(0)
    cfg = dict(vocab_size=7, cell=cell, layers=2, hidden=6, embed=5, dropout=0.0)
    cfg.update(kw)
    return CharRNN(ModelConfig(**cfg)).eval()


def test_shapes_with_all_dimensions_different():
    model = small_model()
    x = torch.randint(0, 7, (3, 4))  # N=3, T=4, D=5, H=6, V=7
    logits, (h, c) = model(x)
    assert logits.shape == (3, 4, 7)
    assert h.shape == c.shape == (2, 3, 6)


def test_matches_naive_gate_by_gate_loop():
    model = small_model()
    x = torch.randint(0, 7, (3, 4))
    with torch.no_grad():
        assert torch.allclose(model(x)[0], naive_lstm(model, x), atol=1e-5)


def test_forget_gate_bias_starts_at_one():
    model = small_model()
    H = model.config.hidden
    total = model.rnn.bias_ih_l0 + model.rnn.bias_hh_l0
    assert torch.allclose(total[H:2 * H], torch.ones(H))


def test_state_carry_equals_one_long_pass():
    for cell in ("lstm", "gru", "rnn"):
        model = small_model(cell)
        x = torch.randint(0, 7, (3, 9))
        with torch.no_grad():
            full, _ = model(x)
            a, state = model(x[:, :4])
            b, _ = model(x[:, 4:], CharRNN.state_ops.detach(state))
        assert torch.allclose(full, torch.cat([a, b], dim=1), atol=1e-6), cell


def test_detach_state_cuts_the_graph():
    model = small_model().train()
    _, state = model(torch.randint(0, 7, (2, 3)))
    assert all(s.requires_grad for s in state)
    assert not any(s.requires_grad for s in CharRNN.state_ops.detach(state))


def test_keep_freed_memory_takes_effect_on_linux():
    import sys

    from charnn.device import keep_freed_memory
    assert keep_freed_memory() is sys.platform.startswith("linux")


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_a_model_copy_is_separate_and_its_rnn_weights_stay_one_block(device):
    """copy_model (the precision probe's and dynamic evaluation's copy): same outputs, its own weights, and on
    CUDA no 'weights are not part of single contiguous chunk' warning, which a plain deepcopy of an RNN gives."""
    import warnings

    from charnn.models.cells import copy_model

    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=11, hidden=16, embed=8, layers=2)).to(device).eval()
    net = copy_model(model)
    x = torch.randint(0, 11, (3, 7), device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the contiguity warning would fail the test
        torch.testing.assert_close(net(x)[0], model(x)[0])
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(model.parameters(), net.parameters()))
