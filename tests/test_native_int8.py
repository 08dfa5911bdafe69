"""One int8 stream's whole block in C (charnn.models.native's int8_block, where the CPU has AVX-512 VNNI): its
matrix products are torch._int_mm's sums exactly, its noise the Batcher's hash, and its tokens and state the ones
the per-token calls make."""

import os
import shutil

import pytest
import torch

from charnn.config import ModelConfig
from charnn.generation.draw import gumbel_noise
from charnn.models import native
from charnn.models.registry import build_model
from charnn.models.stepper import FastStepper

pytestmark = pytest.mark.skipif(not shutil.which(os.environ.get("CC") or "cc"), reason="no C compiler here")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One private cache for the module: the library is built once (1.4 s), then each test loads it afresh."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def lib(monkeypatch, cache):
    monkeypatch.setenv("CHARNN_CACHE", str(cache))
    monkeypatch.setenv("CHARNN_NATIVE", "1")
    native.library.cache_clear()
    found = native.library()
    if not native.int8_products(found):
        pytest.skip("this CPU has no AVX-512 VNNI: the int8 blocks stay off (the per-token calls run)")
    monkeypatch.setattr("charnn.models.stepper.int8_kernel", lambda: "int_mm")
    yield found
    native.library.cache_clear()


def model_of(hidden: int = 32, layers: int = 2, vocab: int = 11, cell: str = "lstm"):
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=vocab, embed=8, hidden=hidden, layers=layers, cell=cell)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("K,N", [(16, 64), (48, 192), (512, 2048)])
def test_the_product_is_torchs_int_mm_exactly(lib, K, N, threads):
    g = torch.Generator().manual_seed(K + N)
    w = torch.randint(-127, 128, (K, N), dtype=torch.int8, generator=g)
    x = torch.randint(-127, 128, (1, K), dtype=torch.int8, generator=g)
    x[0, :4] = torch.tensor([-127, 127, 0, -1])
    packed, offset = native.pack(w)
    acc = torch.empty(N, dtype=torch.int32)
    for _ in range(3):  # the workers, once started, take their part again
        acc.fill_(7)
        lib.int8_product(K, N, x.data_ptr(), packed.data_ptr(), offset.data_ptr(), acc.data_ptr(), threads)
        assert torch.equal(acc, torch._int_mm(x, w)[0])


def test_the_noise_is_the_batchers(lib):
    out = torch.empty(11)
    for seed in (0, 5, -3, 2**62 + 1):
        want = gumbel_noise(torch.tensor([seed]), torch.tensor([1000]), 40, 11)[:, 0]
        for t in range(40):
            lib.gumbel(seed, 1000 + t, 11, out.data_ptr())
            assert (out - want[t]).abs().max().item() <= 5e-7  # the same hash; logs may differ in the last bit


def per_token(st: FastStepper, lib, tok: int, k: int, temperature: float, seed: int, greedy: bool,
              top_k: int, vocab: int = 11, top_p: float = 1.0) -> list:
    """What step_draw makes, token by token, with the C noise (so the two paths must agree exactly)."""
    ids, noise, out, prev = [], torch.zeros(1, vocab), torch.empty(1, dtype=torch.long), torch.tensor([tok])
    for t in range(k):
        if not greedy:
            lib.gumbel(seed, t, vocab, noise.data_ptr())
        st.step_draw(prev, noise, out, temperature, top_k, top_p)
        ids.append(out.item())
        prev = out.clone()
    return ids


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("temperature,greedy,top_k,top_p", [(1.0, False, 0, 1.0), (0.7, False, 0, 1.0),
                                                            (1.0, True, 0, 1.0), (1.2, False, 3, 1.0),
                                                            (1.4, False, 0, 0.8), (1.2, False, 5, 0.6)])
