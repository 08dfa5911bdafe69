"""What charnn's recurrent model kinds share: the recurrent cells by name, the LSTM's forget-gate bias, the
optimiser's weight-decay groups, and a copy of a model that keeps cuDNN's weight layout."""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
import torch.nn as nn

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}  # --cell -> torch's layer


def decay_groups(model: nn.Module, weight_decay: float, exempt: tuple) -> list:
    """Two optimiser groups: the matrices (2+ dimensions) outside the top-level modules `exempt` decay, the rest
    do not."""
    def decays(name: str, p) -> bool:
        return p.dim() >= 2 and name.split(".")[0] not in exempt

    decay = [p for n, p in model.named_parameters() if decays(n, p)]
    rest = [p for n, p in model.named_parameters() if not decays(n, p)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


@torch.no_grad()
def forget_bias(rnn: nn.Module, hidden: int) -> None:
    """An LSTM's forget-gate bias set to 1 (gates are ordered i, f, g, o): remember by default early in
    training. Every layer and direction."""
    for name, p in rnn.named_parameters():
        if name.startswith("bias_ih"):
            p[hidden:2 * hidden].fill_(1.0)
        elif name.startswith("bias_hh"):
            p[hidden:2 * hidden].fill_(0.0)


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy whose recurrent layers keep their weights in one block again: a copied cuDNN RNN holds them
    as separate tensors, and then compacts them at every call (with a UserWarning on stderr). Any kind."""
    net = copy.deepcopy(model)
    for m in net.modules():
        if isinstance(m, nn.RNNBase):
            m.flatten_parameters()
    return net


def fold_label(model: nn.Module, label: int) -> nn.Module:
    """An unlabelled model of the same kind that computes what `model` does under `label`: the label's vector folded
    into the embedding and, with label_output, its scale and shift into the head, so every sampler and stepper
    serves it unchanged (label 0: the unconditional model). For kinds with `embed`, `head`, `label_embed`,
    `label_out` and a config with labels/label_output (the language model, minGRU/minLSTM)."""
    plain = type(model)(replace(model.config, labels=0, label_output=False)).to(model.embed.weight.device)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("label_embed", "label_out"))}
    if model.label_out is not None:  # head(h * (1 + g) + b) = (W * (1 + g)) h + (bias + W b)
        g, b = model.label_out.weight.detach()[label].chunk(2, -1)
        state["head.bias"] = model.head.bias.detach() + model.head.weight.detach() @ b
        state["head.weight"] = model.head.weight.detach() * (1 + g)
    if model.label_embed is not None:
        state["embed.weight"] = model.embed.weight.detach() + model.label_embed.weight.detach()[label]
    plain.load_state_dict(state)
    return plain.train(model.training)
