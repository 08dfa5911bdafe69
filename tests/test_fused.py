"""Training's C kernels (charnn.models.fused, train_native.c): the minGRU / minLSTM recurrence against the
step-by-step recurrence in float64 (states and gradients), in bfloat16, on 1-3 threads and odd widths; dropout's
hashed masks (rate, scale, locked rows, the backward's mask, seeds); and the models through them against the torch
path (CHARNN_NATIVE=0's)."""

import pytest
import torch

from charnn.device import torch_threads
from charnn.models import fused, native
from charnn.models.configs import MinRNNConfig
from charnn.models.minrnn import MinRNN, mingru_input
from charnn.models.scan import sequential_mingru

pytestmark = pytest.mark.skipif(not fused.available(torch.zeros(1)), reason="no C compiler here")


def reference(cell, u, h0):
    return sequential_mingru(mingru_input(cell, u).double(), h0)


@pytest.fixture(params=[1, 2, 3], ids=lambda n: f"{n}threads")
def threads(request):
    with torch_threads(request.param):
        yield request.param


# (B, T, S): one step, one row, widths not a multiple of 16, more than one lane block (S > 256; T > 512 takes
# blocks of 64), the lengths up to 4,096 and batches up to 64
SHAPES = [(1, 1, 16), (64, 1, 8), (3, 17, 20), (2, 40, 300), (5, 128, 64), (2, 1000, 33), (1, 4096, 16),
          (64, 64, 32), (17, 257, 80), (2, 600, 150)]


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
@pytest.mark.parametrize("B,T,S", SHAPES)
def test_the_recurrence_and_its_gradients_equal_the_step_by_step_loop(cell, B, T, S, threads):
    g = torch.Generator().manual_seed(B * 7919 + T * 31 + S)
    P = 3 if cell == "minlstm" else 2
    u = torch.randn(B, T, P * S, generator=g, dtype=torch.float64) * 3  # gates from near 0 to near 1
    h0 = torch.randn(B, S, generator=g, dtype=torch.float64)
    w, w_last = torch.randn(B, T, S, generator=g, dtype=torch.float64), torch.randn(B, S, generator=g,
                                                                                     dtype=torch.float64)
    for start in (None, h0):
        uu = u.clone().requires_grad_()
        hh = None if start is None else start.clone().requires_grad_()
        ref = reference(cell, uu, hh)
        wanted = (uu,) if hh is None else (uu, hh)
        ref_grads = torch.autograd.grad((ref * w).sum() + (ref[:, -1] * w_last).sum(), wanted)
        uf = u.float().requires_grad_()
        hf = None if start is None else start.float().requires_grad_()
        h, last = fused.min_scan(cell, uf, hf)
        assert h.dtype == torch.float32 and last.dtype == torch.float32
        assert (h.double() - ref).abs().max() < 1e-5
        assert torch.equal(last, h[:, -1])
        grads = torch.autograd.grad((h * w.float()).sum() + (last * w_last.float()).sum(),
                                    (uf,) if hf is None else (uf, hf))
        for ours, theirs in zip(grads, ref_grads):
            assert (ours.double() - theirs).abs().max() < 1e-4 * max(1.0, theirs.abs().max().item())


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_bfloat16_follows_float32_and_stays_finite_on_10000_steps(cell):
    g = torch.Generator().manual_seed(3)
    P = 3 if cell == "minlstm" else 2
    u = torch.randn(2, 10_000, P * 32, generator=g) * 3
    h32, last32 = fused.min_scan(cell, u)
    ub = u.bfloat16().requires_grad_()
    h, last = fused.min_scan(cell, ub)
    assert h.dtype == torch.bfloat16 and last.dtype == torch.float32
    assert h.isfinite().all() and (h.float() - h32).abs().max() < 0.1  # the inputs' own rounding, not drift
    assert (last - last32).abs().max() < 0.1
    grad, = torch.autograd.grad(h.float().sum(), ub)
    assert grad.dtype == torch.bfloat16 and grad.isfinite().all()


def test_a_window_split_in_two_carries_the_state_exactly():
    u = torch.randn(3, 50, 2 * 24)
    h, last = fused.min_scan("mingru", u)
    h1, mid = fused.min_scan("mingru", u[:, :20])
    h2, end = fused.min_scan("mingru", u[:, 20:], mid)
    assert torch.equal(torch.cat([h1, h2], 1), h) and torch.equal(end, last)


def test_the_minlstm_gate_far_below_zero_is_the_torch_paths():
    """Both gate pre-activations far below 0 (where exp underflows): z is the ratio of the exponentials."""
    u = torch.tensor([[[-95.0, -120.0, 1.0]], [[-90.0, -91.0, 1.0]], [[-30.0, 5.0, 1.0]], [[3.0, -100.0, 1.0]]])
    h, _ = fused.min_scan("minlstm", u)
    ref = reference("minlstm", u.double(), None)
    assert (h.double() - ref).abs().max() < 1e-6


def test_wrong_shapes_and_dtypes_are_refused_not_read():
    with pytest.raises(ValueError):
        fused.min_scan("mingru", torch.zeros(4, 2, 16), torch.ones(1, 8))  # h0 of another batch
    with pytest.raises(ValueError):
        fused.min_scan("minlstm", torch.zeros(4, 2, 16))  # not 3 parts
    with pytest.raises(ValueError):
        fused.min_scan("mingru", torch.zeros(4, 2, 16, dtype=torch.float64))
    with pytest.raises(ValueError):
        fused.dropout(torch.ones(4, 5), 0.5, locked=True)  # a locked mask needs (B, T, D)


