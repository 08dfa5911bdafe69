"""charnn's C: the sampler's fused recurrent cells (`cells_native.c`, `min_native.c`, `int8_native.c`, with their
threads in `pool_native.c`: `library()`) and training's
elementwise kernels (`train_native.c`, used through charnn.models.fused: `training_library()`), each library
compiled on first use, else none.

A token of one stream costs the two layers' matrix products and, around them, about twenty small tensor
operations whose dispatch (a few microseconds each on a CPU) adds a quarter to the products' time. The C file
does a whole LSTM or GRU cell in one pass (and the int8 codes of its output), and one stream's head and draw
(argmax of the tempered logits + noise). With `--int8` on a CPU with AVX-512 VNNI it also does one LSTM or GRU stream's
int8 matrix products, on the threads torch is given, and a whole block of that stream's tokens in one call, the
Batcher's noise included (`Int8Block`): torch._int_mm's matrix-vector products alone took longer per token
than that whole block now does (benchmarks/SAMPLING.md). For the minGRU/minLSTM (charnn.models.minstep) a
whole step of the stack is one call, products included, fp32 or int8. It is built once per machine with
the C compiler already there (`$CC`, else `cc`; -O3 for this CPU, so the cache key names the CPU), kept in
charnn's cache folder (charnn.models.nativebuild), and loaded with ctypes: no build step at install, no torch
headers (it only sees raw float arrays; its files compile side by side in under a second). Where there is no compiler, or it fails, or
CHARNN_NATIVE=0, `library()` returns None and the stepper keeps its tensor operations: the same results to
float rounding (exp is a polynomial here: see the C file), at their speed.
"""

from __future__ import annotations

import ctypes
import functools
import os
import subprocess
from functools import partial
from pathlib import Path
from typing import Optional

import torch

from charnn.models import nativebuild

HERE = Path(__file__).parent
SOURCES = (HERE / "cells_native.c", HERE / "min_native.c", HERE / "pool_native.c",  # the sampler's library
           HERE / "int8_native.c")
TRAINING = (HERE / "train_native.c", HERE / "block_native.c")  # training's, built apart (the first time a CPU run
HEADERS = (HERE / "native_math.h", HERE / "native_pool.h", HERE / "native_train.h")  # trains): only who trains waits
FLAGS = (["-O3", "-march=native"], ["-O3"])  # the second where the compiler does not know -march=native
I64, PTR, F32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
NO_MASK = (None, None, None)  # the C draws' UTF-8 guard arguments where there is none (charnn.generation.draw.Utf8Mask)
CELLS_BUILD = ((SOURCES, FLAGS[0]), (SOURCES, FLAGS[1]),  # everything; where the int8 file will not build, the
               (SOURCES[:3], FLAGS[0]), (SOURCES[:3], FLAGS[1]),  # cells and the min cells' step (and its threads);
               (SOURCES[:1], FLAGS[0]), (SOURCES[:1], FLAGS[1]))  # where those will not either, the cells alone


def enabled() -> bool:
    return os.environ.get("CHARNN_NATIVE", "1") != "0"


@functools.lru_cache(maxsize=None)
def library() -> Optional[ctypes.CDLL]:
    """The sampler's compiled library (the cells and head_draw, and where the CPU has AVX-512 VNNI gumbel, the int8
    products and int8_block), or None where it cannot be built here. Built at most once per process; a built
    library is reused across runs."""
    lib = _load("cells", CELLS_BUILD)
    if lib is None or not hasattr(lib, "lstm_cell"):  # (a library that exports nothing: clang aiming at MSVC)
        return None
    lib.lstm_cell.restype, lib.gru_cell.restype = ctypes.c_int, None
    lib.lstm_cell.argtypes = [I64, I64, PTR, I64, PTR, PTR, PTR, PTR, PTR, I64, PTR, I64, F32, I64, PTR]
    lib.gru_cell.argtypes = [I64, I64, PTR, I64, PTR, PTR, PTR, I64, PTR, PTR, PTR, PTR, I64, PTR, I64, F32]
    lib.head_draw.restype = None
    lib.head_draw.argtypes = [I64, I64, PTR, I64, PTR, PTR, PTR, I64, PTR, PTR, F32, I64, F32, PTR, PTR, PTR]
    if not hasattr(lib, "min_step"):  # built from the cells alone
        return lib
    lib.pool_use_openmp.restype, lib.pool_use_openmp.argtypes = None, [PTR, PTR, PTR]
    _share_openmp(lib, lib.pool_use_openmp)
    lib.min_rows_shared.restype, lib.min_rows_shared.argtypes = ctypes.c_int, []
    lib.min_step.restype = ctypes.c_int
    lib.min_step.argtypes = [I64, I64, I64, I64, I64, ctypes.c_int, I64, *[PTR] * 8, F32, PTR, PTR, PTR,
                             ctypes.c_int, PTR, PTR]
    lib.min_block.restype = ctypes.c_int
    lib.min_block.argtypes = [I64, I64, I64, I64, ctypes.c_int, I64, *[PTR] * 8, F32, PTR, PTR, PTR, PTR, I64, F32,
                              I64, I64, ctypes.c_int, I64, F32, PTR, I64, ctypes.c_int, PTR, PTR, PTR, PTR, PTR]
    if not hasattr(lib, "int8_vnni"):  # built without the int8 file
        return lib
    lib.int8_vnni.restype, lib.int8_vnni.argtypes = ctypes.c_int, []
    lib.int8_product.restype, lib.int8_product.argtypes = None, [I64, I64, PTR, PTR, PTR, PTR, ctypes.c_int]
    lib.int8_block.restype = ctypes.c_int
    lib.int8_block.argtypes = [ctypes.c_int, I64, I64, I64, *[PTR] * 18, I64, F32, PTR, I64, I64, ctypes.c_int, I64,
                               F32, PTR, I64, ctypes.c_int, ctypes.c_int, F32, PTR, PTR, PTR]
    lib.gumbel.restype, lib.gumbel.argtypes = None, [I64, I64, I64, PTR]
    return lib


