"""The nats of padded rows of text: each row starts from a zero state, padding targets are ignored."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from charnn.device import autocast

CHUNK = 256  # time steps per forward call: long rows go through in pieces with the state carried
IGNORE = -100  # a padding target (cross_entropy's default ignore_index)


@torch.inference_mode()
def row_nats(model, x: torch.Tensor, y: torch.Tensor, labels: Optional[torch.Tensor], device: torch.device,
             precision: str = "fp32", source=None) -> torch.Tensor:
    """(rows,) float64 nats of predicting y from x, both (rows, T) with IGNORE where a row has ended;
    `labels` (rows, T) or (rows, 1) for a labelled model; `source` (padded inputs, lengths) for an
    encoder-decoder, whose rows go through whole (its decoder state starts from the inputs)."""
    total, state = torch.zeros(x.shape[0], dtype=torch.float64, device=device), None
    chunk = CHUNK if source is None else max(1, x.shape[1])
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
