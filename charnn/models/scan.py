"""The minGRU recurrence over a whole window at once, with its own backward (charnn.models.minrnn).

A minGRU layer's gate and candidate come from its input alone: for a projection u = [k | v] (B, T, 2S),
    z_t = sigmoid(k_t),  h_t = (1 - z_t) * h_{t-1} + z_t * v_t,
a linear recurrence h_t = a_t h_{t-1} + b_t. (minLSTM is the same with k = logsigmoid(k_i) - logsigmoid(k_f):
then 1 - z = f / (f + i), z = i / (f + i), the paper's normalised gates.)

On a CPU the model runs the recurrence in C instead (charnn.models.fused: one pass each way, 3x faster than
this on 2 cores, benchmarks/PARALLEL.md); this torch form is what a GPU runs, and the CPU too without a C compiler.

How it is computed, and why (measured on 2 cores, benchmarks/PARALLEL.md): the matrix products of a block are
large and cheap; what costs is the elementwise work of the recurrence, and on a CPU every torch op costs a few
microseconds besides its arithmetic. So the forward is a chunked scan in plain torch ops over strided views:
the window is cut into n chunks of C steps, and
  1. each chunk's end state from a zero start: C steps, each one addcmul over (B, n, S) (all chunks at once),
  2. the true state entering each chunk: n small steps over (B, S),
  3. every output, from those: C more steps over (B, n, S), written in place,
about 2C + n ops of size B*T*S/C, where a step-by-step loop takes T ops and Heinsen's log-space form
(cumsum + logcumsumexp) a dozen full-size ops, two of them slow along a middle axis. There is no division and no
log, so any a in [0, 1] is exact (the closed form A_t * cumsum(b / A) needs a >= some floor).

The backward is the same recurrence run backwards, g_t = dL/dh_t + a_{t+1} g_{t+1}, by the same loops from the
end, and the gate's derivatives are folded in by hand: dL/dv = z g, dL/dk = z (1 - z) g (v - h_{t-1}),
dL/dh_0 = a_1 g_1. Everything is fp32, under bf16 autocast too (a 10,000-step product of bf16 decays loses
the state).
"""

from __future__ import annotations

import math
from typing import Optional

import torch


def chunk_size(T: int) -> int:
    """About sqrt(2T) (2C + n ops is least there), a power of two."""
    return 1 << max(0, round(math.log2(math.sqrt(2 * T))))


def linear_recurrence(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor] = None,
                      reverse: bool = False) -> torch.Tensor:
    """h (B, T, S) of h_t = a_t h_{t-1} + b_t (reverse: h_t = a_t h_{t+1} + b_t, from the end), from a, b
    (B, T, S) and h0 (B, S) (None: zeros): the chunked form above. No autograd."""
    B, T, S = b.shape
    C = chunk_size(T)
    n = -(-T // C)
    pad = n * C - T
    if pad:  # a = 1, b = 0 outside the window changes nothing inside it
        ones, zeros = a.new_ones(B, pad, S), b.new_zeros(B, pad, S)
        a, b = (torch.cat([ones, a], 1), torch.cat([zeros, b], 1)) if reverse else (torch.cat([a, ones], 1),
                                                                                  torch.cat([b, zeros], 1))
    av, bv = a.view(B, n, C, S), b.view(B, n, C, S)
    steps = range(C - 1, -1, -1) if reverse else range(C)
    ends = bv[:, :, steps[0]].clone()  # 1. each chunk's last state from a zero start (B, n, S)
    for j in steps[1:]:
        ends = torch.addcmul(bv[:, :, j], av[:, :, j], ends)
    decay = av.prod(2)  # (B, n, S): what a chunk keeps of the state entering it
    starts = torch.empty_like(ends)  # 2. the state entering each chunk
    carry = b.new_zeros(B, S) if h0 is None else h0
    for k in (range(n - 1, -1, -1) if reverse else range(n)):
        starts[:, k] = carry
        carry = torch.addcmul(ends[:, k], decay[:, k], carry)
    out = torch.empty_like(bv)  # 3. every state
    prev = starts
    for j in steps:
        prev = torch.addcmul(bv[:, :, j], av[:, :, j], prev, out=out[:, :, j])
    out = out.view(B, n * C, S)
    return (out[:, pad:] if reverse else out[:, :T]) if pad else out


class _MinGRUScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, h0):
        k, v = u.float().chunk(2, -1)
        z = torch.sigmoid(k)
        h = linear_recurrence(1 - z, z * v, h0)
        ctx.save_for_backward(z, v, h, h0)
        ctx.dtype = u.dtype
        return h

    @staticmethod
    def backward(ctx, grad_h):
        z, v, h, h0 = ctx.saved_tensors
        B, T, S = h.shape
        a_next = torch.empty_like(z)  # a_{t+1}; nothing follows the last step
        torch.sub(1, z[:, 1:], out=a_next[:, :-1])
        a_next[:, -1] = 0
        g = linear_recurrence(a_next, grad_h.float(), reverse=True)  # dL/dh_t, the future's share included
        grad_u = torch.empty(B, T, 2 * S, dtype=torch.float32, device=g.device)  # [dk | dv], no cat
        dk, dv = grad_u[..., :S], grad_u[..., S:]
        torch.mul(z, g, out=dv)
        dk.copy_(v)  # v - h_{t-1}
        dk[:, 1:] -= h[:, :-1]
        if h0 is not None:
            dk[:, 0] -= h0
        dk.mul_(dv)
        torch.addcmul(dk, dk, z, value=-1, out=dk)  # * (1 - z)
        grad_h0 = (1 - z[:, 0]) * g[:, 0] if h0 is not None and ctx.needs_input_grad[1] else None
        return grad_u.to(ctx.dtype), grad_h0


def mingru_scan(u: torch.Tensor, h0: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Every state h (B, T, S), fp32, of the minGRU recurrence of u = [k | v] (B, T, 2S) from h0 (B, S) (None:
    zeros); differentiable in u and h0."""
    h0 = None if h0 is None else h0.float()
    if u.shape[1] == 1 or not (u.requires_grad or (h0 is not None and h0.requires_grad)):
        k, v = u.float().chunk(2, -1)
        z = torch.sigmoid(k)
        if u.shape[1] == 1:  # one step (sampling)
            return z * v if h0 is None else torch.lerp(h0.unsqueeze(1), v, z)
        return linear_recurrence(1 - z, z * v, h0)
    return _MinGRUScan.apply(u, h0)


def sequential_mingru(u: torch.Tensor, h0: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The same recurrence one step at a time, through autograd: the reference the tests compare against."""
    k, v = u.float().chunk(2, -1)
    h = k.new_zeros(k.shape[0], k.shape[2]) if h0 is None else h0.float()
    out = []
    for t in range(k.shape[1]):
        z = torch.sigmoid(k[:, t])
        h = (1 - z) * h + z * v[:, t]
        out.append(h)
    return torch.stack(out, 1)
