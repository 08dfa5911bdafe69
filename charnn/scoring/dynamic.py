"""Dynamic evaluation (Krause et al. 2018, "Dynamic Evaluation of Neural Sequence Models"): score a text
segment by segment and, after scoring each segment, take one gradient step on it, so that the model adapts
to the text it is reading. The hidden state is carried from segment to segment.

Every token is scored exactly once, before the step on its segment (score, then update), so the result is
an honest likelihood of the text. The model passed in is never changed: the steps are taken on a copy.

The step, per weight w with trained value w0, g the gradient of the segment's loss (nats per token of a
full segment) and ms a running mean of g² over the segments so far (RMSprop's average, bias-corrected):

    rms = sqrt(ms)
    w <- w - lr * g / (rms + eps) + min(1, decay * rms / mean(rms)) * (w0 - w)

The pull back toward w0 is stronger for weights whose gradients are larger, as in the paper (mean(rms) is
the mean over the parameter tensors of each one's mean rms; capping the factor at 1 keeps it from
overshooting w0). The paper gathers ms once, on training data; a checkpoint's training text need not be
at hand when scoring an arbitrary file, so here it is a running average over the segments already scored
(benchmarks/ADAPT.md measures the choice).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from charnn.config import DynamicConfig
from charnn.models.cells import copy_model
from charnn.scoring.evaluate import EvalResult, combine, with_start
from charnn.threadwatch import block


@dataclass
class DynamicResult:
    """A text scored twice in the same segments with the same carried state: with the trained weights
    (static) and with the weights adapting as they go (dynamic); and the seconds each pass took."""
    static: EvalResult
    dynamic: EvalResult
    static_seconds: float
    dynamic_seconds: float

    @property
    def gain(self) -> float:
        """Nats per character that dynamic evaluation saves (positive: it helped)."""
        return self.static.nats_per_char - self.dynamic.nats_per_char

    def to_dict(self) -> dict:
        return {"static": self.static.to_dict(), "dynamic": self.dynamic.to_dict(),
                "gain_nats_per_char": self.gain,
                "seconds": {"static": self.static_seconds, "dynamic": self.dynamic_seconds}}


@dataclass
class Adapted:
    model: torch.nn.Module  # a copy of the model, in eval mode, with every step over the text taken
    result: EvalResult  # the text's score under dynamic evaluation
    seconds: float  # how long it took


class RmsStep:
    """The update above, on `net`'s parameters; w0 is their value when this was made."""

    def __init__(self, net: torch.nn.Module, cfg: DynamicConfig):
        self.cfg, self.params = cfg, [p for p in net.parameters()]
        self.w0 = [p.detach().clone() for p in self.params]
        self.ms = [torch.zeros_like(p) for p in self.params]
        self.seen = 0.0  # the weight the running average has gathered so far (its bias correction)

    def __call__(self, loss: torch.Tensor) -> None:
        grads = torch.autograd.grad(loss, self.params)
        cfg = self.cfg
        with torch.no_grad():
            self.seen = cfg.beta * self.seen + (1 - cfg.beta)
            rms = [ms.mul_(cfg.beta).addcmul_(g, g, value=1 - cfg.beta).div(self.seen).sqrt_()
                   for ms, g in zip(self.ms, grads)]
            mean = torch.stack([r.mean() for r in rms]).mean().clamp_min(1e-30)
            for p, w0, g, r in zip(self.params, self.w0, grads, rms):
                pull = (r * (cfg.decay / mean)).clamp_(max=1.0).mul_(w0 - p) if cfg.decay else 0.0
                p.addcdiv_(g, r.add_(cfg.eps), value=-cfg.lr).add_(pull)


def _context(tokenizer, ids: np.ndarray, device) -> torch.Tensor:
    """The start id, then the text's ids: what scoring conditions each token on (as `evaluate_ids` does)."""
    return torch.from_numpy(with_start(tokenizer, ids)).to(device)


def _run(net, context: torch.Tensor, segment: int, step=None) -> float:
    """Total nats of predicting context[1:], one segment per forward, the state carried; after scoring each
    segment, `step` (if any) takes its gradient step on the segment's loss. The forwards run under autograd
    even without a step: torch's LSTM takes another kernel without it, which differs in the last bits."""
    x, y = context[:-1], context[1:]
    state = None

    def one(t: int) -> float:  # a segment scored, then stepped on (on the threads charnn.threadwatch measured)
        nonlocal state
        with torch.enable_grad():
            logits, state = net(x[None, t:t + segment], state)  # (1, T, V)
            nats = F.cross_entropy(logits[0].float(), y[t:t + segment], reduction="sum")
        scored = nats.double().item()  # scored before the step on it
        if step is not None:
            step(nats / segment)  # a short last segment takes a proportionally smaller step
        state = net.state_ops.detach(state)  # the model kind's own state, whatever its layout
        return scored

    return sum(block(lambda: one(t), lambda _: len(x[t:t + segment])) for t in range(0, len(x), segment))


def _trainable_copy(model) -> torch.nn.Module:
    if getattr(model, "label_embed", None) is not None:  # a labelled model scores text without a label here:
        model = model.for_label(0)  # its label-free twin (the label vectors take no part, so no gradient)
    net = copy_model(model).eval()  # eval mode: no dropout, so the steps are deterministic
    for p in net.parameters():
        p.requires_grad_(True)
    return net


def _result(tokenizer, ids: np.ndarray, nats: float) -> EvalResult:
    chars = tokenizer.token_chars(ids) if len(ids) else 0
    return EvalResult(nats=nats, tokens=len(ids), chars=chars, unknown=int((ids == tokenizer.unk_id).sum()))


def adapt(model, tokenizer, text: str, device: torch.device, cfg: Optional[DynamicConfig] = None) -> Adapted:
    """Dynamic evaluation over `text` on a copy of `model`: the copy, adapted, and the text's score."""
    cfg = (cfg or DynamicConfig()).validate()
    t0 = time.perf_counter()
    net, ids = _trainable_copy(model), tokenizer.encode(text)
    nats = _run(net, _context(tokenizer, ids, device), cfg.segment, RmsStep(net, cfg))
    net.requires_grad_(False)
    return Adapted(net, _result(tokenizer, ids, nats), time.perf_counter() - t0)


def score_static(model, tokenizer, text: str, device: torch.device, segment: int) -> EvalResult:
    """The text scored as `adapt` scores it (the same segments, the state carried) but with no steps: what
    dynamic evaluation is measured against."""
    ids = tokenizer.encode(text)
    return _result(tokenizer, ids, _run(_trainable_copy(model), _context(tokenizer, ids, device), segment))


def evaluate_dynamic(model, tokenizer, text: str, device: torch.device,
                     cfg: Optional[DynamicConfig] = None) -> DynamicResult:
    """Score `text` statically and dynamically, side by side; `model` is left as it was."""
    cfg = (cfg or DynamicConfig()).validate()
    t0 = time.perf_counter()
    static = score_static(model, tokenizer, text, device, cfg.segment)
    seconds = time.perf_counter() - t0
    adapted = adapt(model, tokenizer, text, device, cfg)
    return DynamicResult(static, adapted.result, seconds, adapted.seconds)


def combine_dynamic(results: List[DynamicResult]) -> DynamicResult:
    """Several files' results as one: nats, counts and seconds added up."""
    return DynamicResult(combine([r.static for r in results]), combine([r.dynamic for r in results]),
                         sum(r.static_seconds for r in results), sum(r.dynamic_seconds for r in results))
