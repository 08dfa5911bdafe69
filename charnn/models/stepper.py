"""Step a trained CharRNN one token at a time, for a batch of streams, with carried state.

`FastStepper` works straight from the weights of the model's nn.LSTM / nn.GRU / nn.RNN, laid out once
for speed: per-layer weights pre-transposed and contiguous, biases fused, the embedding pushed through
layer 0's input weights into a (V, G*H) table (so layer 0's input projection is a row lookup), for the
LSTM and RNN the input and recurrent weights of layers 1+ stacked so one addmm does both, and every
intermediate written into buffers allocated once. One call of `step` costs about 20 tensor ops.
With `int8=True` the recurrent matrices are stored as int8 (a scale per output row) and multiplied by one
of `charnn.models.int8`'s kernels: where the CPU has AVX-512 VNNI, exact int8 x int8 products with int8 codes of
the hidden states that the stepper keeps beside them; elsewhere, fbgemm's dynamically quantized linear. A
quarter of the bytes to stream per step, which is what bounds one stream's speed on a CPU. It is an
approximation (see benchmarks/SAMPLING.md for its measured cost).
It covers charnn's language models (single-direction LSTM, GRU and tanh RNN, with biases); anything else
raises NotImplementedError.

`ModuleStepper` steps any model kind through its own forward and its state interface (`state_ops`): the
fallback for a kind that brings no fast stepper (charnn.models.registry). Both have the same row methods
(load, zero, move, copy_rows), so the Batcher never sees a state's layout.
"""

from __future__ import annotations

import ctypes
from functools import partial
from typing import List, Optional, Sequence

import torch
import torch.nn as nn

from charnn.errors import CharnnError
from charnn.models import native
from charnn.models.native import ptr as _ptr
from charnn.models.int8 import ACT_LEVELS, MatMul
from charnn.models.int8 import kernel as int8_kernel
from charnn.models.int8 import product as int8_product

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def _product(w_t: torch.Tensor, bias: Optional[torch.Tensor], kind: str, batch: int) -> MatMul:
    """out = x @ W + bias, or out += x @ W when bias is None: fp32 addmm, or one of charnn.models.int8's kernels."""
    if kind != "fp32":
        return int8_product(w_t, bias, batch, kind)
    if bias is None:
        return lambda x, out: out.addmm_(x, w_t)
    return lambda x, out: torch.addmm(bias, x, w_t, out=out)


