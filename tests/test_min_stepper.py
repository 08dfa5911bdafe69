"""MinStepper's C step (charnn/models/min_native.c): a minGRU / minLSTM stack's token in one C call, and one
stream's head and draw in another, against the stepper's torch operations (what a GPU, or a CPU without a compiler,
runs) and the full forward."""

import pytest
import torch
from conftest import drain

from charnn.generation.batcher import Batcher, RowSpec
from charnn.generation.draw import filter_logits, temper
from charnn.models import minrnn, native
from charnn.models.configs import MinRNNConfig
from charnn.models.minrnn import MinRNN, MinStepper
from charnn.sampling import SamplingParams
from charnn.text.tokenizer import CharTokenizer

pytestmark = pytest.mark.skipif(native.library() is None, reason="no C compiler here")
V = 23


def model_of(cell: str, hidden: int = 80, ffn: int = 2, expand: int = 2, layers: int = 2, seed: int = 0) -> MinRNN:
    """Widths that take both of the C products' paths (whole blocks of 64 outputs and a narrower last one), with
    weights larger than the init's so the gates and the GELU see a wide range."""
    torch.manual_seed(seed)
    model = MinRNN(MinRNNConfig(vocab_size=V, cell=cell, layers=layers, hidden=hidden, embed=16, dropout=0.0,
                                expand=expand, ffn=ffn)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def torch_ops(model: MinRNN, rows: int) -> MinStepper:
    st = MinStepper(model, rows)
    st.call, st.draws = None, False  # the torch path, as without the library
    return st


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
@pytest.mark.parametrize("ffn,expand,hidden", [(2, 2, 80), (0, 1, 64), (4, 3, 40)])
@pytest.mark.parametrize("rows", [1, 3])
def test_the_c_step_equals_the_torch_step_over_many_tokens(cell, ffn, expand, hidden, rows):
    model = model_of(cell, hidden, ffn, expand)
    c, t = MinStepper(model, rows), torch_ops(model, rows)
    assert c.call is not None and c.draws == (rows == 1)
    g = torch.Generator().manual_seed(1)
    for step in range(200):
        tok = torch.randint(V, (rows,), generator=g)
        torch.testing.assert_close(c.step(tok), t.step(tok), rtol=1e-4, atol=1e-4, msg=f"step {step}")
    torch.testing.assert_close(c.state, t.state, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_the_c_step_follows_the_full_forward_and_rows_moved_by_the_batcher(cell):
    model = model_of(cell)
    x = torch.randint(V, (3, 20))
    with torch.no_grad():
        want = model(x)[0]
    st = MinStepper(model, 3)
    for t in range(20):
        torch.testing.assert_close(st.step(x[:, t]), want[:, t], rtol=1e-4, atol=1e-4)
    st.move(2, 0)  # a new (strided or not) state tensor: the next C call must read this one
    st.zero(1)
    with torch.no_grad():
        after = model(torch.cat([x[2:], torch.tensor([[4]])], 1))[0][0, -1]
        fresh = model(torch.tensor([[5]]))[0][0, -1]
    logits = st.step(torch.tensor([4, 5, 1]))
    torch.testing.assert_close(logits[0], after, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits[1], fresh, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("team", ["torch's OpenMP threads", "the pool's own"])
def test_the_c_step_is_the_same_on_any_threads(threads, team):
    """Each product split over the threads by its outputs: on torch's OpenMP team (where native found it) or the
    library's own workers, every thread count gives the one-thread numbers exactly."""
    lib, before = native.library(), torch.get_num_threads()
    model = model_of("minlstm", hidden=72, ffn=3)
    x = torch.randint(V, (40, 2))
    torch.set_num_threads(1)
    one = MinStepper(model, 2)
    want = [one.step(x[t]).clone() for t in range(40)]
    try:
        if team != "torch's OpenMP threads":
            lib.pool_use_openmp(None, None, None)
        elif not native._share_openmp(lib, lib.pool_use_openmp):
            pytest.skip("torch has no OpenMP runtime here")
        torch.set_num_threads(threads)
        st = MinStepper(model, 2)
        for t in range(40):
            assert torch.equal(st.step(x[t]), want[t]), t
    finally:
        torch.set_num_threads(before)
        native._share_openmp(lib, lib.pool_use_openmp)


def test_minlstm_gates_far_below_zero_take_the_ratio_of_exponentials():
    """Both gates below -20 (where exp underflows past -87): z = sigmoid(k_i - k_f), as training's kernel."""
    model = model_of("minlstm", ffn=0, layers=1)
    S = model.blocks[0].gates.out_features // 3
    with torch.no_grad():
        model.blocks[0].gates.weight.mul_(0.01)
        model.blocks[0].gates.bias[:S] = -100.0  # k_f
        model.blocks[0].gates.bias[S:2 * S] = -95.0  # k_i: z = sigmoid(5), not 0.5 (nor NaN)
    st = MinStepper(model, 1)
    st.step(torch.tensor([3]))
    u = model.blocks[0].gates(model.blocks[0].norm(model.inp(model.embed(torch.tensor([3])))))
    kf, ki, v = u.double().chunk(3, -1)
    torch.testing.assert_close(st.state[0, 0].double(), torch.sigmoid(ki - kf)[0] * v[0], rtol=1e-4, atol=1e-5)


def test_one_streams_draw_in_c_is_the_batchers_draw():
    model = model_of("mingru")
    c, t = MinStepper(model, 1), torch_ops(model, 1)
    noise, out = torch.empty(1, V), torch.empty(1, dtype=torch.long)
    g = torch.Generator().manual_seed(2)
    tok = torch.tensor([0])
    for step in range(100):
        noise.exponential_(generator=g).log_().neg_()  # Gumbel
        temperature, top_k = (0.7, 5) if step % 2 else (1.0, 0)
        c.step_draw(tok, noise, out, temperature, top_k)
        logits = filter_logits(temper(t.step(tok), temperature), top_k or None)
        assert out.item() == int((logits + noise).argmax()), step
        tok = out.clone()


def test_greedy_text_is_the_same_with_and_without_c():
    tok = CharTokenizer([chr(ord("a") + i) for i in range(V)])
    model = model_of("minlstm")
    spec = RowSpec(prompt="abc", length=60, sampling=SamplingParams(temperature=0.0, seed=0))
    texts = []
    for rows_in_c in (minrnn.NATIVE_ROWS, 0):
        minrnn.NATIVE_ROWS, saved = rows_in_c, minrnn.NATIVE_ROWS
        try:
            b = Batcher(model, tok, torch.device("cpu"), capacity=1)
            assert (b.stepper.call is not None) == bool(rows_in_c)
            row = b.add(spec)
            texts.append(drain(b, [row])[0])
        finally:
            minrnn.NATIVE_ROWS = saved
    assert len(texts[0]) == 60 and texts[0] == texts[1]


def test_bad_ids_and_many_rows():
    model = model_of("mingru", hidden=32)
    st = MinStepper(model, 2)
    with pytest.raises(IndexError, match="outside the vocabulary"):
        st.step(torch.tensor([0, V]))
    with pytest.raises(ValueError, match="3 token ids for 2 rows"):
        st.step(torch.tensor([0, 1, 2]))
    torch.testing.assert_close(st.step(torch.tensor([[1], [2]], dtype=torch.int32)),
                               torch_ops(model, 2).step(torch.tensor([1, 2])))  # any layout of the ids
    assert MinStepper(model, minrnn.NATIVE_ROWS + 1).call is None  # many rows: torch's products


def test_without_the_library_the_torch_step_runs(monkeypatch):
    monkeypatch.setattr(native, "library", lambda: None)
    model = model_of("mingru", hidden=32)
    st = MinStepper(model, 1)
    assert st.call is None and not st.draws
    x = torch.randint(V, (1, 5))
    with torch.no_grad():
        want = model(x)[0]
    for t in range(5):
        torch.testing.assert_close(st.step(x[:, t]), want[:, t], rtol=1e-4, atol=1e-4)
