"""The language model: embedding -> stacked LSTM/GRU/tanh-RNN -> linear head."""

from __future__ import annotations

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
        self.rnn = _CELLS[c.cell](c.embed, c.hidden, c.layers, batch_first=True,
                                  dropout=c.dropout if c.layers > 1 else 0.0)
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden, c.vocab_size)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.embed.weight, std=1.0)
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

    def forward(self, x: torch.Tensor, state: Optional[State] = None) -> Tuple[torch.Tensor, State]:
        """x: (B, T) ids -> logits (B, T, V) and the state after the last step."""
        h, state = self.rnn(self.embed(x), state)  # (B, T, H)
        return self.head(self.drop(h)), state

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def detach_state(state: State) -> State:
    """Cut the graph at a batch boundary (truncated BPTT) but keep the values."""
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()
