"""A minGRU / minLSTM block's training step through block_native.c (charnn.models.fusedblock): each C pass against
torch (LayerNorm, GELU, bias + dropout + residual, column sums; values and gradients, float32 and bfloat16, odd
widths, 1-3 threads to the bit), the whole block and model against the unfused path (the same dropout masks),
and that training takes it."""

import pytest
import torch
import torch.nn.functional as F

from charnn.config import TrainConfig
from charnn.device import torch_threads
from charnn.models import fused, fusedblock
from charnn.models.configs import MinRNNConfig
from charnn.models.minrnn import MinRNN
from charnn.training.schedule import make_optimizer

pytestmark = pytest.mark.skipif(not fused.available(torch.zeros(1)), reason="no C compiler here")


@pytest.fixture(params=[1, 3], ids=lambda n: f"{n}threads")
def threads(request):
    with torch_threads(request.param):
        yield request.param


def grads_of(fn, *inputs):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*inputs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(out.dtype)
    out.backward(g)
    return out.detach(), [t.grad for t in inputs]


@pytest.mark.parametrize("D", [1, 7, 64, 300])
def test_layer_norm_and_its_gradients_equal_torch(D, threads):
    g = torch.Generator().manual_seed(D)
    x = torch.randn(3, 11, D, generator=g) * 2 + 0.5
    w, b = torch.randn(D, generator=g), torch.randn(D, generator=g)
    norm = torch.nn.LayerNorm(D)
    with torch.no_grad():
        norm.weight.copy_(w), norm.bias.copy_(b)
    ours, (gx, gw, gb) = grads_of(lambda x, w, b: fusedblock._Norm.apply(x, w, b, 1e-5), x, w, b)
    theirs, (tx, tw, tb) = grads_of(lambda x, w, b: F.layer_norm(x, (D,), w, b, 1e-5), x, w, b)
    for a, e in ((ours, theirs), (gx, tx), (gw, tw), (gb, tb)):
        assert torch.allclose(a, e, atol=1e-4, rtol=1e-4), (a - e).abs().max()
    assert torch.equal(fusedblock.layer_norm(norm, x), fusedblock._Norm.apply(x.contiguous(), norm.weight, norm.bias,
                                                                                1e-5))


