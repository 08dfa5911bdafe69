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
             precision: str = "fp32") -> torch.Tensor:
    """(rows,) float64 nats of predicting y from x, both (rows, T) with IGNORE where a row has ended;
    `labels` (rows, T) or (rows, 1) for a labelled model."""
    total, state = torch.zeros(x.shape[0], dtype=torch.float64, device=device), None
    for t in range(0, x.shape[1], CHUNK):
        xb, yb = x[:, t:t + CHUNK].to(device), y[:, t:t + CHUNK].to(device)
        extra = {}
        if labels is not None:
            lb = labels if labels.shape[1] == 1 else labels[:, t:t + CHUNK]
            extra["labels"] = lb.to(device).expand_as(xb)
        with autocast(device, precision):
            logits, state = model(xb, state, **extra)
        nll = F.cross_entropy(logits.float().transpose(1, 2), yb, reduction="none", ignore_index=IGNORE)
        total += nll.double().sum(1)
    return total