def test_a_block_draws_what_the_per_token_calls_draw(lib, temperature, greedy, top_k, top_p, threads, cell,
                                                     monkeypatch):
    model = model_of(layers=3, cell=cell)
    block, single = FastStepper(model, 1, int8=True, banned=[4]), FastStepper(model, 1, int8=True, banned=[4])
    assert block.blocks is not None and not FastStepper(model, 2, int8=True).blocks  # one stream only
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    want = per_token(single, lib, 2, 90, temperature, seed=9, greedy=greedy, top_k=top_k, top_p=top_p)
    drawn, got, prev = torch.zeros(30, 3, dtype=torch.long), [], torch.tensor([2])
    for start in (0, 30, 60):  # three blocks, each starting from the last one's draw and state
        block.draw_block(prev, drawn, temperature, 9, start, greedy, top_k, top_p)
        got += drawn[:, 0].tolist()
        prev = drawn[-1, :1].clone()
    assert got == want and 4 not in got and len(set(got)) > (0 if greedy else 4 if top_p == 1 else 1)  # (a greedy
    # GRU here: one token; top-p keeps fewer)
    for a, b in [(block.hs, single.hs), (block.codes, single.codes), *zip(block.c or [], single.c or [])]:
        assert torch.equal(a, b)  # the state itself, bit for bit: the next step (or a row moving) reads it


@pytest.mark.parametrize("top_k", [0, 40])
def test_a_subword_vocabularys_head_is_shared_by_the_threads_and_draws_the_same(lib, top_k, monkeypatch):
    """vocabulary x hidden >= 200,000 weights: the head is split over the threads (int8_native.c's HEAD_SPLIT)."""
    model = model_of(hidden=32, vocab=7000)
    block, single = FastStepper(model, 1, int8=True), FastStepper(model, 1, int8=True)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    want = per_token(single, lib, 5, 40, 0.9, seed=4, greedy=False, top_k=top_k, vocab=7000)
    drawn = torch.zeros(40, 1, dtype=torch.long)
    block.draw_block(torch.tensor([5]), drawn, 0.9, 4, 0, False, top_k)
    assert drawn[:, 0].tolist() == want and torch.equal(block.hs, single.hs)


def test_it_refuses_ids_it_cannot_read_and_sizes_it_cannot_tile(lib):
    st = FastStepper(model_of(), 1, int8=True)
    drawn = torch.zeros(4, 1, dtype=torch.long)
    for bad in (torch.tensor([11]), torch.tensor([-1])):
        with pytest.raises(IndexError):
            st.draw_block(bad, drawn, 1.0, 0, 0, False)
    with pytest.raises(ValueError):
        st.draw_block(torch.tensor([1], dtype=torch.int32), drawn, 1.0, 0, 0, False)
    assert FastStepper(model_of(hidden=24), 1, int8=True).blocks is None  # 4 x 24 outputs: not whole tiles
    assert FastStepper(model_of(), 1).blocks is None  # fp32: torch's products


def test_the_batcher_makes_one_streams_blocks_in_c_and_the_text_is_the_per_token_text(lib, trained_run,
                                                                                       monkeypatch):
    import charnn
    calls = []
    real = FastStepper.draw_block
    monkeypatch.setattr(FastStepper, "draw_block", lambda self, *a, **k: calls.append(len(a[1])) or real(self, *a, **k))
    model = charnn.load(trained_run.run_dir, device="cpu", int8=True)
    settings = [dict(temperature=1.0), dict(temperature=0.6), dict(temperature=0.0), dict(temperature=0.9, top_k=4)]
    texts = {i: model.generate("the ", length=300, seed=5, **kw) for i, kw in enumerate(settings)}
    assert calls and sum(calls) >= 4 * 299
    monkeypatch.setattr(FastStepper, "draw_block", real)
    monkeypatch.setattr(native, "int8_products", lambda found: False)  # the per-token calls, torch's noise
    plain = charnn.load(trained_run.run_dir, device="cpu", int8=True)
    assert all(plain.generate("the ", length=300, seed=5, **settings[i]) == text for i, text in texts.items())
    assert len(set(texts.values())) == 4
