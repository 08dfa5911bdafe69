"""The sampler's fused C cells (charnn.models.native): the same numbers as the tensor operations, and a quiet
fallback to them wherever the C file cannot be built."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from charnn.config import ModelConfig
from charnn.generation.draw import filter_logits, temper
from charnn.models import native, nativebuild
from charnn.models.int8 import ACT_LEVELS
from charnn.models.registry import build_model
from charnn.models.stepper import FastStepper, full_forward_logits
from conftest import subprocess_env

pytestmark = pytest.mark.skipif(not shutil.which(os.environ.get("CC") or "cc"), reason="no C compiler here")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A private cache and no library loaded yet in this process; restored after."""
    monkeypatch.setenv("CHARNN_CACHE", str(tmp_path))
    native.library.cache_clear()
    native.training_library.cache_clear()
    yield monkeypatch
    native.library.cache_clear()
    native.training_library.cache_clear()


def model_of(cell: str, layers: int = 2, hidden: int = 24, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(vocab_size=11, embed=8, hidden=hidden, layers=layers, cell=cell)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.6)  # larger than the init, so every gate saturates somewhere
    return model


def stepper(model, batch: int, use_native: bool, monkeypatch, **kw) -> FastStepper:
    monkeypatch.setenv("CHARNN_NATIVE", "1" if use_native else "0")
    native.library.cache_clear()
    st = FastStepper(model, batch, **kw)
    assert (st.native is not None) == use_native
    return st


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 3])
def test_the_fused_cells_match_the_model_and_the_tensor_operations(fresh, cell, layers):
    model = model_of(cell, layers)
    ids = torch.randint(0, 11, (60,), generator=torch.Generator().manual_seed(1)).tolist()
    want = full_forward_logits(model, ids)
    fused, ops = stepper(model, 3, True, fresh), stepper(model, 3, False, fresh)
    for t, row in zip(ids, want):
        a, b = fused.step(torch.full((3,), t)).clone(), ops.step(torch.full((3,), t))
        assert (a - row).abs().max().item() < 1e-5 and (a - b).abs().max().item() < 1e-5
    assert (fused.hs - ops.hs).abs().max().item() < 1e-5  # the state itself, not only the logits


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_int8_fused_cells_keep_every_layers_codes_current(fresh, cell, monkeypatch):
    monkeypatch.setattr("charnn.models.stepper.int8_kernel", lambda: "int_mm")
    model = model_of(cell, layers=3, hidden=32)
    fused, ops = stepper(model, 2, True, fresh, int8=True), stepper(model, 2, False, fresh, int8=True)
    exact = stepper(model, 2, False, fresh)
    worst = {"fused": 0.0, "ops": 0.0}  # each int8 path's distance from fp32 (these large weights make it drift)
    for t in [3, 1, 4, 1, 5, 9, 2, 6, 5, 3] * 3:
        a, b = (torch.softmax(s.step(torch.full((2,), t)).double(), -1) for s in (fused, ops))
        c = torch.softmax(exact.step(torch.full((2,), t)).double(), -1)
        assert torch.equal(fused.codes, torch.round(fused.hs * ACT_LEVELS).to(torch.int8))  # all layers, now
        assert (a - b).abs().max().item() < 5e-3
        worst = {"fused": max(worst["fused"], (a - c).abs().max().item()),
                 "ops": max(worst["ops"], (b - c).abs().max().item())}
    assert 1e-6 < worst["fused"] <= 1.05 * worst["ops"] + 1e-4  # int8 (not silently fp32), and no further from it


@pytest.mark.parametrize("int8,temperature,top_k,top_p", [
    (False, 1.0, 0, 1.0), (True, 1.0, 0, 1.0), (False, 0.6, 0, 1.0), (True, 1.7, 0, 1.0), (False, 1.0, 1, 1.0),
    (True, 0.8, 3, 1.0), (False, 1.3, 10, 1.0), (False, 1.0, 0, 0.9), (True, 1.5, 0, 0.5), (False, 0.8, 6, 0.7),
    (False, 1.0, 0, 1e-9)])
