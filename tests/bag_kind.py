"""A toy model kind added through the registry alone (charnn.models.registry): a one-layer "bag of characters"
language model. Its config, its model and its registry entry are all here; charnn itself is not touched.

The state is a decaying sum of the embeddings read so far, (batch, embed): the batch on axis 0, unlike
charnn's recurrent kinds (axis 1), so code that assumed their layout would break on it. It has no fast
stepper: generation steps it through its own forward (charnn.models.stepper.ModuleStepper).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn

from charnn.errors import ConfigError
from charnn.models.cells import decay_groups
from charnn.models.registry import ModelKind, TrainFlag, register
from charnn.models.state import TensorState


# -- config -----------------------------------------------------------------------------------------------
@dataclass
class BagConfig:
    vocab_size: int  # tokens the embedding and head cover (set by the tokenizer)
    embed: int = 64  # width of the bag
    decay: float = 0.8  # share of the bag each step keeps (a flag the flat ModelConfig lacks: its default)

    def validate(self) -> "BagConfig":
        if not 1 <= self.embed <= 65536 or not 0.0 <= self.decay < 1.0:
            raise ConfigError(f"`--embed` must be in [1, 65536] and decay in [0, 1), got {self.embed}, {self.decay}")
        return self


# -- model ------------------------------------------------------------------------------------------------
class BagModel(nn.Module):
    state_ops = TensorState(axis=0)  # the bag, (B, E)

    def __init__(self, config: BagConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed)
        self.head = nn.Linear(config.embed, config.vocab_size)

    def forward(self, x: torch.Tensor, state: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T) ids -> logits (B, T, V) and the bag after the last step (None: the empty bag)."""
        e = self.embed(x)  # (B, T, E)
        bag = e.new_zeros(e.shape[0], e.shape[2]) if state is None else state
        bags = []
        for t in range(e.shape[1]):
            bag = self.config.decay * bag + e[:, t]
            bags.append(bag)
        return self.head(torch.tanh(torch.stack(bags, 1))), bag

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def optimizer_groups(self, weight_decay: float) -> list:
        return decay_groups(self, weight_decay, ("embed",))


# -- registry entry ---------------------------------------------------------------------------------------
BAG = register(ModelKind(
    "bag", BagModel, BagConfig,
    flags=(TrainFlag("embed", int, 64, "Width of the bag."),
           TrainFlag("decay", float, 0.8, "Share of the bag kept per step.")),
    info_fields=("embed", "vocab_size"), architecture=("embed",), fixed_on_resume=("embed",)))