class FastStepper:
    """The same computation as the model's forward, one token per call, from pre-arranged weights."""

    def __init__(self, model: nn.Module, batch: int, banned: Sequence[int] = (), int8: bool = False):
        if not _supported(model):
            raise NotImplementedError("FastStepper covers single-direction LSTM/GRU/tanh-RNN CharRNNs")
        rnn, cfg = model.rnn, model.config
        if int8 and rnn.weight_hh_l0.device.type != "cpu":
            raise CharnnError("--int8 is for sampling on the CPU; on a GPU leave it out")
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
            self.w_head = model.head.weight.detach().t().contiguous()  # (H, V)
            self.b_head = bias
            # The recurrent products, as functions of (x, out): fp32 addmm, or int8 weights times the int8
            # codes of the hidden states. The head stays fp32 (it is small, and the logits are what the draw sees).
            self.kernel = int8_kernel() if int8 else "fp32"

            def product(w_t, b):
                return _product(w_t, b, self.kernel, batch)
            self.mm_hh = [product(self.w_hh[0], None) if fuse_hh else product(self.w_hh[0], self.b_hh[0])]
            for l in range(1, L):
                self.mm_hh.append(product(self.w_cat[l], self.b_ih[l]) if fuse_hh
                                  else product(self.w_hh[l], self.b_hh[l]))
            self.mm_ih = [None] + ([product(self.w_ih[l], self.b_ih[l]) for l in range(1, L)]
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
        # What the products read: the hidden states themselves, or for int_mm their int8 codes, kept beside them.
        self.coded = self.kernel == "int_mm"
        self.codes = torch.zeros(batch, L * H, device=dev, dtype=torch.int8) if self.coded else None
        src = self.codes if self.coded else self.hs
        self.x_hh = [src[:, l * H:(l + 1) * H] for l in range(L)]  # h_l
        self.x_ih = [None] + [src[:, (l - 1) * H:l * H] for l in range(1, L)]  # h_{l-1}
        self.x_cat = [None] + [src[:, (l - 1) * H:(l + 1) * H] for l in range(1, L)]  # [h_{l-1} | h_l]
        # int_mm, per step: after layer l < L-1, the codes of [h_l | h_{l+1}] (the next layer's own h from the
        # step before included: the product after reads both), so the last layer's h is coded one step late, just
        # before the one product that reads it, and a step codes L-1 spans of 2H instead of L of H: 3 fewer
        # small ops per token with two layers. One layer: h_0 after its cell.
        spans = [(l * H, (l + 2) * H) for l in range(L - 1)] or [(0, H)]
        scratch = torch.empty(batch, L * H, device=dev, dtype=dt) if self.coded else None
        self.step_codes = [(self.hs[:, a:b], scratch[:, a:b], self.codes[:, a:b]) for a, b in spans] if self.coded \
            else []
        self.views = [self._views(l) for l in range(L)]  # slices made once: each costs Python time per step
        self._cell = getattr(self, f"_{self.cell}")
        self.plan = [self._layer_plan(l) for l in range(L)]
        self._native(native.library() if dev.type == "cpu" and dt == torch.float32 and self.cell != "rnn" else None)

    def _native(self, lib) -> None:
        """The C library's part (charnn.models.native), or none (lib None): the cells, one stream's head and draw,
        and one int8 stream's whole block."""
        H, L, G = self.H, self.L, GATES[self.cell]
        self.scratch = torch.empty(2 * G * H, device=self.hs.device, dtype=self.hs.dtype) if lib else None
        self.native = [call for l in range(L) for call in native.layer_calls(lib, self, l, ACT_LEVELS)] if lib else None
        self.cell_reads_tokens = bool(self.native) and self.coded and self.cell == "lstm"
        # One stream: the head and the Batcher's draw (argmax of tempered, top-k logits + noise) in one C call as
        # well, where torch's product, add and argmax are three dispatches of a few microseconds for 512 x V
        # multiply-adds. (Many streams: the head is a real product, which torch spreads over the threads.)
        self.draws = bool(self.native) and self.B == 1
        self.head_draw = partial(lib.head_draw, H, self.w_head.shape[1], _ptr(self.h[-1]), L * H, _ptr(self.w_head),
                                 _ptr(self.b_head), _ptr(self.logits)) if self.draws else None
        # ... and with --int8 where the C library does the int8 products too: a whole block of tokens in one call
        blocks = self.draws and self.coded and H % 16 == 0 and native.int8_products(lib)
        self.blocks = native.Int8Block(lib, self, ACT_LEVELS) if blocks else None

    # -- rows: what the Batcher does as rows join and leave (never per token), without knowing the layout --
    static = True  # its buffers stay put, so a CUDA graph may record its steps

    def load_state(self, state) -> None:
        """Take the model's own state ((L, 1, H), or a pair for the LSTM) and repeat it over the batch."""
        h, c = (s.detach() for s in state) if isinstance(state, tuple) else (state.detach(), None)
        for l in range(self.L):
            self.h[l].copy_(h[l].expand(self.B, -1))
            if c is not None:
                self.c[l].copy_(c[l].expand(self.B, -1))
            self._encode(l)

    def load(self, slot: int, state) -> None:
        """Set row `slot` to the model's state `state` (batch 1; None: the zero state)."""
        if state is None:
            self.zero(slot)
            return
        h, c = state if isinstance(state, tuple) else (state, None)
        for l in range(self.L):
            self.h[l][slot].copy_(h[l, 0])
            if c is not None:
                self.c[l][slot].copy_(c[l, 0])
        self._encode_row(slot)

    def zero(self, slot: int) -> None:
        self.hs[slot].zero_()
        for c in self.c or []:
            c[slot].zero_()
        self._encode_row(slot)

    def _encode_row(self, slot: int) -> None:
        """int_mm: the codes of one row's hidden states, after its state was set (else its first step would
        multiply the codes a former row left in the slot)."""
        if self.coded:
            self.codes[slot].copy_(torch.round(self.hs[slot] * ACT_LEVELS))

    def move(self, src: int, dst: int) -> None:
        """Row `src`'s state into row `dst` (the last row filling a leaver's slot)."""
        self.hs[dst].copy_(self.hs[src])
        for c in self.c or []:
            c[dst].copy_(c[src])
        if self.coded:
            self.codes[dst].copy_(self.codes[src])

    def copy_rows(self, other: "FastStepper", k: int) -> None:
        """Rows 0..k-1 from another stepper of the same model (the Batcher changing stepper size)."""
        self.hs[:k].copy_(other.hs[:k])
        for mine, theirs in zip(self.c or [], other.c or []):
            mine[:k].copy_(theirs[:k])
        if self.coded:
            self.codes[:k].copy_(other.codes[:k])

    def state_tensors(self) -> List[torch.Tensor]:
        """Every buffer whose value carries from one step to the next (what a CUDA graph's warm-up must undo)."""
        return [self.hs, *(self.c or []), self.logits] + ([self.codes] if self.coded else [])

    def _encode(self, l: int) -> None:
        """int_mm: refresh the codes of layer l's hidden state, round(h * 127)."""
        if self.coded:
            torch.round(torch.mul(self.h[l], ACT_LEVELS, out=self.tmp[l]), out=self.tmp[l])
            self.x_hh[l].copy_(self.tmp[l])

    def _layer_plan(self, l: int) -> tuple:
        """What a step does at layer l, looked up once: (its product and what the product reads, or None twice:
        the GRU's layer 0, whose input projection is the table's row; its gates; l; the codes to refresh after it,
        or None)."""
        if self.cell == "gru":
            product = (self.mm_ih[l], self.x_ih[l]) if l else (None, None)
        else:
            product = (self.mm_hh[0], self.x_hh[0]) if l == 0 else (self.mm_hh[l], self.x_cat[l])  # [h_l-1 | h_l]
        return (*product, self.gates[l], l, self.step_codes[l] if l < len(self.step_codes) else None)

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

    def step(self, tok: torch.Tensor) -> torch.Tensor:
        """tok: (B,) ids -> (B, V) logits for the next token. The result is a buffer reused by the next call.
        (No autograd here: every tensor is detached, so the call needs no inference-mode wrapper, a cost per step.)"""
        if self.native is not None:
            return self._step_native(tok)
        torch.index_select(self.table, 0, tok, out=self.gates[0])  # layer 0's input projection + biases
        cell = self._cell
        for product, x, g, l, code in self.plan:
            if product is not None:
                product(x, g)  # layer 0: += h0 @ W_hh; above: [h_{l-1} | h_l] @ [W_ih ; W_hh] + b
            cell(l, g)
            if code is not None:
                h, tmp, codes = code
                torch.round(torch.mul(h, ACT_LEVELS, out=tmp), out=tmp)
                codes.copy_(tmp)
        return torch.addmm(self.b_head, self.h[-1], self.w_head, out=self.logits)

    def _native_layers(self, tok: torch.Tensor) -> None:
        """The layers of `step` with each cell one C call (charnn.models.native): about 6 operations per token,
        not 20. With int_mm, layer 0's cell looks the token's table row up itself (one operation fewer)."""
        if self.cell_reads_tokens:
            ids = self._ids(tok)
            for call in self.native:
                if type(call) is not native.ReadsTokens:
                    call()
                elif call(ids):
                    raise IndexError("FastStepper.step: a token id outside the vocabulary")
            return
        torch.index_select(self.table, 0, tok, out=self.gates[0])
        for call in self.native:
            call()

    def _step_native(self, tok: torch.Tensor) -> torch.Tensor:
        self._native_layers(tok)
        return torch.addmm(self.b_head, self.h[-1], self.w_head, out=self.logits)

    def _ids(self, tok: torch.Tensor) -> ctypes.c_void_p:
        if tok.dtype != torch.long or not tok.is_contiguous() or tok.shape != (self.B,):
            raise ValueError(f"FastStepper.step: token ids must be a contiguous int64 tensor of {self.B}")
        return _ptr(tok)

    def step_draw(self, tok: torch.Tensor, noise: torch.Tensor, out: torch.Tensor, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, mask: tuple = native.NO_MASK) -> None:
        """Where `draws`: step, then out = argmax(filter_logits(temper(logits, temperature), top_k, top_p) + noise),
        the Batcher's draw (top_k 0, top_p 1: none), with the head in the same C call. noise: (1, V) float32, out:
        (1,) int64, both contiguous; mask: a UTF-8 guard's `c_args` (charnn.generation.draw.Utf8Mask)."""
        self._native_layers(tok)
        self.head_draw(1, _ptr(noise), _ptr(out), temperature, top_k, top_p, *mask)

    def draw_block(self, tok: torch.Tensor, drawn: torch.Tensor, temperature: float, seed: int, draw: int,
                   greedy: bool, top_k: int = 0, top_p: float = 1.0, mask: tuple = native.NO_MASK) -> None:
        """Where `blocks`: step_draw for len(drawn) tokens in one C call, each draw the next one's input, with the
        row's Gumbel noise for its draws draw, draw + 1, ... made there (`gumbel_noise`'s hash; none if greedy).
        drawn: (k, n) int64, the stream's draws into drawn[:, 0]; mask as step_draw's."""
        self._ids(tok)
        if self.blocks is None:
            raise NotImplementedError("FastStepper.draw_block: this stepper makes no blocks in C (see `blocks`)")
        if drawn.dtype != torch.long or drawn.dim() != 2:
            raise ValueError("FastStepper.draw_block: drawn must be a (k, n) int64 tensor")
        if self.blocks(tok, drawn, temperature, seed, draw, greedy, top_k, top_p, mask=mask):
            raise IndexError("FastStepper.step: a token id outside the vocabulary")

    def _lstm(self, l: int, g: torch.Tensor) -> None:
        g_sig, g_tanh, a_sig, a_tanh, i, f, o = self.views[l]
        torch.sigmoid(g_sig, out=a_sig)
        torch.tanh(g_tanh, out=a_tanh)
        c = self.c[l].mul_(f).addcmul_(i, a_tanh)  # c = f*c + i*g
        torch.mul(o, torch.tanh(c, out=self.tmp[l]), out=self.h[l])  # h = o*tanh(c)

    def _gru(self, l: int, g: torch.Tensor) -> None:
        g_rz, g_n, gh_rz, gh_n, a_rz, r, z, n = self.views[l]
        h = self.h[l]
        self.mm_hh[l](self.x_hh[l], self.gh[l])  # W_hh h + b_hh
        torch.sigmoid(g_rz.add_(gh_rz), out=a_rz)
        torch.tanh(g_n.addcmul_(r, gh_n), out=n)  # n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        torch.sub(h, n, out=self.tmp[l])
        torch.addcmul(n, z, self.tmp[l], out=h)  # h' = n + z*(h - n) = (1-z)*n + z*h

    def _rnn(self, l: int, g: torch.Tensor) -> None:
        torch.tanh(g, out=self.h[l])


class ModuleStepper:
    """One token per call through the model's forward, with its state: `model(tok (B, 1), state)`. The rows'
    state is the model's own, touched only through `model.state_ops`; rows are set by rebuilding the state (as
    rows join and leave, never per token). The zero state is the model's None made real (zeros of the shape its
    forward returns), as charnn.models.state defines it."""

    static = False  # the state is a new tensor after every step: no CUDA graph records it

    def __init__(self, model: nn.Module, batch: int, banned: Sequence[int] = ()):
        self.model, self.B, self.ops = model, batch, model.state_ops
        dev = next(model.parameters()).device
        self.banned = torch.tensor(list(banned), dtype=torch.long, device=dev) if banned else None
        with torch.no_grad():
            _, state = model(torch.zeros(batch, 1, dtype=torch.long, device=dev), None)
        self.state = self.ops.map(state, lambda t, axis: torch.zeros_like(t))

    def step(self, tok: torch.Tensor) -> torch.Tensor:
        """tok: (B,) ids -> (B, V) logits for the next token."""
        out, self.state = self.model(tok.view(-1, 1), self.state)
        logits = out[:, -1]
        if self.banned is not None:
            logits.index_fill_(1, self.banned, float("-inf"))
        return logits

    def load_state(self, state) -> None:
        """The model's own state of one row, repeated over the batch."""
        self._set(self.ops.repeat(self.ops.detach(state), self.B))

    def load(self, slot: int, state) -> None:
        """Set row `slot` to the model's state `state` (batch 1; None: the zero state)."""
        ops = self.ops
        row = ops.map(ops.narrow(self.state, slot, 1), lambda t, axis: torch.zeros_like(t)) if state is None \
            else ops.detach(state)
        after = ops.narrow(self.state, slot + 1, self.B - slot - 1)
        self._set(ops.cat([ops.narrow(self.state, 0, slot), row, after]))

    def zero(self, slot: int) -> None:
        self.load(slot, None)

    def move(self, src: int, dst: int) -> None:
        index = torch.arange(self.B)
        index[dst] = src
        self._set(self.ops.select(self.state, index))

    def copy_rows(self, other: "ModuleStepper", k: int) -> None:
        self._set(self.ops.cat([self.ops.narrow(other.state, 0, k), self.ops.narrow(self.state, k, self.B - k)]))

    def _set(self, state) -> None:
        """The rows' new state. A `static` stepper (one whose step writes its state in place) keeps its buffers:
        the new values are copied into them, so a recorded CUDA graph still reads and writes the live state."""
        if not self.static:
            self.state = state
            return
        for mine, new in zip(self.ops.pack(self.state), self.ops.pack(state)):
            mine.copy_(new)

    def state_tensors(self) -> List[torch.Tensor]:
        return self.ops.pack(self.state)


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


def full_forward_logits(model: nn.Module, ids: List[int]) -> torch.Tensor:
    """(T, V) logits of the model's own forward over `ids` in one pass: the reference the stepper must match."""
    with torch.inference_mode():
        x = torch.tensor([ids], dtype=torch.long, device=next(model.parameters()).device)
        return model(x)[0][0]


def fast_stepper(model: nn.Module, rows: int, banned: Sequence[int] = (), int8: bool = False) -> FastStepper:
    """The registry's stepper for charnn's recurrent language models (ModelKind.stepper)."""
    return FastStepper(model, rows, banned, int8=int8)
