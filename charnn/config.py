"""Dataclass configs for the model, training and sampling; validation names the flag at fault."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, fields, replace
from typing import Dict, List, Optional, Tuple

from charnn.errors import ConfigError, ParamError

CELLS = ("lstm", "gru", "rnn")
KINDS = ("lm", "seq2seq")  # the kinds charnn itself registers (charnn.models.registry); others may add theirs
ATTENTION_SCORES = ("general", "additive")  # seq2seq attention scores (ModelConfig.attention_score)
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TOKENIZERS = ("char", "bpe", "unigram")
MIN_VOCAB = 260  # sentencepiece with byte fallback: 256 byte pieces + <unk> + the text's characters
UNKNOWN = ("error", "skip")  # what sample does with prime characters outside the vocabulary
MAX_LAYERS, MAX_WIDTH, MAX_THREADS = 256, 65536, 1024  # sanity bounds: beyond them torch overflows or crashes
MAX_LABELS = 65535  # label ids are stored as uint16
FP32_MAX = 3.4e38  # about the largest float32
SEED_LIMIT = 2**63  # torch seeds are 64-bit; seeds stay below this so every generator takes them


@dataclass
class ModelConfig:
    """Every model flag of `charnn train` and `charnn.train` in one bag, and the form every checkpoint saves
    (`model_config`); charnn.models.registry turns it into the config of its `kind`."""

    vocab_size: int  # tokens the embedding and head cover (set by the tokenizer)
    cell: str = "lstm"  # recurrent cell: lstm, gru or rnn (tanh)
    layers: int = 2  # stacked recurrent layers
    hidden: int = 256  # hidden units per layer
    embed: int = 64  # embedding width
    dropout: float = 0.1  # dropout between layers and before the head
    labels: int = 0  # labels the model is conditioned on (--label-by; 0: none); label id 0 is "no label"
    # a label also scales and shifts the last layer's output (runs since 2026-12; older labelled checkpoints
    # lack it, and the missing key reads as False)
    label_output: bool = False
    # what the model is: "lm", a language model (charnn.models.lm), or "seq2seq", an encoder-decoder that reads
    # a line and writes another (charnn.models.seq2seq; `train --pairs`), or another kind registered in
    # charnn.models.registry (its settings beyond these flags take their defaults). The keys below are
    # seq2seq's; older checkpoints lack them all and read as language models
    kind: str = "lm"
    source_vocab: int = 0  # seq2seq: tokens of the input (source) vocabulary; vocab_size is the output's
    attention: bool = True  # seq2seq: the decoder attends over every input position (False: --no-attention)
    bidirectional: bool = True  # seq2seq: the encoder reads the input both ways (False: --unidirectional)
    # seq2seq: how a decoder state scores an input position: "general" (Luong: h^T W a) or "additive"
    # (Bahdanau's form: v^T tanh(W h + U a)); checkpoints from before the choice read as "general"
    attention_score: str = "general"

    def validate(self) -> "ModelConfig":
        """The flags' own checks; whether `kind` is a registered kind is the registry's (charnn.models.registry)."""
        problems = ["`--label-by` does not combine with `--pairs`"] if self.kind == "seq2seq" and self.labels else []
        if not 0 <= self.labels <= MAX_LABELS:
            problems.append(f"a model takes at most {MAX_LABELS:,} labels, got {self.labels:,}")
        _raise(problems + _stack_problems(self) + _attention_problems(self) + _dropout_problems(self))
        return self


# One config per model kind (charnn.models.registry turns the flat ModelConfig, or a checkpoint's saved
# model_config dict, into the right one); each holds only what its model reads.

@dataclass
class LMConfig:
    """The language model's (kind "lm", charnn.models.lm.CharRNN)."""

    vocab_size: int  # tokens the embedding and head cover (set by the tokenizer)
    cell: str = "lstm"  # recurrent cell: lstm, gru or rnn (tanh)
    layers: int = 2  # stacked recurrent layers
    hidden: int = 256  # hidden units per layer
    embed: int = 64  # embedding width
    dropout: float = 0.1  # dropout between layers and before the head
    labels: int = 0  # labels the model is conditioned on (--label-by; 0: none); label id 0 is "no label"
    label_output: bool = False  # a label also scales and shifts the last layer's output

    def validate(self) -> "LMConfig":
        problems = [] if 0 <= self.labels <= MAX_LABELS else [
            f"a model takes at most {MAX_LABELS:,} labels, got {self.labels:,}"]
        _raise(problems + _stack_problems(self) + _dropout_problems(self))
        return self


