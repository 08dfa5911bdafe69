"""The language model: embedding -> stacked LSTM/GRU/tanh-RNN -> linear head."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn

from charnn.config import ModelConfig

State = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]
_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class CharRNN(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed)
        # a label's vector is added to every input embedding (in effect a per-label bias on the first layer's
        # gates); row 0, "no label", stays zero, so the unconditional model is the plain one
        self.label_embed = nn.Embedding(c.labels + 1, c.embed, padding_idx=0) if c.labels else None
        self.rnn = _CELLS[c.cell](c.embed, c.hidden, c.layers, batch_first=True,
                                  dropout=c.dropout if c.layers > 1 else 0.0)
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden, c.vocab_size)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.embed.weight, std=1.0)
        if self.label_embed is not None:
            with torch.no_grad():
                self.label_embed.weight.normal_(std=0.1)
                self.label_embed.weight[0].zero_()
        if self.config.cell == "lstm":
            # Forget-gate bias 1 (gates are ordered i, f, g, o): remember by default early in training.
            H = self.config.hidden
            for name, p in self.rnn.named_parameters():
                if name.startswith("bias_ih"):
                    with torch.no_grad():
                        p[H:2 * H].fill_(1.0)
                elif name.startswith("bias_hh"):
                    with torch.no_grad():
                        p[H:2 * H].fill_(0.0)

    def forward(self, x: torch.Tensor, state: Optional[State] = None,
                labels: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, State]:
        """x: (B, T) ids, labels: (B, T) or (B, 1) label ids (None: no label) -> logits (B, T, V) and the
        state after the last step."""
        e = self.embed(x)  # (B, T, E)
        if labels is not None and self.label_embed is not None:
            e = e + self.label_embed(labels)
        h, state = self.rnn(e, state)  # (B, T, H)
        return self.head(self.drop(h)), state

    def for_label(self, label: int) -> "CharRNN":
        """An unlabelled CharRNN that computes what this one does under `label` (its vector folded into the
        embedding), so every sampler and stepper serves it unchanged. Label 0 gives the unconditional model."""
        plain = CharRNN(replace(self.config, labels=0)).to(self.embed.weight.device)
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("label_embed")}
        if self.label_embed is not None:
            state["embed.weight"] = self.embed.weight.detach() + self.label_embed.weight.detach()[label]
        plain.load_state_dict(state)
        return plain.train(self.training)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def detach_state(state: State) -> State:
    """Cut the graph at a batch boundary (truncated BPTT) but keep the values."""
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()
