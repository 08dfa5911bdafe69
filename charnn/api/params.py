"""What a generation request may ask for, checked once for the Python API and the server alike."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

from charnn.config import SEED_LIMIT
from charnn.errors import ConfigError
from charnn.generation.batcher import MAX_STOPS, RowSpec


class ParamError(ConfigError):
    """A request parameter out of range; `param` names it (the server's error JSON carries it)."""

    def __init__(self, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.param = param


@dataclass
class GenerationParams:
    prompt: str = ""  # text to continue (not part of the result)
    length: int = 500  # characters to generate per continuation
    temperature: float = 1.0  # softmax temperature; 0 is greedy
    top_k: Optional[int] = None  # draw only from the k most likely tokens
    top_p: Optional[float] = None  # draw only from the most likely tokens whose probabilities reach p
    n: int = 1  # continuations of the same prompt
    stop: Union[None, str, Sequence[str]] = None  # end before the first occurrence of (any of) these
    seed: Optional[int] = None  # continuation i uses seed + i; None: a fresh seed

    def validate(self, max_length: Optional[int] = None, max_n: Optional[int] = None) -> "GenerationParams":
        """Raise ParamError naming the first parameter out of range."""
        checks = [
            ("length", isinstance(self.length, int) and self.length >= 0, f"must be an integer >= 0, got {self.length!r}"),
            ("temperature", _number(self.temperature) and 0 <= self.temperature <= 100,
             f"must be a number in [0, 100], got {self.temperature!r}"),
            ("top_k", self.top_k is None or (isinstance(self.top_k, int) and self.top_k >= 1),
             f"must be an integer >= 1, got {self.top_k!r}"),
            ("top_p", self.top_p is None or (_number(self.top_p) and 0 < self.top_p <= 1),
             f"must be in (0, 1], got {self.top_p!r}"),
            ("n", isinstance(self.n, int) and self.n >= 1, f"must be an integer >= 1, got {self.n!r}"),
            ("seed", self.seed is None or (isinstance(self.seed, int) and 0 <= self.seed < SEED_LIMIT),
             f"must be an integer in [0, 2**63), got {self.seed!r}"),
            ("prompt", isinstance(self.prompt, str), "must be a string"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ParamError(f"`{name}` {why}", name)
        stops = self.stops()
        if len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
            raise ParamError(f"`stop` must be a non-empty string or a list of at most {MAX_STOPS} of them", "stop")
        if max_length is not None and self.length > max_length:
            raise ParamError(f"`length` may be at most {max_length}, got {self.length}", "max_tokens")
        if max_n is not None and self.n > max_n:
            raise ParamError(f"`n` may be at most {max_n}, got {self.n}", "n")
        return self

    def stops(self) -> Tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def rows(self) -> List[RowSpec]:
        """One RowSpec per continuation; without a seed, a fresh one (continuation i: seed + i)."""
        seed = self.seed if self.seed is not None else random.SystemRandom().randrange(2**31)
        return [RowSpec(self.prompt, self.length, float(self.temperature), self.top_k, self.top_p, self.stops(),
                        (seed + i) % SEED_LIMIT) for i in range(self.n)]


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x