@functools.lru_cache(maxsize=None)
def training_library() -> Optional[ctypes.CDLL]:
    """Training's compiled library (train_native.c: dropout_apply, minrnn_forward, minrnn_backward; block_native.c:
    a min-cell block's LayerNorm, bias + dropout + residual, GELU and bias sums; run on torch's OpenMP threads where
    found), or None where it cannot be built here (or CHARNN_NATIVE=0)."""
    lib = _load("train", ((TRAINING, [*FLAGS[0], "-mprefer-vector-width=512"]), (TRAINING, FLAGS[0]),
                          (TRAINING, FLAGS[1])))  # (512-bit vectors where the CPU has them: GELU's erf 1.4x)
    if lib is None or not hasattr(lib, "dropout_apply"):
        return None
    INT = ctypes.c_int
    lib.dropout_apply.restype = None
    lib.dropout_apply.argtypes = [INT, INT, I64, I64, I64, PTR, PTR, ctypes.c_double, ctypes.c_uint64, INT]
    lib.minrnn_forward.restype = lib.minrnn_backward.restype = INT
    lib.minrnn_forward.argtypes = [INT, INT, I64, I64, I64, PTR, PTR, PTR, PTR, PTR, INT]
    lib.minrnn_backward.argtypes = [INT, INT, I64, I64, I64, PTR, PTR, PTR, PTR, PTR, PTR, PTR, INT]
    lib.norm_forward.argtypes = [INT, I64, I64, PTR, PTR, PTR, F32, PTR, PTR, PTR, INT]
    lib.residual_forward.argtypes = [INT, I64, I64, PTR, PTR, PTR, ctypes.c_double, INT, I64, ctypes.c_uint64, PTR,
                                     INT]
    lib.gelu_forward.argtypes = [INT, I64, I64, PTR, PTR, PTR, PTR, INT]
    for name in ("norm_forward", "norm_backward", "residual_forward", "residual_backward", "gelu_forward",
                 "gelu_backward", "column_sums"):
        getattr(lib, name).restype = INT
    lib.norm_backward.argtypes = [INT, I64, I64, PTR, PTR, PTR, PTR, PTR, PTR, PTR, PTR, PTR, INT]
    lib.residual_backward.argtypes = [INT, I64, I64, PTR, ctypes.c_double, INT, I64, ctypes.c_uint64, PTR, PTR, INT]
    lib.gelu_backward.argtypes = [INT, I64, I64, PTR, PTR, PTR, PTR, INT]
    lib.column_sums.argtypes = [INT, I64, I64, PTR, PTR, INT]
    lib.use_openmp.restype, lib.use_openmp.argtypes = None, [PTR, PTR, PTR]
    _share_openmp(lib, lib.use_openmp)
    return lib


def _load(name: str, attempts) -> Optional[ctypes.CDLL]:
    """The library `name` built by the first of `attempts` ((sources, flags) ...) that compiles, loaded; None where
    none does, there is no compiler, or CHARNN_NATIVE=0."""
    if not enabled():
        return None
    try:
        try:
            return ctypes.CDLL(str(_build(name, attempts)))
        except OSError:  # a cached file that does not load (cut short by a full disk, say): build it again, once
            _build(name, attempts).unlink(missing_ok=True)
            return ctypes.CDLL(str(_build(name, attempts)))
    except (OSError, subprocess.SubprocessError):
        return None


