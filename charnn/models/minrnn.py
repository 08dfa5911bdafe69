"""The parallel-scan recurrent language model (kind "minrnn"): `--cell mingru` and `--cell minlstm`, after Feng et
al., "Were RNNs All We Needed?" (2024).

Each gate reads the block's input only, never the previous state, so a layer's recurrence is linear,
h_t = a_t * h_{t-1} + b_t, and a whole window trains as one set of matrix products and one scan
(charnn.models.scan) instead of T dependent steps; sampling steps the same recurrence one token at a time with
a state of fixed size, as an LSTM does.

    embed (B, T, E) -> Linear -> (B, T, D)
    block, `layers` times:  x + Dropout(Out(scan(Gates(LayerNorm(x)))))   (state: expand * D wide)
    [and, with --ffn, x + Dropout(FFN(LayerNorm(x)))]
    LayerNorm -> (label scale and shift) -> Dropout -> head

minGRU:  z = sigmoid(k), h_t = (1 - z) h_{t-1} + z v              (two projections of the input: k, v)
minLSTM: f, i = sigmoid(k_f), sigmoid(k_i), h_t = f/(f+i) h_{t-1} + i/(f+i) v   (three)
(no g() on v: the paper needs v > 0 for its log-space scan; charnn works in the linear domain: on a CPU in C,
charnn.models.fused, elsewhere the chunked torch scan of charnn.models.scan).
The block design is measured in benchmarks/PARALLEL.md.

In training, the regularisers of charnn.models.regularize that apply here: embedding and input dropout,
`--locked-dropout` (one mask per sequence for every --dropout above) and AR/TAR on the head's inputs. Weight drop
does not: no gate reads the previous state, so there is no hidden-to-hidden matrix to drop from.

The state is every layer's h, (layers, batch, expand * hidden), fp32: charnn.models.state.TensorState(axis=1).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from charnn.models.configs import MinRNNConfig
from charnn.models import fused, fusedblock, regularize
from charnn.models.cells import decay_groups, fold_label
from charnn.models.scan import mingru_scan
from charnn.models.state import TensorState

GATES = {"mingru": 2, "minlstm": 3}  # input projections per cell: (k, v) or (k_f, k_i, v)


def mingru_input(cell: str, u: torch.Tensor) -> torch.Tensor:
    """A block's gate projections as the minGRU scan's [k | v]: minLSTM's forget and input gates, normalised
    (f / (f + i), i / (f + i)), are the minGRU's 1 - z and z for k = logsigmoid(k_i) - logsigmoid(k_f)."""
    if cell == "mingru":
        return u
    kf, ki, v = u.chunk(3, -1)
    return torch.cat([F.logsigmoid(ki.float()) - F.logsigmoid(kf.float()), v.float()], -1)


