"""The many-to-one classifier: embedding -> bidirectional recurrent encoder (charnn.models.encoder, as the
sequence-to-sequence model's) -> one vector per text (a pooling of the encoder's states) -> a linear head over
the labels, trained with cross-entropy per text (charnn.tasks.classify).

Beside the pooled states, a bag of hashed n-grams of 1..`ngrams` tokens (fastText's, Joulin et al. 2016):
each n-gram's vector, averaged over the text. It learns which words a label uses within a few hundred steps,
long before the recurrent encoder does (benchmarks/LABELS.md); `ngrams=0` leaves the encoder alone.

Pooling (`pooling`): "attention" (a learned score per position, softmax over the text's own positions, the
weighted sum of its states; Yang et al. 2016), "mean" and "max" over its positions, or "final" (the two
directions' final states of the last layer). Padding never counts: rows are read packed and masked.

It does not continue text (registry: generates=False) and carries no state between batches: every text (or
window of a long text) is read from the zero state.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from charnn.config import MIN_CELLS
from charnn.models.configs import ClassifierConfig, MinRNNConfig
from charnn.models.cells import CELLS, decay_groups, forget_bias
from charnn.models.units import layer_units
from charnn.models.encoder import encode_packed, padding_mask
from charnn.models.state import TensorState

ATTENTION_WIDTH = 64  # hidden width of the attention pooling's scoring layer


class TextClassifier(nn.Module):
    state_ops = TensorState(axis=1)  # never carried: the trainer hands it None and gets None back

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = c = config
        width = 2 * c.hidden  # both directions
        self.embed = nn.Embedding(c.vocab_size, c.embed)
        self.minimal = c.cell in MIN_CELLS  # the parallel-scan cells: charnn.models.minrnn.MinEncoder
        if self.minimal:
            from charnn.models.minrnn import MinEncoder
            self.encoder = MinEncoder(MinRNNConfig(c.vocab_size, c.cell, c.layers, c.hidden, c.embed, c.dropout,
                                                   expand=1, ffn=0))
        else:
            self.encoder = CELLS[c.cell](c.embed, c.hidden, c.layers, batch_first=True, bidirectional=True,
                                          dropout=c.dropout if c.layers > 1 else 0.0)
        self.attn = (nn.Sequential(nn.Linear(width, ATTENTION_WIDTH), nn.Tanh(),
                                   nn.Linear(ATTENTION_WIDTH, 1, bias=False))
                     if c.pooling == "attention" else None)
        # the bag of hashed n-grams: a vector per bucket, averaged over the text's n-grams (padding: bucket 0)
        self.ngram_embed = (nn.EmbeddingBag(c.buckets, c.embed, mode="mean", padding_idx=0) if c.ngrams else None)
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(width + (c.embed if c.ngrams else 0), max(1, c.labels))
        nn.init.normal_(self.embed.weight, std=1.0)
        if self.ngram_embed is not None:
            nn.init.normal_(self.ngram_embed.weight, std=0.1)
            with torch.no_grad():
                self.ngram_embed.weight[0].zero_()
        if c.cell == "lstm":  # forget-gate bias 1, as the language model
            forget_bias(self.encoder, c.hidden)

    def forward(self, x: torch.Tensor, state=None, lengths: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, None]:
        """x: (B, S) ids, lengths: (B,) real tokens of each row (None: all S) -> logits (B, 1, labels) (one
        answer per row, shaped as a language model's one-step logits, so the trainer's cross-entropy takes it)
        and no state."""
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
        pooled = self.pool(x, lengths)
        if self.ngram_embed is not None:
            pooled = torch.cat([pooled, self.ngram_embed(ngram_ids(x, lengths, self.config.ngrams,
                                                                   self.config.buckets))], -1)
        return self.head(self.drop(pooled))[:, None, :], None

    def pool(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, S) ids -> (B, 2H): the text's one vector."""
        e = self.drop(self.embed(x))
        out, final = self.encoder(e, lengths) if self.minimal else encode_packed(self.encoder, e, lengths)  # (B, S, 2H)
        kind = self.config.pooling
        if kind == "final":  # the last layer's forward and backward final states
            h = final[0] if isinstance(final, tuple) else final  # (layers * 2, B, H)
            return torch.cat([h[-2], h[-1]], dim=-1)
        pad = padding_mask(lengths, x.shape[1], x.device)[:, :, None]  # (B, S, 1)
        if kind == "max":
            return out.masked_fill(pad, float("-inf")).amax(1)
        if kind == "mean":
            return out.sum(1) / lengths.to(out.device, out.dtype)[:, None]  # padding outputs are zeros
        scores = self.attn(out).masked_fill(pad, float("-inf"))  # (B, S, 1)
        return (scores.softmax(1) * out).sum(1)

    def unit_activations(self, x: torch.Tensor, state=None) -> Tuple[torch.Tensor, list]:
        """The encoder's units over unpadded texts x (B, S): each layer's and direction's h (and an LSTM's c) after
        each character (B, S, U), and their names (`charnn show --cells`)."""
        if self.minimal:
            return self.encoder.unit_activations(self.embed(x))
        return layer_units(self.encoder, self.embed(x), state)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def optimizer_groups(self, weight_decay: float) -> list:
        """As the language model's: the embeddings are exempt from weight decay."""
        return decay_groups(self, weight_decay, ("embed", "ngram_embed"))