def test_one_streams_head_and_draw_in_c_draw_what_the_tensor_operations_draw(fresh, int8, temperature, top_k, top_p):
    """step_draw(tok, noise, out, temperature, top_k, top_p) is argmax(filter_logits(temper(step(tok), temperature),
    top_k, top_p) + noise): the same ids, token after token, with a banned id (its bias -inf) never drawn."""
    model = model_of("lstm", layers=2, hidden=32)
    fused = stepper(model, 1, True, fresh, int8=int8, banned=[4])
    plain = stepper(model, 1, True, fresh, int8=int8, banned=[4])
    assert fused.draws and not stepper(model, 2, True, fresh).draws  # one stream only
    g = torch.Generator().manual_seed(3)
    a = b = torch.tensor([1])
    for _ in range(300):
        noise = -torch.log(-torch.log(torch.rand(1, 11, generator=g)))
        out = torch.empty(1, dtype=torch.long)
        fused.step_draw(a, noise, out, temperature, top_k, top_p)
        x = temper(plain.step(b), torch.tensor([[temperature]]))
        want = torch.argmax(filter_logits(x, top_k or None, top_p if top_p < 1 else None) + noise, dim=-1)
        assert torch.equal(out, want) and out.item() != 4
        a = b = out.clone()


@pytest.mark.parametrize("logits,top_p,kept", [([0, 0, 0, 0], 0.5, 2), ([1, 1, 0, 0], 0.3, 1), ([3, 1, 1, 1, -5], 0.9, 3),
                                               ([1, 1, 1], 1e-9, 1), ([2, 1, 0], 0.99, 3), ([0, 0], 0.9, 2)])
def test_top_p_in_c_keeps_as_many_tied_tokens_as_filter_logits(fresh, logits, top_p, kept):
    """Was: a cut through equal logits kept them all (2,000 draws at [0, 0, 0, 0], p 0.5: four tokens, not two)."""
    import ctypes
    lib = native.library()
    if lib is None:
        pytest.skip("no C compiler")
    V = len(logits)
    h, w, bias = torch.ones(1), torch.tensor([logits], dtype=torch.float32), torch.zeros(V)
    scratch, out = torch.empty(V), torch.empty(1, dtype=torch.long)
    ptr = lambda t: ctypes.c_void_p(t.data_ptr())  # noqa: E731
    drawable = set()
    for v in range(V):  # a token is kept if a huge noise on it alone wins the draw
        noise = torch.zeros(V)
        noise[v] = 1e30
        lib.head_draw(1, V, ptr(h), 1, ptr(w), ptr(bias), ptr(scratch), 1, ptr(noise), ptr(out), 1.0, 0, top_p,
                      None, None, None)
        drawable |= {out.item()} if out.item() == v else set()
    want = int(torch.isfinite(filter_logits(w.clone(), None, top_p)).sum())
    assert len(drawable) == kept == want


