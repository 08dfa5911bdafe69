"""How tokens are drawn: SamplingParams, the one set of sampling rules of `charnn sample`, `charnn transduce`, the
Python API and the server, and the configs of sample and transduce built on it. Validation names the flag (or
the API's parameter) at fault."""

from __future__ import annotations

import json
import random
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Tuple

from charnn.config import DEVICES, SEED_LIMIT, UNKNOWN, raise_problems, threads_problems
from charnn.errors import ParamError

MIN_TEMPERATURE = 1e-30  # below it logits (|x| < 1e8) / temperature could overflow float32 and tie: greedy
MAX_TEMPERATURE = 100.0  # beyond it every token is about as likely as any other: noise, not text
SAMPLING_FLAGS = {"temperature": "--temp", "top_k": "--top-k", "top_p": "--top-p", "seed": "--seed"}  # CLI names


@dataclass
class SamplingParams:
    """How each token is drawn: the one set of rules of `charnn sample`, `charnn transduce --temp`, the Python API
    and the server (their configs are built from it). Decoding is temperature, top-k, top-p, then a seeded
    Gumbel-max draw (charnn.generation.draw)."""

    temperature: float = 1.0  # softmax temperature; 0 is greedy (always the most likely token)
    top_k: Optional[int] = None  # draw only from the k most likely tokens
    top_p: Optional[float] = None  # draw only from the most likely tokens whose probabilities reach p (0 < p <= 1)
    seed: Optional[int] = None  # seed of the draws' noise (None: a fresh one, see `seeded`)

    @property
    def greedy(self) -> bool:
        """Always the most likely token: temperature 0, or one so small that logits / temperature would
        overflow float32, where infinities tie and the first of them, not the most likely, would be drawn."""
        return self.temperature < MIN_TEMPERATURE

    def seeded(self) -> "SamplingParams":
        """These settings with a seed: the given one, else a fresh one (what the caller reports)."""
        if self.seed is not None:
            return self
        return replace(self, seed=random.SystemRandom().randrange(2**31))

    def problems(self, names: Optional[Dict[str, str]] = None) -> List[Tuple[str, str]]:
        """(field, message) for each setting out of range or of the wrong type (a bool is not a number here,
        though Python's bool is an int: JSON's `true` must not pass as 1); `names` maps a field to what the
        caller calls it (`SAMPLING_FLAGS` for the command line; the field's own name otherwise)."""
        t, k, p, seed = self.temperature, self.top_k, self.top_p, self.seed
        checks = [
            ("temperature", is_number(t) and 0 <= t <= MAX_TEMPERATURE,
             f"must be a number >= 0 (0: greedy) and <= {MAX_TEMPERATURE:g}, got {shown(t)}"),
            ("top_k", k is None or (is_integer(k) and k >= 1), f"must be an integer >= 1, got {shown(k)}"),
            ("top_p", p is None or (is_number(p) and 0 < p <= 1), f"must be a number in (0, 1], got {shown(p)}"),
            ("seed", seed is None or (is_integer(seed) and 0 <= seed < SEED_LIMIT),
             f"must be an integer in [0, 2**63), got {shown(seed)}"),
        ]
        return [(name, f"`{(names or {}).get(name, name)}` {why}") for name, ok, why in checks if not ok]

    def validate(self, names: Optional[Dict[str, str]] = None) -> "SamplingParams":
        """Raise ParamError naming the first setting at fault (see `problems`)."""
        for name, message in self.problems(names)[:1]:
            raise ParamError(message, name)
        return self


_SPELLING: ContextVar[str] = ContextVar("charnn_spelling", default="json")


@contextmanager
def python_spelling():
    """Values in errors raised inside in Python's spelling (True, None, '64'): the Python API's callers."""
    token = _SPELLING.set("python")
    try:
        yield
    finally:
        _SPELLING.reset(token)


def python_shown(x, most: int = 40) -> str:
    """`shown` in Python's spelling (the API's own checks)."""
    with python_spelling():
        return shown(x, most)


def shown(x, most: int = 40) -> str:
    """x in JSON's spelling where it has one (the server's clients sent `true`, `null`, `"64"`; Python's True,
    None, '64' read as another language), else repr(x), or in Python's inside `python_spelling` (the API's
    callers passed True, not `true`); cut to `most` characters (a 4,000-digit integer is an answer, not a
    message; past 4,300 digits repr itself refuses)."""
    try:
        if _SPELLING.get() == "python":
            raise TypeError
        text = json.dumps(x, ensure_ascii=False)
    except (TypeError, ValueError):
        try:
            text = repr(x)
        except ValueError:
            return f"an integer of {x.bit_length()} bits"
    return text if len(text) <= most else text[:most] + "..."


