"""A minGRU / minLSTM block's training step on a CPU as one autograd Function (charnn.models.minrnn.MinBlock):
torch's matrix products (oneDNN: AMX or AVX-512 bf16 where the CPU has them) with all the work between them in C
(block_native.c, and train_native.c's recurrence), one pass each:

    n = LayerNorm(x)            -> u = n Wg^T   -> h = scan(u + bg)   -> o = h Wo^T  -> x2 = x + dropout(o + bo)
    [n2 = LayerNorm(x2)         -> a = n2 W1^T  -> g = GELU(a + b1)   -> d = g W2^T  -> y = x2 + dropout(d + b2)]

Through torch the same block cost two to four passes over each (B, T, .) tensor around every product: autocast's
casts, addmm's copy of the bias into its output before the product, LayerNorm in float32 then a cast, the residual
add; at batch 64 bf16 on an AMX Xeon that was more than half of the step (benchmarks/PARALLEL.md). Here the biases
ride in the next elementwise pass, so the products are plain `mm`s.

Every (B, T, .) tensor is in x's dtype (bfloat16 under charnn's autocast, whose first Linear gives bfloat16; float32
without it), computed in float32 inside each pass; the parameters and their gradients stay float32. Dropout's masks
are charnn.models.fused's (the same seed gives the same mask), drawn in the same order as the unfused block's.
"""

from __future__ import annotations

import sys
from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from charnn.models import fused, native


def applies(block, x: torch.Tensor, every: bool) -> bool:
    """Whether `block`'s forward of x can run here: a CPU tensor of the C library's dtypes, its states not wanted
    (`every`), and dropout below 1."""
    p = block.drop.p if block.training else 0.0
    return not every and x.dim() == 3 and p < 1.0 and fused.available(x)


def block_forward(block, x: torch.Tensor, h0: Optional[torch.Tensor]):
    """MinBlock.forward's (x (B, T, D), last state (B, S) float32) through the C passes; needs `applies`."""
    p = float(block.drop.p) if block.training else 0.0
    seeds = (fused._seed() if p else 0, fused._seed() if p and block.ffn is not None else 0)  # the unfused order
    params = [block.norm.weight, block.norm.bias, block.gates.weight, block.gates.bias, block.out.weight,
              block.out.bias]
    if block.ffn is not None:
        norm, up, down = block.ffn[0], block.ffn[1], block.ffn[3]
        params += [norm.weight, norm.bias, up.weight, up.bias, down.weight, down.bias]
    grads = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, h0, *params))
    how = (block.cell == "minlstm", p, bool(block.locked), seeds, float(block.norm.eps), grads)
    h0 = None if h0 is None else h0.float().contiguous()
    return _Block.apply(x.contiguous(), h0, how, *params)


_bf16 = fused.bf16


def _rows(t: torch.Tensor):
    return t.numel() // t.shape[-1], t.shape[-1]


F32 = torch.float32


def _call(name: str, *args) -> None:
    """block_native.c's `name` on torch's threads; tensors as pointers, the rest as they are."""
    fused.done(getattr(fused._lib(), name)(*(native.ptr(a) if isinstance(a, torch.Tensor) or a is None else a
                                             for a in args), torch.get_num_threads()),
               "a C pass's row buffers or partial sums")


def _norm(x, w, b, eps):
    """LayerNorm of x's rows -> (y in x's dtype, each row's mean, each row's 1 / sqrt(var + eps))"""
    y, mean, rstd = torch.empty_like(x), x.new_empty(x.shape[:-1], dtype=F32), x.new_empty(x.shape[:-1], dtype=F32)
    _call("norm_forward", _bf16(x), *_rows(x), x, w, b, eps, y, mean, rstd)
    return y, mean, rstd


def _norm_backward(x, w, mean, rstd, gy, gres):
    """-> (dL/dx (+ gres), dL/dw, dL/db)"""
    gx, gw, gb = torch.empty_like(x), w.new_empty(w.shape, dtype=F32), w.new_empty(w.shape, dtype=F32)
    _call("norm_backward", _bf16(x), *_rows(x), x, w, mean, rstd, gy, gres, gx, gw, gb)
    return gx, gw, gb


def _residual(x, o, bias, p, locked, seed):
    """x + dropout(o + bias)"""
    y = torch.empty_like(x)
    _call("residual_forward", _bf16(x), *_rows(x), x, o, bias, p, int(locked), x.shape[1], seed, y)
    return y


def _residual_backward(gy, p, locked, seed):
    """-> (dL/do, dL/dbias) from gy = dL/dy"""
    go, gbias = torch.empty_like(gy), gy.new_empty(gy.shape[-1], dtype=F32)
    _call("residual_backward", _bf16(gy), *_rows(gy), gy, p, int(locked), gy.shape[1], seed, go, gbias)
    return go, gbias


def _gelu(a, bias, grad: bool = True):
    """-> (GELU(a + bias), its derivative there (None: not `grad`), what _gelu_backward takes)"""
    y, dy = torch.empty_like(a), torch.empty_like(a) if grad else None
    _call("gelu_forward", _bf16(a), *_rows(a), a, bias, y, dy)
    return y, dy


def _gelu_backward(dy, gy):
    """-> (dL/da, dL/dbias) from gy = dL/dy and the derivative _gelu gave"""
    ga, gbias = torch.empty_like(dy), dy.new_empty(dy.shape[-1], dtype=F32)
    _call("gelu_backward", _bf16(dy), *_rows(dy), dy, gy, ga, gbias)
    return ga, gbias


