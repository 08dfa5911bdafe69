"""The encoder-decoder: embedding -> (bidirectional) recurrent encoder -> recurrent decoder with global attention
over every input position -> linear head.

- The encoder reads packed inputs (charnn.models.encoder, shared with the classifier), so a padded row's reverse
  direction starts at its own last character, not at the padding, and its final states are each row's own.
- The decoder starts from the encoder's final states (both directions, every layer) through a learned bridge.
- Attention scores each encoder output a_s against the decoder's output h_t: Luong's "general" score
  h_t^T W a_s (the default), or the additive score of Bahdanau et al., v^T tanh(W h_t + U a_s)
  (`attention_score="additive"`; U a_s is computed once per input, in the memory), placed as Luong places
  it, on the current decoder output, as OpenNMT-py's "mlp" attention does. Padding scores -inf, and the
  attentional state tanh(W_c [c_t; h_t]) feeds the head. Without input feeding, training runs the decoder
  over the whole target in one call (the recurrence's fast path) and scores every step's attention in one
  batched matmul; decoding steps the very same layers one token at a time (`start`, `step`).
- `attention=False` is the single-vector encoder-decoder (the head reads the decoder state only);
  `bidirectional=False` reads the input left to right only. Both are ablations the benchmarks measure.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from charnn.models.configs import Seq2SeqConfig
from charnn.models import regularize
from charnn.models.cells import CELLS, decay_groups, forget_bias
from charnn.models.encoder import encode_packed, padding_mask
from charnn.models.lm import State
from charnn.models.state import RNN_STATE
from charnn.models.units import layer_units

Source = Tuple[torch.Tensor, torch.Tensor]  # (padded input ids (B, S), lengths (B,) int64 on the CPU)


class Memory:
    """What the decoder attends over: the encoder outputs (B, S, D), where they are padding (B, S), and their keys
    (B, S, H) (the additive score's U a_s, the general score's W^T a_s), computed once per input rather than once
    per decoded token. `group`: how many decoder rows in a row read each memory row (a beam search's K hypotheses
    of one input: rows i * K .. i * K + K - 1 read memory row i), so the memory is never copied K times."""

    def __init__(self, outputs: torch.Tensor, pad: torch.Tensor, keys: Optional[torch.Tensor] = None,
                 group: int = 1):
        self.outputs, self.pad, self.keys, self.group = outputs, pad, keys, group

    def select(self, rows: torch.Tensor) -> "Memory":
        """The memory of the given memory rows (a search drops the inputs it has finished), its group kept."""
        keys = None if self.keys is None else self.keys.index_select(0, rows)
        return Memory(self.outputs.index_select(0, rows), self.pad.index_select(0, rows), keys, self.group)

    def grouped(self, group: int) -> "Memory":
        """The same memory read by `group` consecutive decoder rows per row."""
        return Memory(self.outputs, self.pad, self.keys, group)


class Seq2Seq(nn.Module):
    state_ops = RNN_STATE  # the decoder's state, as the language model's (charnn.models.state)

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = c = config
        dirs = 2 if c.bidirectional else 1
        self.src_embed = nn.Embedding(c.source_vocab, c.embed)
        self.embed = nn.Embedding(c.vocab_size, c.embed)
        drop = c.dropout if c.layers > 1 else 0.0
        self.encoder = CELLS[c.cell](c.embed, c.hidden, c.layers, batch_first=True, dropout=drop,
                                      bidirectional=c.bidirectional)
        parts = 2 if c.cell == "lstm" else 1  # (h, c) or h
        self.bridge = nn.ModuleList(nn.Linear(dirs * c.hidden, c.hidden) for _ in range(parts))
        self.decoder = CELLS[c.cell](c.embed, c.hidden, c.layers, batch_first=True, dropout=drop)
        self.additive = c.attention and c.attention_score == "additive"
        if self.additive:  # v^T tanh(W h + U a): W (with the bias), U, v
            self.attn_query = nn.Linear(c.hidden, c.hidden)
            self.attn_key = nn.Linear(dirs * c.hidden, c.hidden, bias=False)
            self.attn_v = nn.Linear(c.hidden, 1, bias=False)
        elif c.attention:
            self.attn_in = nn.Linear(c.hidden, dirs * c.hidden, bias=False)  # W of the general score
        if c.attention:
            self.attn_out = nn.Linear(dirs * c.hidden + c.hidden, c.hidden, bias=False)  # W_c
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden, c.vocab_size)
        nn.init.normal_(self.embed.weight, std=1.0)
        nn.init.normal_(self.src_embed.weight, std=1.0)
        if c.cell == "lstm":  # forget-gate bias 1, as the language model
            forget_bias(self.encoder, c.hidden)
            forget_bias(self.decoder, c.hidden)
        # training-time regularisers, as the language model's; the encoder reads packed rows, so its layers keep
        # torch's own dropout between them (weight drop and the rest apply to both sides)
        self.regs = regularize.Regularisers.of(c)
        self.enc_run = regularize.Recurrence(self.encoder, 0.0, self.regs)
        self.dec_run = regularize.Recurrence(self.decoder, drop, self.regs)
        self.penalty = None

    # -- encoding -----------------------------------------------------------------------------------
    def encode(self, source: Source) -> Tuple[Memory, State]:
        """Read the inputs: the attention memory and the decoder's first state."""
        ids, lengths = source
        r, on = self.regs, self.training and self.regs.any
        e = self._drop(regularize.embed(self.src_embed, ids, r.embed_dropout, on), r.input_dropout or None)
        # the stack runs through its regularisers (weight drop) in training, as itself otherwise
        out, final = encode_packed(lambda packed: self.enc_run(packed, None, self.training), e, lengths)
        pad = padding_mask(lengths, ids.shape[1], ids.device)
        state = tuple(self._bridge(f, i) for i, f in enumerate(final if isinstance(final, tuple) else (final,)))
        out = self._drop(out)
        return Memory(out, pad, self._keys(out)), state if len(state) == 2 else state[0]

    def _keys(self, out: torch.Tensor) -> Optional[torch.Tensor]:
        """What each decoder output is scored against, computed once per input: the additive score's U a_s, or the
        general score's W^T a_s (h^T W a_s = h . (W^T a_s): one product per input position, not one per decoded
        token and beam; a training step costs the same either way, measured); None without attention."""
        if self.additive:
            return self.attn_key(out)
        return out @ self.attn_in.weight if self.config.attention else None

    def _bridge(self, final: torch.Tensor, i: int) -> torch.Tensor:
        """(layers * dirs, B, H) final states -> (layers, B, H): each layer's directions joined, then mapped."""
        c = self.config
        dirs = 2 if c.bidirectional else 1
        L, B, H = c.layers, final.shape[1], c.hidden
        joined = final.view(L, dirs, B, H).permute(0, 2, 1, 3).reshape(L, B, dirs * H)
        return torch.tanh(self.bridge[i](joined)).contiguous()

    # -- decoding -----------------------------------------------------------------------------------
    def decode(self, x: torch.Tensor, state: State, memory: Memory) -> Tuple[torch.Tensor, State]:
        """x: (B, T) target-side ids (the start id, then what came before) -> logits (B, T, V) and the state."""
        r, on = self.regs, self.training and self.regs.any
        e = self._drop(regularize.embed(self.embed, x, r.embed_dropout, on), r.input_dropout or None)
        h, state = self.dec_run(e, state, self.training)  # (B, T, H)
        if self.config.attention:
            rows, T = h.shape[:2]
            q = h.reshape(rows // memory.group, memory.group * T, h.shape[-1])  # (a memory row's queries together)
            context = torch.bmm(self._weights(q, memory), memory.outputs).view(rows, T, -1)  # (B, T, D)
            h = torch.tanh(self.attn_out(torch.cat([context, h], -1)))
        dropped = self._drop(h)
        if self.training:
            self.penalty = regularize.activation_penalty(self.regs, h, dropped)
        return self.head(dropped), state

    def _drop(self, x: torch.Tensor, p: Optional[float] = None) -> torch.Tensor:
        """--dropout (or `p`: --input-dropout on the embeddings, when given), with the regularisers' locked masks
        when they ask for them; without regularisers exactly the module's own dropout, as before them."""
        if not (self.training and self.regs.any):
            return self.drop(x)
        return regularize.dropout(x, self.config.dropout if p is None else p, True, self.regs.locked)

    def training_penalty(self) -> Optional[torch.Tensor]:
        """What the last training forward adds to the loss (AR/TAR of the decoder's outputs; None: nothing)."""
        penalty, self.penalty = self.penalty, None
        return penalty

    def _weights(self, h: torch.Tensor, memory: Memory) -> torch.Tensor:
        """Attention weights (B, T, S) of decoder outputs h (B, T, H) over the memory."""
        if self.additive:  # (B, T, 1, H) + (B, 1, S, H) -> (B, T, S)
            scores = self.attn_v(torch.tanh(self.attn_query(h)[:, :, None] + memory.keys[:, None])).squeeze(-1)
        else:  # the score h^T W a_s as h . (W^T a_s), the keys W^T a_s (B, S, H) computed once per input
            scores = torch.bmm(h, memory.keys.transpose(1, 2))  # (B, T, S)
        return scores.masked_fill(memory.pad[:, None, :], float("-inf")).softmax(-1)

    def attention(self, x: torch.Tensor, source: Source) -> torch.Tensor:
        """Teacher-forced attention weights (B, T, S) of decoder inputs x (B, T) over the inputs `source`
        (`charnn show --attention`); a model without attention has none to show."""
        memory, state = self.encode(source)
        h, _ = self.decoder(self.drop(self.embed(x)), state)
        return self._weights(h, memory)

    def unit_activations(self, x: torch.Tensor, state: Optional[State] = None) -> Tuple[torch.Tensor, list]:
        """The encoder's units over unpadded inputs x (B, S): each layer's and direction's h (and an LSTM's c)
        after each input character (B, S, U), and their names (`charnn show --cells`)."""
        return layer_units(self.encoder, self.src_embed(x), state)

    def forward(self, x: torch.Tensor, state: Optional[State] = None, source: Optional[Source] = None):
        """Teacher forcing: logits (B, T, V) for decoder inputs x given the inputs `source`. `state` is unused
        (every pair starts fresh) and None comes back, so the trainer drives this model as the language model."""
        memory, first = self.encode(source)
        logits, _ = self.decode(x, first, memory)
        return logits, None

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def optimizer_groups(self, weight_decay: float) -> list:
        """As the language model's: the target embedding is exempt from weight decay (the source one decays)."""
        return decay_groups(self, weight_decay, ("embed",))
