"""int8 matrix products for the sampler's `--int8`: x @ W with W stored as int8, one scale per output.

Two kernels, picked once per machine by `kernel()`:

- "int_mm": where torch runs int8 matrix products on oneDNN's VNNI kernels (AVX-512 VNNI, oneDNN on).
  The input is itself int8: the hidden states of an LSTM/GRU/tanh-RNN lie in (-1, 1), so the stepper keeps
  their codes round(h * 127) beside them (a fixed scale: nothing to measure per step), and
  `torch._int_mm` gives exact int32 sums, scaled back to fp32 by one addcmul. Fastest where it applies.
- "fbgemm": elsewhere on x86 (AVX2 without AVX-512 VNNI, where `torch._int_mm` is a plain loop, slower than
  fp32). fbgemm's dynamically quantized linear takes the fp32 input and quantizes it per call, to 7 bits
  (`reduce_range`), so that its 16-bit pair sums cannot saturate on CPUs without VNNI.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, Optional

import torch

from charnn.errors import CharnnError, first_line

MatMul = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, out) -> out
ACT_LEVELS = 127  # hidden states lie in (-1, 1): their int8 codes are round(h * 127)


def kernel() -> str:
    """'int_mm' where torch._int_mm runs on oneDNN's VNNI kernels, else 'fbgemm' (see the module doc)."""
    vnni = getattr(getattr(torch, "cpu", None), "_is_vnni_supported", lambda: False)()  # AVX-512 VNNI, as torch checks
    onednn = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    return "int_mm" if vnni and onednn else "fbgemm"


@functools.lru_cache(maxsize=None)
def weight_levels(batch: int) -> int:
    """The largest int8 weight magnitude whose products torch._int_mm gets exactly right here.

    With VNNI, int8 x int8 products accumulate exactly in int32: 127. oneDNN held to an older instruction
    set (ONEDNN_MAX_CPU_ISA=AVX2) adds pairs of products in saturating int16, which 127 * 127 * 2 overflows;
    7-bit weights (63) stay in range. Probed once with the worst case, every product at its extreme.
    """
    a = torch.full((max(batch, 3), 64), ACT_LEVELS, dtype=torch.int8)
    a[1] = -ACT_LEVELS
    a[2, 1::2] = -ACT_LEVELS
    for levels in (127, 63):
        w = torch.full((64, 24), levels, dtype=torch.int8)
        w[:, 8:16] = -levels
        w[1::2, 16:] = -levels
        try:
            got = torch._int_mm(a, w)
        except (RuntimeError, AttributeError) as e:
            raise CharnnError(f"--int8 needs torch._int_mm on the CPU (torch 2.4 or later): {first_line(e)}") from None
        if torch.equal(got.long(), a.long() @ w.long()):
            return levels
    raise CharnnError("--int8: this CPU's int8 matrix products are not exact; sample without --int8")


def product(w_t: torch.Tensor, bias: Optional[torch.Tensor], batch: int, kind: str) -> MatMul:
    """out = x @ W + bias, or out += x @ W when bias is None, with W (given transposed, (in, out)) in int8.
    For "int_mm" x is the int8 codes of the input; for "fbgemm" x is the fp32 input itself."""
    return (IntMM if kind == "int_mm" else _fbgemm_product)(w_t, bias, batch)


class IntMM:
    """out = x @ W (+ bias) for int8 codes x: torch._int_mm's exact int32 sums (`sums`), scaled back by one addcmul.
    A fused cell (charnn.models.native) takes `sums` and does the scaling itself, from `acc` and `factor`."""

    def __init__(self, w_t: torch.Tensor, bias: Optional[torch.Tensor], batch: int):
        levels = weight_levels(batch)
        w = w_t.t().float()  # (out, in)
        scale = (w.abs().amax(dim=1) / levels).clamp_min(1e-12)
        self.codes = torch.round(w / scale[:, None]).clamp_(-levels, levels).to(torch.int8).contiguous().t()
        self.factor = (scale / ACT_LEVELS).contiguous()  # int32 sums of code products -> x @ W
        self.bias = bias
        self.acc = torch.empty(batch, self.codes.shape[1], dtype=torch.int32, device=w_t.device)

    def sums(self, x: torch.Tensor) -> torch.Tensor:
        return torch._int_mm(x, self.codes, out=self.acc)

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        torch._int_mm(x, self.codes, out=self.acc)
        if self.bias is None:
            return out.addcmul_(self.acc, self.factor)
        return torch.addcmul(self.bias, self.acc, self.factor, out=out)


def _fbgemm_product(w_t: torch.Tensor, bias: Optional[torch.Tensor], batch: int) -> MatMul:
    w = w_t.t().float().contiguous()  # (out, in)
    scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12).double()
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    try:
        with warnings.catch_warnings():  # torch flags quantized tensors as deprecated; the kernels remain
            warnings.simplefilter("ignore")
            q = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
            packed = torch.ops.quantized.linear_prepack(q, None if bias is None else bias.float().contiguous())
    except (RuntimeError, AttributeError) as e:
        raise CharnnError(f"--int8 needs a torch build with fbgemm quantized kernels (x86 CPUs): {first_line(e)}") from None
    linear = torch.ops.quantized.linear_dynamic.default
    if bias is None:
        return lambda x, out: out.add_(linear(x, packed, reduce_range=True))
    return lambda x, out: out.copy_(linear(x, packed, reduce_range=True))
