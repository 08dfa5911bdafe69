"""The nats of padded rows of text: each row starts from a zero state, padding targets are ignored."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from charnn.device import autocast

CHUNK = 256  # time steps per forward call: long rows go through in pieces with the state carried (fewer where the
# vocabulary is large: LOGITS_BYTES)
IGNORE = -100  # a padding target (cross_entropy's default ignore_index)
LOGITS_BYTES = 256 << 20  # float32 logits one scoring call may make (scoring holds about three such: the logits,
# their float copy, cross_entropy's log-softmax): 64 streams x 256 steps of a 40,000-token vocabulary were 2.6 GB
# each, and a --vocab-size 40000 run peaked at 8.5 GB at its first validation


def chunk_steps(model, rows: int, most: int = CHUNK) -> int:
    """Time steps per scoring call for `rows` rows: `most`, or fewer where rows x steps x vocabulary float32 logits
    would pass LOGITS_BYTES."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if not isinstance(vocab, int) or vocab <= 0:
        return most
    return max(1, min(most, LOGITS_BYTES // (4 * rows * vocab)))


@torch.inference_mode()
def row_nats(model, x: torch.Tensor, y: torch.Tensor, labels: Optional[torch.Tensor], device: torch.device,
             precision: str = "fp32", source=None) -> torch.Tensor:
    """(rows,) float64 nats of predicting y from x, both (rows, T) with IGNORE where a row has ended;
    `labels` (rows, T) or (rows, 1) for a labelled model; `source` (padded inputs, lengths) for an
    encoder-decoder, whose rows go through whole (its decoder state starts from the inputs)."""
    total, state = torch.zeros(x.shape[0], dtype=torch.float64, device=device), None
    chunk = chunk_steps(model, x.shape[0]) if source is None else max(1, x.shape[1])  # (an encoder-decoder's rows
    # go through whole: its decoder state starts from the inputs)
    for t in range(0, x.shape[1], chunk):
        xb, yb = x[:, t:t + chunk].to(device), y[:, t:t + chunk].to(device)
        extra = {} if source is None else {"source": (source[0].to(device), source[1])}
        if labels is not None:
            lb = labels if labels.shape[1] == 1 else labels[:, t:t + chunk]
            extra["labels"] = lb.to(device).expand_as(xb)
        with autocast(device, precision):
            logits, state = model(xb, state, **extra)
        nll = F.cross_entropy(logits.float().transpose(1, 2), yb, reduction="none", ignore_index=IGNORE)
        total += nll.double().sum(1)
    return total
