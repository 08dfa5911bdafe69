"""Training's elementwise work in C on a CPU (train_native.c, built by charnn.models.native on first use):
dropout and the minGRU / minLSTM recurrence, each as an autograd Function.

Where they apply: CPU tensors in float32 or bfloat16 with the C library built (`available`); elsewhere (CUDA,
CHARNN_NATIVE=0, no compiler) the callers keep their torch operations, which compute the same thing.

- `dropout`: the mask is a hash of (a seed drawn from torch's generator, the number's position), so the backward
  makes the same mask again instead of storing it, and a run is as repeatable (and resumable) as with torch's
  own dropout; the masks themselves differ from torch's. torch's CPU generator draws at about 5 ns per number,
  which was a third of a minGRU training step at batch 64 (benchmarks/PARALLEL.md).
- `min_scan`: the recurrence h_t = h_{t-1} + z_t (v_t - h_{t-1}) over a whole window (charnn.models.scan gives
  the formulas), one pass forward, one backward that recomputes the states rather than keeping them
  (`scan_forward` / `scan_backward`, which also add the gates' bias on the way: charnn.models.fusedblock's).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from charnn.models import native

DTYPES = (torch.float32, torch.bfloat16)


def available(*tensors: torch.Tensor) -> bool:
    """Whether the C functions can take these tensors: all on the CPU, float32 or bfloat16, and the library built."""
    return all(t.device.type == "cpu" and t.dtype in DTYPES for t in tensors) and _built()


def _built() -> bool:
    return _lib() is not None


def _lib():
    return native.training_library()


def _seed() -> int:
    """A dropout seed from torch's default generator (torch.manual_seed and a resumed run's saved generator state
    decide it)."""
    return int(torch.randint(0, 2 ** 63 - 1, (), dtype=torch.int64))


def _apply(x: torch.Tensor, p: float, locked: bool, seed: int) -> torch.Tensor:
    if x.dtype not in DTYPES or (locked and x.dim() != 3):
        raise ValueError(f"fused dropout takes float32 or bfloat16 (locked: (B, T, D)), got {x.dtype} {tuple(x.shape)}")
    x = x.contiguous()
    y = torch.empty_like(x)
    B, T, D = (x.shape[0], x.shape[1], x.shape[2]) if locked else (1, x.numel() // max(1, x.shape[-1]), x.shape[-1])
    _lib().dropout_apply(bf16(x), int(locked), B, T, D, native.ptr(x), native.ptr(y),
                         float(p), seed, torch.get_num_threads())
    return y


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, locked, seed):
        ctx.p, ctx.locked, ctx.seed = p, locked, seed
        return _apply(x, p, locked, seed)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        return _apply(grad, ctx.p, ctx.locked, ctx.seed), None, None, None


def dropout(x: torch.Tensor, p: float, locked: bool = False) -> torch.Tensor:
    """Training dropout of x (any shape; `locked`: x (B, T, D), one mask per sequence b for every step t), each
    kept number scaled by 1 / (1 - p). Needs `available(x)` and 0 < p < 1."""
    return _Dropout.apply(x, float(p), bool(locked), _seed())


def scan_forward(lstm: bool, u: torch.Tensor, h0: Optional[torch.Tensor], bias: Optional[torch.Tensor] = None):
    """Every state (B, T, S) in u's dtype and the last (B, S), float32, of the recurrence over u (+ bias (P * S),
    float32) from h0 (B, S), float32 (None: zeros); u contiguous."""
    B, T, S = u.shape[0], u.shape[1], u.shape[2] // (3 if lstm else 2)
    h = torch.empty(B, T, S, dtype=u.dtype)
    last = torch.empty(B, S, dtype=torch.float32)
    done(_lib().minrnn_forward(bf16(u), int(lstm), B, T, S, native.ptr(u), native.ptr(bias),
                                native.ptr(h0), native.ptr(h), native.ptr(last), torch.get_num_threads()))
    return h, last


def scan_backward(lstm: bool, u: torch.Tensor, h0: Optional[torch.Tensor], grad_h: Optional[torch.Tensor],
                  grad_last: Optional[torch.Tensor], want_h0: bool, bias: Optional[torch.Tensor] = None):
    """(dL/du in u's dtype, dL/dh0 float32 or None) from dL/dh (B, T, S) and dL/d last (B, S) (either None:
    zeros), for the recurrence over u (+ bias)."""
    B, T, S = u.shape[0], u.shape[1], u.shape[2] // (3 if lstm else 2)
    grad_h = None if grad_h is None else grad_h.to(u.dtype).contiguous()
    grad_last = None if grad_last is None else grad_last.float().contiguous()
    grad_u = torch.empty_like(u)
    grad_h0 = torch.empty(B, S, dtype=torch.float32) if h0 is not None and want_h0 else None
    done(_lib().minrnn_backward(bf16(u), int(lstm), B, T, S, native.ptr(u), native.ptr(bias),
                                 native.ptr(h0), native.ptr(grad_h), native.ptr(grad_last), native.ptr(grad_u),
                                 native.ptr(grad_h0), torch.get_num_threads()))
    return grad_u, grad_h0


def bf16(t: torch.Tensor) -> int:
    """The C functions' dtype flag: 1 for bfloat16 tensors, 0 for float32."""
    return int(t.dtype == torch.bfloat16)


def done(rc: int, what: str = "the recurrence's scratch") -> None:
    """A C call's status: non-zero where a thread could not have its memory (its outputs are incomplete)."""
    if rc:
        raise MemoryError(f"no memory for {what}")


class _MinScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, h0, lstm):
        h, last = scan_forward(lstm, u, h0)
        ctx.save_for_backward(u, h0)
        ctx.lstm = lstm
        ctx.set_materialize_grads(False)  # an output nobody used (in training: the last state) comes back None
        return h, last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h, grad_last):
        u, h0 = ctx.saved_tensors
        grad_u, grad_h0 = scan_backward(ctx.lstm, u, h0, grad_h, grad_last, ctx.needs_input_grad[1])
        return grad_u, grad_h0, None


def min_scan(cell: str, u: torch.Tensor, h0: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every state h (B, T, S) in u's dtype and the last state (B, S) in float32 of the `cell` ("mingru",
    "minlstm") recurrence of the gate projections u (B, T, P * S) (minGRU [k | v], minLSTM [k_f | k_i | v]) from
    h0 (B, S) (None: zeros); differentiable in u and h0. Needs `available(u)`."""
    lstm = cell == "minlstm"
    P = 3 if lstm else 2
    if u.dim() != 3 or u.shape[2] % P or u.dtype not in DTYPES or (
            h0 is not None and tuple(h0.shape) != (u.shape[0], u.shape[2] // P)):
        raise ValueError(f"min_scan({cell!r}) takes u (B, T, {P} * S) in float32 or bfloat16 and h0 (B, S), got "
                         f"{u.dtype} {tuple(u.shape)} and {None if h0 is None else tuple(h0.shape)}")
    u = u.contiguous()
    h0 = None if h0 is None else h0.float().contiguous()
    if torch.is_grad_enabled() and (u.requires_grad or (h0 is not None and h0.requires_grad)):
        return _MinScan.apply(u, h0, lstm)
    return scan_forward(lstm, u, h0)