# -- dropout ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_keeps_1_minus_p_scaled_and_its_backward_uses_the_same_mask(dtype, p, threads):
    torch.manual_seed(0)
    x = (torch.rand(16, 64, 256) + 0.5).to(dtype).requires_grad_()  # no zeros of its own
    y = fused.dropout(x, p)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.01
    rtol = 8e-3 if dtype == torch.bfloat16 else 1e-6  # (bfloat16: one rounding of x * (1 / (1 - p)))
    assert torch.allclose(y[kept].float(), x[kept].float() / (1 - p), rtol=rtol)
    g = torch.randn(y.shape).to(dtype)  # (drawn in float32: torch 2.4's bfloat16 randn gives exact zeros, 0.3%)
    grad, = torch.autograd.grad(y, x, g)
    assert torch.equal(grad != 0, kept)
    assert torch.allclose(grad[kept].float(), g[kept].float() / (1 - p), rtol=rtol)


def test_the_scale_is_1_over_1_minus_p_in_double_precision():
    y = fused.dropout(torch.ones(64, 1000), 0.99)
    assert torch.equal(y[y != 0], torch.full_like(y[y != 0], float(torch.tensor(1 / (1 - 0.99), dtype=torch.float32))))


def test_locked_dropout_has_one_mask_per_sequence():
    x = torch.ones(8, 30, 64)
    y = fused.dropout(x, 0.3, locked=True)
    assert torch.equal(y, y[:, :1].expand_as(y))  # the same at every step
    assert not torch.equal(y[0], y[1])  # each sequence its own
    assert abs((y != 0).float().mean().item() - 0.7) < 0.05


def test_dropout_masks_follow_torchs_seed_and_differ_between_calls():
    x = torch.ones(4, 100, 32)
    torch.manual_seed(5)
    a, b = fused.dropout(x, 0.5), fused.dropout(x, 0.5)
    torch.manual_seed(5)
    assert torch.equal(fused.dropout(x, 0.5), a)
    assert not torch.equal(a, b)
    # neighbouring numbers and rows are not correlated (a poor hash shows it here)
    keep = (a != 0).float().flatten()
    assert abs(torch.corrcoef(torch.stack([keep[:-1], keep[1:]]))[0, 1].item()) < 0.02


# -- through the models ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_a_model_computes_what_the_torch_path_does(cell, monkeypatch):
    torch.manual_seed(1)
    model = MinRNN(MinRNNConfig(vocab_size=13, cell=cell, layers=2, hidden=40, embed=8, dropout=0.0, ffn=2))
    x = torch.randint(13, (3, 37))
    state = torch.randn(2, 3, 40)

    def run():
        model.zero_grad()
        logits, last = model(x, state)
        logits.square().mean().backward()
        return logits.detach(), last.detach(), [p.grad.clone() for p in model.parameters()]
    ours = run()
    monkeypatch.setattr(fused, "available", lambda *t: False)
    theirs = run()
    assert (ours[0] - theirs[0]).abs().max() < 1e-4 and (ours[1] - theirs[1]).abs().max() < 1e-4
    for a, b in zip(ours[2], theirs[2]):
        assert (a - b).abs().max() < 1e-4 * max(1.0, b.abs().max().item())


def test_without_the_library_nothing_is_fused(monkeypatch):
    monkeypatch.setenv("CHARNN_NATIVE", "0")
    native.training_library.cache_clear()
    try:
        assert not fused.available(torch.zeros(1))
    finally:
        native.training_library.cache_clear()
    assert not fused.available(torch.zeros(1, dtype=torch.float64))


def test_training_on_a_cpu_goes_through_the_c_kernels():
    """A silent fall back to the torch operations would still train (the tests above compare values): this one
    looks at what the backward runs."""
    torch.manual_seed(0)
    model = MinRNN(MinRNNConfig(vocab_size=13, cell="mingru", layers=1, hidden=16, embed=8, dropout=0.2)).train()
    logits, _ = model(torch.randint(13, (2, 9)))
    nodes, stack = set(), [logits.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is not None and fn not in nodes:
            nodes.add(fn)
            stack.extend(f for f, _ in fn.next_functions)
    names = {type(fn).__name__ for fn in nodes}
    assert {"_BlockBackward", "_NormBackward", "_DropoutBackward"} <= names, names  # (charnn.models.fusedblock)


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_an_output_left_unused_gives_the_same_gradients(cell):
    """Only the last state used (dL/dh comes back None) or only h (dL/d last None): the C backward's empty sides."""
    P = 3 if cell == "minlstm" else 2
    u = torch.randn(3, 20, P * 24, requires_grad=True)
    h, last = fused.min_scan(cell, u)
    only_last, = torch.autograd.grad(last.sum(), u)
    h, last = fused.min_scan(cell, u)
    via_h, = torch.autograd.grad(h[:, -1].sum(), u)
    assert torch.allclose(only_last, via_h, atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "mingru"])
def test_compile_trains_without_a_page_of_dynamo_warnings(tmp_path, cell):
    """`--compile` traced into the C calls (the fused dropout's seed, the library's cached loader, the block and
    scan passes): about 30 lines of Dynamo warnings and graph-break reports on stderr, even with -q. The C calls
    are left out of the trace now; the compiled model trains and `-q` is quiet."""
    import subprocess
    import sys

    from conftest import make_text

    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(200, seed=5), encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "charnn", "train", str(corpus), "--compile", "--cell", cell, "--layers",
                        "1", "--hidden", "16", "--embed", "8", "--dropout", "0.2", "--max-steps", "3", "--threads", "1",
                        "--precision", "fp32", "--out", str(tmp_path), "-q"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stderr == "" and r.stdout == "", r.stderr[-3000:]
    assert (tmp_path / "c" / "best.pt").is_file()
