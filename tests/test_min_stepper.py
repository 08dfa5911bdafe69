"""MinStepper's C step (charnn/models/min_native.c): a minGRU / minLSTM stack's token in one C call, and one
stream's head and draw in another, against the stepper's torch operations (what a GPU, or a CPU without a compiler,
runs) and the full forward."""

import pytest
import torch
from conftest import drain, fake_cuda, make_text
from typer.testing import CliRunner

from charnn.cli.app import app
from charnn.device import torch_threads
from charnn.errors import CharnnError
from charnn.generation.batcher import Batcher, RowSpec
from charnn.generation.draw import filter_logits, temper
from charnn.models import minstep, native
from charnn.models.configs import MinRNNConfig
from charnn.models.minrnn import MinRNN
from charnn.models.minstep import MinStepper
from charnn.sampling import SamplingParams
from charnn.text.tokenizer import CharTokenizer

pytestmark = pytest.mark.skipif(native.library() is None, reason="no C compiler here")
V = 23
runner = CliRunner()
vnni = pytest.mark.skipif(not native.int8_products(native.library()), reason="no AVX-512 VNNI here")


def model_of(cell: str, hidden: int = 80, ffn: int = 2, expand: int = 2, layers: int = 2, seed: int = 0,
             vocab: int = V) -> MinRNN:
    """Widths that take both of the C products' paths (whole blocks of 64 outputs and a narrower last one), with
    weights larger than the init's so the gates and the GELU see a wide range."""
    torch.manual_seed(seed)
    model = MinRNN(MinRNNConfig(vocab_size=vocab, cell=cell, layers=layers, hidden=hidden, embed=16, dropout=0.0,
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
@pytest.mark.parametrize("rows", [1, 3, 13])  # (13: three groups of four rows sharing each load of w, and one)
def test_the_c_step_equals_the_torch_step_over_many_tokens(cell, ffn, expand, hidden, rows):
    model = model_of(cell, hidden, ffn, expand)
    if rows > minstep.native_rows(native.library()):
        pytest.skip("this CPU steps so many rows through torch (no AVX-512)")
    c, t = MinStepper(model, rows), torch_ops(model, rows)
    assert c.call is not None and c.draws == (rows == 1)
    g = torch.Generator().manual_seed(1)
    for step in range(200):
        tok = torch.randint(V, (rows,), generator=g)
        torch.testing.assert_close(c.step(tok), t.step(tok), rtol=1e-4, atol=1e-4, msg=f"step {step}")
    torch.testing.assert_close(c.state, t.state, rtol=1e-4, atol=1e-4)


def test_rows_stepped_together_equal_each_stepped_alone():
    """Rows that share each load of the weights (four at a time with AVX-512) sum every output in the same order as
    a row alone: the same numbers to the bit, so a stream's text does not depend on what else is in the batch."""
    model = model_of("mingru", 64, 2, 1)
    tok = torch.randint(V, (9, 30), generator=torch.Generator().manual_seed(4))
    if minstep.native_rows(native.library()) < 9:
        pytest.skip("this CPU steps 9 rows through torch (no AVX-512)")
    together = MinStepper(model, 9)
    alone = [MinStepper(model, 1) for _ in range(9)]
    for t in range(30):
        out = together.step(tok[:, t]).clone()
        for r in range(9):
            assert torch.equal(out[r], alone[r].step(tok[r:r + 1, t])[0]), (t, r)


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_the_c_step_follows_the_full_forward_and_rows_moved_by_the_batcher(cell):
    model = model_of(cell)
    x = torch.randint(V, (3, 20))
    with torch.no_grad():
        want = model(x)[0]
    st = MinStepper(model, 3)
    assert st.call is not None
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
        assert st.call is not None
        for t in range(40):
            assert torch.equal(st.step(x[t]), want[t]), t
    finally:
        torch.set_num_threads(before)
        native._share_openmp(lib, lib.pool_use_openmp)


def test_a_big_vocabularys_head_is_split_over_the_threads_too():
    """B * D * V of at least HEAD_SPLIT (a subword vocabulary): the head's columns go to every thread."""
    model = model_of("mingru", hidden=64, vocab=3001)
    with torch_threads(2):
        c, t = MinStepper(model, 2), torch_ops(model, 2)
        for step in range(5):
            tok = torch.tensor([step, 3000 - step])
            torch.testing.assert_close(c.step(tok), t.step(tok), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("team", ["torch's OpenMP threads", "the pool's own"])
def test_two_threads_of_python_step_their_own_steppers_at_once(team):
    """A server runs an engine thread per model: two steppers stepping at once each get their own numbers."""
    import threading
    lib, before = native.library(), torch.get_num_threads()
    models = [model_of("mingru", seed=1), model_of("minlstm", seed=2)]
    x = torch.randint(V, (60, 1))
    torch.set_num_threads(2)
    want = []
    for m in models:
        st = MinStepper(m, 1)
        want.append(torch.stack([st.step(x[t]).clone() for t in range(60)]))
    got = [None, None]

    def run(i):
        st = MinStepper(models[i], 1)
        got[i] = torch.stack([st.step(x[t]).clone() for t in range(60)])
    try:
        if team != "torch's OpenMP threads":
            lib.pool_use_openmp(None, None, None)
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=60)
        assert all(torch.equal(g, w) for g, w in zip(got, want))
    finally:
        torch.set_num_threads(before)
        native._share_openmp(lib, lib.pool_use_openmp)


def test_minlstm_gates_far_below_zero_take_the_ratio_of_exponentials():
    """Both gates far below 0 (where exp underflows): z = sigmoid(k_i - k_f) (here sigmoid(5), not 0.5 nor NaN), as
    training's kernel and scan have it, in C and through torch."""
    model = model_of("minlstm", ffn=0, layers=1)
    S = model.blocks[0].gates.out_features // 3
    with torch.no_grad():
        model.blocks[0].gates.weight.mul_(0.01)
        model.blocks[0].gates.bias[:S] = -130.0  # k_f
        model.blocks[0].gates.bias[S:2 * S] = -125.0  # k_i: both sigmoids underflow float32 to 0 here
    u = model.blocks[0].gates(model.blocks[0].norm(model.inp(model.embed(torch.tensor([3])))))
    kf, ki, v = u.double().chunk(3, -1)
    for rows in (1, minstep.native_rows(native.library()) + 1):  # the C step, and torch's (many rows; a GPU)
        st = MinStepper(model, rows)
        assert (st.call is not None) == (rows == 1)
        st.step(torch.full((rows,), 3))
        torch.testing.assert_close(st.state[0, 0].double(), torch.sigmoid(ki - kf)[0] * v[0], rtol=1e-4,
                                   atol=1e-5)


def test_one_streams_draw_in_c_is_the_batchers_draw():
    model = model_of("mingru")
    c, t = MinStepper(model, 1), torch_ops(model, 1)
    noise, out = torch.empty(1, V), torch.empty(1, dtype=torch.long)
    g = torch.Generator().manual_seed(2)
    tok = torch.tensor([0])
    for step in range(100):
        noise.exponential_(generator=g).log_().neg_()  # Gumbel
        temperature, top_k, top_p = ((0.7, 5, 1.0), (1.0, 0, 1.0), (1.3, 0, 0.8), (0.9, 7, 0.6))[step % 4]
        c.step_draw(tok, noise, out, temperature, top_k, top_p)
        logits = filter_logits(temper(t.step(tok), temperature), top_k or None, top_p if top_p < 1 else None)
        assert out.item() == int((logits + noise).argmax()), step
        tok = out.clone()


def test_greedy_text_is_the_same_with_and_without_c():
    tok = CharTokenizer([chr(ord("a") + i) for i in range(V)])
    model = model_of("minlstm")
    spec = RowSpec(prompt="abc", length=60, sampling=SamplingParams(temperature=0.0, seed=0))
    texts = []
    for rows_in_c in (minstep.NATIVE_ROWS, 0):
        minstep.NATIVE_ROWS, saved = rows_in_c, minstep.NATIVE_ROWS
        try:
            b = Batcher(model, tok, torch.device("cpu"), capacity=1)
            assert (b.stepper.call is not None) == bool(rows_in_c) == b.stepper.draws
            row = b.add(spec)
            texts.append(drain(b, [row])[0])
        finally:
            minstep.NATIVE_ROWS = saved
    assert len(texts[0]) == 60 and texts[0] == texts[1]


@pytest.mark.parametrize("int8", [False, pytest.param(True, marks=vnni)])
@pytest.mark.parametrize("temperature,top_k", [(0.0, None), (0.8, None), (1.0, 4)])
def test_one_streams_blocks_in_c_give_the_per_token_text(int8, temperature, top_k):
    """draw_block (a block of tokens in one C call, the Gumbel noise made there) against the same stepper drawing
    token by token through the Batcher (the noise torch's): the same text, greedy or sampled, with top-k."""
    tok = CharTokenizer([chr(ord("a") + i) for i in range(V)])
    model = model_of("minlstm", hidden=64)
    spec = RowSpec(prompt="ab", length=150, sampling=SamplingParams(temperature=temperature, top_k=top_k, seed=7))
    texts = []
    for blocks in (True, False):
        b = Batcher(model, tok, torch.device("cpu"), capacity=1, int8=int8)
        if not hasattr(native.library(), "gumbel"):
            pytest.skip("a library built without int8_native.c: no noise in C, so no blocks")
        assert b.stepper.draws and b.stepper.blocks is not None
        if not blocks:
            b.stepper.blocks = None
        texts.append(drain(b, [b.add(spec)])[0])
    assert len(texts[0]) == 150 and texts[0] == texts[1]


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
@pytest.mark.parametrize("path", ["C", "torch"])  # (torch's: what a GPU records)
def test_cuda_graph_blocks_give_the_plain_text_as_rows_come_and_go(monkeypatch, cell, path):
    """MinStepper is `static`: the Batcher records its blocks as CUDA graphs (here the stand-in of conftest's
    fake_cuda, which checks at each replay that the state, tokens, noise and draws are the buffers it recorded).
    Rows joining and leaving between recorded blocks, and the text equals sampling without graphs."""
    if path == "torch":
        monkeypatch.setattr(minstep, "NATIVE_ROWS", 0)
    tok = CharTokenizer([chr(ord("a") + i) for i in range(V)])
    model = model_of(cell, hidden=64)

    def run(graphs: bool):
        b = Batcher(model, tok, torch.device("cpu"), capacity=3, block=4, graphs=graphs)
        specs = [RowSpec(prompt=p, length=n, sampling=SamplingParams(temperature=t, seed=s))
                 for p, n, t, s in (("ab", 40, 0.9, 1), ("c", 70, 0.0, 2), ("dd", 50, 1.1, 3))]
        first, second = b.add(specs[0]), b.add(specs[1])
        texts = {id(r): "" for r in (first, second)}
        for _ in range(5):  # the first full block runs as is, the second records, the rest replay
            for row, piece in b.step(4):
                texts[id(row)] += piece
        third = b.add(specs[2])  # joins: the graph is dropped, and recorded again for three rows
        texts[id(third)] = ""
        while b.active:
            for row, piece in b.step(4):
                texts[id(row)] += piece
        return [texts[id(r)] for r in (first, second, third)], b
    plain, _ = run(False)
    captures = fake_cuda(monkeypatch)
    graphed, b = run(True)
    assert graphed == plain and [len(t) for t in plain] == [40, 70, 50]
    assert b.stepper.static and (b.stepper.call is None) == (path == "torch")
    assert captures[:2] == [(2, 4), (3, 4)] and b.notes == []


def test_rows_set_loaded_moved_or_copied_stay_in_the_steppers_one_state_buffer():
    """What lets a CUDA graph record MinStepper's steps: its state is one buffer for good (C and torch's step write
    it in place; rows are copied into it)."""
    model = model_of("mingru", hidden=32)
    st, other = MinStepper(model, 3), MinStepper(model, 3)
    where = st.state.data_ptr()
    for tok in ([1, 2, 3], [4, 5, 6]):
        other.step(torch.tensor(tok))
    st.step(torch.tensor([7, 8, 9]))
    row = other.state[:, 1:2].clone()
    st.load(0, row)
    st.zero(2)
    st.move(0, 1)
    assert torch.equal(st.state[:, 1], row[:, 0]) and not st.state[:, 2].any()
    st.copy_rows(other, 2)
    assert torch.equal(st.state[:, :2], other.state[:, :2])
    st.load_state(row)
    assert torch.equal(st.state, row.expand(-1, 3, -1))
    assert st.state.data_ptr() == where and st.state.is_contiguous()


def test_bad_ids_and_many_rows():
    model = model_of("mingru", hidden=32)
    st = MinStepper(model, 2)
    with pytest.raises(IndexError, match="outside the vocabulary"):
        st.step(torch.tensor([0, V]))
    with pytest.raises(IndexError, match="outside the vocabulary"):
        MinStepper(model, 1).draw_block(torch.tensor([V]), torch.zeros(4, 1, dtype=torch.long), 1.0, 0, 0, True)
    with pytest.raises(NotImplementedError, match="no blocks"):
        st.draw_block(torch.tensor([0, 1]), torch.zeros(4, 2, dtype=torch.long), 1.0, 0, 0, True)
    with pytest.raises(ValueError, match="3 token ids for 2 rows"):
        st.step(torch.tensor([0, 1, 2]))
    torch.testing.assert_close(st.step(torch.tensor([[1], [2]], dtype=torch.int32)),
                               torch_ops(model, 2).step(torch.tensor([1, 2])))  # any layout of the ids
    most = minstep.native_rows(native.library())
    assert most in (minstep.NATIVE_ROWS, minstep.SHARED_ROWS) and MinStepper(model, most).call is not None
    assert MinStepper(model, most + 1).call is None  # more rows: torch's products


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


# -- --int8 ----------------------------------------------------------------------------------------------------


@vnni
@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
@pytest.mark.parametrize("rows", [1, 3, minstep.NATIVE_ROWS + 2])
def test_int8_follows_fp32_closely(cell, rows):
    """int8 weights (a scale per output) times int8 codes of each row's input (a scale per row and token): the
    next-token distribution stays within a small KL of fp32's, on any number of rows (int8 is C at any batch)."""
    model = model_of(cell, hidden=64, ffn=2, expand=2)
    fp32, int8 = MinStepper(model, rows), MinStepper(model, rows, int8=True)
    assert int8.call is not None and int8.int8
    g = torch.Generator().manual_seed(3)
    kl = []
    for _ in range(100):
        tok = torch.randint(V, (rows,), generator=g)
        p, q = fp32.step(tok).log_softmax(-1), int8.step(tok).log_softmax(-1)
        kl.append((p.exp() * (p - q)).sum(-1).mean().item())
    assert 0 < sum(kl) / len(kl) < 2e-3  # (not 0: it is int8; fp32 itself would give 0)
    assert (int8.state - fp32.state).abs().max() < 0.05 * fp32.state.abs().max()


@vnni
def test_int8_is_the_same_on_any_threads():
    model = model_of("mingru", hidden=64, ffn=3, expand=3)
    x = torch.randint(V, (30, 2))
    outs = []
    for threads in (1, 2, 3):
        with torch_threads(threads):
            st = MinStepper(model, 2, int8=True)
            outs.append(torch.stack([st.step(x[t]).clone() for t in range(30)]))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_int8_says_what_it_needs(monkeypatch):
    monkeypatch.setattr(native, "int8_products", lambda lib: True)  # (the width is checked on any CPU)
    with pytest.raises(CharnnError, match="widths in multiples of 64 .*80, 160, 160"):
        MinStepper(model_of("mingru"), 1, int8=True)
    monkeypatch.setattr(native, "int8_products", lambda lib: False)
    with pytest.raises(CharnnError, match="needs a CPU with AVX-512 VNNI"):
        MinStepper(model_of("mingru", hidden=64), 1, int8=True)
    monkeypatch.setenv("CHARNN_NATIVE", "0")  # (it said "needs a CPU with AVX-512 VNNI" on one that has it)
    with pytest.raises(CharnnError, match="CHARNN_NATIVE=0 turns off"):
        MinStepper(model_of("mingru", hidden=64), 1, int8=True)


@vnni
def test_charnn_sample_int8_from_the_command_line(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(80, seed=2), encoding="utf-8")
    flags = ["--cell", "minlstm", "--hidden", "64", "--layers", "1", "--max-steps", "6", "--batch-size", "2",
             "--seq-len", "16", "--device", "cpu", "--threads", "1", "--precision", "fp32", "--save-every-secs", "0",
             "--out", str(tmp_path), "-q"]
    assert runner.invoke(app, ["train", str(corpus), "--name", "w64", *flags]).exit_code == 0
    r = runner.invoke(app, ["sample", str(tmp_path / "w64"), "--int8", "--length", "40", "--seed", "2"])
    assert r.exit_code == 0 and len(r.stdout.rstrip("\n")) == 40, r.stderr
    assert runner.invoke(app, ["train", str(corpus), "--name", "w40", *flags[:3], "40", *flags[4:]]).exit_code == 0
    r = runner.invoke(app, ["sample", str(tmp_path / "w40"), "--int8", "--length", "40", "--prime", "the"])
    assert r.exit_code == 1 and r.stdout == ""  # (the prime was written before the refusal)
    assert r.stderr.strip().splitlines()[-1].startswith("charnn: error: --int8 for mingru/minlstm needs widths")
    import charnn
    with pytest.raises(CharnnError, match=r"^int8=True for mingru/minlstm needs widths.*; load without int8=True$"):
        charnn.load(str(tmp_path / "w40"), int8=True)  # at load, in the API's words (it failed at generate())
    from charnn.serve.server import load_models
    with pytest.raises(CharnnError, match="needs widths .*; serve without --int8$"):
        load_models([str(tmp_path / "w40")], "cpu", int8=True)  # before the server starts
