"""The language model: embedding -> stacked LSTM/GRU/tanh-RNN -> linear head."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn as nn

from charnn.models.configs import LMConfig
from charnn.models import regularize
from charnn.models.cells import CELLS, decay_groups, fold_label, forget_bias
from charnn.models.state import RNN_STATE
from charnn.models.units import layer_units

State = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


class CharRNN(regularize.Penalised, nn.Module):
    state_ops = RNN_STATE  # its state: nn.LSTM's (h, c) or h, (layers, batch, hidden) (charnn.models.state)

    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed)
        # a label's vector is added to every input embedding (in effect a per-label bias on the first layer's
        # gates); row 0, "no label", stays zero, so the unconditional model is the plain one
        self.label_embed = nn.Embedding(c.labels + 1, c.embed, padding_idx=0) if c.labels else None
        # and, with label_output, it scales and shifts the last layer's output before the head: h * (1 + g) + b,
        # so a label reweights what the shared state predicts (which words a book uses after "the "), not only
        # what goes in. Measured on 10 KJV books at equal steps and time: classify 0.61 -> 0.68 accuracy, val
        # 1.112 -> 1.087 nats/char (benchmarks/LABELS.md)
        self.label_out = (nn.Embedding(c.labels + 1, 2 * c.hidden, padding_idx=0)
                          if c.labels and c.label_output else None)
        self.rnn = CELLS[c.cell](c.embed, c.hidden, c.layers, batch_first=True,
                                  dropout=c.dropout if c.layers > 1 else 0.0)
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden, c.vocab_size)
        # training-time regularisers (all off: the plain forward below, as before they existed)
        self.regs = regularize.Regularisers.of(c)
        self.recurrence = regularize.Recurrence(self.rnn, c.dropout if c.layers > 1 else 0.0, self.regs)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.embed.weight, std=1.0)
        if self.label_embed is not None:
            with torch.no_grad():
                self.label_embed.weight.normal_(std=0.1)
                self.label_embed.weight[0].zero_()
        if self.label_out is not None:  # starts as the identity: g = b = 0
            nn.init.zeros_(self.label_out.weight)
        if self.config.cell == "lstm":
            forget_bias(self.rnn, self.config.hidden)

    def forward(self, x: torch.Tensor, state: Optional[State] = None,
                labels: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, State]:
        """x: (B, T) ids, labels: (B, T) or (B, 1) label ids (None: no label) -> logits (B, T, V) and the
        state after the last step."""
        if self.training and self.regs.any:
            return self._regularised(x, state, labels)
        e = self.embed(x)  # (B, T, E)
        if labels is not None and self.label_embed is not None:
            e = e + self.label_embed(labels)
        h, state = self.rnn(e, state)  # (B, T, H)
        if labels is not None and self.label_out is not None:
            g, b = self.label_out(labels).chunk(2, -1)
            h = h * (1 + g) + b
        return self.head(self.drop(h)), state

    def _regularised(self, x: torch.Tensor, state: Optional[State], labels: Optional[torch.Tensor]):
        """The training forward with the regularisers on (charnn.models.regularize): the same computation with
        whole characters dropped, locked masks, weight-dropped recurrent matrices; AR/TAR kept for the loss."""
        r, p = self.regs, self.config.dropout
        e = regularize.embed(self.embed, x, r.embed_dropout, True)  # (B, T, E)
        if labels is not None and self.label_embed is not None:
            e = e + self.label_embed(labels)
        h, state = self.recurrence(regularize.dropout(e, r.input_dropout, True, r.locked), state, True)
        if labels is not None and self.label_out is not None:
            g, b = self.label_out(labels).chunk(2, -1)
            h = h * (1 + g) + b
        dropped = regularize.dropout(h, p, True, r.locked)
        self.penalty = regularize.activation_penalty(r, h, dropped)
        return self.head(dropped), state

    def unit_activations(self, x: torch.Tensor, state: Optional[State] = None,
                         labels: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, list]:
        """x: (B, T) ids -> (every recurrent unit's activation after each step (B, T, U), the U unit names): each
        layer's h and, for an LSTM, its c (`charnn show --cells`; docs/MODEL_KINDS.md)."""
        e = self.embed(x)
        if labels is not None and self.label_embed is not None:
            e = e + self.label_embed(labels)
        return layer_units(self.rnn, e, state)

    def for_label(self, label: int) -> "CharRNN":
        """An unlabelled CharRNN that computes what this one does under `label` (its vectors folded into the
        embedding and the head), so every sampler and stepper serves it unchanged. Label 0 gives the
        unconditional model."""
        return fold_label(self, label)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def optimizer_groups(self, weight_decay: float) -> list:
        """AdamW's parameter groups: weight decay on matrices, not on biases, the embedding or the label vectors."""
        return decay_groups(self, weight_decay, ("embed", "label_embed", "label_out"))