@dataclass
class Seq2SeqConfig:
    """The encoder-decoder's (kind "seq2seq", charnn.models.seq2seq.Seq2Seq; `train --pairs`)."""

    vocab_size: int  # tokens of the output (target) vocabulary
    source_vocab: int = 0  # tokens of the input (source) vocabulary
    cell: str = "lstm"  # recurrent cell of the encoder and the decoder
    layers: int = 2  # stacked recurrent layers, in each
    hidden: int = 256  # hidden units per layer
    embed: int = 64  # embedding width (both embeddings)
    dropout: float = 0.1  # dropout between layers and before the head
    attention: bool = True  # the decoder attends over every input position (False: --no-attention)
    bidirectional: bool = True  # the encoder reads the input both ways (False: --unidirectional)
    attention_score: str = "general"  # "general" (Luong: h^T W a) or "additive" (v^T tanh(W h + U a))

    def validate(self) -> "Seq2SeqConfig":
        _raise(_stack_problems(self) + _attention_problems(self) + _dropout_problems(self))
        return self


def _stack_problems(c) -> list:
    """What a recurrent stack's flags get wrong: --cell and the sizes."""
    problems = []
    if c.cell not in CELLS:
        problems.append(f"`--cell` must be one of {', '.join(CELLS)}, not {c.cell!r}")
    for flag, value, most in (("--layers", c.layers, MAX_LAYERS), ("--hidden", c.hidden, MAX_WIDTH),
                              ("--embed", c.embed, MAX_WIDTH)):
        if not 1 <= value <= most:
            problems.append(f"`{flag}` must be between 1 and {most}, got {value}")
    return problems


def _dropout_problems(c) -> list:
    return [] if 0.0 <= c.dropout < 1.0 else [f"`--dropout` must be in [0, 1), got {c.dropout}"]


def _attention_problems(c) -> list:
    if c.attention_score not in ATTENTION_SCORES:
        return [f"`--attention-score` must be one of {', '.join(ATTENTION_SCORES)}, not {c.attention_score!r}"]
    if c.attention_score != "general" and not c.attention:
        return ["`--attention-score` scores attention; with `--no-attention` there is none"]
    return []