def _share_openmp(lib: ctypes.CDLL, use) -> bool:
    """Hand a library's `use` (train_native.c's use_openmp, pool_native.c's pool_use_openmp) torch's own OpenMP
    runtime (GNU's libgomp, or Intel's or LLVM's, which export the same entry points), so its kernels run on torch's
    threads; without it they use threads of their own. Whether it was found."""
    if "OpenMP" not in torch.__config__.parallel_info():
        return False
    names = ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads")
    for path in _openmp_paths():
        try:
            omp = ctypes.CDLL(path)
        except OSError:
            continue
        if all(hasattr(omp, name) for name in names):
            use(*(ctypes.cast(getattr(omp, name), ctypes.c_void_p) for name in names))
            return True
    return False


OPENMP_NAMES = ("libgomp", "libiomp", "libomp")


def _openmp_paths() -> list:
    """Where torch's OpenMP runtime may be: among the libraries this process has loaded (Linux's /proc/self/maps),
    torch's own first; where that cannot be read (macOS, Windows), the runtimes in torch's folders (loading one
    that is loaded already hands back the same library)."""
    torch_dir = Path(torch.__file__).parent
    try:
        with open("/proc/self/maps") as maps:
            paths = dict.fromkeys(line.split(maxsplit=5)[-1].strip() for line in maps
                                  if any(n in line for n in OPENMP_NAMES) and "(deleted)" not in line)
        return sorted(paths, key=lambda p: not p.startswith(str(torch_dir)))
    except OSError:
        folders = (torch_dir / "lib", torch_dir.parent / "torch.libs", torch_dir.parent / "torch" / ".dylibs")
        return [str(f) for d in folders if d.is_dir() for f in sorted(d.iterdir()) if f.name.startswith(OPENMP_NAMES)]


def int8_products(lib: Optional[ctypes.CDLL]) -> bool:
    """Whether the library does int8 matrix products itself (built where the CPU has AVX-512 VNNI)."""
    return lib is not None and hasattr(lib, "int8_vnni") and bool(lib.int8_vnni())