def is_integer(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x) -> bool:
    """A finite int or float, not a bool (NaN and the infinities fail every range check anyway)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x


@dataclass
class SampleConfig:
    length: int = 500  # characters to generate after the prime (per sample)
    temperature: float = 1.0  # softmax temperature (0: greedy)
    top_k: Optional[int] = None  # keep only the k most likely tokens
    top_p: Optional[float] = None  # keep the smallest set of tokens whose probability reaches p (0 < p <= 1)
    greedy: bool = False  # always take the most likely token: `--greedy`, the same as temperature 0
    prime: str = ""  # text the output starts with; the model is conditioned on it
    unknown: str = "error"  # prime characters outside the vocabulary: error, or skip (drop them)
    num_samples: int = 1  # samples generated together as one batch
    separator: str = "\n\n"  # printed between samples
    stop: Optional[str] = None  # a sample ends right after the first occurrence of this in its generated text
    seed: Optional[int] = None  # random seed (None: a fresh one, reported on stderr)
    device: str = "auto"  # auto, cpu, cuda or mps
    int8: bool = False  # int8 recurrent weights (CPU, charnn/models/int8.py): faster on big models, a close approximation
    heal: bool = True  # subword models: take a prime's last piece back and complete it in the first draw
    threads: Optional[int] = None  # CPU threads (None: measured, charnn.threadwatch)

    @property
    def sampling(self) -> SamplingParams:
        """How tokens are drawn (`--greedy` is temperature 0)."""
        return SamplingParams(0.0 if self.greedy else self.temperature, self.top_k, self.top_p, self.seed)

    def validate(self) -> "SampleConfig":
        problems = []
        if self.length < 0:
            problems.append(f"`--length` must be >= 0, got {self.length}")
        given = SamplingParams(self.temperature, self.top_k, self.top_p, self.seed)  # (checked with --greedy too)
        problems += [message for _, message in given.problems(SAMPLING_FLAGS)]
        if self.greedy and (self.temperature not in (0.0, 1.0) or self.top_k not in (None, 1)
                            or self.top_p is not None):
            problems.append("`--greedy` takes the most likely token; `--temp`, `--top-k` and `--top-p` sample from "
                            "the others too: give one or the other")  # (they were ignored)
        if self.unknown not in UNKNOWN:
            problems.append(f"`--unknown` must be one of {', '.join(UNKNOWN)}, not {self.unknown!r}")
        if self.num_samples < 1:
            problems.append(f"`--num-samples` must be at least 1, got {self.num_samples}")
        if self.stop is not None and self.stop == "":
            problems.append("`--stop` must not be empty")
        if self.device not in DEVICES:
            problems.append(f"`--device` must be one of {', '.join(DEVICES)}, not {self.device!r}")
        problems += threads_problems(self.threads)
        raise_problems(problems)
        return self


DECODE_BATCH = 256  # transduce's default: beam 5 at 256 is 11.8x batch 1 on a 2-core Zen 4 EPYC, at 64 9.1x
# (12.2x and 11.3x on a 2-core Xeon), greedy 24x and 17x; the same outputs (benchmarks/SEQ2SEQ.md)
MAX_LENGTH_PENALTY = 10.0  # GNMT's alpha is 0.6-1.0; beyond this only overflow
MAX_OUTPUT = 1_000_000  # --max-length at most (2**63 overflowed a C long)
MAX_BEAM = 1000  # --beam and --n-best at most (a beam of 100,000 ran a 24 GiB machine out of memory)
DECODE_PRECISIONS = ("auto", "fp32", "bf16")  # a decode's (fp16: GPUs' training only)
DECODE_ROWS = 4096  # hypotheses decoded together at most: --batch-size shrinks for wide beams (256 inputs x 16)


@dataclass
class TransduceConfig:
    beam: int = 1  # hypotheses kept per input (1: greedy)
    n_best: int = 1  # outputs printed per input (at most --beam; with sampling, samples drawn per input)
    length_penalty: float = 0.0  # beam scores divided by ((5 + length) / 6) ** this (GNMT's; 0: plain log-probability)
    temperature: Optional[float] = None  # set (or top_k / top_p): sample outputs instead of searching (0: search)
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None  # sampling's seed (None: 0, so the same input gives the same samples)
    max_length: Optional[int] = None  # output characters per line at most (None: from the input's length)
    batch_size: int = DECODE_BATCH  # inputs decoded together (length-sorted; the order of the output is the input's)
    unknown: str = "error"  # input characters outside the vocabulary: error, or skip (drop them)
    device: str = "auto"
    precision: str = "auto"  # fp32, bf16 (autocast), or auto: bf16 where measured faster (charnn.generation.precision)

    @property
    def sampling(self) -> Optional[SamplingParams]:
        """How outputs are sampled; None: they are searched for (beam search; greedy with one beam)."""
        if self.temperature is None and self.top_k is None and self.top_p is None:
            return None
        return SamplingParams(1.0 if self.temperature is None else self.temperature, self.top_k, self.top_p,
                              0 if self.seed is None else self.seed)

    def validate(self) -> "TransduceConfig":
        temperature = 1.0 if self.temperature is None else self.temperature
        given = SamplingParams(temperature, self.top_k, self.top_p, self.seed)  # (a search's seed is checked too)
        problems = [message for _, message in given.problems(SAMPLING_FLAGS)]  # as given, before --temp 0 clears
        if self.seed is not None and self.temperature is None and self.top_k is None and self.top_p is None:
            problems.append("`--seed` seeds sampled outputs (--temp/--top-k/--top-p); greedy decoding and --beam "
                            "draw nothing at random")  # (it was ignored)
        if not problems and self.sampling is not None and given.greedy:  # --temp 0: greedy, as in sample and the
            self.temperature, self.top_k, self.top_p = None, None, None  # API; here: a search, not a sample
        for flag, value in (("--beam", self.beam), ("--n-best", self.n_best), ("--batch-size", self.batch_size)):
            if not is_integer(value):  # (the API's 2.5, "3", True: torch's TypeErrors, or taken as 1)
                problems.append(f"`{flag}` must be a whole number, got {shown(value)}")
            elif value < 1:
                problems.append(f"`{flag}` must be at least 1, got {value}")
            elif value > MAX_BEAM and flag != "--batch-size":
                problems.append(f"`{flag}` must be at most {MAX_BEAM:,}, got {value:,}")
        raise_problems(problems)  # (the checks below compare them as numbers)
        if self.sampling is not None and self.beam > 1:
            problems.append("`--beam` searches for the most likely outputs; `--temp/--top-k/--top-p` sample varied "
                            "ones. Choose one")
        elif self.sampling is None and self.n_best > self.beam >= 1:
            sample = "" if given.greedy else " (or sample N outputs with --temp)"  # (--temp 0 is greedy: not that)
            problems.append(f"`--n-best {self.n_best}` needs at least that many beams; add `--beam {self.n_best}`"
                            f"{sample}")
        if not (is_number(self.length_penalty) and 0.0 <= self.length_penalty <= MAX_LENGTH_PENALTY):
            problems.append(f"`--length-penalty` must be a number from 0 to {MAX_LENGTH_PENALTY:g}, got "
                            f"{shown(self.length_penalty)}")  # (600 overflowed ((5 + length) / 6) ** A)
        elif self.length_penalty and self.beam == 1:  # (greedy and sampled outputs ignored it)
            problems.append("`--length-penalty` ranks the hypotheses of a beam search; " +
                            ("sampling (--temp/--top-k/--top-p) does not use it" if self.sampling is not None else
                             "add `--beam K` (K > 1)"))
        if self.max_length is not None and not (is_integer(self.max_length) and 1 <= self.max_length <= MAX_OUTPUT):
            problems.append(f"`--max-length` must be a whole number from 1 to {MAX_OUTPUT:,}, got "
                            f"{shown(self.max_length)}")
        if self.unknown not in UNKNOWN:
            problems.append(f"`--unknown` must be one of {', '.join(UNKNOWN)}, not {self.unknown!r}")
        if self.device not in DEVICES:
            problems.append(f"`--device` must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.precision not in DECODE_PRECISIONS:
            problems.append(f"`--precision` must be one of {', '.join(DECODE_PRECISIONS)}, not {shown(self.precision)}")
        raise_problems(problems)
        return self