@dataclass
class TrainConfig:
    out: str = "checkpoints"  # root folder; the run lands in out/name
    name: Optional[str] = None  # run name (default: the corpus file's stem)
    val_frac: float = 0.1  # last fraction of the text held out for validation
    val_file: Optional[str] = None  # a separate validation file instead of val_frac
    batch_size: Optional[int] = None  # contiguous streams per batch (None: 64 on the CPU, 256 on a CUDA GPU)
    seq_len: int = 128  # characters per stream per step (truncated BPTT length)
    lr: float = 1e-2  # peak learning rate (AdamW)
    weight_decay: float = 0.1  # AdamW weight decay on matrices
    warmup: int = 50  # linear warm-up steps
    min_lr_frac: float = 0.05  # the schedule decays to lr * min_lr_frac
    grad_clip: float = 1.0  # max global gradient norm (0 disables)
    seed: int = 1337  # random seed for weights, data offsets and dropout
    max_steps: Optional[int] = None  # stop after this many optimiser steps
    max_time: Optional[float] = None  # stop so the whole run takes at most this many seconds
    epochs: Optional[float] = None  # stop after this many passes over the training text
    patience: int = 5  # with no length limit: evaluations without improvement before stopping
    eval_every: int = 1000  # steps between validation passes
    eval_tokens: int = 1_000_000  # validation passes score the first this many val tokens (0: all of them)
    device: str = "auto"  # auto, cpu, cuda or mps
    precision: str = "auto"  # auto, fp32, bf16 or fp16 (autocast; weights stay fp32)
    threads: Optional[int] = None  # CPU threads for torch (None: measured, charnn.training.threads)
    tokenizer: str = "char"  # char, or bpe / unigram: sentencepiece trained on the training split
    vocab_size: Optional[int] = None  # bpe/unigram vocabulary size (None: 1024)
    save_every_secs: float = 60.0  # also refresh last.pt when this many seconds passed since the last save (0: off)
    compile: bool = False  # torch.compile the model (opt-in: it pays off only on long runs, see benchmarks/TRAINING.md)
    init_from: Optional[str] = None  # fine-tune: start from this checkpoint or run folder (its architecture and vocabulary)
    label_by: Optional[str] = None  # file, folder or line: condition the model on a label per document
    label_dropout: float = 0.1  # with labels: the share of training windows shown without their label
    label_contrast: float = 0.0  # with labels: weight of the loss that sets a text's own label above others'
    label_negatives: int = 1  # with --label-contrast: other labels each text is compared with per step
    skip_bad_lines: bool = False  # --label-by line / --pairs: skip (and count) lines that are not label<TAB>text
    pairs: bool = False  # sequence to sequence: every line is input<TAB>target (charnn.data.pairs)

    def validate(self) -> "TrainConfig":
        problems = []
        if self.tokenizer not in TOKENIZERS:
            problems.append(f"`--tokenizer` must be one of {', '.join(TOKENIZERS)}, not {self.tokenizer!r}")
        elif self.vocab_size is not None and self.tokenizer == "char":
            problems.append("`--vocab-size` applies to --tokenizer bpe or unigram; a char vocabulary is the "
                            "characters of the text")
        elif self.vocab_size is not None and self.vocab_size < MIN_VOCAB:
            problems.append(f"`--vocab-size` must be at least {MIN_VOCAB} (256 byte-fallback pieces, <unk> and "
                            f"the text's characters), got {self.vocab_size}")
        if not 0.0 < self.val_frac < 1.0:
            problems.append(f"`--val-frac` must be between 0 and 1, got {self.val_frac}")
        positive = (("--batch-size", 1 if self.batch_size is None else self.batch_size), ("--seq-len", self.seq_len), ("--eval-every", self.eval_every),
                    ("--patience", self.patience))
        problems += [f"`{flag}` must be at least 1, got {v}" for flag, v in positive if v < 1]
        if not 0 < self.lr < FP32_MAX:  # beyond what fp32 holds, the optimiser's update itself overflows
            problems.append(f"`--lr` must be a positive number below {FP32_MAX:.1e}, got {self.lr}")
        if self.grad_clip < 0 or self.grad_clip != self.grad_clip:
            problems.append(f"`--grad-clip` must be >= 0 (0 disables clipping), got {self.grad_clip}")
        if self.warmup < 0:
            problems.append(f"`--warmup` must be >= 0, got {self.warmup}")
        if not 0.0 <= self.weight_decay < float("inf"):
            problems.append(f"`--weight-decay` must be a number >= 0, got {self.weight_decay}")
        if not 0.0 <= self.save_every_secs < float("inf"):
            problems.append(f"`--save-every-secs` must be >= 0 (0: save only at evaluations), got {self.save_every_secs}")
        if not 0 <= self.seed < SEED_LIMIT:
            problems.append(f"`--seed` must be in [0, 2**63), got {self.seed}")
        if self.eval_tokens < 0:
            problems.append(f"`--eval-tokens` must be >= 0 (0: the whole validation split), got {self.eval_tokens}")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"`--max-steps` must be at least 1, got {self.max_steps}")
        if self.max_time is not None and not self.max_time > 0:
            problems.append(f"`--max-time` must be positive, got {self.max_time}")
        if self.epochs is not None and not 0 < self.epochs < float("inf"):
            problems.append(f"`--epochs` must be positive, got {self.epochs}")
        if self.device not in DEVICES:
            problems.append(f"`--device` must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"`--precision` must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.label_negatives < 1:
            problems.append(f"`--label-negatives` must be at least 1, got {self.label_negatives}")
        if not 0 <= self.label_contrast < float("inf"):  # nan fails too
            problems.append(f"`--label-contrast` must be a finite number >= 0, got {self.label_contrast}")
        if not 0.0 <= self.label_dropout < 1.0:
            problems.append(f"`--label-dropout` must be in [0, 1), got {self.label_dropout}")
        if self.pairs and self.label_by:
            problems.append("`--pairs` and `--label-by` do not combine: a pairs file is input<TAB>target lines")
        if self.pairs and self.tokenizer != "char":
            problems.append("`--pairs` models read and write characters; drop `--tokenizer`")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            problems.append(f"`--threads` must be between 1 and {MAX_THREADS}, got {self.threads}")
        _raise(problems)
        return self

    @property
    def open_ended(self) -> bool:
        """True when no length limit was given: training stops on val-loss patience."""
        return self.max_steps is None and self.max_time is None and self.epochs is None


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


def shown(x, most: int = 40) -> str:
    """repr(x) cut to `most` characters (a 4,000-digit integer is an answer, not a message; past 4,300 digits
    repr itself refuses)."""
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
        if self.unknown not in UNKNOWN:
            problems.append(f"`--unknown` must be one of {', '.join(UNKNOWN)}, not {self.unknown!r}")
        if self.num_samples < 1:
            problems.append(f"`--num-samples` must be at least 1, got {self.num_samples}")
        if self.stop is not None and self.stop == "":
            problems.append("`--stop` must not be empty")
        if self.device not in DEVICES:
            problems.append(f"`--device` must be one of {', '.join(DEVICES)}, not {self.device!r}")
        _raise(problems)
        return self


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
    batch_size: int = 64  # inputs decoded together (length-sorted; the order of the output is the input's)
    unknown: str = "error"  # input characters outside the vocabulary: error, or skip (drop them)
    device: str = "auto"

    @property
    def sampling(self) -> Optional[SamplingParams]:
        """How outputs are sampled; None: they are searched for (beam search; greedy with one beam)."""
        if self.temperature is None and self.top_k is None and self.top_p is None:
            return None
        return SamplingParams(1.0 if self.temperature is None else self.temperature, self.top_k, self.top_p,
                              0 if self.seed is None else self.seed)

    def validate(self) -> "TransduceConfig":
        problems = []
        sampling = self.sampling
        if sampling is not None and sampling.greedy and sampling.temperature >= 0:  # --temp 0: greedy, as in sample
            self.temperature, self.top_k, self.top_p = None, None, None  # and the API; here: a search, not a sample
        for flag, value in (("--beam", self.beam), ("--n-best", self.n_best), ("--batch-size", self.batch_size)):
            if value < 1:
                problems.append(f"`{flag}` must be at least 1, got {value}")
        if self.sampling is not None and self.beam > 1:
            problems.append("`--beam` searches for the most likely outputs; `--temp/--top-k/--top-p` sample varied "
                            "ones. Choose one")
        elif self.sampling is None and self.n_best > self.beam:
            problems.append(f"`--n-best {self.n_best}` needs at least that many beams; add `--beam {self.n_best}` "
                            "(or sample N outputs with --temp)")
        if not 0.0 <= self.length_penalty < float("inf"):
            problems.append(f"`--length-penalty` must be a number >= 0, got {self.length_penalty}")
        temperature = 1.0 if self.temperature is None else self.temperature
        given = SamplingParams(temperature, self.top_k, self.top_p, self.seed)  # (a search's seed is checked too)
        problems += [message for _, message in given.problems(SAMPLING_FLAGS)]
        if self.max_length is not None and self.max_length < 1:
            problems.append(f"`--max-length` must be at least 1, got {self.max_length}")
        if self.unknown not in UNKNOWN:
            problems.append(f"`--unknown` must be one of {', '.join(UNKNOWN)}, not {self.unknown!r}")
        if self.device not in DEVICES:
            problems.append(f"`--device` must be one of {', '.join(DEVICES)}, not {self.device!r}")
        _raise(problems)
        return self


@dataclass
class DynamicConfig:
    lr: float = 1e-3  # step size of the RMS-normalised update (0: no adaptation, the static score)
    decay: float = 1e-3  # pull toward the trained weights per step, scaled per weight by its rms (0: none)
    segment: int = 50  # tokens scored per step: each segment is scored, then stepped on
    beta: float = 0.99  # running average of squared gradients: ms <- beta * ms + (1 - beta) * g^2
    eps: float = 1e-8  # added to the rms before dividing by it

    def validate(self) -> "DynamicConfig":
        problems = []
        if not 0.0 <= self.lr <= 1.0:  # a step moves each weight about this much: beyond 1 it only destroys
            problems.append(f"`--dynamic-lr` must be in [0, 1], got {self.lr}")
        if not 0.0 <= self.decay <= 1.0:
            problems.append(f"`--dynamic-decay` must be in [0, 1], got {self.decay}")
        if self.segment < 1:
            problems.append(f"`--segment` must be at least 1, got {self.segment}")
        if not 0.0 <= self.beta < 1.0:
            problems.append(f"`beta` must be in [0, 1), got {self.beta}")
        if not 0.0 < self.eps < float("inf"):
            problems.append(f"`eps` must be a positive number, got {self.eps}")
        _raise(problems)
        return self


def _raise(problems: list) -> None:
    if problems:
        raise ConfigError("; ".join(problems))


def from_dict(cls, data: dict):
    """Build a config dataclass from a plain dict, ignoring keys this version does not know."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90' or '90s' -> 90.0, '5m' -> 300.0, '1h' -> 3600.0."""
    m = _DURATION.match(text.lower())
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"`--max-time` wants a positive duration such as 300, 90s, 5m or 1h, not {text!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]
