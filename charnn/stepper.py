"""Step a trained CharRNN one token at a time, for a batch of streams, with carried state.

`FastStepper` works straight from the weights of the model's nn.LSTM / nn.GRU / nn.RNN, laid out once
for speed: per-layer weights pre-transposed and contiguous, biases fused, the embedding pushed through
layer 0's input weights into a (V, G*H) table (so layer 0's input projection is a row lookup), for the
LSTM and RNN the input and recurrent weights of layers 1+ stacked so one addmm does both, and every
intermediate written into buffers allocated once. One call of `step` costs about 20 tensor ops.
With `int8=True` the recurrent matrices are stored as int8 (per output row scales) and multiplied by
fbgemm's dynamically quantized linear: a quarter of the bytes to stream per step, which is what bounds
one stream's speed on a CPU. It is an approximation (see benchmarks/SAMPLING.md for its measured cost).
`ModuleStepper` calls the model itself once per token; `make_stepper` falls back to it for anything
the fast path does not cover.
"""

from __future__ import annotations

import warnings
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn as nn

from charnn.errors import CharnnError

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


class ModuleStepper:
    """The plain way: model(tok, state) per token. Slow, but works for any CharRNN-like model."""

    def __init__(self, model: nn.Module, batch: int, logit_scale: float = 1.0, banned: Sequence[int] = ()):
        self.model, self.batch, self.scale, self.banned = model, batch, logit_scale, list(banned)
        self.state = None

    @torch.inference_mode()
    def load_state(self, state) -> None:
        """Take the model's own state (layers, 1, H) and repeat it over the batch."""
        if state is None:  # a stateless stand-in model
            self.state = None
        elif isinstance(state, tuple):
            self.state = tuple(s.expand(-1, self.batch, -1).contiguous() for s in state)
        else:
            self.state = state.expand(-1, self.batch, -1).contiguous()

    @torch.inference_mode()
    def step(self, tok: torch.Tensor) -> torch.Tensor:
        """tok: (B,) ids -> (B, V) logits for the next token (scaled; banned ids at -inf)."""
        logits, self.state = self.model(tok.view(-1, 1), self.state)
        logits = logits[:, -1].float() * self.scale
        if self.banned:
            logits[:, self.banned] = float("-inf")
        return logits


MatMul = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, out) -> out