HASH_MOD, HASH_MUL = 2_147_483_647, 1_000_003  # a Mersenne prime and a multiplier: products stay in int64


def ngram_ids(x: torch.Tensor, lengths: torch.Tensor, n_max: int, buckets: int) -> torch.Tensor:
    """(B, S) ids -> (B, M) bucket ids (1..buckets-1) of every n-gram of 1..n_max tokens inside each row's
    length, 0 where an n-gram would reach into the padding. The same n-gram hashes alike in every text."""
    real = lengths.to(x.device)[:, None]
    h = torch.zeros_like(x)
    out = []
    for n in range(1, min(n_max, x.shape[1]) + 1):  # h holds the hash of the n-gram starting at each position
        h = (h[:, :x.shape[1] - n + 1] * HASH_MUL + x[:, n - 1:] + 1) % HASH_MOD
        ok = torch.arange(x.shape[1] - n + 1, device=x.device)[None, :] + n <= real
        out.append(torch.where(ok, (h * 31 + n) % HASH_MOD % (buckets - 1) + 1, 0))
    return torch.cat(out, 1)


@torch.no_grad()
def graft_from(model: TextClassifier, lm_state: dict, lm_config: dict) -> list:
    """--init-from a language model: its embedding rows into the classifier's (a character the new text adds
    keeps its fresh row), and its first recurrent layer into the encoder's forward direction where the cell and
    the width match (deeper layers read both directions here, so their shapes differ). What was copied."""
    state = model.state_dict()
    old = lm_state["embed.weight"]
    state["embed.weight"][: old.shape[0]] = old
    copied = ["embedding"]
    c = model.config
    if model.minimal:  # a minrnn language model's input layer and blocks into the forward stack, where they fit
        own = {"inp." + k[4:]: k for k in lm_state if k.startswith("inp.")}
        own.update({"fwd." + k[7:]: k for k in lm_state if k.startswith("blocks.")})
        fits = {k: v for k, v in own.items() if f"encoder.{k}" in state
                and state[f"encoder.{k}"].shape == lm_state[v].shape}
        if lm_config.get("cell") == c.cell and fits:
            for k, v in fits.items():
                state[f"encoder.{k}"] = lm_state[v].clone()
            copied.append("the forward direction's input layer and blocks")
    elif lm_config.get("cell", "lstm") == c.cell and lm_config.get("hidden") == c.hidden:
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            state[f"encoder.{name}"] = lm_state[f"rnn.{name}"].clone()
        copied.append("encoder layer 1, forward direction")
    model.load_state_dict(state)
    return copied
