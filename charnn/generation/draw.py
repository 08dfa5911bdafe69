"""Drawing tokens: decoding filters, seeded Gumbel noise, and the loop that steps the model and feeds each draw
back, a block of tokens at a time.

Decoding is temperature (folded into the head's weights by the stepper), then top-k, then top-p, then a
Gumbel-max draw (argmax of logits + Gumbel noise: an exact sample from the softmax). The noise comes in
blocks from one seeded torch.Generator on the model's device and is used one row per token, in order,
whatever the loop; so a seed reproduces the output byte for byte, and the loops below agree with each other.

`TokenLoop` runs the steps from Python, one token at a time. `GraphedTokenLoop` (CUDA) records a whole
block of steps once as a CUDA graph and replays it: one launch per block instead of ~20 per token, which
is what bounds one stream's speed on a GPU. Off CUDA it runs the same block body directly, so its data flow
is checked on any machine.
"""

from __future__ import annotations

import time
from typing import Callable, List, Optional

import torch

NOISE_FLOATS = 1 << 20  # Gumbel noise is drawn in blocks of about this many numbers

Draw = Callable[[torch.Tensor, Optional[torch.Tensor], torch.Tensor], torch.Tensor]  # (logits, noise, out) -> out


def filter_logits(logits: torch.Tensor, top_k: Optional[int] = None, top_p: Optional[float] = None) -> torch.Tensor:
    """(B, V) temperature-scaled logits -> the same with every token outside top-k, then top-p, at -inf."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_, order = logits.sort(dim=-1, descending=True)
        probs = sorted_.softmax(dim=-1)
        outside = probs.cumsum(dim=-1) - probs >= top_p  # the mass before this token already reaches p
        logits = logits.scatter(-1, order, sorted_.masked_fill(outside, float("-inf")))
    return logits


def gumbel_noise(steps: int, batch: int, vocab: int, generator: torch.Generator, device) -> torch.Tensor:
    """(steps, B, V) Gumbel(0, 1) noise, -log(E) with E ~ Exp(1): argmax(logits + noise) draws from softmax."""
    e = torch.empty(steps, batch, vocab, device=device).exponential_(generator=generator)
    return e.clamp_min_(1e-30).log_().neg_()


def make_draw(greedy: bool, top_k: Optional[int], top_p: Optional[float]) -> Draw:
    """The draw for the configured decoding: (B, V) scaled logits (changed in place) -> ids written to `out`."""
    if greedy:
        return lambda logits, noise, out: torch.argmax(logits, dim=-1, out=out)
    filtered = top_k is not None or top_p is not None

    def draw(logits: torch.Tensor, noise: Optional[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
        if filtered:
            logits = filter_logits(logits, top_k, top_p)
        return torch.argmax(logits.add_(noise), dim=-1, out=out)

    return draw


class Noise:
    """Gumbel noise rows (B, V) in a fixed order from one seed, made `steps` rows at a time."""

    def __init__(self, batch: int, vocab: int, seed: int, device: torch.device):
        self.batch, self.vocab, self.device = batch, vocab, device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.steps = max(1, min(256, NOISE_FLOATS // (batch * vocab)))
        self.i, self.block, self.rows = self.steps, None, ()

    def _refill(self) -> None:
        self.block = gumbel_noise(self.steps, self.batch, self.vocab, self.generator, self.device)
        self.rows, self.i = self.block.unbind(0), 0  # views made once per block: a view costs time per token

    def next(self) -> torch.Tensor:
        """The next row."""
        if self.i == self.steps:
            self._refill()
        self.i += 1
        return self.rows[self.i - 1]

    def fill(self, out: torch.Tensor) -> None:
        """Copy the next len(out) rows into `out` (n, B, V), in as few copies as the blocks allow."""
        k = 0
        while k < len(out):
            if self.i == self.steps:
                self._refill()
            m = min(len(out) - k, self.steps - self.i)
            out[k:k + m].copy_(self.block[self.i:self.i + m])
            k, self.i = k + m, self.i + m


class TokenLoop:
    """Draw a token for every stream, step the model on it, repeat: `run(n)` -> the (k, B) ids drawn, k <= n."""

    def __init__(self, stepper, logits: torch.Tensor, draw: Draw, noise: Optional[Noise], block: int):
        self.stepper, self.logits, self.draw, self.noise = stepper, logits, draw, noise
        self.ids = torch.empty(block, logits.shape[0], dtype=torch.long, device=logits.device)
        self.rows = self.ids.unbind(0)
        self.last: Optional[torch.Tensor] = None  # the latest draw, stepped on only when another token is wanted

    def run(self, n: int, deadline: Optional[float] = None) -> torch.Tensor:
        """Up to n tokens per stream; fewer if `deadline` (a perf_counter time) passes first."""
        n = min(n, len(self.rows))
        for k in range(n):
            if self.last is not None:
                self.logits = self.stepper.step(self.last)
            self.last = self.draw(self.logits, self.noise.next() if self.noise else None, self.rows[k])
            if deadline is not None and time.perf_counter() > deadline:
                return self.ids[:k + 1]
        return self.ids[:n]


class GraphedTokenLoop(TokenLoop):
    """The same tokens as TokenLoop, a whole block per call: on CUDA the block's steps are recorded once as a
    CUDA graph and replayed (the stepper's fixed buffers make that possible); elsewhere the body runs as is
    (`capture` overrides the choice). Each call makes a full block, so up to block - 1 tokens past the end are
    drawn and thrown away. The block holds at most NOISE_FLOATS noise numbers (fewer steps for big batches
    and vocabularies), so its fixed noise buffer stays small."""

    def __init__(self, stepper, logits: torch.Tensor, draw: Draw, noise: Optional[Noise], block: int,
                 capture: Optional[bool] = None):
        B, V = logits.shape
        block = max(1, min(block, NOISE_FLOATS // (B * V)))
        super().__init__(stepper, logits, draw, noise, block)
        if logits is not stepper.logits:
            raise ValueError("GraphedTokenLoop needs a stepper that writes its logits into one buffer")
        self.noise_rows: List[Optional[torch.Tensor]] = [None] * block
        self.noise_block = None
        if noise is not None:
            self.noise_block = torch.zeros(block, B, V, device=logits.device)
            self.noise_rows = list(self.noise_block.unbind(0))
        self.graph = self._capture() if (logits.device.type == "cuda" if capture is None else capture) else None

    def _body(self) -> None:
        for tok, noise in zip(self.rows, self.noise_rows):
            self.stepper.step(self.draw(self.stepper.logits, noise, tok))

    def _capture(self):
        """Record one block; the warm-up run CUDA graphs need first is undone, so no token or noise is lost."""
        state = [t.clone() for t in self.stepper.state_tensors()]
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._body()  # allocations and library handles happen here, not during the capture
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._body()
            return graph
        finally:  # also after a failed capture: the plain loop then carries on from the same state
            torch.cuda.synchronize()
            for t, saved in zip(self.stepper.state_tensors(), state):
                t.copy_(saved)

    def run(self, n: int, deadline: Optional[float] = None) -> torch.Tensor:
        if self.noise is not None:
            self.noise.fill(self.noise_block)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._body()
        return self.ids
