"""Training-time regularisers of the recurrent kinds (AWD-LSTM's, Merity et al. 2017): weight drop (DropConnect on
the hidden-to-hidden matrices, one mask per batch), locked (variational) dropout (one mask per sequence, the same
at every time step), embedding dropout (whole characters dropped) and activation regularisation (AR/TAR).

All of them act in training only and change no parameter: evaluation, sampling, int8 and the fast stepper read
the plain weights. The masks come from torch's global generator, which the trainer seeds per step and rank and
checkpoints restore, so a resumed or torchrun run draws the same masks as an uninterrupted one.

Weight drop keeps torch's fused recurrent kernels: the mask multiplies the weight matrix (4H x H for an LSTM),
and the layer runs once over the whole window with those weights (`torch.func.functional_call`), not in a
Python loop over time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from charnn.models import fused


@dataclass(frozen=True)
class Regularisers:
    """A model's training-time regularisers (from its config; every one 0 / False: the plain forward)."""

    weight_drop: float = 0.0  # DropConnect on each layer's hidden-to-hidden weights
    locked: bool = False  # dropout masks fixed across time (input, between layers, output)
    input_dropout: float = 0.0  # dropout on the embeddings the first layer reads
    embed_dropout: float = 0.0  # whole characters: an embedding row zeroed for the whole batch
    ar: float = 0.0  # activation regularisation: ar * mean(dropped output^2)
    tar: float = 0.0  # temporal activation regularisation: tar * mean((h_t - h_{t-1})^2)

    @classmethod
    def of(cls, config) -> "Regularisers":
        return cls(*(getattr(config, f, d) for f, d in (("weight_drop", 0.0), ("locked_dropout", False),
                                                       ("input_dropout", 0.0), ("embed_dropout", 0.0),
                                                       ("ar", 0.0), ("tar", 0.0))))

    @property
    def any(self) -> bool:
        return bool(self.weight_drop or self.locked or self.input_dropout or self.embed_dropout or self.ar
                    or self.tar)


def embed(embedding: nn.Embedding, x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """x (B, T) ids -> (B, T, E), each vocabulary row zeroed with probability p for this batch (a dropped character
    is dropped everywhere it occurs), the rest scaled by 1/(1-p)."""
    if not training or p == 0.0:
        return embedding(x)
    w = embedding.weight
    mask = w.new_empty(w.shape[0], 1).bernoulli_(1 - p) / (1 - p)
    return F.embedding(x, w * mask, embedding.padding_idx)


def dropout(x: torch.Tensor, p: float, training: bool, locked: bool) -> torch.Tensor:
    """x (B, T, D): plain dropout, or with `locked` one mask per sequence, the same at every step."""
    if not training or p == 0.0:
        return x
    if p < 1.0 and fused.available(x):  # on a CPU: a hashed mask in C, not torch's generator (charnn.models.fused)
        return fused.dropout(x, p, locked)
    if not locked:
        return F.dropout(x, p, True)
    mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - p) / (1 - p)
    return x * mask


class Recurrence:
    """Runs a torch recurrent layer stack (nn.LSTM / GRU / RNN, one direction, batch first) in training with weight
    drop and locked dropout between layers; its own forward otherwise. Holds one single-layer template per layer
    (never registered as a submodule: the model's parameters and state_dict stay the stack's own)."""

    def __init__(self, rnn: nn.RNNBase, between: float, regs: Regularisers):
        self.rnn, self.between, self.regs = rnn, between, regs
        self.templates: List[nn.RNNBase] = []

    def __call__(self, x: torch.Tensor, state, training: bool):
        r, regs = self.rnn, self.regs
        split = regs.locked and self.between > 0 and r.num_layers > 1
        if not training or not (regs.weight_drop or split):
            return r(x, state)
        weights = self._weights()
        if not split:  # one call over every layer, torch's own dropout between them
            return functional_call(r, weights, (x, state))
        outs, finals = x, []
        for layer in range(r.num_layers):
            if layer:
                outs = dropout(outs, self.between, True, locked=True)
            own = {k.replace(f"_l{layer}", "_l0"): v for k, v in weights.items() if k.endswith(f"_l{layer}")}
            outs, final = functional_call(self._template(layer), own, (outs, _layer_state(state, layer)))
            finals.append(final)
        if isinstance(finals[0], tuple):  # LSTM: (h, c), each (layers, B, H)
            return outs, (torch.cat([f[0] for f in finals]), torch.cat([f[1] for f in finals]))
        return outs, torch.cat(finals)

    def _weights(self) -> Dict[str, torch.Tensor]:
        p = self.regs.weight_drop
        return {name: F.dropout(w, p, True) if p and name.startswith("weight_hh") else w
                for name, w in self.rnn.named_parameters()}

    def _template(self, layer: int) -> nn.RNNBase:
        while len(self.templates) <= layer:
            r = self.rnn
            size = r.input_size if not self.templates else r.hidden_size
            with torch.random.fork_rng(devices=[]):  # its own (unused) weights must not move the masks' generator
                t = type(r)(size, r.hidden_size, 1, bias=r.bias, batch_first=r.batch_first)
            self.templates.append(t.to(next(r.parameters()).device))
        return self.templates[layer]


def _layer_state(state, layer: int):
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s[layer:layer + 1] for s in state)
    return state[layer:layer + 1]


class Penalised:
    """A model whose training forward keeps its AR/TAR in `self.penalty` (activation_penalty) and hands it to the
    trainer once, through training_penalty (charnn.training.trainer)."""

    penalty: Optional[torch.Tensor] = None

    def training_penalty(self) -> Optional[torch.Tensor]:
        """What the last training forward adds to the loss (AR/TAR; None: nothing), once."""
        penalty, self.penalty = self.penalty, None
        return penalty


def activation_penalty(regs: Regularisers, h: torch.Tensor, dropped: torch.Tensor) -> Optional[torch.Tensor]:
    """AR and TAR of the last layer's outputs h (B, T, H) and their dropped version (None: both off)."""
    if not (regs.ar or regs.tar):
        return None
    penalty = h.new_zeros(())
    if regs.ar:
        penalty = penalty + regs.ar * dropped.float().pow(2).mean()
    if regs.tar and h.shape[1] > 1:
        penalty = penalty + regs.tar * (h[:, 1:] - h[:, :-1]).float().pow(2).mean()
    return penalty