def _pack_int8(w_t: torch.Tensor, bias: Optional[torch.Tensor]):
    """fbgemm's packed form of W (given transposed, (in, out)) as int8 with one scale per output row."""
    w = w_t.t().float().contiguous()  # (out, in)
    scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12).double()
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    try:
        with warnings.catch_warnings():  # torch flags quantized tensors as deprecated; the kernels remain
            warnings.simplefilter("ignore")
            q = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
            return torch.ops.quantized.linear_prepack(q, None if bias is None else bias.float().contiguous())
    except (RuntimeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CharnnError(f"--int8 needs a torch build with fbgemm quantized kernels (x86 CPUs): {first}") from None


def _affine(w_t: torch.Tensor, bias: torch.Tensor, int8: bool) -> MatMul:
    """out = x @ W + bias."""
    if not int8:
        return lambda x, out: torch.addmm(bias, x, w_t, out=out)
    packed = _pack_int8(w_t, bias)
    return lambda x, out: out.copy_(torch.ops.quantized.linear_dynamic(x, packed))


def _accumulate(w_t: torch.Tensor, int8: bool) -> MatMul:
    """out += x @ W."""
    if not int8:
        return lambda x, out: out.addmm_(x, w_t)
    packed = _pack_int8(w_t, None)
    return lambda x, out: out.add_(torch.ops.quantized.linear_dynamic(x, packed))


class FastStepper:
    """The same computation as the model's forward, one token per call, from pre-arranged weights."""

    def __init__(self, model: nn.Module, batch: int, logit_scale: float = 1.0, banned: Sequence[int] = (),
                 int8: bool = False):
        if not _supported(model):
            raise NotImplementedError("FastStepper covers single-direction LSTM/GRU/tanh-RNN CharRNNs")
        rnn, cfg = model.rnn, model.config
        if int8 and rnn.weight_hh_l0.device.type != "cpu":
            raise CharnnError("--int8 is for sampling on the CPU (fbgemm kernels); on a GPU leave it out")
        self.cell, self.L, self.H, self.B = cfg.cell, rnn.num_layers, rnn.hidden_size, batch
        H, G, L = self.H, GATES[cfg.cell], self.L
        w = {name: p.detach() for name, p in rnn.named_parameters()}
        dev, dt = w["weight_hh_l0"].device, w["weight_hh_l0"].dtype
        order = _gate_order(cfg.cell, H, dev)  # LSTM: i,f,g,o -> i,f,o,g so the sigmoids are one slice

        with torch.no_grad():
            fuse_hh = cfg.cell != "gru"  # the GRU keeps b_hh apart: its n gate is tanh(Wx + b + r * (Wh + b_hh))
            b0 = w["bias_ih_l0"] + (w["bias_hh_l0"] if fuse_hh else 0)
            self.table = (model.embed.weight.detach() @ w["weight_ih_l0"].t() + b0)[:, order].contiguous()  # (V, GH)
            self.w_hh = [w[f"weight_hh_l{l}"][order].t().contiguous() for l in range(L)]  # (H, GH)
            self.b_hh = [w[f"bias_hh_l{l}"][order].clone() for l in range(L)]  # (GH,), used by the GRU only
            self.w_ih = [None] + [w[f"weight_ih_l{l}"][order].t().contiguous() for l in range(1, L)]  # (H, GH)
            self.b_ih = [None] + [(w[f"bias_ih_l{l}"] + (w[f"bias_hh_l{l}"] if fuse_hh else 0))[order].clone()
                                  for l in range(1, L)]
            if fuse_hh:  # layer l >= 1 reads [h_{l-1} | h_l], a slice of one buffer: stack W_ih over W_hh
                self.w_cat = [None] + [torch.cat([self.w_ih[l], self.w_hh[l]]).contiguous() for l in range(1, L)]
            bias = model.head.bias.detach().clone()
            if banned:
                bias[list(banned)] = float("-inf")  # never drawn, at no cost per step
            self.w_head = (model.head.weight.detach() * logit_scale).t().contiguous()  # (H, V)
            self.b_head = bias * logit_scale
            # The recurrent products, as functions of (x, out): fp32 addmm, or int8 weights. The head stays
            # fp32 (it is small, and the logits are what the draw sees).
            self.mm_hh = [_accumulate(self.w_hh[0], int8) if fuse_hh else _affine(self.w_hh[0], self.b_hh[0], int8)]
            for l in range(1, L):
                self.mm_hh.append(_affine(self.w_cat[l], self.b_ih[l], int8) if fuse_hh
                                  else _affine(self.w_hh[l], self.b_hh[l], int8))
            self.mm_ih = [None] + ([_affine(self.w_ih[l], self.b_ih[l], int8) for l in range(1, L)]
                                   if not fuse_hh else [None] * (L - 1))

        # State and scratch, allocated once. hs holds every layer's h side by side: (B, L*H).
        self.hs = torch.zeros(batch, L * H, device=dev, dtype=dt)
        self.h = [self.hs[:, l * H:(l + 1) * H] for l in range(L)]
        self.c = [torch.zeros(batch, H, device=dev, dtype=dt) for _ in range(L)] if self.cell == "lstm" else None
        self.gates = [torch.empty(batch, G * H, device=dev, dtype=dt) for _ in range(L)]
        self.act = [torch.empty(batch, G * H, device=dev, dtype=dt) for _ in range(L)]
        self.tmp = [torch.empty(batch, H, device=dev, dtype=dt) for _ in range(L)]
        self.gh = [torch.empty(batch, G * H, device=dev, dtype=dt) for _ in range(L)] if self.cell == "gru" else None
        self.logits = torch.empty(batch, self.w_head.shape[1], device=dev, dtype=dt)
        self.inputs = [None] + [self.hs[:, (l - 1) * H:(l + 1) * H] for l in range(1, L)]  # [h_{l-1} | h_l]
        self.views = [self._views(l) for l in range(L)]  # slices made once: each costs Python time per step
        self._cell = getattr(self, f"_{self.cell}")

    def load_state(self, state) -> None:
        """Take the model's own state ((L, 1, H), or a pair for the LSTM) and repeat it over the batch."""
        h, c = state if isinstance(state, tuple) else (state, None)
        for l in range(self.L):
            self.h[l].copy_(h[l].expand(self.B, -1))
            if c is not None:
                self.c[l].copy_(c[l].expand(self.B, -1))

    def _views(self, l: int) -> tuple:
        """The gate slices of layer l's buffers, in the order its cell function unpacks them."""
        H, g, a = self.H, self.gates[l], self.act[l]
        if self.cell == "lstm":  # gates are i, f, o (sigmoid) then g (tanh)
            return g[:, :3 * H], g[:, 3 * H:], a[:, :3 * H], a[:, 3 * H:], a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H]
        if self.cell == "gru":  # r, z (sigmoid) then n
            gh = self.gh[l]
            return (g[:, :2 * H], g[:, 2 * H:], gh[:, :2 * H], gh[:, 2 * H:], a[:, :2 * H], a[:, :H], a[:, H:2 * H],
                    a[:, 2 * H:])
        return ()

    @torch.inference_mode()
    def step(self, tok: torch.Tensor) -> torch.Tensor:
        """tok: (B,) ids -> (B, V) logits for the next token. The result is a buffer reused by the next call."""
        torch.index_select(self.table, 0, tok, out=self.gates[0])  # layer 0's input projection + biases
        for l in range(self.L):
            g = self.gates[l]
            if self.cell == "gru":
                if l > 0:
                    self.mm_ih[l](self.h[l - 1], g)
            elif l == 0:
                self.mm_hh[0](self.h[0], g)  # += h0 @ W_hh
            else:
                self.mm_hh[l](self.inputs[l], g)  # [h_{l-1} | h_l] @ [W_ih ; W_hh] + b
            self._cell(l, g)
        return torch.addmm(self.b_head, self.h[-1], self.w_head, out=self.logits)

    def _lstm(self, l: int, g: torch.Tensor) -> None:
        g_sig, g_tanh, a_sig, a_tanh, i, f, o = self.views[l]
        torch.sigmoid(g_sig, out=a_sig)
        torch.tanh(g_tanh, out=a_tanh)
        c = self.c[l].mul_(f).addcmul_(i, a_tanh)  # c = f*c + i*g
        torch.mul(o, torch.tanh(c, out=self.tmp[l]), out=self.h[l])  # h = o*tanh(c)

    def _gru(self, l: int, g: torch.Tensor) -> None:
        g_rz, g_n, gh_rz, gh_n, a_rz, r, z, n = self.views[l]
        h = self.h[l]
        self.mm_hh[l](h, self.gh[l])  # W_hh h + b_hh
        torch.sigmoid(g_rz.add_(gh_rz), out=a_rz)
        torch.tanh(g_n.addcmul_(r, gh_n), out=n)  # n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        torch.sub(h, n, out=self.tmp[l])
        torch.addcmul(n, z, self.tmp[l], out=h)  # h' = n + z*(h - n) = (1-z)*n + z*h

    def _rnn(self, l: int, g: torch.Tensor) -> None:
        torch.tanh(g, out=self.h[l])


