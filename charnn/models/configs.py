"""One config per model kind: charnn.models.registry turns the flat ModelConfig (charnn.config), or a checkpoint's
saved model_config dict, into the right one; each holds only what its model reads, and validates it."""

from __future__ import annotations

from dataclasses import dataclass

from charnn.config import (CELLS, MAX_LABELS, MIN_CELLS, POOLINGS, attention_problems, dropout_problems,
                           raise_problems, regulariser_problems, stack_problems)


@dataclass
class RecurrentConfig:
    """What every recurrent kind's config holds: the stack and its training-time regularisers."""

    vocab_size: int  # tokens the embedding and head cover (set by the tokenizer; seq2seq: the output's)
    cell: str = "lstm"  # recurrent cell: lstm, gru or rnn (tanh)
    layers: int = 2  # stacked recurrent layers (seq2seq: in each of the encoder and the decoder)
    hidden: int = 256  # hidden units per layer
    embed: int = 64  # embedding width
    dropout: float = 0.1  # dropout between layers and before the head
    # training-time regularisers (charnn.models.regularize; checkpoints from before them read as all off)
    weight_drop: float = 0.0  # DropConnect on the hidden-to-hidden weights, one mask per step
    locked_dropout: bool = False  # dropout masks fixed across time (one per sequence)
    input_dropout: float = 0.0  # dropout on the embeddings the first layer reads
    embed_dropout: float = 0.0  # whole characters dropped: embedding rows zeroed per step
    ar: float = 0.0  # activation regularisation weight
    tar: float = 0.0  # temporal activation regularisation weight

    def validate(self):
        raise_problems(self.problems())
        return self

    def problems(self) -> list:
        return stack_problems(self) + dropout_problems(self) + regulariser_problems(self)


@dataclass
class LMConfig(RecurrentConfig):
    """The language model's (kind "lm", charnn.models.lm.CharRNN)."""

    labels: int = 0  # labels the model is conditioned on (--label-by; 0: none); label id 0 is "no label"
    label_output: bool = False  # a label also scales and shifts the last layer's output

    def problems(self) -> list:
        return super().problems() + ([] if 0 <= self.labels <= MAX_LABELS else [
            f"a model takes at most {MAX_LABELS:,} labels, got {self.labels:,}"])


@dataclass
class Seq2SeqConfig(RecurrentConfig):
    """The encoder-decoder's (kind "seq2seq", charnn.models.seq2seq.Seq2Seq; `train --pairs`)."""

    source_vocab: int = 0  # tokens of the input (source) vocabulary
    attention: bool = True  # the decoder attends over every input position (False: --no-attention)
    bidirectional: bool = True  # the encoder reads the input both ways (False: --unidirectional)
    attention_score: str = "general"  # "general" (Luong: h^T W a) or "additive" (v^T tanh(W h + U a))

    def problems(self) -> list:
        return super().problems() + attention_problems(self)


MAX_EXPAND = 16


@dataclass
class MinRNNConfig:
    """The parallel-scan recurrent language model's (kind "minrnn", charnn.models.minrnn.MinRNN: `--cell mingru`
    or `--cell minlstm`)."""

    vocab_size: int  # tokens the embedding and head cover (set by the tokenizer)
    cell: str = "mingru"  # mingru or minlstm (Feng et al. 2024: gates read the input only)
    layers: int = 2  # stacked blocks (LayerNorm -> gates -> scan -> projection, plus a residual; then the FFN)
    hidden: int = 256  # the width between blocks; each block's state is expand * hidden wide
    embed: int = 64  # embedding width
    dropout: float = 0.1  # dropout on each block's output and before the head
    # a block's state width, as a multiple of --hidden, and its feed-forward part's (0: none). 1 and 2 measured
    # best of the 2-layer blocks at equal characters (benchmarks/PARALLEL.md)
    expand: int = 1
    ffn: int = 2
    labels: int = 0  # labels the model is conditioned on (--label-by; 0: none); label id 0 is "no label"
    label_output: bool = False  # a label also scales and shifts the last layer's output
    # the training-time regularisers that apply to these cells (charnn.models.regularize; no weight drop: the
    # gates read the input only, there is no hidden-to-hidden matrix). Checkpoints from before read as all off
    locked_dropout: bool = False  # --dropout's masks (block outputs, before the head) fixed across time
    input_dropout: float = 0.0  # dropout on the embeddings the first block reads
    embed_dropout: float = 0.0  # whole characters dropped: embedding rows zeroed per step
    ar: float = 0.0  # activation regularisation weight (the head's inputs)
    tar: float = 0.0  # temporal activation regularisation weight

    def validate(self) -> "MinRNNConfig":
        problems = [] if 0 <= self.labels <= MAX_LABELS else [
            f"a model takes at most {MAX_LABELS:,} labels, got {self.labels:,}"]
        if self.cell not in MIN_CELLS:
            problems.append(f"`--cell` of a minrnn model must be one of {', '.join(MIN_CELLS)}, not {self.cell!r}")
        if not 1 <= self.expand <= MAX_EXPAND:
            problems.append(f"`--expand` must be between 1 and {MAX_EXPAND}, got {self.expand}")
        if not 0 <= self.ffn <= MAX_EXPAND:
            problems.append(f"`--ffn` must be between 0 and {MAX_EXPAND}, got {self.ffn}")
        raise_problems(problems + stack_problems(self, cells=None) + dropout_problems(self) + regulariser_problems(self))
        return self


@dataclass
class ClassifierConfig:
    """The many-to-one classifier's (kind "classifier", charnn.models.classifier; `train --classifier`): a
    bidirectional recurrent encoder over the text, its states pooled into one vector, a softmax over the labels.
    Its defaults are smaller than the language model's: it reads every text both ways and `classify` wants
    thousands of lines a second on a CPU (benchmarks/LABELS.md)."""

    vocab_size: int  # tokens the embedding covers (set by the tokenizer)
    labels: int = 2  # the labels it chooses among (set by the labelled text)
    cell: str = "lstm"  # recurrent cell of the encoder
    layers: int = 1  # stacked recurrent layers
    hidden: int = 64  # hidden units per layer and direction
    embed: int = 64  # embedding width
    dropout: float = 0.1  # dropout on the embedding, between layers and before the head
    # max (measured best of the four, benchmarks/LABELS.md), attention, mean or final (the two directions' final
    # states)
    pooling: str = "max"
    # hashed n-grams of 1..ngrams tokens, their vectors averaged beside the pooled states (fastText's bag of
    # n-grams: it learns which words and pieces of words a label uses in a few hundred steps; 0: the encoder alone)
    ngrams: int = 5
    buckets: int = 65536  # hash buckets of the n-gram vectors (bucket 0: padding)

    def validate(self) -> "ClassifierConfig":
        problems = [] if self.labels == 0 or 2 <= self.labels <= MAX_LABELS else [  # 0: not known yet
            f"a classifier needs between 2 and {MAX_LABELS:,} labels, got {self.labels:,}"]
        if self.pooling not in POOLINGS:
            problems.append(f"`--pooling` must be one of {', '.join(POOLINGS)}, not {self.pooling!r}")
        if not 0 <= self.ngrams <= 16:
            problems.append(f"`--ngrams` must be between 0 and 16, got {self.ngrams}")
        if not 2 <= self.buckets <= 2**24:
            problems.append(f"buckets must be between 2 and 2**24, got {self.buckets}")
        raise_problems(problems + stack_problems(self, cells=CELLS + MIN_CELLS) + dropout_problems(self))
        return self