def test_gelu_and_its_gradient_equal_torchs_exact_gelu(threads):
    a = torch.linspace(-12, 12, 24001, dtype=torch.float64).view(1, 1, -1)
    bias = torch.zeros(a.shape[-1])
    y, dy = fusedblock._gelu(a.float().contiguous(), bias)
    assert (y.double() - F.gelu(a)).abs().max() < 2e-6
    gy = torch.rand(a.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ga, gbias = fusedblock._gelu_backward(dy, gy.float())
    a_ = a.clone().requires_grad_()
    F.gelu(a_).backward(gy)
    assert (ga.double() - a_.grad).abs().max() < 2e-6
    assert torch.equal(gbias, ga.view(-1))  # one row: the bias's gradient is that row
    y2, none = fusedblock._gelu(a.float().contiguous() - 1, bias + 1, grad=False)  # the bias is added first
    assert none is None and torch.allclose(y2, y, atol=1e-6)


@pytest.mark.parametrize("locked", [False, True])
def test_bias_dropout_residual_and_its_backward(locked, threads):
    g = torch.Generator().manual_seed(3)
    x, o, bias = torch.randn(4, 9, 70, generator=g), torch.randn(4, 9, 70, generator=g), torch.randn(70, generator=g)
    assert torch.allclose(fusedblock._residual(x, o, bias, 0.0, locked, 5), x + o + bias, atol=1e-6)
    y = fusedblock._residual(x, o, bias, 0.4, locked, 5)
    kept = (y - x) / (o + bias)  # 0 or 1 / (1 - p)
    assert torch.allclose(kept[kept != 0], torch.full_like(kept[kept != 0], 1 / 0.6), atol=1e-4)
    assert 0.3 < (kept == 0).float().mean() < 0.5
    if locked:  # one mask per sequence: the same at every step
        assert torch.equal(kept[:, :1].expand_as(kept) == 0, kept == 0)
    # the same mask as charnn.models.fused's dropout for that seed, and the backward applies it again
    assert torch.allclose(y, x + fused._apply(o + bias, 0.4, locked, 5), atol=1e-6)
    gy = torch.randn(4, 9, 70, generator=g)
    go, gbias = fusedblock._residual_backward(gy, 0.4, locked, 5)
    assert torch.allclose(go, fused._apply(gy, 0.4, locked, 5), atol=1e-6)
    assert torch.allclose(gbias, go.sum((0, 1)), atol=1e-5)


def test_results_do_not_depend_on_the_thread_count():
    g = torch.Generator().manual_seed(4)
    x, w, b = torch.randn(8, 300, 96, generator=g), torch.randn(96, generator=g), torch.randn(96, generator=g)
    gy = torch.randn(8, 300, 96, generator=g)
    out = []
    for n in (1, 2, 3):
        with torch_threads(n):
            y, mean, rstd = fusedblock._norm(x, w, b, 1e-5)
            out.append([y, *fusedblock._norm_backward(x, w, mean, rstd, gy, x), fusedblock._column_sums(gy),
                        *fusedblock._gelu_backward(x, gy), *fusedblock._gelu(x, b),
                        *fusedblock._residual_backward(gy, 0.3, False, 9)])
    for other in out[1:]:
        assert all(torch.equal(a, e) for a, e in zip(out[0], other))


def block_and_model(cell, ffn, dropout, locked=False, expand=1):
    torch.manual_seed(0)
    c = MinRNNConfig(vocab_size=17, cell=cell, layers=2, hidden=24, embed=8, ffn=ffn, dropout=dropout,
                     locked_dropout=locked, expand=expand)
    return MinRNN(c).train()


def run(model, fused_on, dtype, state, monkeypatch, shape=(3, 21)):
    monkeypatch.setattr(fusedblock, "applies", fusedblock.applies if fused_on else (lambda *a: False))
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    with torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
        logits, last = model(torch.randint(17, shape, generator=torch.Generator().manual_seed(2)), state)
    (logits.float().square().mean() + last.square().mean()).backward()
    return logits.float(), last, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
@pytest.mark.parametrize("ffn,dropout,locked,expand,shape", [
    (2, 0.0, False, 1, (3, 21)), (2, 0.3, False, 1, (3, 21)), (0, 0.3, True, 2, (3, 21)), (1, 0.1, True, 1, (3, 21)),
    (2, 0.2, False, 3, (1, 1)), (0, 0.0, False, 1, (1, 40))])
def test_the_block_equals_the_unfused_block(cell, ffn, dropout, locked, expand, shape, monkeypatch):
    model = block_and_model(cell, ffn, dropout, locked, expand)
    S = model.blocks[0].gates.out_features // (3 if cell == "minlstm" else 2)
    state = torch.randn(2, shape[0], S, generator=torch.Generator().manual_seed(5)).requires_grad_()
    ours = run(model, True, torch.float32, state, monkeypatch, shape)
    theirs = run(model, False, torch.float32, state, monkeypatch, shape)
    assert torch.allclose(ours[0], theirs[0], atol=1e-5) and torch.allclose(ours[1], theirs[1], atol=1e-5)
    for name, g in theirs[2].items():
        assert ours[2][name] is not None, name
        assert torch.allclose(ours[2][name], g, atol=1e-5, rtol=1e-4), (name, (ours[2][name] - g).abs().max())
    # bfloat16 (autocast): the same to bfloat16's rounding, nothing lost
    ours, theirs = (run(model, on, torch.bfloat16, None, monkeypatch, shape) for on in (True, False))
    assert torch.allclose(ours[0], theirs[0], atol=0.06), (ours[0] - theirs[0]).abs().max()
    for name, g in theirs[2].items():
        scale = g.abs().max() + 1e-6
        assert ((ours[2][name] - g).abs().max() / scale) < 0.06, name


def test_the_state_and_its_gradient_through_windows(monkeypatch):
    """The carried state's gradient (dL/dh0) and a window's last state: as the unfused scan's."""
    model = block_and_model("mingru", 2, 0.0)
    block = model.blocks[0]
    x = torch.randn(2, 13, 24, generator=torch.Generator().manual_seed(6))
    h0 = torch.randn(2, 24, generator=torch.Generator().manual_seed(7))
    outs = []
    for on in (True, False):
        monkeypatch.setattr(fusedblock, "applies", fusedblock.applies if on else (lambda *a: False))
        y, (gx, gh0) = grads_of(lambda x, h0: torch.cat([t.flatten() for t in block(x, h0)]), x, h0)
        outs.append((y, gx, gh0))
    for a, e in zip(*outs):
        assert torch.allclose(a, e, atol=1e-5)


def test_no_grad_and_unit_activations_take_their_paths():
    model = block_and_model("minlstm", 2, 0.2).eval()
    x = torch.randint(17, (2, 9))
    with torch.no_grad():
        logits, state = model(x)
    assert torch.isfinite(logits).all() and state.shape == (2, 2, 24)
    units, names = model.unit_activations(x)  # every state: the unfused block (`every`)
    assert units.shape == (2, 9, 48) and len(names) == 48
    assert fusedblock.applies(model.blocks[0], torch.zeros(1, 2, 24), every=False)
    assert not fusedblock.applies(model.blocks[0], torch.zeros(1, 2, 24), every=True)
    assert not fusedblock.applies(model.blocks[0], torch.zeros(1, 2, 24, dtype=torch.float64), every=False)


def test_training_on_a_cpu_runs_one_fused_adamw():
    model = block_and_model("mingru", 2, 0.1)
    opt = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    assert opt.defaults.get("fused") is True


def test_the_scan_adds_the_gates_bias():
    g = torch.Generator().manual_seed(8)
    for lstm, P in ((False, 2), (True, 3)):
        u, bias = torch.randn(2, 30, P * 20, generator=g), torch.randn(P * 20, generator=g)
        h0, gh = torch.randn(2, 20, generator=g), torch.randn(2, 30, 20, generator=g)
        h, last = fused.scan_forward(lstm, u, h0, bias)
        h2, last2 = fused.scan_forward(lstm, (u + bias).contiguous(), h0)
        assert torch.allclose(h, h2, atol=1e-6) and torch.allclose(last, last2, atol=1e-6)
        gu, gh0 = fused.scan_backward(lstm, u, h0, gh, None, True, bias)
        gu2, gh02 = fused.scan_backward(lstm, (u + bias).contiguous(), h0, gh, None, True)
        assert torch.allclose(gu, gu2, atol=1e-6) and torch.allclose(gh0, gh02, atol=1e-6)


def test_the_classifier_encoder_through_the_fused_blocks(monkeypatch):
    """MinEncoder (the classifier's --cell mingru/minlstm) runs MinBlocks over padded rows, both ways."""
    from charnn.models.minrnn import MinEncoder
    torch.manual_seed(0)
    enc = MinEncoder(MinRNNConfig(vocab_size=5, cell="minlstm", layers=2, hidden=16, embed=8, dropout=0.0)).train()
    e = torch.randn(3, 11, 8, generator=torch.Generator().manual_seed(9))
    lengths = torch.tensor([11, 4, 1])
    proj = torch.randn(3, 11, 32, generator=torch.Generator().manual_seed(10))
    outs = []
    for on in (True, False):
        monkeypatch.setattr(fusedblock, "applies", fusedblock.applies if on else (lambda *a: False))
        enc.zero_grad(set_to_none=True)
        out, final = enc(e, lengths)
        ((out * proj).sum() + final.sum()).backward()
        outs.append((out.detach(), final.detach(), [p.grad.clone() for p in enc.parameters()]))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-5) and torch.allclose(outs[0][1], outs[1][1], atol=1e-5)
    for a, b in zip(outs[0][2], outs[1][2]):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_without_a_backward_the_gelu_derivative_is_not_made(monkeypatch):
    model = block_and_model("mingru", 2, 0.1)
    made = []
    real = fusedblock._gelu
    monkeypatch.setattr(fusedblock, "_gelu", lambda a, bias, grad=True: made.append(grad) or real(a, bias, grad))
    with torch.no_grad():
        model(torch.randint(17, (2, 5)))
    with torch.inference_mode():
        model.eval()(torch.randint(17, (2, 5)))
    assert made == [False] * 4
    model.train()(torch.randint(17, (2, 5)))[0].sum().backward()
    assert made[4:] == [True, True]


def test_a_run_saved_with_the_foreach_adamw_resumes_fused():
    from charnn.training.runstate import optimizer_state
    model = block_and_model("mingru", 2, 0.0)
    old = torch.optim.AdamW(model.optimizer_groups(0.1), lr=1e-3, foreach=True)
    model(torch.randint(17, (2, 5)))[0].sum().backward()
    old.step()
    opt = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    opt.load_state_dict(optimizer_state(old.state_dict(), opt))
    assert all(g["fused"] is True and not g["foreach"] for g in opt.param_groups)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_a_nan_stays_a_nan_in_bfloat16():
    """A diverged run must show as NaN, not as zeros (the bf16 rounding once turned some NaNs into -0)."""
    x = torch.full((1, 2, 16), float("nan"), dtype=torch.bfloat16)
    x.view(torch.int16)[0, 0] = -1  # 0xffff: a NaN with every payload bit set
    y = fusedblock._residual(x, torch.zeros_like(x), torch.zeros(16), 0.0, False, 1)
    assert torch.isnan(y).all()
