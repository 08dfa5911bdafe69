"""Sampling: one recurrent step per new token with carried state; text comes out as a stream of pieces."""

from __future__ import annotations

import time
from typing import Iterator, Optional

import torch

from charnn.config import SampleConfig
from charnn.errors import CharnnError

FLUSH_TOKENS = 32  # yield at least every this many tokens...
FLUSH_SECONDS = 0.05  # ...or this often, so a terminal sees text appear as it is made


def filter_logits(logits: torch.Tensor, temperature: float, top_k: Optional[int], unk_id: Optional[int]) -> torch.Tensor:
    """(B, V) logits -> (B, V) scaled logits with everything that must not be drawn set to -inf."""
    logits = logits.float() / temperature
    if unk_id is not None:
        logits[:, unk_id] = float("-inf")  # never emit the unknown token
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits


def draw(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, V) filtered logits -> (B,) token ids."""
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def start_ids(tokenizer, prime: str) -> list:
    """The ids the model is conditioned on: the prime, or a newline when there is no prime."""
    if prime:
        missing = tokenizer.unknown(prime)
        if missing:
            shown = ", ".join(repr(c) for c in missing[:10])
            raise CharnnError(f"--prime has characters the model's vocabulary lacks: {shown}")
        return [int(i) for i in tokenizer.encode(prime)]
    ids = tokenizer.encode("\n")
    return [int(ids[0])] if len(ids) and ids[0] != tokenizer.unk_id else [1]


@torch.no_grad()
def generate(model, tokenizer, cfg: SampleConfig, device: torch.device, seed: int) -> Iterator[str]:
    """Yield the prime, then the continuation in small pieces, `cfg.length` characters in all after it."""
    cfg.validate()
    model.eval()
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    context = start_ids(tokenizer, cfg.prime)
    if cfg.prime:
        yield cfg.prime
    if cfg.length == 0:
        return
    x = torch.tensor([context], dtype=torch.long, device=device)
    logits, state = model(x, None)  # the whole prime in one pass, then one step per token
    logits = logits[:, -1]
    # `produced` counts characters, not tokens: each token goes through the incremental decoder, which
    # holds back the bytes of a character split over byte pieces until it is whole; the last token's
    # text is cut so that exactly cfg.length characters come out.
    decoder = tokenizer.decoder()
    pending, produced, n_tokens, last_flush = [], 0, 0, time.perf_counter()
    while produced < cfg.length:
        tok = draw(filter_logits(logits, cfg.temperature, cfg.top_k, tokenizer.unk_id), generator)
        text = decoder.push([int(tok)])[: cfg.length - produced]
        pending.append(text)
        produced, n_tokens = produced + len(text), n_tokens + 1
        if n_tokens % FLUSH_TOKENS == 0 or time.perf_counter() - last_flush > FLUSH_SECONDS:
            yield "".join(pending)
            pending, last_flush = [], time.perf_counter()
        if produced < cfg.length:
            logits, state = model(tok.view(1, 1), state)
            logits = logits[:, -1]
    yield "".join(pending)
