"""Prefill: the model's recurrent state after a prompt, made in chunks of bounded time and memory.

A prompt is run through the model CHUNK tokens at a time, keeping only the state between chunks (not every
position's output and logits), so a prompt of any length costs a few MB. `prefill` is a generator that yields
after each chunk: the Batcher runs a slice of a long prompt between two decoding steps of the other rows, so no
stream stops while a long prompt loads (vLLM's chunked prefill, for a recurrent model).

A long prompt is not run whole when the model has forgotten its beginning. A recurrent state is a fading
memory: the state after the prompt's last W tokens barely depends on what came before them once W is long
enough. That is measured, not assumed: the last W tokens are run from a zero state, then the last 2W tokens; if
the two final states agree to within RTOL/ATOL (the rounding that separates two equally valid kernels), what
came before makes no difference and the state is taken. Otherwise W doubles, down to the whole prompt, which
is then run exactly as one pass. Prompts of up to 2 * WINDOW tokens are always run whole. The cost is at most
about twice the window the model needed (worst case: twice the prompt), and on the default model a 1 MB prompt
needs a few tens of thousands of tokens instead of a million (benchmarks/PROMPTS.md).
"""

from __future__ import annotations

from typing import Generator, Iterator, Tuple

import numpy as np
import torch

from charnn.models.lm import State

CHUNK = 256  # tokens per forward call: ~5 ms for the default model on an idle CPU core (a slice stays short under load)
WINDOW = 4096  # a long prompt's first window; up to twice this, a prompt is always run whole
RTOL, ATOL = 1e-5, 1e-5  # two final states this close are the same state (fp32 rounding, not a different text)


def forward_chunks(model, ids: np.ndarray, state: State, device: torch.device,
                   chunk: int = CHUNK) -> Iterator[Tuple[torch.Tensor, State]]:
    """(output logits (1, T, V), state after them) for each chunk of `ids`, the state carried across chunks."""
    for start in range(0, len(ids), chunk):
        x = torch.as_tensor(np.asarray(ids[start:start + chunk], dtype=np.int64), device=device)[None]
        out, state = model(x, state)
        yield out, state


def prefill(model, ids: np.ndarray, device: torch.device, chunk: int = CHUNK,
            window: int = WINDOW) -> Generator[None, None, State]:
    """The model's state after `ids` from a zero state (None for no ids), as the value of this generator; it
    yields once per chunk run (see the module's docstring for how a long prompt is shortened, and when not)."""
    n, prev = len(ids), None
    if not n:
        return None
    while True:
        start = 0 if n <= 2 * window else n - window
        state = None
        for _, state in forward_chunks(model, ids[start:], None, device, chunk):
            yield
        if start == 0 or (prev is not None and same_state(state, prev)):
            return state
        prev, window = state, 2 * window


def run(gen: Generator) -> object:
    """Drive a generator such as `prefill` to its end, at once, and return its value."""
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value


def same_state(a: State, b: State) -> bool:
    """Whether two recurrent states (an LSTM's (h, c), or h) agree to within RTOL/ATOL."""
    pairs = zip(a, b) if isinstance(a, tuple) else [(a, b)]
    return all(torch.allclose(x.float(), y.float(), rtol=RTOL, atol=ATOL) for x, y in pairs)

