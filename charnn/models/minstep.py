"""Generation's stepper for the parallel-scan cells (kind "minrnn": `--cell mingru`, `--cell minlstm`): one token at a
time, for a batch of streams, with the model's own state.

The step is the model's forward for one token with everything that can be done once done once: the embedding and
the input projection folded into one (V, D) table, every LayerNorm's scale and shift folded into the product that
reads it (W (g * n + b) + c = (W g) n + (W b + c)), weights laid out (inputs, outputs). On a CPU with charnn's C
library (charnn.models.native), up to native_rows() rows (any number with --int8) step the whole stack in one C call
(min_native.c, split over torch's threads), and one stream's head and draw are one more (`step_draw`, as the
LSTM's FastStepper), or a whole block of its tokens is one call (`draw_block`, the noise made in C too): through
torch a token of the default model is about forty small operations, each a few microseconds of dispatch.
`--int8` (a CPU with AVX-512 VNNI) stores every layer's products as int8 codes with a scale per output, and
multiplies them by int8 codes of each row's input (one scale per row, max |x| / 127, taken per token: unlike the
LSTM's hidden states these inputs have no fixed range). Elsewhere, and for many rows, torch's operations.
"""

from __future__ import annotations

import ctypes
from functools import partial
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from charnn.errors import CharnnError
from charnn.models import native
from charnn.models.minrnn import GATES, MinRNN, mingru_input
from charnn.models.stepper import ModuleStepper

NATIVE_ROWS = 8  # the most rows MinStepper steps in C where each row reads the weights again (0: never in C)
SHARED_ROWS = 128  # ... where rows share each load of them (AVX-512: four rows a load; torch's products, which read
# each weight once for all rows, were faster from 128-256 rows of the default model: benchmarks/PARALLEL.md)


def native_rows(lib) -> int:
    """The most rows the C step takes with library `lib` (None: none; any number with --int8)."""
    if lib is None or not NATIVE_ROWS or not hasattr(lib, "min_step"):
        return 0
    return SHARED_ROWS if lib.min_rows_shared() > 1 else NATIVE_ROWS