def _column_sums(x):
    out = x.new_empty(x.shape[-1], dtype=F32)
    _call("column_sums", _bf16(x), *_rows(x), x, out)
    return out


def _mm(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """a (B, T, K) times w (N, K)^T -> (B, T, N)"""
    return torch.mm(a.view(-1, a.shape[-1]), w.t()).view(*a.shape[:-1], w.shape[0])


def _grads(g: torch.Tensor, a: torch.Tensor, w: torch.Tensor):
    """For y = a w^T: (dL/da, dL/dw in float32) from g = dL/dy."""
    g2 = g.view(-1, g.shape[-1])
    return torch.mm(g2, w).view(*g.shape[:-1], w.shape[1]), torch.mm(g2.t(), a.view(-1, a.shape[-1])).float()


class _Block(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, how, nw, nb, gw, gb, ow, ob, *ffn):
        lstm, p, locked, (seed, seed2), eps, grads = how
        with torch.autocast("cpu", enabled=False):  # (x's dtype decides; mm under autocast would cast)
            Wg, Wo = gw.to(x.dtype), ow.to(x.dtype)
            n, mean, rstd = _norm(x, nw, nb, eps)
            u = _mm(n, Wg)
            h, last = fused.scan_forward(lstm, u, h0, gb)
            y = _residual(x, _mm(h, Wo), ob, p, locked, seed)
            saved = [x, h0, nw, mean, rstd, n, u, gb, h, Wg, Wo]
            if ffn:
                n2w, n2b, w1, b1, w2, b2 = ffn
                W1, W2 = w1.to(x.dtype), w2.to(x.dtype)
                x2 = y
                n2, mean2, rstd2 = _norm(x2, n2w, n2b, eps)
                g, dg = _gelu(_mm(n2, W1), b1, grads)  # (dg: only for a backward)
                y = _residual(x2, _mm(g, W2), b2, p, locked, seed2)
                saved += [x2, n2w, mean2, rstd2, n2, dg, g, W1, W2]
        ctx.save_for_backward(*saved)
        ctx.how, ctx.ffn = how, bool(ffn)
        ctx.set_materialize_grads(False)
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, glast):
        lstm, p, locked, (seed, seed2), _, _ = ctx.how
        x, h0, nw, mean, rstd, n, u, gb, h, Wg, Wo, *rest = ctx.saved_tensors
        with torch.autocast("cpu", enabled=False):
            gy = torch.zeros_like(x) if gy is None else gy.to(x.dtype).contiguous()
            ffn_grads = []
            if ctx.ffn:  # gy: dL/dy, then dL/dx2
                x2, n2w, mean2, rstd2, n2, dg, g, W1, W2 = rest
                gd, gb2 = _residual_backward(gy, p, locked, seed2)
                gg, gW2 = _grads(gd, g, W2)
                ga, gb1 = _gelu_backward(dg, gg)
                gn2, gW1 = _grads(ga, n2, W1)
                gy, gn2w, gn2b = _norm_backward(x2, n2w, mean2, rstd2, gn2, gy)
                ffn_grads = [gn2w, gn2b, gW1, gb1, gW2, gb2]
            go, gob = _residual_backward(gy, p, locked, seed)
            gh, gWo = _grads(go, h, Wo)
            gu, gh0 = fused.scan_backward(lstm, u, h0, gh, glast, ctx.needs_input_grad[1], gb)
            gn, gWg = _grads(gu, n, Wg)
            gx, gnw, gnb = _norm_backward(x, nw, mean, rstd, gn, gy)
        return (gx, gh0, None, gnw, gnb, gWg, _column_sums(gu), gWo, gob, *ffn_grads)


class _Norm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, eps):
        y, mean, rstd = _norm(x, w, b, eps)
        ctx.save_for_backward(x, w, mean, rstd)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, w, mean, rstd = ctx.saved_tensors
        return (*_norm_backward(x, w, mean, rstd, gy.to(x.dtype).contiguous(), None), None)


def layer_norm(norm: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """norm(x) in x's dtype through the C pass where it applies (a CPU tensor of the C library's dtypes, a LayerNorm
    over the last axis with weight and bias), else norm(x) (under autocast: float32)."""
    if fused.available(x) and norm.elementwise_affine and norm.bias is not None and len(norm.normalized_shape) == 1:
        return _c_norm(x, norm)
    return norm(x)


def _c_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    return _Norm.apply(x.contiguous(), norm.weight, norm.bias, float(norm.eps))


def compiled(net: torch.nn.Module) -> torch.nn.Module:
    """torch.compile(net) with charnn's C calls left out of Dynamo's trace (it traced into them: about 30 lines of
    warnings and graph-break reports on stderr, even with -q). Marked here, at the first --compile, not where they
    are defined: torch.compiler.disable imports Dynamo, about 1 s added to every command that loads a model."""
    for module, names in ((fused, ("_built", "dropout", "min_scan")), (sys.modules[__name__], ("block_forward",
                                                                                             "_c_norm"))):
        for name in names:
            fn = getattr(module, name)
            if not getattr(fn, "_charnn_left_out", False):
                left_out = torch.compiler.disable(fn)
                left_out._charnn_left_out = True
                setattr(module, name, left_out)
    return torch.compile(net)
