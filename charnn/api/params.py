"""What a generation request may ask for, checked once for the Python API and the server alike."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

from charnn.config import SEED_LIMIT
from charnn.errors import ConfigError
from charnn.generation.batcher import MAX_STOPS, RowSpec
from charnn.generation.draw import safe_temperature


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
        """Raise ParamError naming the first parameter out of range or of the wrong type (a bool is not a
        number here, though Python's bool is an int: JSON's `true` must not pass as 1)."""
        checks = [
            ("length", _integer(self.length) and self.length >= 0,
             f"must be an integer >= 0, got {_shown(self.length)}"),
            ("temperature", _number(self.temperature) and 0 <= self.temperature <= 100,
             f"must be a number in [0, 100], got {_shown(self.temperature)}"),
            ("top_k", self.top_k is None or (_integer(self.top_k) and self.top_k >= 1),
             f"must be an integer >= 1, got {_shown(self.top_k)}"),
            ("top_p", self.top_p is None or (_number(self.top_p) and 0 < self.top_p <= 1),
             f"must be a number in (0, 1], got {_shown(self.top_p)}"),
            ("n", _integer(self.n) and self.n >= 1, f"must be an integer >= 1, got {_shown(self.n)}"),
            ("seed", self.seed is None or (_integer(self.seed) and 0 <= self.seed < SEED_LIMIT),
             f"must be an integer in [0, 2**63), got {_shown(self.seed)}"),
            ("prompt", isinstance(self.prompt, str), "must be a string"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ParamError(f"`{name}` {why}", name)
        stop = self.stop
        stops = (stop,) if isinstance(stop, str) else tuple(stop) if isinstance(stop, (list, tuple)) else None
        if stop is not None and (stops is None or len(stops) > MAX_STOPS
                                 or not all(isinstance(s, str) and s for s in stops)):
            raise ParamError(f"`stop` must be a non-empty string or a list of at most {MAX_STOPS} of them", "stop")
        if max_length is not None and self.length > max_length:
            raise ParamError(f"`length` may be at most {max_length}, got {_shown(self.length)}", "max_tokens")
        if max_n is not None and self.n > max_n:
            raise ParamError(f"`n` may be at most {max_n}, got {_shown(self.n)}", "n")
        return self

    def stops(self) -> Tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def rows(self) -> List[RowSpec]:
        """One RowSpec per continuation; without a seed, a fresh one (continuation i: seed + i)."""
        seed = self.seed if self.seed is not None else random.SystemRandom().randrange(2**31)
        return [RowSpec(self.prompt, self.length, safe_temperature(float(self.temperature)), self.top_k,
                        None if self.top_p is None else float(self.top_p), self.stops(),
                        (seed + i) % SEED_LIMIT) for i in range(self.n)]


def _shown(x, most: int = 40) -> str:
    """repr(x) cut to `most` characters (a 4,000-digit integer is an answer, not a message; past 4,300 digits
    repr itself refuses)."""
    try:
        text = repr(x)
    except ValueError:
        return f"an integer of {x.bit_length()} bits"
    return text if len(text) <= most else text[:most] + "..."


def _integer(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number(x) -> bool:
    """A finite int or float, not a bool (NaN and the infinities fail every range check anyway)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x
