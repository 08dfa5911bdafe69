"""Sampling: N streams stepped together, one recurrent step per token with carried state, text out as pieces.

The tokens come from `charnn.generation.draw` (decoding filters, seeded noise, the step-and-draw loop, CUDA graphs);
this module conditions on the prime, decodes ids to text per stream, applies --length and --stop, and
hands the text out in small pieces as it is made.
"""

from __future__ import annotations

import sys
import time
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch

from charnn.config import SampleConfig
from charnn.errors import CharnnError, first_line
from charnn.generation.draw import GraphedTokenLoop, Noise, TokenLoop, make_draw
from charnn.models.stepper import FastStepper, make_stepper
from charnn.text.tokenizer import start_id

FLUSH_TOKENS = 32  # hand text out at least every this many tokens...
FLUSH_SECONDS = 0.05  # ...or this often, so a terminal sees text appear as it is made


def read_prime(path: str, encoding: str = "utf-8") -> str:
    """The text of --prime-file PATH, or of stdin for '-'."""
    from charnn.data.corpus import decode_bytes, read_text
    if path != "-":
        return read_text(path, "prime file", encoding)
    return decode_bytes(sys.stdin.buffer.read(), "stdin", encoding)


def clean_prime(tokenizer, prime: str, unknown: str = "error", what: str = "the prime") -> Tuple[str, List[str]]:
    """The prime to condition on and the distinct characters dropped from it (`unknown="skip"`); `what` names
    the text in the error (sample's --adapt file goes through here too)."""
    missing = tokenizer.unknown(prime) if prime else []
    if not missing:
        return prime, []
    shown = ", ".join(repr(c) for c in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
    if unknown != "skip":
        raise CharnnError(f"{what} has characters the model's vocabulary lacks: {shown}; "
                          "drop them with --unknown skip")
    gone = set(missing)
    return "".join(c for c in prime if c not in gone), missing


def start_ids(tokenizer, prime: str) -> List[int]:
    """The ids the model is conditioned on: the prime, or a newline when there is no prime."""
    if prime:
        return [int(i) for i in tokenizer.encode(prime)]
    return [start_id(tokenizer)]


def heal(tokenizer, ids: List[int]) -> Tuple[List[int], Optional[np.ndarray], bytes]:
    """Token healing for a subword prime: (ids to condition on, ids the first draw may take, bytes to skip).

    A prime cut mid-word ("the bro") ends in a piece ("▁bro") that in training was mostly part of a longer
    one ("▁brown"), so conditioning on it asks the model for a split it rarely saw. Instead the last piece
    is taken back, the first draw is limited to the pieces that start with its text ("▁bro", "▁brown",
    "▁brother", ...), and that text, already printed with the prime, is skipped in the output. Character
    tokenizers, byte pieces and an empty prime are left as they are."""
    extending = getattr(tokenizer, "extending", None)
    allowed = extending(ids[-1]) if extending is not None and ids else None
    if allowed is None:
        return ids, None, b""
    return ids[:-1], allowed, tokenizer.pieces[ids[-1]]


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
    `chars` counts the characters generated (primes and separators excluded) and `notes` holds anything
    worth telling the user (a fallback taken).
    """

    def __init__(self, model, tokenizer, cfg: SampleConfig, device: torch.device, seed: int, fast: Optional[bool] = None,
                 graphs: Optional[bool] = None):
        self.cfg, self.model, self.tokenizer, self.device, self.seed = cfg.validate(), model.eval(), tokenizer, device, seed
        self.prime, self.skipped = clean_prime(tokenizer, cfg.prime, cfg.unknown)
        self.fast, self.graphs, self.chars, self.notes = fast, graphs, 0, []

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
        ids, allowed, skip = start_ids(self.tokenizer, self.prime), None, b""
        if self.prime and cfg.heal:
            ids, allowed, skip = heal(self.tokenizer, ids)
        logits = self._condition(stepper, ids or start_ids(self.tokenizer, ""))  # a one-piece prime: a newline
        if allowed is not None:  # the first draw completes the piece taken back from the prime
            outside = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
            outside[torch.from_numpy(allowed).to(logits.device)] = False
            logits[:, outside] = float("-inf")
        decoders = [self.tokenizer.decoder(skip) if skip else self.tokenizer.decoder() for _ in range(B)]
        stops = [StopFinder(cfg.stop) for _ in range(B)]
        later: List[List[str]] = [[] for _ in range(B)]  # samples 2..N wait for sample 1 to finish
        loop = self._loop(stepper, logits)
        # `--length` counts characters whatever the tokenizer: each stream keeps its own remaining count, and
        # the incremental decoders hold back the bytes of a character split over byte pieces until it is whole.
        remaining, done = [cfg.length] * B, [False] * B
        soonest = cfg.length  # the fewest characters any live stream still lacks: no need to draw more at once
        while not all(done):
            ids = loop.run(min(FLUSH_TOKENS, soonest), time.perf_counter() + FLUSH_SECONDS).t().tolist()  # (B, k)
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
            soonest = min((r for r, d in zip(remaining, done) if not d), default=0)
        for b in range(1, B):
            yield cfg.separator + self.prime + "".join(later[b])

    def _condition(self, stepper, ids: List[int]) -> torch.Tensor:
        """Run the prime through the model's forward in one pass, then step its last token: (B, V) logits."""
        if len(ids) > 1:
            x = torch.tensor([ids[:-1]], dtype=torch.long, device=self.device)
            _, state = self.model(x, None)
            stepper.load_state(state)
        return stepper.step(torch.full((self.cfg.num_samples,), ids[-1], dtype=torch.long, device=self.device))

    def _loop(self, stepper, logits: torch.Tensor) -> TokenLoop:
        """The step-and-draw loop: CUDA graphs where they apply (FastStepper on a GPU, unless `graphs=False`)."""
        cfg = self.cfg
        draw = make_draw(cfg.greedy, cfg.top_k, cfg.top_p)
        noise = None if cfg.greedy else Noise(cfg.num_samples, logits.shape[-1], self.seed, self.device)
        graphs = self.graphs if self.graphs is not None else self.device.type == "cuda"
        if graphs and isinstance(stepper, FastStepper):
            try:
                return GraphedTokenLoop(stepper, logits, draw, noise, FLUSH_TOKENS)
            except RuntimeError as e:  # a capture this torch/driver refuses: the plain loop gives the same text
                cause = e.__context__ if isinstance(e.__context__, RuntimeError) else e  # not the follow-on error
                self.notes.append(f"sampling without CUDA graphs ({first_line(cause)})")
        return TokenLoop(stepper, logits, draw, noise, FLUSH_TOKENS)


def generate(model, tokenizer, cfg: SampleConfig, device: torch.device, seed: int) -> Iterator[str]:
    """Yield the output in pieces (see Sampler)."""
    yield from Sampler(model, tokenizer, cfg, device, seed)
