"""The recurrent encoder that the sequence-to-sequence model and the classifier share: padded rows read packed,
so each row's reverse direction starts at its own last token rather than at the padding, and the final states
are each row's own (the known cause of batch-size-dependent output in fairseq and OpenNMT-py)."""

from __future__ import annotations

from typing import Callable, Tuple, Union

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def encode_packed(rnn: Union[nn.RNNBase, Callable], embedded: torch.Tensor,
                  lengths: torch.Tensor) -> Tuple[torch.Tensor, object]:
    """`rnn`: the layer, or a function that runs it on a packed sequence. embedded (B, S, E), lengths (B,) ->
    (outputs (B, S, dirs * H), zeros at padding; the final state as the layer returns it: (layers * dirs, B, H),
    or the LSTM's (h, c) of that shape)."""
    packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, final = rnn(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=embedded.shape[1])
    return out, final


def padding_mask(lengths: torch.Tensor, width: int, device: torch.device) -> torch.Tensor:
    """(B, width) True where a row is padding."""
    return torch.arange(width, device=device)[None, :] >= lengths.to(device)[:, None]
