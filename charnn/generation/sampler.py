"""`charnn sample`'s output: N samples of one prime, drawn together as rows of one `Batcher`, sample 1 streamed
as it is made and each further sample printed after a separator once it is done.

The tokens come from `charnn.generation.batcher.Batcher`, the generation loop the Python API and `charnn serve`
use too (CUDA graphs on a GPU, int8 weights on a CPU); this module sets up its rows from the sample settings
and lays their text out the way the command prints it.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Iterator, List, Optional

import torch

from charnn.config import SEED_LIMIT
from charnn.sampling import SampleConfig
from charnn.generation.batcher import Batcher, RowSpec
from charnn.generation.prompt import clean_prime
from charnn.threadwatch import watching

WAVE = 256  # samples generated together at most: -n beyond it runs in waves (memory: one wave's texts)
BLOCK = 32  # tokens per row per generation step: a terminal sees text appear in pieces this long, at most


class Sampler:
    """Iterate to get the output: sample 1 streamed as it is made, then each further sample after a separator.

    Sample i draws with seed + i, so sample 1 of `-n 4 --seed S` is the text `--seed S` writes alone. After
    construction `skipped` lists prime characters dropped by `--unknown skip`; after iteration `chars` counts
    the characters generated (primes and separators excluded) and `notes` holds anything worth telling the
    user (a fallback taken).
    """

    def __init__(self, model, tokenizer, cfg: SampleConfig, device: torch.device, seed: int,
                 graphs: Optional[bool] = None, measure: bool = False):
        self.cfg, self.model, self.tokenizer, self.device, self.seed = cfg.validate(), model.eval(), tokenizer, device, seed
        self.prime, self.skipped = clean_prime(tokenizer, cfg.prime, cfg.unknown)
        self.graphs, self.chars, self.notes, self.watch = graphs, 0, [], None
        self.measure = measure  # `charnn sample`'s threads measured where not given (charnn.threadwatch)

    def rows(self, lo: int = 0, hi: Optional[int] = None) -> List[RowSpec]:
        """One row per sample (those from lo to hi). `--stop` ends a sample right after the stop string; a row ends
        right before it (OpenAI's way), so the string is put back when a row stops on it."""
        cfg = self.cfg
        return [RowSpec(prompt=self.prime, length=cfg.length,
                        sampling=replace(cfg.sampling, seed=(self.seed + i) % SEED_LIMIT),  # (as the API: 2**63 - 1
                        stop=(cfg.stop,) if cfg.stop else (), heal=cfg.heal)  # + 1 overflowed a C long)
                for i in range(lo, cfg.num_samples if hi is None else min(hi, cfg.num_samples))]

    def __iter__(self) -> Iterator[str]:
        cfg, n = self.cfg, self.cfg.num_samples
        if cfg.length == 0:
            yield self.prime
            yield from (cfg.separator + self.prime for _ in range(1, n))
            return
        batcher = Batcher(self.model, self.tokenizer, self.device, capacity=min(n, WAVE), int8=cfg.int8, block=BLOCK,
                          graphs=self.graphs, rows=min(n, WAVE))  # (before any output: a refused --int8 left the
        self.notes = batcher.notes  # prime on stdout)
        yield self.prime
        before, self.watch = torch.get_num_threads(), watching(cfg.threads, self.device) if self.measure else None
        try:
            if cfg.threads is not None:
                torch.set_num_threads(cfg.threads)
            for lo in range(0, n, WAVE):  # (a row's text depends on its own seed only, not on the rows beside it)
                yield from self._wave(batcher, lo)
        finally:  # torch's count put back, unless someone else changed it meanwhile
            if torch.get_num_threads() == (self.watch.current if self.watch else cfg.threads or before):
                torch.set_num_threads(before)

    def _wave(self, batcher: Batcher, lo: int) -> Iterator[str]:
        """Samples lo to lo + WAVE: sample 0's pieces as they come, the others whole once the wave is done."""
        cfg = self.cfg
        for i, spec in enumerate(self.rows(lo, lo + WAVE)):
            batcher.add(spec, tag=lo + i)
        later: dict = {}  # the wave's other samples wait for sample 0 (or for the wave) to finish
        while batcher.active:
            block = partial(batcher.step, BLOCK)
            pieces = self.watch.block(block, made) if self.watch else block()
            for row, piece in pieces:
                if row.finish_reason == "stop":
                    piece += cfg.stop
                self.chars += len(piece)
                if row.tag == 0:
                    yield piece
                else:
                    later.setdefault(row.tag, []).append(piece)
        for i in range(max(1, lo), min(lo + WAVE, cfg.num_samples)):
            yield cfg.separator + self.prime + "".join(later.get(i, ()))


def made(pieces) -> int:
    """The characters a Batcher step made (what its time is measured by)."""
    return sum(len(piece) for _, piece in pieces)


def generate(model, tokenizer, cfg: SampleConfig, device: torch.device, seed: int) -> Iterator[str]:
    """Yield the output in pieces (see Sampler)."""
    yield from Sampler(model, tokenizer, cfg, device, seed)
