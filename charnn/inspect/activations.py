"""Every recurrent unit's activation after each token of a text, through the model kind's `unit_activations`
hook (docs/MODEL_KINDS.md): the language model's layers (h, and an LSTM's c), or a sequence-to-sequence
model's encoder, line by line. A labelled model can be run under several labels, one after another, so that
units that track the label can be found too."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import torch

from charnn.errors import CharnnError
from charnn.generation.prompt import start_ids
from charnn.inspect.surprisal import token_texts


@dataclass
class Activations:
    tokens: List[str]  # each token's text, in order (several runs of a labelled model: one after another)
    values: np.ndarray  # (T, U) float32: every unit after reading each token
    names: List[str]  # the U units' names ("L1 c 17")
    runs: List[str] = field(default_factory=list)  # under which label each token was read (labelled runs only)

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def _hook(model):
    hook = getattr(model, "unit_activations", None)
    if hook is None:
        raise CharnnError(f"a {type(model).__name__} model does not show its units (its kind has no "
                          "unit_activations; docs/MODEL_KINDS.md)")
    return hook


def _names(model, names, units: int) -> List[str]:
    return list(names) if names is not None else [f"unit {j}" for j in range(units)]


def _call(hook, x: torch.Tensor, **extra):
    out = hook(x, None, **extra)
    acts, names = out if isinstance(out, tuple) else (out, None)
    return acts[0].float().cpu().numpy(), names


@torch.inference_mode()
def activations(model, tokenizer, text: str, device: torch.device, label: Optional[int] = None) -> Activations:
    """A language model's units over `text`, read after the start id as `charnn eval` reads it (so the state
    before the first token is the one after the start id); `label` a label id of a labelled model."""
    hook = _hook(model)
    model.eval()
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    if not len(ids):
        raise CharnnError("the text is empty")
    x = torch.as_tensor(np.concatenate([start_ids(tokenizer, ""), ids]), device=device)[None]
    extra = {} if label is None else {"labels": torch.full((1, 1), label, dtype=torch.long, device=device)}
    values, names = _call(hook, x, **extra)
    return Activations(token_texts(tokenizer, text, ids), values[1:], _names(model, names, values.shape[1]))


def label_activations(model, tokenizer, text: str, device: torch.device, labels: Sequence[str]) -> Activations:
    """A labelled model's units over `text` read once under each of `labels` (its label names, in id order
    from 1), the runs one after another; `runs` says which label each token was read under."""
    parts = [activations(model, tokenizer, text, device, i + 1) for i in range(len(labels))]
    return Activations([t for p in parts for t in p.tokens], np.concatenate([p.values for p in parts]),
                       parts[0].names, [name for name, p in zip(labels, parts) for _ in p.tokens])


@torch.inference_mode()
def encoder_activations(model, source_tokenizer, text: str, device: torch.device, end: bool = True) -> Activations:
    """A sequence-to-sequence model's encoder units over each line of `text` as an input (its characters, then
    the end of the input, shown as the newline), the lines one after another. `end=False`: a classifier's, which
    reads a text without an end mark (the newline then shows its last character's units again)."""
    hook = _hook(model)
    model.eval()
    end = start_ids(source_tokenizer, "") if end else np.zeros(0, dtype=np.int64)
    tokens, values, names = [], [], None
    for line in text.splitlines():
        own = np.asarray(source_tokenizer.encode(line), dtype=np.int64)
        ids = np.concatenate([own, end])
        if not len(ids):
            continue
        v, names = _call(hook, torch.as_tensor(ids, device=device)[None])
        shown = token_texts(source_tokenizer, line, own)  # (a subword classifier's pieces: it was one
        if len(v) == len(shown):  # per character, and the units did not line up)  no end mark: the newline
            v = np.concatenate([v, v[-1:]])  # repeats the last token's units
        tokens += shown + ["\n"]
        values.append(v)
    if not values:
        raise CharnnError("the text has no lines")
    return Activations(tokens, np.concatenate(values), _names(model, names, values[0].shape[1]))
