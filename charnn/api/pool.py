"""The batchers a Model keeps between its generate and stream calls: a few per row count, each with the model's
weights laid out for stepping (~6 ms to make for the default model), dropped once the weights change."""

from __future__ import annotations

import threading
from typing import Dict, List, Optional

import torch

from charnn.api.params import ParamError
from charnn.data.files import size_text
from charnn.device import available_memory
from charnn.errors import is_out_of_memory
from charnn.generation.batcher import Batcher

IDLE_PER_SIZE, IDLE_MOST = 2, 8  # batchers kept between calls: per row count, and in all
ROW_OBJECTS = 4096  # bytes of Python objects a row holds while it generates (measured: 2.4 kB for one character
# of a tiny model, 5.4 kB for 100, 2-core Zen 4 EPYC), beside its tensors (row_bytes)


def row_bytes(model) -> int:
    """Memory one generating row takes, about: its Python objects, and where the model is on the CPU, its noise,
    logits and state (a few copies each)."""
    if model.device.type != "cpu":  # (the GPU's tensors: a failed allocation there is an error, not a kill)
        return ROW_OBJECTS
    c = model.net.config
    floats = 4 * c.vocab_size + 8 * getattr(c, "layers", 1) * getattr(c, "hidden", 0)
    return ROW_OBJECTS + 4 * floats


class BatcherPool:
    """Each call takes a batcher of its own (calls from several threads share no state) and puts it back after."""

    def __init__(self):
        self.idle: Dict[int, List[Batcher]] = {}  # by row count
        self.weights: tuple = ()  # the weights the kept batchers were laid out from (storage and version)
        self.lock = threading.Lock()

    def __getstate__(self) -> dict:  # (a pickled or copied Model makes its batchers anew: they hold native buffers)
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def take(self, model, n: int) -> Batcher:
        """An idle batcher of n rows for `model` (a charnn.api.Model), or a new one. Kept ones hold a copy of the
        weights laid out for stepping: once the weights change (`net.load_state_dict`, a fine-tuning step in
        place), they are dropped, as `score` reads the weights as they are."""
        weights = tuple((t.data_ptr(), _version(t)) for t in model.net.state_dict().values())
        with self.lock:
            if weights != self.weights:
                self.idle.clear()
                self.weights = weights
            idle = self.idle.get(n)
            if idle:
                return idle.pop()
        need, free = n * row_bytes(model), available_memory()
        if free is not None and need > free:  # (a failed allocation is caught below, but Linux grants the memory
            raise ParamError(f"`n`={n:,} rows do not fit in memory: they need about {size_text(need)} and "  # and
                             f"{size_text(free)} is free; ask for fewer", "n")  # kills the process at n=10**7)
        try:
            return Batcher(model.net, model.tokenizer, model.device, capacity=n, int8=model.int8, rows=n)
        except (RuntimeError, MemoryError) as e:  # (torch says a failed allocation in a RuntimeError)
            if not is_out_of_memory(e):
                raise
            raise ParamError(f"`n`={n:,} rows do not fit in memory at once; ask for fewer", "n") from None

    def keep(self, n: int, batcher: Batcher) -> None:
        """An idle batcher of n rows back (a few kept: each holds its rows' buffers, and n takes any value)."""
        with self.lock:
            pool = self.idle.setdefault(n, [])
            if len(pool) < IDLE_PER_SIZE and sum(map(len, self.idle.values())) < IDLE_MOST:
                pool.append(batcher)


def _version(t: torch.Tensor) -> Optional[int]:
    """A tensor's in-place change counter (None for one made under torch.inference_mode, which keeps none)."""
    try:
        return t._version
    except RuntimeError:
        return None