class MinBlock(nn.Module):
    """One layer: x + Dropout(Out(scan(Gates(LayerNorm(x))))), then optionally a feed-forward part."""

    def __init__(self, c: MinRNNConfig):
        super().__init__()
        self.cell, width = c.cell, c.expand * c.hidden
        self.norm = nn.LayerNorm(c.hidden)
        self.gates = nn.Linear(c.hidden, GATES[c.cell] * width)
        self.out = nn.Linear(width, c.hidden)
        self.drop = nn.Dropout(c.dropout)
        self.ffn = (nn.Sequential(nn.LayerNorm(c.hidden), nn.Linear(c.hidden, c.ffn * c.hidden), nn.GELU(),
                                  nn.Linear(c.ffn * c.hidden, c.hidden), nn.Dropout(c.dropout)) if c.ffn else None)
        self.locked = getattr(c, "locked_dropout", False)  # --locked-dropout: one mask per sequence for both
        with torch.no_grad():  # keep about sigmoid(1) = 0.73 of the state at first, as the LSTM's forget bias of 1
            self.gates.bias[:width].fill_(-1.0 if c.cell == "mingru" else 2.0)

    def forward(self, x: torch.Tensor, h0: Optional[torch.Tensor],
                every: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D), h0 (B, S) or None -> (B, T, D) and the last state (B, S) (`every`: the state after every
        step, (B, T, S))."""
        if fusedblock.applies(self, x, every):  # on a CPU: the whole block's elementwise work in C, between products
            return fusedblock.block_forward(self, x, h0)
        u = self.gates(self.norm(x))
        if fused.available(u):  # on a CPU: one C pass each way (charnn.models.fused), h in u's dtype
            h, last = fused.min_scan(self.cell, u, h0)
        else:
            h = mingru_scan(mingru_input(self.cell, u), h0)  # (B, T, S), fp32
            last = h[:, -1]
        x = x + self._dropped(self.out(h if torch.is_autocast_enabled() else h.to(x.dtype)))
        if self.ffn is not None:  # (its own Dropout, ffn[-1], kept for the module's layout: _dropped does its work)
            x = x + self._dropped(self.ffn[:-1](x))
        return x, (h if every else last)

    def _dropped(self, y: torch.Tensor) -> torch.Tensor:
        return regularize.dropout(y, self.drop.p, self.training, self.locked)


class MinEncoder(nn.Module):
    """Both directions of a minGRU/minLSTM stack over padded rows: the classifier's encoder for `--cell mingru` or
    `minlstm` (charnn.models.classifier). A forward stack reads the rows as they are, a backward stack reads each
    row reversed within its own length (padding stays at the end, after the real tokens, so the causal scan never
    mixes it in), each ends in a LayerNorm; the outputs are (B, S, 2 * hidden), zeros at padding, as the packed
    torch encoder's are. Blocks as the language model's (MinBlock), without the feed-forward part."""

    def __init__(self, c: MinRNNConfig):
        super().__init__()
        self.inp = nn.Linear(c.embed, c.hidden)
        self.fwd = nn.ModuleList(MinBlock(c) for _ in range(c.layers))
        self.bwd = nn.ModuleList(MinBlock(c) for _ in range(c.layers))
        self.norms = nn.ModuleList(nn.LayerNorm(c.hidden) for _ in range(2))

    def forward(self, e: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """e (B, S, E), lengths (B,) -> (outputs (B, S, 2H), zeros at padding; (2, B, H): the forward direction's
        output at each row's last token and the backward one's at its first, the torch encoder's final h)."""
        (out, final), _ = self._directions(e, lengths, every=False)
        return out, final

    def _directions(self, e: torch.Tensor, lengths: torch.Tensor, every: bool):
        B, S = e.shape[:2]
        lengths = lengths.to(e.device)
        pos = torch.arange(S, device=e.device)[None, :]
        real = pos < lengths[:, None]  # (B, S)
        index = torch.where(real, lengths[:, None] - 1 - pos, pos)[:, :, None]  # each row reversed: its own inverse
        h = self.inp(e)
        states, outs = [], []
        for blocks, norm, backward in ((self.fwd, self.norms[0], False), (self.bwd, self.norms[1], True)):
            turn = (lambda t: t.gather(1, index.expand(-1, -1, t.shape[-1]))) if backward else (lambda t: t)
            x = turn(h)
            for block in blocks:
                x, st = block(x, None, every=every)
                if every:
                    states.append(turn(st))
            outs.append(turn(norm(x)))
        out = torch.cat(outs, -1).masked_fill(~real[:, :, None], 0.0)
        last = (lengths - 1).clamp(min=0)
        final = torch.stack([outs[0][torch.arange(B, device=e.device), last], outs[1][:, 0]])
        return (out, final), states

    def unit_activations(self, e: torch.Tensor) -> Tuple[torch.Tensor, list]:
        """Each block's state after each token of unpadded rows e (B, S, E), forward blocks then backward (B, S,
        U), and their names ("L1 h 3", "L1 rev h 3")."""
        lengths = torch.full((e.shape[0],), e.shape[1], dtype=torch.long)
        _, states = self._directions(e, lengths, every=True)
        n = len(self.fwd)
        names = [f"L{i % n + 1}{' rev' if i >= n else ''} h {j}" for i, s in enumerate(states)
                 for j in range(s.shape[-1])]
        return torch.cat(states, -1), names


class MinRNN(regularize.Penalised, nn.Module):
    state_ops = TensorState(axis=1)  # (layers, batch, expand * hidden)

    def __init__(self, config: MinRNNConfig):
        super().__init__()
        self.config = c = config
        self.regs = regularize.Regularisers.of(c)  # training only: embedding, input and locked dropout, AR/TAR
        self.embed = nn.Embedding(c.vocab_size, c.embed)
        # labels as in charnn.models.lm.CharRNN: a vector added to every input embedding (row 0, "no label",
        # zero), and with label_output a scale and shift of the last layer's output
        self.label_embed = nn.Embedding(c.labels + 1, c.embed, padding_idx=0) if c.labels else None
        self.label_out = (nn.Embedding(c.labels + 1, 2 * c.hidden, padding_idx=0)
                          if c.labels and c.label_output else None)
        self.inp = nn.Linear(c.embed, c.hidden)
        self.blocks = nn.ModuleList(MinBlock(c) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.hidden)
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden, c.vocab_size)
        nn.init.normal_(self.embed.weight, std=1.0)
        if self.label_embed is not None:
            with torch.no_grad():
                self.label_embed.weight.normal_(std=0.1)
                self.label_embed.weight[0].zero_()
        if self.label_out is not None:
            nn.init.zeros_(self.label_out.weight)

    def forward(self, x: torch.Tensor, state: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T) ids, state (L, B, S) or None (zeros), labels (B, T) or (B, 1) or None -> logits (B, T, V)
        and the state after the last step."""
        r, training = self.regs, self.training
        e = regularize.embed(self.embed, x, r.embed_dropout, training)  # (B, T, E)
        if labels is not None and self.label_embed is not None:
            e = e + self.label_embed(labels)
        h = self.inp(regularize.dropout(e, r.input_dropout, training, r.locked))  # (B, T, D)
        last = []
        for l, block in enumerate(self.blocks):
            h, end = block(h, None if state is None else state[l])
            last.append(end)
        h = fusedblock.layer_norm(self.norm, h)  # (on a CPU in C, in h's dtype)
        if labels is not None and self.label_out is not None:
            g, b = self.label_out(labels).chunk(2, -1)
            h = h * (1 + g) + b
        dropped = regularize.dropout(h, self.drop.p, training, r.locked)
        if training:  # AR/TAR on the head's inputs, as the LSTM's on its last layer's outputs
            self.penalty = regularize.activation_penalty(r, h, dropped)
        return self.head(dropped), torch.stack(last)

    def unit_activations(self, x: torch.Tensor, state: Optional[torch.Tensor] = None,
                         labels: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, list]:
        """x: (B, T) ids -> (every layer's recurrent state after each step (B, T, L * S), the unit names "L1 h 3"):
        what `charnn show --cells` ranks (docs/MODEL_KINDS.md)."""
        e = self.embed(x)
        if labels is not None and self.label_embed is not None:
            e = e + self.label_embed(labels)
        h, units, names = self.inp(e), [], []
        for l, block in enumerate(self.blocks):
            h, states = block(h, None if state is None else state[l], every=True)
            units.append(states)
            names += [f"L{l + 1} h {j}" for j in range(states.shape[-1])]
        return torch.cat(units, -1), names

    def for_label(self, label: int) -> "MinRNN":
        """An unlabelled MinRNN that computes what this one does under `label` (CharRNN.for_label's folding)."""
        return fold_label(self, label)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def optimizer_groups(self, weight_decay: float) -> list:
        """AdamW's groups: decay on matrices, not on biases, norms, the embeddings or the label vectors."""
        return decay_groups(self, weight_decay, ("embed", "label_embed", "label_out"))