@pytest.mark.parametrize("V", [300, 5000, 40000])
@pytest.mark.parametrize("scale", [0.5, 3.0, 10.0])
def test_top_p_in_c_draws_what_filter_logits_draws_at_any_vocabulary(fresh, V, scale):
    """C's top-p sorts only the values its cut can reach (power-of-two buckets of probability, then a radix sort):
    flat and peaked logits, vocabularies of characters and of subwords, the same draws as torch's filter_logits."""
    import ctypes
    lib = native.library()
    if lib is None:
        pytest.skip("no C compiler")
    g = torch.Generator().manual_seed(V + int(scale * 10))
    h, bias = torch.ones(1), torch.zeros(V)
    scratch, out = torch.empty(V), torch.empty(1, dtype=torch.long)
    ptr = lambda t: ctypes.c_void_p(t.data_ptr())  # noqa: E731
    for draw in range(40):
        w = (torch.randn(1, V, generator=g) * scale).contiguous()
        if draw % 4 == 0:
            w[0, :V // 3] = w[0, 0]  # a long run of equal logits: ties at the cut
        noise = -torch.log(torch.empty(V).exponential_(generator=g))
        top_p = (0.5, 0.9, 0.97, 0.2)[draw % 4]
        lib.head_draw(1, V, ptr(h), 1, ptr(w), ptr(bias), ptr(scratch), 1, ptr(noise), ptr(out), 1.0, 0, top_p,
                      None, None, None)
        kept = filter_logits(w[0].clone(), None, top_p)
        if draw % 4:
            assert out.item() == int(torch.argmax(kept + noise)), (draw, top_p)
        else:  # (of equal logits cut through, C keeps the first by index and torch those its sort puts first: as
            floor = w[0][torch.isfinite(kept)].min()  # many, maybe others, tested above: a logit at or over the cut)
            assert w[0, out.item()] >= floor, (draw, top_p)


def test_the_batcher_draws_one_stream_in_c_top_p_too(fresh, trained_run, monkeypatch):
    import charnn
    calls = []
    real = FastStepper.step_draw
    monkeypatch.setattr(FastStepper, "step_draw",
                        lambda self, *a, **k: calls.append((round(a[3], 6), a[4], round(a[5], 6)))
                        or real(self, *a, **k))
    model = charnn.load(trained_run.run_dir, device="cpu")
    settings = [dict(), dict(temperature=0.7), dict(temperature=0.7, top_k=5), dict(top_k=500), dict(top_p=0.9),
                dict(temperature=1.2, top_k=8, top_p=0.8)]
    texts = [model.generate("the ", length=60, seed=5, **kw) for kw in settings]
    assert calls.count((1.0, 0, 1.0)) >= 59 and calls.count((0.7, 0, 1.0)) >= 59 and calls.count((0.7, 5, 1.0)) >= 59
    assert calls.count((1.0, 0, 1.0)) >= 2 * 59  # top_k of the vocabulary or more: no filter, as filter_logits
    assert calls.count((1.0, 0, 0.9)) >= 59 and calls.count((1.2, 8, 0.8)) >= 59  # top-p in C (it was torch's draw)
    fresh.setenv("CHARNN_NATIVE", "0")
    native.library.cache_clear()
    model = charnn.load(trained_run.run_dir, device="cpu")
    assert [model.generate("the ", length=60, seed=5, **kw) for kw in settings] == texts


def test_an_int8_cell_that_looks_its_row_up_refuses_ids_it_cannot_read(fresh, monkeypatch):
    """With int_mm, layer 0's C cell reads the token ids itself (no index_select to check them)."""
    monkeypatch.setattr("charnn.models.stepper.int8_kernel", lambda: "int_mm")
    st = stepper(model_of("lstm"), 2, True, fresh, int8=True)
    assert st.cell_reads_tokens
    for bad in (torch.tensor([1, 11]), torch.tensor([-1, 2])):
        with pytest.raises(IndexError):
            st.step(bad)
    for bad in (torch.tensor([1, 2], dtype=torch.int32), torch.tensor([1, 0, 2, 0])[::2], torch.tensor([1])):
        with pytest.raises(ValueError):
            st.step(bad)
    assert st.step(torch.tensor([10, 0])).isfinite().all()


def library_refusing(source: str, fresh, tmp_path):
    """native.library() built by a compiler that fails on `source` (and compiles everything else)."""
    cc = tmp_path / "picky-cc"
    cc.write_text(f'#!/bin/sh\nfor a in "$@"; do case "$a" in *{source}) echo "error: no" >&2; exit 1;; esac; '
                  'done\nexec cc "$@"\n')
    cc.chmod(0o755)
    fresh.setenv("CC", str(cc))
    return native.library()


def test_a_compiler_that_cannot_build_the_int8_file_still_gives_the_cells(fresh, tmp_path):
    """The int8 block's file needs more of the compiler (AVX-512 intrinsics, pthreads): where it fails, the library is
    built without it, and the stepper keeps its C cells with torch's int8 products."""
    lib = library_refusing("int8_native.c", fresh, tmp_path)
    assert lib is not None and not hasattr(lib, "int8_vnni") and not native.int8_products(lib)
    assert hasattr(lib, "min_step")  # the min cells' step is built with the cells
    model = model_of("lstm", hidden=32)
    st = FastStepper(model, 1, int8=True)
    assert st.native is not None and st.draws and st.blocks is None
    out = torch.empty(1, dtype=torch.long)
    st.step_draw(torch.tensor([1]), torch.zeros(1, 11), out, 0.8, 3)
    assert 0 <= out.item() < 11


def test_a_compiler_that_cannot_build_the_min_cells_file_still_gives_the_lstm_cells(fresh, tmp_path):
    """min_native.c (and the threads it needs) are plain C, but where they will not build the LSTM keeps its C cells
    and the min cells their torch step."""
    from charnn.models.minrnn import MinRNN
    from charnn.models.configs import MinRNNConfig
    from charnn.models.minstep import MinStepper
    lib = library_refusing("min_native.c", fresh, tmp_path)
    assert lib is not None and hasattr(lib, "lstm_cell") and not hasattr(lib, "min_step")
    assert FastStepper(model_of("lstm", hidden=32), 1).native is not None
    model = MinRNN(MinRNNConfig(vocab_size=11, cell="mingru", layers=1, hidden=16, embed=4)).eval()
    st = MinStepper(model, 1)
    assert st.call is None and not st.draws
    with torch.no_grad():
        torch.testing.assert_close(st.step(torch.tensor([3])), model(torch.tensor([[3]]))[0][:, -1])


def test_a_compiler_that_cannot_build_the_training_file_still_gives_the_cells(fresh, tmp_path):
    """train_native.c is its own library: where it will not build, sampling keeps its C cells and training its torch
    operations."""
    from charnn.models import fused
    lib = library_refusing("train_native.c", fresh, tmp_path)
    assert lib is not None and hasattr(lib, "lstm_cell") and native.training_library() is None
    assert not fused.available(torch.zeros(1))
    st = FastStepper(model_of("lstm", hidden=32), 1)
    assert st.native is not None


def test_it_builds_once_and_is_reused(fresh, tmp_path):
    first = native._build()
    stamp = first.stat().st_mtime_ns
    assert native._build() == first and first.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name, first.name + ".sha256"]  # no temp file left