class Product(ctypes.Structure):  # min_native.c's struct min_product
    _fields_ = [("w", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("factor", ctypes.c_void_p),
                ("codes", ctypes.c_void_p), ("offset", ctypes.c_void_p)]


class Layer(ctypes.Structure):  # struct min_layer
    _fields_ = [("gates", Product), ("out", Product), ("ffn_in", Product), ("ffn_out", Product)]


class MinStepper(ModuleStepper):
    """ModuleStepper (the state is the model's own (L, B, S) tensor, rows handled through state_ops) with a lean
    one-token step (the module doc): torch operations, or with the C library one call."""

    blocks = None  # one stream in C: a block of tokens in one call (`draw_block`), where the library has the noise
    static = True  # every step (torch's or C's) writes the state in place, and rows are copied into it (`_set`): a
    # CUDA graph may record the steps, as the LSTM's FastStepper

    def __init__(self, model: MinRNN, batch: int, banned=(), int8: bool = False):
        super().__init__(model, batch, banned)
        self.state = self.state.contiguous()  # (the one buffer from here on: C reads it as laid out)
        with torch.no_grad():
            self.table = model.inp(model.embed.weight).detach().contiguous()  # (V, D): embed then inp, every token
            self.layers = [(block.cell, *_fold_norm(block.norm, block.gates),
                            block.out.weight.detach().t().contiguous(), block.out.bias.detach(), _ffn(block.ffn))
                           for block in model.blocks]
            self.head_w, self.head_b = _fold_norm(model.norm, model.head)
            if banned:
                self.head_b[list(banned)] = float("-inf")  # never drawn, at no cost per step
        self.eps = model.norm.eps  # every LayerNorm of the model is built with the same (default) eps
        cpu = self.table.device.type == "cpu" and self.table.dtype == torch.float32
        lib = native.library() if cpu else None
        lib = lib if int8 or batch <= native_rows(lib) else None
        if int8:
            _check_int8(model, lib)
        self._native(lib, int8)

    def _native(self, lib, int8: bool) -> None:
        """Bind min_native.c's whole-stack step and, for one stream, cells_native.c's head_draw (lib None: neither)."""
        self.call, self.draws, self.int8 = None, False, int8
        if lib is None or not hasattr(lib, "min_step"):  # (a library built from the LSTM's cells alone)
            return
        B, (V, D) = self.B, self.table.shape
        S, ffn = self.layers[0][3].shape[0], self.layers[0][5]
        Fw, G = 0 if ffn is None else ffn[0].shape[1], GATES[self.layers[0][0]]
        self.keep = []  # every tensor whose address the C step holds

        def product(w_t, bias):
            if not int8:
                self.keep += [w_t, bias]
                return Product(w_t.data_ptr(), bias.data_ptr(), None, None, None)
            packed, offset, factor = _int8(w_t)
            self.keep += [packed, offset, factor, bias]
            return Product(None, bias.data_ptr(), factor.data_ptr(), packed.data_ptr(), offset.data_ptr())
        none = Product(None, None, None, None, None)
        self.structs = (Layer * len(self.layers))(*[
            Layer(product(gw, gb), product(ow, ob), *(none, none) if f is None else
                  (product(f[0], f[1]), product(f[2], f[3])))
            for _, gw, gb, ow, ob, f in self.layers])
        widest = max(G * S, D, Fw)
        self.x, self.xn, self.logits = torch.empty(B, D), torch.empty(B, D), torch.empty(B, V)
        self.scratch = torch.empty(B * (G * S + Fw))
        self.codes, self.scale = torch.empty(B * widest, dtype=torch.int8), torch.empty(B)
        self.acc = torch.empty(B * widest, dtype=torch.int32)
        ptr = native.ptr
        buffers = map(ptr, (self.x, self.xn, self.scratch, self.codes, self.scale, self.acc))
        self.call = partial(lib.min_step, B, len(self.layers), D, S, Fw, int(self.layers[0][0] == "minlstm"), V,
                            ptr(self.table), ctypes.cast(self.structs, ctypes.c_void_p), *buffers, float(self.eps),
                            ptr(self.head_w), ptr(self.head_b))
        self.draws = B == 1
        self.head_draw = partial(lib.head_draw, D, V, ptr(self.xn), D, ptr(self.head_w), ptr(self.head_b),
                                 ptr(self.logits))
        if self.draws and hasattr(lib, "gumbel"):  # a block of tokens in one call, its noise made in C as well
            self.noise = torch.empty(V)
            # min_block takes min_step's bound arguments but B (one stream), then the logits and the noise
            self.blocks = partial(lib.min_block, *self.call.args[1:], ptr(self.logits), ptr(self.noise))

    @torch.no_grad()
    def step(self, tok: torch.Tensor) -> torch.Tensor:
        """tok: (B,) ids -> (B, V) logits for the next token; the state moves one step. (In C, the logits are a
        buffer the next call reuses.)"""
        if self.call is not None:
            self._step_native(tok, self.logits)
            return self.logits
        state, eps = self.state, self.eps
        x = self.table.index_select(0, tok.view(-1))  # (B, D)
        width = x.shape[-1:]
        for l, (cell, gates_w, gates_b, out_w, out_b, ffn) in enumerate(self.layers):
            u = torch.addmm(gates_b, F.layer_norm(x, width, eps=eps), gates_w)
            k, v = mingru_input(cell, u).chunk(2, -1)  # (minLSTM's z = i / (f + i) as training has it: no 0 / 0)
            z = torch.sigmoid(k)
            torch.lerp(state[l], v.float(), z.float(), out=state[l])  # h += z (v - h)
            x = torch.addmm(out_b, state[l].to(x.dtype), out_w).add_(x)  # the residual
            if ffn is not None:
                w1, b1, w2, b2 = ffn
                x = torch.addmm(b2, F.gelu(torch.addmm(b1, F.layer_norm(x, width, eps=eps), w1)), w2).add_(x)
        return torch.addmm(self.head_b, F.layer_norm(x, width, eps=eps), self.head_w)

    def step_draw(self, tok: torch.Tensor, noise: torch.Tensor, out: torch.Tensor, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, mask: tuple = native.NO_MASK) -> None:
        """Where `draws` (one stream, C): step, then the Batcher's draw in the same C call as the head, as
        FastStepper.step_draw."""
        self._step_native(tok, None)
        self.head_draw(1, native.ptr(noise), native.ptr(out), temperature, top_k, top_p, *mask)

    def draw_block(self, tok: torch.Tensor, drawn: torch.Tensor, temperature: float, seed: int, draw: int,
                   greedy: bool, top_k: int = 0, top_p: float = 1.0, mask: tuple = native.NO_MASK) -> None:
        """Where `blocks` (one stream, C): step_draw for len(drawn) tokens in one C call, each draw the next one's
        input, with the row's Gumbel noise for its draws draw, draw + 1, ... made there (`gumbel_noise`'s hash; none
        if greedy), as FastStepper.draw_block. drawn: (k, n) int64, the stream's draws into drawn[:, 0]."""
        if self.blocks is None:
            raise NotImplementedError("MinStepper.draw_block: this stepper makes no blocks in C (see `blocks`)")
        if drawn.dtype != torch.long or drawn.dim() != 2:
            raise ValueError("MinStepper.draw_block: drawn must be a (k, n) int64 tensor")
        tok = self._ready(tok)
        if self.blocks(len(drawn), temperature, seed, draw, int(greedy), top_k, top_p, native.ptr(drawn),
                       drawn.stride(0), torch.get_num_threads(), native.ptr(tok), native.ptr(self.state), *mask):
            raise IndexError("MinStepper.step: a token id outside the vocabulary")

    def _step_native(self, tok: torch.Tensor, logits: Optional[torch.Tensor]) -> None:
        """The stack's step in C, and the head into `logits` (None: none, head_draw follows)."""
        tok = self._ready(tok)
        if self.call(native.ptr(logits), torch.get_num_threads(), native.ptr(tok), native.ptr(self.state)):
            raise IndexError("MinStepper.step: a token id outside the vocabulary")

    def _ready(self, tok: torch.Tensor) -> torch.Tensor:
        """The ids as C reads them (contiguous int64, one per row). (The state is contiguous: made so at the
        start, and rows are copied into it.)"""
        if tok.dtype != torch.long or not tok.is_contiguous() or tok.shape != (self.B,):  # (the Batcher's are)
            if tok.numel() != self.B:
                raise ValueError(f"MinStepper.step: {tok.numel()} token ids for {self.B} rows")
            tok = tok.reshape(self.B).to(torch.long).contiguous()
        return tok


def _check_int8(model: MinRNN, lib) -> None:
    """--int8 where the C step can do it: a CPU, the library's VNNI products, widths in multiples of 64."""
    c = model.config
    widths = (c.hidden, c.expand * c.hidden) + ((c.ffn * c.hidden,) if c.ffn else ())
    if next(model.parameters()).device.type != "cpu":
        raise CharnnError("--int8 is for sampling on the CPU; on a GPU leave it out")
    if not native.enabled():  # (it said "needs a CPU with AVX-512 VNNI" on one that has it)
        raise CharnnError("--int8 for mingru/minlstm runs in charnn's C step, which CHARNN_NATIVE=0 turns off; "
                          "unset it, or sample without --int8")
    if not native.int8_products(lib) or not hasattr(lib, "min_step"):
        raise CharnnError("--int8 for mingru/minlstm needs a CPU with AVX-512 VNNI and a C compiler; "
                          "sample without --int8")
    if any(w % 64 for w in widths):
        raise CharnnError(f"--int8 for mingru/minlstm needs widths in multiples of 64 (this model's: "
                          f"{', '.join(map(str, widths))}); sample without --int8")


def _int8(w_t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A (K, N) product's weights as int8 codes `pack`ed for int8_native.c, their offsets, and the scale of each
    output (max |w| / 127 over its inputs)."""
    scale = (w_t.abs().amax(dim=0) / 127).clamp_min(1e-12)
    codes = torch.round(w_t / scale).clamp_(-127, 127).to(torch.int8)
    packed, offset = native.pack(codes)
    return packed, offset, scale.contiguous()


def _ffn(ffn: Optional[nn.Sequential]):
    """A block's feed-forward part (LayerNorm, Linear, GELU, Linear, Dropout) as (W1^T, b1, W2^T, b2), the norm
    folded into the first product; None: the block has none."""
    if ffn is None:
        return None
    return (*_fold_norm(ffn[0], ffn[1]), ffn[3].weight.detach().t().contiguous(), ffn[3].bias.detach())


def _fold_norm(norm: nn.LayerNorm, linear: nn.Linear) -> Tuple[torch.Tensor, torch.Tensor]:
    """linear(norm(x)) as (W^T, bias) over the plain normalised x: the norm's scale and shift folded in."""
    w = linear.weight.detach()
    return (w * norm.weight.detach()).t().contiguous(), linear.bias.detach() + w @ norm.bias.detach()


def min_stepper(model: MinRNN, rows: int, banned=(), int8: bool = False) -> MinStepper:
    """The registry's stepper for the minrnn kind (ModelKind.stepper)."""
    return MinStepper(model, rows, banned, int8)
