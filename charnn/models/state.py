"""The recurrent-state interface: what the trainer, the Batcher, dynamic evaluation and beam search may do with a
model's carried state, without knowing its tensor layout.

A model kind's state is whatever its forward takes and returns (None: the zero state). Code outside the model
only ever touches it through the model's `state_ops` (a `StateOps`): select or reorder rows (beam search, the
Batcher), repeat them (the label-contrast loss), take a slice of rows (a torchrun rank's share), stack states
(rows of several), detach (truncated BPTT), move to a device, and turn it into a list of tensors for a
checkpoint and back. The rows are the batch's streams.

`TensorState` serves every kind whose state is a tensor, or a tuple of tensors, with the batch on one axis
(charnn's LSTM/GRU/RNN and the seq2seq decoder: (layers, batch, hidden), batch axis 1). A new kind with another
layout brings its own StateOps.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

State = Union[None, torch.Tensor, Tuple[torch.Tensor, ...]]


class StateOps:
    """How one model kind's state is laid out. Every method takes and returns states; None (the zero state)
    stays None wherever the answer does not need rows."""

    def rows(self, state: State) -> int:
        raise NotImplementedError

    def select(self, state: State, index: torch.Tensor) -> State:
        """Rows `index` (a LongTensor) in that order: a subset, a reordering, or rows repeated."""
        raise NotImplementedError

    def narrow(self, state: State, start: int, length: int) -> State:
        raise NotImplementedError

    def repeat(self, state: State, copies: int) -> State:
        """All rows, `copies` times over (rows 0..B-1, then 0..B-1 again, ...)."""
        raise NotImplementedError

    def cat(self, states: Sequence[State]) -> State:
        """The rows of several states, stacked in order."""
        raise NotImplementedError

    def detach(self, state: State) -> State:
        raise NotImplementedError

    def to(self, state: State, device: torch.device) -> State:
        raise NotImplementedError

    def pack(self, state: State) -> Optional[List[torch.Tensor]]:
        """The state as a list of plain tensors (a checkpoint's form); None for None."""
        raise NotImplementedError

    def unpack(self, tensors: Optional[Sequence[torch.Tensor]]) -> State:
        raise NotImplementedError

    def map(self, state: State, fn: Callable[[torch.Tensor, int], torch.Tensor]) -> State:
        """`fn(tensor, batch_axis)` applied to each tensor of the state (for what the methods above do not cover,
        such as gathering every rank's rows)."""
        raise NotImplementedError


class TensorState(StateOps):
    """A tensor or a tuple of tensors, every one with the batch on axis `axis`."""

    def __init__(self, axis: int = 1):
        self.axis = axis

    def map(self, state: State, fn: Callable[[torch.Tensor, int], torch.Tensor]) -> State:
        if state is None:
            return None
        return tuple(fn(s, self.axis) for s in state) if isinstance(state, tuple) else fn(state, self.axis)

    def rows(self, state: State) -> int:
        if state is None:
            raise ValueError("the zero state (None) has no rows of its own")
        first = state[0] if isinstance(state, tuple) else state
        return first.shape[self.axis]

    def select(self, state: State, index: torch.Tensor) -> State:
        return self.map(state, lambda s, a: s.index_select(a, index.to(s.device)))

    def narrow(self, state: State, start: int, length: int) -> State:
        return self.map(state, lambda s, a: s.narrow(a, start, length))

    def repeat(self, state: State, copies: int) -> State:
        def rep(s: torch.Tensor, a: int) -> torch.Tensor:
            times = [1] * s.dim()
            times[a] = copies
            return s.repeat(*times)
        return self.map(state, rep)

    def cat(self, states: Sequence[State]) -> State:
        if any(s is None for s in states):
            raise ValueError("cannot stack the zero state (None): start every part from real rows")
        first = states[0]
        if isinstance(first, tuple):
            return tuple(torch.cat([s[i] for s in states], self.axis) for i in range(len(first)))
        return torch.cat(list(states), self.axis)

    def detach(self, state: State) -> State:
        return self.map(state, lambda s, a: s.detach())

    def to(self, state: State, device: torch.device) -> State:
        return self.map(state, lambda s, a: s.to(device))

    def pack(self, state: State) -> Optional[List[torch.Tensor]]:
        if state is None:
            return None
        return list(state) if isinstance(state, tuple) else [state]

    def unpack(self, tensors: Optional[Sequence[torch.Tensor]]) -> State:
        if tensors is None:
            return None
        return tuple(tensors) if len(tensors) > 1 else tensors[0]


RNN_STATE = TensorState(axis=1)  # (layers, batch, hidden): nn.LSTM's (h, c), nn.GRU's and nn.RNN's h