@pytest.mark.parametrize("how", ["off", "no compiler", "compiler fails"])
def test_without_the_library_the_stepper_uses_its_tensor_operations(fresh, tmp_path, how):
    if how == "off":
        fresh.setenv("CHARNN_NATIVE", "0")
    elif how == "no compiler":
        fresh.setenv("CC", str(tmp_path / "no-such-cc"))
    else:
        cc = tmp_path / "broken-cc"
        cc.write_text("#!/bin/sh\necho 'error: nothing works' >&2\nexit 1\n")
        cc.chmod(0o755)
        fresh.setenv("CC", str(cc))
    assert native.library() is None
    model = model_of("lstm")
    st = FastStepper(model, 2)
    assert st.native is None
    want = full_forward_logits(model, [1, 2, 3])[-1]
    for t in [1, 2, 3]:
        got = st.step(torch.full((2,), t))
    assert (got - want).abs().max().item() < 1e-5
    assert not list((tmp_path / "native").glob("*")) if (tmp_path / "native").exists() else True


def test_sampling_writes_the_same_text_with_and_without_the_fused_cells(trained_run, tmp_path):
    """fp32: the fused cells differ from the tensor operations by float rounding only (1e-7), so a seeded sample
    draws the same characters."""
    texts = []
    for flag, n in (("1", "3"), ("0", "3"), ("1", "1"), ("0", "1")):  # 3 streams; and 1: the fused head and draw
        r = subprocess.run([sys.executable, "-m", "charnn", "sample", str(trained_run.run_dir), "--length", "400",
                            "--seed", "7", "--num-samples", n], capture_output=True, text=True,
                           env=subprocess_env(CHARNN_NATIVE=flag, CHARNN_CACHE=str(tmp_path)), timeout=300)
        assert r.returncode == 0, r.stderr
        texts.append(r.stdout)
    assert texts[0] == texts[1] and len(texts[0]) > 1000 and texts[2] == texts[3] and len(texts[2]) > 300
    assert list((tmp_path / "native").glob("cells-*"))  # the first run built it, in the cache it was given


def test_torchs_openmp_runtime_is_found_without_proc(monkeypatch):
    """Where /proc/self/maps cannot be read (macOS, Windows), torch's OpenMP runtime is looked for in torch's own
    folders: the C kernels still run on torch's threads, not on threads of their own competing with them."""
    import builtins

    if "OpenMP" not in torch.__config__.parallel_info() or not native._openmp_paths():
        pytest.skip("torch has no OpenMP runtime here")
    real_open = builtins.open

    def no_proc(f, *a, **k):
        if str(f).startswith("/proc/"):
            raise OSError("no /proc here")
        return real_open(f, *a, **k)

    monkeypatch.setattr(builtins, "open", no_proc)
    found = native._openmp_paths()
    site = str(Path(torch.__file__).parent.parent)
    assert found and all(p.startswith(site) for p in found)
    handed = []
    assert native._share_openmp(None, lambda *pointers: handed.append(pointers))
    assert len(handed) == 1 and all(p.value for p in handed[0])