def _supported(model: nn.Module) -> bool:
    rnn, cfg = getattr(model, "rnn", None), getattr(model, "config", None)
    if cfg is None or cfg.cell not in GATES or not isinstance(rnn, (nn.LSTM, nn.GRU, nn.RNN)):
        return False
    if rnn.bidirectional or getattr(rnn, "proj_size", 0) or not rnn.bias or not rnn.batch_first:
        return False
    return not (isinstance(rnn, nn.RNN) and rnn.nonlinearity != "tanh")


def _gate_order(cell: str, H: int, device) -> torch.Tensor:
    """Row order applied to the gate axis: LSTM i,f,g,o -> i,f,o,g; the others keep theirs."""
    n = GATES[cell] * H
    if cell != "lstm":
        return torch.arange(n, device=device)
    i, f, g, o = (torch.arange(k * H, (k + 1) * H, device=device) for k in range(4))
    return torch.cat([i, f, o, g])


def make_stepper(model: nn.Module, batch: int, logit_scale: float = 1.0, banned: Sequence[int] = (),
                 fast: Optional[bool] = None, int8: bool = False):
    """A FastStepper where the model allows one (or `fast=False` asks for the plain way), else a ModuleStepper."""
    if fast is not False or int8:
        try:
            return FastStepper(model, batch, logit_scale, banned, int8=int8)
        except NotImplementedError:
            if int8:
                raise CharnnError("--int8 covers charnn's LSTM, GRU and RNN models only") from None
            if fast:
                raise
    return ModuleStepper(model, batch, logit_scale, banned)


def full_forward_logits(model: nn.Module, ids: List[int]) -> torch.Tensor:
    """(T, V) logits of the model's own forward over `ids` in one pass: the reference the stepper must match."""
    with torch.inference_mode():
        x = torch.tensor([ids], dtype=torch.long, device=next(model.parameters()).device)
        return model(x)[0][0]
