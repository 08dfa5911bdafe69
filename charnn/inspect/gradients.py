"""How far back the loss reaches: the norm of d loss_t / d x_{t-k}, the gradient of the loss at position t
with respect to the input embedding k steps earlier, averaged over positions t of a text, for k = 0..K. The
vanishing gradient of the articles charnn grew from, measured on a user's own model and text: a vanilla RNN's
curve falls off within a few steps, an LSTM's (forget bias 1) much later.

All sampled positions go through the model as one batch: row r holds a warm-up (run without gradients, so the
state at the window's start is a real one) and then the K + 1 inputs that end at position t_r; one backward
from the sum of the rows' last losses gives every row's gradients at once, since rows do not mix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from charnn.errors import CharnnError
from charnn.generation.prompt import start_ids


@dataclass
class GradientReach:
    norms: np.ndarray  # (K + 1,) mean |d loss_t / d x_{t-k}| for k = 0..K
    positions: int  # how many positions t were averaged
    warmup: int  # inputs each row ran through before its window

    @property
    def relative(self) -> np.ndarray:
        """The curve divided by its value at k = 0 (how much of the nearest input's pull is left k steps back)."""
        return self.norms / self.norms[0] if self.norms[0] > 0 else self.norms


def _embed_leaf(model, captured: list):
    """A forward hook on the model's `embed` layer that makes its output a leaf tensor with a gradient."""
    def hook(module, inputs, output):
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf
    embed = getattr(model, "embed", None)
    if not isinstance(embed, torch.nn.Module):
        raise CharnnError(f"a {type(model).__name__} model has no `embed` layer to measure gradients at")
    return embed.register_forward_hook(hook)


def gradient_reach(model, tokenizer, text: str, device: torch.device, max_k: int = 100, positions: int = 64,
                   warmup: int = 64, seed: int = 0) -> GradientReach:
    """The mean gradient norm against k (see the module's docstring), over up to `positions` positions of
    `text` drawn with `seed`; K = max_k, or less on a text too short for it."""
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    if len(ids) < 2:
        raise CharnnError("the text is too short to measure gradients over: it needs at least 2 characters")
    inputs = np.concatenate([start_ids(tokenizer, ""), ids[:-1]])  # position t reads inputs[t], predicts ids[t]
    K = min(max_k, len(ids) - 1)
    W = max(0, min(warmup, len(ids) - 1 - K))
    first = K + W
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.choice(np.arange(first, len(ids)), size=min(positions, len(ids) - first), replace=False))
    rows = torch.as_tensor(np.stack([inputs[t - K - W:t + 1] for t in ts]), device=device)  # (P, W + K + 1)
    target = torch.as_tensor(ids[ts], device=device)
    was_training = model.training
    model.eval()
    try:
        norms = _norms(model, rows, target, W)
    finally:
        model.train(was_training)
    return GradientReach(norms, len(ts), W)


def _norms(model, rows: torch.Tensor, target: torch.Tensor, W: int) -> np.ndarray:
    state = None
    with torch.no_grad():
        if W:
            _, state = model(rows[:, :W], None)
    captured: list = []
    handle = _embed_leaf(model, captured)
    # cuDNN's recurrent backward runs in training mode only; the plain kernels give the same gradients
    with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
        try:
            logits, _ = model(rows[:, W:], state)
        finally:
            handle.remove()
        loss = F.cross_entropy(logits[:, -1].float(), target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, captured[0])  # (P, K + 1, E)
    per = grad.float().norm(dim=-1).mean(0)  # (K + 1,): index K is k = 0
    return per.flip(0).double().cpu().numpy()
