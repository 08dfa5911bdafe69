"""Sampling: N streams stepped together, one recurrent step per token with carried state, text out as pieces.

Decoding is temperature (folded into the head's weights), then top-k, then top-p, then a Gumbel-max draw
(argmax of logits + Gumbel noise: an exact sample from the softmax) with noise made in blocks from one
seeded torch.Generator on the model's device, so a seed reproduces the output byte for byte.
"""

from __future__ import annotations

import sys
import time
from typing import Iterator, List, Optional, Tuple

import torch

from charnn.config import SampleConfig
from charnn.errors import CharnnError
from charnn.stepper import make_stepper

FLUSH_TOKENS = 32  # hand text out at least every this many tokens...
FLUSH_SECONDS = 0.05  # ...or this often, so a terminal sees text appear as it is made
NOISE_FLOATS = 1 << 20  # Gumbel noise is drawn in blocks of about this many numbers


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


def read_prime(path: str, encoding: str = "utf-8") -> str:
    """The text of --prime-file PATH, or of stdin for '-'."""
    if path != "-":
        from charnn.corpus import read_text
        return read_text(path, "prime file", encoding)
    data = sys.stdin.buffer.read()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise CharnnError(f"stdin is not valid {encoding}: bad byte 0x{data[e.start]:02x} at offset {e.start}") from None


def clean_prime(tokenizer, prime: str, unknown: str = "error") -> Tuple[str, List[str]]:
    """The prime to condition on and the distinct characters dropped from it (`unknown="skip"`)."""
    missing = tokenizer.unknown(prime) if prime else []
    if not missing:
        return prime, []
    shown = ", ".join(repr(c) for c in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
    if unknown != "skip":
        raise CharnnError(f"the prime has characters the model's vocabulary lacks: {shown}; "
                          "drop them with --unknown skip")
    gone = set(missing)
    return "".join(c for c in prime if c not in gone), missing


def start_ids(tokenizer, prime: str) -> List[int]:
    """The ids the model is conditioned on: the prime, or a newline when there is no prime."""
    if prime:
        return [int(i) for i in tokenizer.encode(prime)]
    ids = tokenizer.encode("\n")
    return [int(ids[0])] if len(ids) and ids[0] != tokenizer.unk_id else [1]


class StopFinder:
    """Cuts a stream of text right after the first occurrence of `stop`, even across piece boundaries."""

    def __init__(self, stop: Optional[str]):
        self.stop, self.tail, self.done = stop, "", False

    def feed(self, piece: str) -> str:
        if not self.stop or self.done:
            return "" if self.done else piece
        text = self.tail + piece
        at = text.find(self.stop)
        if at >= 0:
            self.done = True
            return piece[:at + len(self.stop) - len(self.tail)]
        self.tail = text[-(len(self.stop) - 1):] if len(self.stop) > 1 else ""
        return piece


class Sampler:
    """Iterate to get the output: sample 1 streamed as it is made, then each further sample after a separator.

    After construction `skipped` lists prime characters dropped by `--unknown skip`; after iteration
    `chars` counts the characters generated (primes and separators excluded).
    """

    def __init__(self, model, tokenizer, cfg: SampleConfig, device: torch.device, seed: int, fast: Optional[bool] = None):
        self.cfg, self.model, self.tokenizer, self.device, self.seed = cfg.validate(), model.eval(), tokenizer, device, seed
        self.prime, self.skipped = clean_prime(tokenizer, cfg.prime, cfg.unknown)
        self.fast, self.chars = fast, 0

    def __iter__(self) -> Iterator[str]:
        with torch.inference_mode():
            yield from self._run()

    def _run(self) -> Iterator[str]:
        cfg, B = self.cfg, self.cfg.num_samples
        yield self.prime
        if cfg.length == 0:
            yield from (cfg.separator + self.prime for _ in range(1, B))
            return
        scale = 1.0 if cfg.greedy else 1.0 / cfg.temperature
        banned = [] if self.tokenizer.unk_id is None else [self.tokenizer.unk_id]
        stepper = make_stepper(self.model, B, scale, banned, fast=self.fast, int8=cfg.int8)
        logits = self._condition(stepper, start_ids(self.tokenizer, self.prime))
        decoders = [self.tokenizer.decoder() for _ in range(B)]
        stops = [StopFinder(cfg.stop) for _ in range(B)]
        later: List[List[str]] = [[] for _ in range(B)]  # samples 2..N wait for sample 1 to finish
        draw = self._drawer(B, logits.shape[-1])
        block = torch.empty(FLUSH_TOKENS, B, dtype=torch.long, device=self.device)  # ids not yet decoded
        rows = block.unbind(0)  # made once: a view costs time per step
        # `--length` counts characters whatever the tokenizer: each stream keeps its own remaining count, and
        # the incremental decoders hold back the bytes of a character split over byte pieces until it is whole.
        remaining, done = [cfg.length] * B, [False] * B
        k, last_flush, soonest = 0, time.perf_counter(), cfg.length  # soonest: fewest characters any live stream lacks
        while True:
            tok = draw(logits, rows[k])
            k += 1
            if k == FLUSH_TOKENS or k >= soonest or time.perf_counter() - last_flush > FLUSH_SECONDS:
                ids = block[:k].t().tolist()  # (B, k); the one host sync per block
                for b in range(B):
                    if done[b]:
                        continue
                    piece = stops[b].feed(decoders[b].push(ids[b])[: remaining[b]])
                    remaining[b] -= len(piece)
                    done[b] = remaining[b] <= 0 or stops[b].done
                    self.chars += len(piece)
                    if b == 0:
                        yield piece
                    else:
                        later[b].append(piece)
                k, last_flush = 0, time.perf_counter()
                if all(done):
                    break
                soonest = min(r for r, d in zip(remaining, done) if not d)
            logits = stepper.step(tok)
        for b in range(1, B):
            yield cfg.separator + self.prime + "".join(later[b])

    def _condition(self, stepper, ids: List[int]) -> torch.Tensor:
        """Run the prime through the model's forward in one pass, then step its last token: (B, V) logits."""
        if len(ids) > 1:
            x = torch.tensor([ids[:-1]], dtype=torch.long, device=self.device)
            _, state = self.model(x, None)
            stepper.load_state(state)
        return stepper.step(torch.full((self.cfg.num_samples,), ids[-1], dtype=torch.long, device=self.device))

    def _drawer(self, batch: int, vocab: int):
        """A function ((B, V) scaled logits, (B,) out) -> out, the ids drawn for the configured decoding."""
        cfg = self.cfg
        if cfg.greedy:
            return lambda logits, out: torch.argmax(logits, dim=-1, out=out)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.seed)
        steps = max(1, min(256, NOISE_FLOATS // (batch * vocab)))
        noise, i = (), steps
        filtered = cfg.top_k is not None or cfg.top_p is not None

        def draw(logits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
            nonlocal noise, i
            if i == steps:
                noise, i = gumbel_noise(steps, batch, vocab, generator, self.device).unbind(0), 0
            if filtered:
                logits = filter_logits(logits, cfg.top_k, cfg.top_p)
            i += 1
            return torch.argmax(logits.add_(noise[i - 1]), dim=-1, out=out)

        return draw


def generate(model, tokenizer, cfg: SampleConfig, device: torch.device, seed: int) -> Iterator[str]:
    """Yield the output in pieces (see Sampler)."""
    yield from Sampler(model, tokenizer, cfg, device, seed)