def pack(codes, order=None):
    """(K, N) int8 weight codes (their columns taken in `order`, if given) -> (the layout `int8_gemv` in
    int8_native.c reads: (N/16, K/4, 16, 4), the offset 128 * column sums that undo its unsigned input). Needs
    K % 4 == 0 and N % 64 == 0."""
    K, N = codes.shape
    rows = codes.t() if order is None else codes.t()[order]  # (N, K): the stepper keeps codes as such a transpose
    packed = rows.reshape(N // 16, 16, K // 4, 4).permute(0, 2, 1, 3).contiguous()
    return packed, (rows.sum(1, dtype=torch.int32) * 128).contiguous()


def _build(name: str = "cells", attempts=None) -> Path:
    """The shared library `name` from the first of `attempts` (default: the sampler's) that compiles, from the cache
    or built into it (charnn.models.nativebuild)."""
    return nativebuild.build(name, attempts or CELLS_BUILD, HEADERS)


def ptr(t: Optional[torch.Tensor]) -> Optional[ctypes.c_void_p]:
    """A tensor's data as the C functions take it (None: NULL)."""
    return None if t is None else ctypes.c_void_p(t.data_ptr())


class ReadsTokens(partial):
    """A C cell call that takes the step's token ids as its last argument (see FastStepper._native_layers)."""


def layer_calls(lib: ctypes.CDLL, st, l: int, levels: float) -> list:
    """Layer l's work for a FastStepper `st` step, as calls with every argument bound (the buffers never move): its
    products, then the C cell. For int_mm the products stop at the int32 sums, which the cell scales back and
    adds to the gates' base (the LSTM's: the embedding table's row at layer 0, the bias above; the GRU's: each
    product's bias); every cell writes its h's int8 codes, round(h * levels), at once, so the codes are never a step
    late."""
    B, H, L = st.B, st.H, st.L
    codes = ptr(st.codes[:, l * H:(l + 1) * H]) if st.coded else None
    if st.cell == "gru":  # gi: the table's row (layer 0) or W_i x + b_i; gh: W_h h + b_h
        calls, sides = [], []
        for mm, x, out in ([] if l == 0 else [(st.mm_ih[l], st.x_ih[l], st.gates[l])]) + \
                [(st.mm_hh[l], st.x_hh[l], st.gh[l])]:
            if st.coded:  # the int32 sums only: the cell adds bias + sums * factor
                calls.append(partial(torch._int_mm, x, mm.codes, out=mm.acc))
                sides.append((mm.bias, 0, mm.acc, mm.factor))
            else:
                calls.append(partial(mm, x, out))
                sides.append((out, 3 * H, None, None))
        if l == 0:
            sides.insert(0, (st.gates[0], 3 * H, None, None))
        args = [a if isinstance(a, int) else ptr(a) for side in sides for a in side]
        return calls + [partial(lib.gru_cell, B, H, *args, ptr(st.scratch), ptr(st.h[l]), L * H, codes, L * H,
                                float(levels))]
    mm, x = st.mm_hh[l], (st.x_hh[0] if l == 0 else st.x_cat[l])
    if st.coded:  # base + acc * factor in C: the table's row (looked up by the cell itself) or the bias
        base, stride = (st.table, 4 * H) if l == 0 else (mm.bias, 0)
        products, acc = [partial(torch._int_mm, x, mm.codes, out=mm.acc)], (mm.acc, mm.factor, st.scratch)
    else:
        base, stride, products, acc = st.gates[l], 4 * H, [partial(mm, x, st.gates[l])], (None, None, None)
    cell = partial(lib.lstm_cell, B, H, ptr(base), stride, *map(ptr, acc), ptr(st.c[l]), ptr(st.h[l]), L * H, codes,
                   L * H, float(levels), st.table.shape[0])
    return products + [partial(cell, None) if l or not st.coded else ReadsTokens(cell)]  # None: row b


class Int8Block:
    """A whole block of tokens of one int8 LSTM or GRU stream in one C call (`int8_block`), matrix products included,
    over a FastStepper's own buffers (so its other calls read the state it leaves). Its int8 weights are laid out
    again for it: `pack`ed, with each layer's gate columns grouped 16 units at a time (units 16g..16g+15's gates side
    by side), so that a thread's share of the outputs is whole units and it runs their cells too (the embedding
    table, biases and scales are read where the stepper keeps them). Needs `int8_products` and a hidden size that is
    a multiple of 16."""

    def __init__(self, lib: ctypes.CDLL, st, levels: float):
        def array(tensors):
            return (ctypes.c_void_p * len(tensors))(*[None if t is None else t.data_ptr() for t in tensors])
        L, H, V, gru = st.L, st.H, st.table.shape[0], st.cell == "gru"
        gates = 3 if gru else 4
        order = torch.arange(gates * H).view(gates, H // 16, 16).transpose(0, 1).reshape(-1)  # grouped -> stepper's
        own = [pack(mm.codes, order) for mm in st.mm_hh]  # LSTM: above layer 0, [W_ih ; W_hh] stacked
        inputs = [None] + [st.mm_ih[l] for l in range(1, L)] if gru else [None] * L  # the GRU's W_ih apart
        ins = [None if mm is None else pack(mm.codes, order) for mm in inputs]
        self.acc, self.y = torch.empty(6 * H, dtype=torch.int32), torch.empty(V, dtype=torch.float32)
        self.codes2 = torch.empty_like(st.codes)
        self.keep = [t for pair in own + ins if pair is not None for t in pair]  # alive as long as their pointers
        self.arrays = [array([w for w, _ in own]), array([o for _, o in own]), array([mm.factor for mm in st.mm_hh]),
                       array([mm.bias for mm in st.mm_hh]), array([p and p[0] for p in ins]),
                       array([p and p[1] for p in ins]), array([mm and mm.factor for mm in inputs]),
                       array([mm and mm.bias for mm in inputs]), array(st.c or [None])]
        self.call = partial(lib.int8_block, int(gru), L, H, V, ptr(st.table), *self.arrays, ptr(st.hs),
                            ptr(st.codes), ptr(self.codes2), ptr(self.acc), ptr(st.w_head), ptr(st.b_head),
                            ptr(self.y))
        self.noise = torch.empty(0, dtype=torch.float32)  # a block's noise (k, V), grown as blocks grow
        self.levels = float(levels)  # the codes' scale: round(h * levels)

    def __call__(self, tok, drawn, temperature: float, seed: int, draw: int, greedy: bool, top_k: int = 0,
                 top_p: float = 1.0, products_only: bool = False, mask=NO_MASK) -> int:
        """tok: the first input (1,); drawn: (k, ...) int64, token t's draw into drawn[t, 0] (the next one's input),
        with the row's noise for its draws draw .. draw + k - 1 (`gumbel_noise`'s, made here), top_k (0: none) and
        top_p (1: none); mask: a UTF-8 guard's `c_args` (NO_MASK: none).
        Every piece runs on torch's thread count (`--threads`). -1: a token id outside the vocabulary."""
        if self.noise.numel() < drawn.shape[0] * self.y.numel():
            self.noise = torch.empty(drawn.shape[0], self.y.numel(), dtype=torch.float32)
        return self.call(self.noise.data_ptr(), len(drawn), temperature, tok.data_ptr(), seed, draw, int(greedy),
                         top_k, top_p, drawn.data_ptr(), drawn.stride(0), int(products_only), torch.get_num_threads(),
                         self.levels, *mask)
