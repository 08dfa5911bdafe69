"""What a generation request may ask for, checked once for the Python API and the server alike: its sampling
settings by `charnn.sampling.SamplingParams`' rules (those of `charnn sample` and `charnn transduce` too), the rest
(prompt, length, n, stop) here."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from charnn.config import SEED_LIMIT
from charnn.sampling import SamplingParams, is_integer, python_shown, python_spelling, shown
from charnn.errors import CharnnError, ConfigError, ParamError
from charnn.generation.batcher import MAX_STOPS, RowSpec


@dataclass
class GenerationParams:
    prompt: str = ""  # text to continue (not part of the result)
    length: int = 500  # characters to generate per continuation
    temperature: float = 1.0  # softmax temperature; 0 is greedy
    top_k: Optional[int] = None  # draw only from the k most likely tokens
    top_p: Optional[float] = None  # draw only from the most likely tokens whose probabilities reach p
    n: int = 1  # continuations of the same prompt
    stop: Union[None, str, Sequence[str]] = None  # end before the first of these to be completed
    seed: Optional[int] = None  # continuation i uses seed + i; None: a fresh seed

    @property
    def sampling(self) -> SamplingParams:
        """How tokens are drawn (numbers as floats: JSON's 1 is a temperature of 1.0)."""
        return SamplingParams(float(self.temperature), self.top_k, None if self.top_p is None else float(self.top_p),
                              self.seed)

    def validate(self, max_length: Optional[int] = None, max_n: Optional[int] = None) -> "GenerationParams":
        """Raise ParamError naming the first parameter out of range or of the wrong type (a bool is not a
        number here, though Python's bool is an int: JSON's `true` must not pass as 1)."""
        sampling = SamplingParams(self.temperature, self.top_k, self.top_p, self.seed).problems()
        checks = [("length", is_integer(self.length) and self.length >= 0,
                   f"`length` must be an integer >= 0, got {shown(self.length)}")]
        checks += [(name, False, message) for name, message in sampling]
        checks += [("n", is_integer(self.n) and self.n >= 1, f"`n` must be an integer >= 1, got {shown(self.n)}"),
                   ("prompt", isinstance(self.prompt, str), "`prompt` must be a string")]
        for name, ok, message in checks:
            if not ok:
                raise ParamError(message, name)
        stop = self.stop
        stops = (stop,) if isinstance(stop, str) else tuple(stop) if isinstance(stop, (list, tuple)) else None
        if stop is not None and (stops is None or len(stops) > MAX_STOPS
                                 or not all(isinstance(s, str) and s for s in stops)):
            raise ParamError(f"`stop` must be a non-empty string or a list of at most {MAX_STOPS} of them", "stop")
        if max_length is not None and self.length > max_length:
            raise ParamError(f"`length` may be at most {max_length}, got {shown(self.length)}", "max_tokens")
        if max_n is not None and self.n > max_n:
            raise ParamError(f"`n` may be at most {max_n}, got {shown(self.n)}", "n")
        return self

    def stops(self) -> Tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def rows(self) -> List[RowSpec]:
        """One RowSpec per continuation; without a seed, a fresh one (continuation i: seed + i)."""
        sampling = self.sampling.seeded()
        return [RowSpec(self.prompt, self.length, replace(sampling, seed=(sampling.seed + i) % SEED_LIMIT),
                        self.stops()) for i in range(self.n)]


def check_flag(name: str, value) -> None:
    """A keyword that is True or False (NumPy's bool too): "no" and "False" are true, and did the opposite."""
    if not isinstance(value, (bool, np.bool_)):
        raise ParamError(f"`{name}` must be True or False, got {python_shown(value)}", name)


def plain_number(x):
    """A NumPy integer or float scalar as Python's int or float; anything else as it is (the checks judge it)."""
    if isinstance(x, np.integer):
        return int(x)
    return float(x) if isinstance(x, np.floating) else x


def plain_value(x):
    """A Python user's spelling of a flag's value as the flag's: NumPy scalars (plain_number), a Path as its
    string, a torch.device as its name ("cuda:0" as "cuda": charnn takes one device per process)."""
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    if type(x).__name__ == "device" and type(x).__module__ == "torch":  # (no torch import for the check)
        if x.type != "cpu" and x.index not in (None, 0):
            raise ParamError(f"charnn runs on one device per process; for {x} start it with "
                             f"CUDA_VISIBLE_DEVICES={x.index} and device=\"{x.type}\"", "device")
        return x.type
    return plain_number(x)


_FLAG = re.compile(r"(?<![\w.-])--([a-z][a-z0-9-]*)")  # (not inside a word: 'my--runs')
# a run's or a file's error: a flag neither inside a word nor a path ('/tmp/--x')
_FLAG_OUTSIDE_PATHS = re.compile(r"(?<![\w/\\.'\"-])--([a-z][a-z0-9-]*)")
_WORD = re.compile(r"`([a-z][a-z0-9_]*)`")  # a message that names the keyword itself
_FLAG_VALUE = re.compile(r"`--([a-z][a-z0-9-]*) ([^`]+)`")  # `--n-best 3` -> `n_best=3`
API_NAMES = {"temp": "temperature"}  # flags whose keyword is not their name with underscores


@contextmanager
def keyword_names(names: Optional[Dict[str, str]] = None):
    """The errors of a call in the Python API's spelling: the checks and messages shared with the command line name
    its flags (`--n-best`, `--temp`, `--dynamic-lr`); a ConfigError raised inside becomes a ParamError that names
    the keywords (`n_best`, `temperature`, `names`' own: {"dynamic-lr": "lr"}) and carries the first as `param`; a
    plain CharnnError keeps its class, in the keywords' words."""
    table = {**API_NAMES, **(names or {})}
    keyword = lambda flag: table.get(flag, flag.replace("-", "_"))  # noqa: E731
    try:
        with python_spelling():  # (values as the caller wrote them: True, not true)
            yield
    except ParamError:
        raise
    except CharnnError as e:
        flag = _FLAG if isinstance(e, ConfigError) else _FLAG_OUTSIDE_PATHS  # (a setting's check names only flags)
        first = flag.search(str(e)) or _WORD.search(str(e))
        message = _FLAG_VALUE.sub(lambda m: f"`{keyword(m.group(1))}={m.group(2)}`", str(e))
        message = flag.sub(lambda m: keyword(m.group(1)), message)
        if isinstance(e, ConfigError):
            raise ParamError(message, keyword(first.group(1)) if first else None) from None
        if type(e) is CharnnError and message != str(e):  # (a run's or a file's error: its words, the keywords')
            raise CharnnError(message) from None
        raise


__all__ = ["GenerationParams", "ParamError", "check_flag", "keyword_names", "plain_number"]
