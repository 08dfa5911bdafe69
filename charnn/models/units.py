"""Every recurrent unit's activation at every step of torch's stacked LSTM/GRU/RNN, for `charnn show --cells`:
each layer's (and direction's) hidden output h and, for an LSTM, its cell state c, the memory Karpathy coloured
text by ("The Unreasonable Effectiveness of Recurrent Neural Networks").

torch's fused layers return only the last layer's outputs and the final c. So the stack is run one layer at a
time through a one-layer copy of its weights (the same kernel, so h is exactly the stack's), and an LSTM's c at
every step is recomputed from those h: with h_{t-1} known at every step, all gates come from two matrix products
over the whole sequence at once, and only the elementwise recurrence c_t = f_t c_{t-1} + i_t g_t is stepped.
"""

from __future__ import annotations

from typing import List, Tuple, Union

import torch
import torch.nn as nn

CHUNK = 256  # time steps per call of a one-way layer
RnnState = Union[None, torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


def layer_units(rnn: nn.RNNBase, x: torch.Tensor, state: RnnState = None) -> Tuple[torch.Tensor, List[str]]:
    """x (B, T, input) -> (every unit's activation (B, T, U), the U unit names), for a batch-first
    nn.LSTM/GRU/RNN; `state` as the module takes it (None: zeros). Per layer and direction: h, then (an LSTM) c;
    names read "L1 h 17", "L2 c 3", "L1 rev h 0" (the backward direction of a bidirectional layer)."""
    lstm = isinstance(rnn, nn.LSTM)
    dirs, H, L = (2 if rnn.bidirectional else 1), rnn.hidden_size, rnn.num_layers
    B = x.shape[0]
    h0 = state[0] if lstm and state is not None else state
    c0 = state[1] if lstm and state is not None else None
    if h0 is None:
        h0 = x.new_zeros(L * dirs, B, H)
    if lstm and c0 is None:
        c0 = x.new_zeros(L * dirs, B, H)
    parts, names = [], []
    inp = x
    for layer in range(L):
        rows = slice(layer * dirs, (layer + 1) * dirs)
        out = _run(_one_layer(rnn, layer), inp, (h0[rows], c0[rows]) if lstm else h0[rows])  # (B, T, dirs*H)
        for d in range(dirs):
            tag = f"L{layer + 1}{' rev' if d else ''}"
            h = out[..., d * H:(d + 1) * H]
            parts.append(h)
            names += [f"{tag} h {j}" for j in range(H)]
            if lstm:
                parts.append(_cell_states(rnn, layer, d, inp, h, h0[layer * dirs + d], c0[layer * dirs + d]))
                names += [f"{tag} c {j}" for j in range(H)]
        inp = out
    return torch.cat(parts, -1), names


def _run(one: nn.RNNBase, x: torch.Tensor, state) -> torch.Tensor:
    """A one-layer module over x (B, T, I): a one-way layer in chunks of CHUNK steps with its state carried (one
    call over a long text is far slower on the CPU: oneDNN builds a primitive for that length), a two-way
    layer in one call."""
    if one.bidirectional:
        return one(x, state)[0]
    out = []
    for start in range(0, x.shape[1], CHUNK):
        o, state = one(x[:, start:start + CHUNK], state)
        out.append(o)
    return torch.cat(out, 1)


def _one_layer(rnn: nn.RNNBase, layer: int) -> nn.RNNBase:
    """A one-layer module of the stack's type holding a copy of its layer `layer`'s weights (as layer 0)."""
    dirs = 2 if rnn.bidirectional else 1
    size = rnn.input_size if layer == 0 else rnn.hidden_size * dirs
    extra = {"nonlinearity": rnn.nonlinearity} if isinstance(rnn, nn.RNN) else {}
    ref = rnn.weight_ih_l0
    one = type(rnn)(size, rnn.hidden_size, 1, bias=rnn.bias, batch_first=rnn.batch_first,
                    bidirectional=rnn.bidirectional, device=ref.device, dtype=ref.dtype, **extra)
    with torch.no_grad():
        for name in one._flat_weights_names:  # weight_ih_l0, ..., weight_hh_l0_reverse
            getattr(one, name).copy_(getattr(rnn, name.replace("_l0", f"_l{layer}")))
    return one.train(False)


def _cell_states(rnn: nn.LSTM, layer: int, d: int, x: torch.Tensor, h: torch.Tensor, h0: torch.Tensor,
                 c0: torch.Tensor) -> torch.Tensor:
    """An LSTM layer's c at every step (B, T, H), direction d, from its input x (B, T, I) and outputs h (B, T, H):
    the gates in parallel (gate order i, f, g, o), then c_t = f_t c_{t-1} + i_t g_t stepped elementwise."""
    sfx = f"_l{layer}" + ("_reverse" if d else "")
    w_ih, w_hh = getattr(rnn, "weight_ih" + sfx), getattr(rnn, "weight_hh" + sfx)
    bias = getattr(rnn, "bias_ih" + sfx) + getattr(rnn, "bias_hh" + sfx) if rnn.bias else 0.0
    if d == 0:  # forwards: step t follows step t-1
        prev = torch.cat([h0[:, None], h[:, :-1]], 1)
    else:  # backwards: step t follows step t+1
        prev = torch.cat([h[:, 1:], h0[:, None]], 1)
    gates = x @ w_ih.T + prev @ w_hh.T + bias  # (B, T, 4H)
    i, f, g, _ = gates.chunk(4, -1)
    f, ig = torch.sigmoid(f), torch.sigmoid(i) * torch.tanh(g)
    out = torch.empty_like(f)
    c = c0
    steps = range(h.shape[1]) if d == 0 else range(h.shape[1] - 1, -1, -1)
    for t in steps:
        c = f[:, t] * c + ig[:, t]
        out[:, t] = c
    return out