def test_macos_cc_without_the_developer_tools_is_no_compiler(monkeypatch, tmp_path):
    """macOS's /usr/bin/cc stub opens an install dialog when run: charnn asks `xcode-select -p` first, and without
    the tools builds nothing (the cells run as tensor operations)."""
    from types import SimpleNamespace

    asked = []
    monkeypatch.setattr(nativebuild.sys, "platform", "darwin")
    monkeypatch.setattr(nativebuild.shutil, "which", lambda c: "/usr/bin/cc")
    tools = str(tmp_path)
    for code, folder, ready in ((2, "", False), (0, tools, True), (0, tools + "/deleted", False)):
        nativebuild.developer_tools.cache_clear()
        monkeypatch.setattr(nativebuild.subprocess, "run",
                            lambda cmd, **k: asked.append(cmd) or SimpleNamespace(returncode=code, stdout=folder + "\n"))
        assert nativebuild.developer_tools("cc") is ready
    assert asked == [["xcode-select", "-p"]] * 3
    nativebuild.developer_tools.cache_clear()
    with pytest.raises(OSError, match="no C compiler"):
        monkeypatch.setattr(nativebuild.subprocess, "run", lambda cmd, **k: SimpleNamespace(returncode=2, stdout=""))
        native._build("cells")
    monkeypatch.setattr(nativebuild.shutil, "which", lambda c: "/opt/homebrew/bin/gcc-14")  # a compiler of its own
    nativebuild.developer_tools.cache_clear()
    assert nativebuild.developer_tools("gcc-14")
    nativebuild.developer_tools.cache_clear()


def test_a_killed_builds_temp_library_is_swept_and_a_young_one_kept(tmp_path):
    """A kill -9 mid-compile left its tmp*.so in the cache's native folder for good (the build's finally never ran)."""
    import os
    import time
    from charnn.models.nativebuild import STALE_SECONDS, sweep_stale
    old, young = tmp_path / "tmpabc.so", tmp_path / "tmpdef.so"
    for f in (old, young):
        f.write_bytes(b"\0" * 10)
    os.utime(old, (time.time() - STALE_SECONDS - 60,) * 2)  # (another process's build under way is young: kept)
    sweep_stale(tmp_path, ".so")
    assert not old.exists() and young.exists()


def test_a_cached_library_cut_short_is_built_again_not_loaded(tmp_path):
    """A library in the cache cut to 20,000 bytes (a full disk, a crash before its data reached the disk) passed
    the dynamic loader's checks and crashed every later `train` and `sample` in ctypes' load with a bus error;
    its digest, kept beside it, now says it is not the file its build wrote, and it is built again."""
    env = subprocess_env(CHARNN_CACHE=str(tmp_path / "cache"))
    load = [sys.executable, "-c", "from charnn.models import native; print(native.library() is not None)"]
    first = subprocess.run(load, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0 and first.stdout.strip() == "True", first.stderr
    (built,) = (tmp_path / "cache" / "native").glob("cells-*.so")
    whole = built.read_bytes()
    for damage in (whole[:20000], whole[:-1] + bytes([whole[-1] ^ 1])):  # (4,096 bytes crashed alike)
        built.write_bytes(damage)
        again = subprocess.run(load, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and again.stdout.strip() == "True", again.stderr
        assert nativebuild.whole(built) and len(built.read_bytes()) > 20000  # (built again: its digest agrees)


def test_a_library_from_before_digests_in_a_cache_it_cannot_write_is_still_loaded(tmp_path, monkeypatch):
    """A library built before digests were kept has none: it is built again, but where the cache cannot be written
    (shared, read-only) it was given up, and the C kernels with it, without a word; it is used as it is."""
    monkeypatch.setenv("CHARNN_CACHE", str(tmp_path / "cache"))
    built = native._build()
    Path(str(built) + nativebuild.DIGEST).unlink()

    def refused(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(nativebuild.tempfile, "mkstemp", refused)
    assert native._build() == built
    built.write_bytes(built.read_bytes()[:4096])  # a digest that disagrees: never loaded, even so
    Path(str(built) + nativebuild.DIGEST).write_text("0" * 64, encoding="ascii")
    with pytest.raises(OSError):
        native._build()
