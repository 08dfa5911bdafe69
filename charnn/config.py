"""Dataclass configs for the model and training (sampling's are in charnn.sampling); validation names the flag
at fault."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from charnn.errors import CharnnError, ConfigError

CELLS = ("lstm", "gru", "rnn")
MIN_CELLS = ("mingru", "minlstm")  # the parallel-scan cells (kind "minrnn", charnn.models.minrnn)
KINDS = ("lm", "seq2seq")  # the kinds charnn itself registers (charnn.models.registry); others may add theirs
ATTENTION_SCORES = ("general", "additive")  # seq2seq attention scores (ModelConfig.attention_score)
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TOKENIZERS = ("char", "bpe", "unigram")
POOLINGS = ("max", "attention", "mean", "final")  # how the classifier pools its encoder states (--pooling)
BEST_BY = ("auto", "loss", "wer")
CLASS_WEIGHTS = ("none", "balanced")  # --class-weights
MIN_VOCAB = 260  # sentencepiece with byte fallback: 256 byte pieces + <unk> + the text's characters
DEFAULT_VOCAB = 1024  # a subword tokenizer's pieces without --vocab-size
MAX_VOCAB = 1_000_000  # (a vocabulary past it would not be trained on any corpus a run reads)
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
    # the flags of kinds whose fields are not among these (charnn.models.registry: ModelKind.flags), by name;
    # the kind's config reads them as its own
    extra: Dict[str, Any] = field(default_factory=dict)

    def saved(self) -> dict:
        """The form checkpoints keep (`model_config`): one flat dict, `extra`'s flags beside the others."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**values, **self.extra}

    def value(self, name: str):
        """A flag's value, whether it has a field of its own or sits in `extra` (None: neither)."""
        return getattr(self, name) if name != "extra" and hasattr(self, name) else self.extra.get(name)

    @classmethod
    def from_saved(cls, data: dict) -> "ModelConfig":
        """A checkpoint's `model_config` (any charnn's) back: keys without a field of their own go to `extra`."""
        names = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in data.items() if k in names},
                   extra={k: v for k, v in data.items() if k not in names and k != "extra"})

    def validate(self) -> "ModelConfig":
        """The flags' own checks; whether `kind` is a registered kind, and takes `cell`, is the registry's
        (charnn.models.registry), and the kind's config checks the rest."""
        problems = ["`--label-by` does not combine with `--pairs`"] if self.kind == "seq2seq" and self.labels else []
        if not 0 <= self.labels <= MAX_LABELS:
            problems.append(f"a model takes at most {MAX_LABELS:,} labels, got {self.labels:,}")
        raise_problems(problems + stack_problems(self, cells=None) + attention_problems(self) + dropout_problems(self))
        return self


# What the model kinds' configs (charnn.models.configs) and the flat ModelConfig check alike: each returns the
# problems it finds, one line per flag at fault; raise_problems raises them together.
def stack_problems(c, cells=CELLS) -> list:
    """What a recurrent stack's flags get wrong: --cell (one of `cells`; None: not checked here) and the sizes."""
    problems = []
    if cells is not None and c.cell not in cells:
        problems.append(f"`--cell` must be one of {', '.join(cells)}, not {c.cell!r}")
    for flag, value, most in (("--layers", c.layers, MAX_LAYERS), ("--hidden", c.hidden, MAX_WIDTH),
                              ("--embed", c.embed, MAX_WIDTH)):
        if not 1 <= value <= most:
            problems.append(f"`{flag}` must be between 1 and {most}, got {value}")
    return problems


def dropout_problems(c) -> list:
    return [] if 0.0 <= c.dropout < 1.0 else [f"`--dropout` must be in [0, 1), got {c.dropout}"]


def regulariser_problems(c) -> list:
    """What the training-time regulariser flags get wrong (charnn.models.regularize)."""
    out = [f"`--{name.replace('_', '-')}` must be in [0, 1), got {getattr(c, name)}"
           for name in ("weight_drop", "input_dropout", "embed_dropout") if not 0.0 <= getattr(c, name, 0.0) < 1.0]
    return out + [f"`--{name}` must be a number >= 0, got {getattr(c, name)}" for name in ("ar", "tar")
                  if not 0.0 <= getattr(c, name) < float("inf")]


def attention_problems(c) -> list:
    if c.attention_score not in ATTENTION_SCORES:
        return [f"`--attention-score` must be one of {', '.join(ATTENTION_SCORES)}, not {c.attention_score!r}"]
    if c.attention_score != "general" and not c.attention:
        return ["`--attention-score` scores attention; with `--no-attention` there is none"]
    return []


DEFAULT_PATIENCE = 5  # --patience of a run with no length limit


@dataclass
class TrainConfig:
    out: str = "checkpoints"  # root folder; the run lands in out/name
    name: Optional[str] = None  # run name (default: the corpus file's stem)
    val_frac: float = 0.1  # last fraction of the text held out for validation
    val_file: Optional[str] = None  # a separate validation file instead of val_frac
    batch_size: Optional[int] = None  # rows per batch (None: the task's default for the device, tasks.base)
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
    patience: Optional[int] = None  # evaluations without improvement before stopping (None: 5 with no length
    # limit, off beside one: stop_patience)
    best_by: str = "auto"  # what picks best.pt and counts --patience: loss, wer (--pairs), auto (wer for --pairs)
    eval_every: int = 1000  # steps between validation passes
    eval_tokens: int = 1_000_000  # validation passes score the first this many val tokens (0: all of them; streamed
    # labels: a share of every label's, charnn.tasks.labelled.spread)
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
    sized: Tuple[str, ...] = ()  # --pairs: the model flags not given, sized for the training pairs (charnn.tasks.pairs)
    # with --label-by: train the many-to-one classifier (kind "classifier", charnn.models.classifier) instead
    # of a label-conditioned language model
    classifier: bool = False
    class_weights: str = "none"  # the classifier's loss per label: none, or balanced (each label weighs as much)

    @property
    def pieces(self) -> Optional[int]:
        """The subword vocabulary this config trains (--vocab-size, else DEFAULT_VOCAB); None for characters."""
        return None if self.tokenizer == "char" else self.vocab_size or DEFAULT_VOCAB

    def validate(self, resuming: bool = False) -> "TrainConfig":
        """The flags' own checks. `resuming`: before the saved run's config is laid under them (a --vocab-size
        alone is then the saved subword run's, not a char run's: its tokenizer is not known yet)."""
        problems = []
        if self.tokenizer not in TOKENIZERS:
            problems.append(f"`--tokenizer` must be one of {', '.join(TOKENIZERS)}, not {self.tokenizer!r}")
        elif self.vocab_size is not None and self.tokenizer == "char" and not (self.init_from or resuming):  # (the
            # base's tokenizer is reused, whatever --tokenizer says; load_parent names the flag; resume_config checks)
            problems.append("`--vocab-size` applies to --tokenizer bpe or unigram; a char vocabulary is the "
                            "characters of the text")
        elif self.vocab_size is not None and self.vocab_size < MIN_VOCAB:
            problems.append(f"`--vocab-size` must be at least {MIN_VOCAB} (256 byte-fallback pieces, <unk> and "
                            f"the text's characters), got {self.vocab_size}")
        elif self.vocab_size is not None and self.vocab_size > MAX_VOCAB:  # (2**31: sentencepiece's traceback)
            problems.append(f"`--vocab-size` must be at most {MAX_VOCAB:,}, got {self.vocab_size}")
        if not 0.0 < self.val_frac < 1.0:
            problems.append(f"`--val-frac` must be between 0 and 1, got {self.val_frac}")
        positive = (("--batch-size", 1 if self.batch_size is None else self.batch_size), ("--seq-len", self.seq_len),
                    ("--eval-every", self.eval_every), ("--patience", 1 if self.patience is None else self.patience))
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
        if self.best_by not in BEST_BY:
            problems.append(f"`--best-by` must be one of {', '.join(BEST_BY)}, not {self.best_by!r}")
        elif self.best_by == "wer" and not self.pairs:
            problems.append("`--best-by wer` scores decoded outputs: it needs --pairs (a language model is "
                            "picked by its val loss)")
        if self.class_weights not in CLASS_WEIGHTS:
            problems.append(f"`--class-weights` must be one of {', '.join(CLASS_WEIGHTS)}, not {self.class_weights!r}")
        if self.class_weights != "none" and not self.classifier:
            problems.append("`--class-weights` weighs the labels in a classifier's loss: add `--classifier` "
                            "(with --label-by)")
        if self.classifier and not self.label_by:
            problems.append("`--classifier` learns labels: add `--label-by file|folder|line`")
        if self.classifier and self.pairs:
            problems.append("`--classifier` and `--pairs` do not combine: a classifier reads labelled text")
        problems += threads_problems(self.threads)
        for flag, value in (("--init-from", self.init_from), ("--val-file", self.val_file), ("--out", self.out),
                            ("--label-by", self.label_by)):
            if value is not None and not str(value).strip():  # (an unset shell variable: it was taken as not given)
                problems.append(f"`{flag}` is an empty string (an unset variable?)")
        if self.name is not None and (self.name.strip() in ("", ".", "..") or "/" in self.name or "\\" in self.name):
            problems.append(f"`--name` is the run's folder under --out, one name without / or \\ (not blank, . or ..), "
                            f"got {self.name!r}; put the folder above it in --out")
        elif self.name is not None and len(os.fsencode(self.name)) > 200:  # (a folder name's limit is 255 bytes)
            problems.append(f"`--name` is longer than 200 bytes ({len(os.fsencode(self.name))}); use a shorter one")
        raise_problems(problems)
        return self

    @property
    def stop_patience(self) -> Optional[int]:
        """--patience as given (early stopping, also within a length limit); not given, 5 evaluations for a run
        with no limit and none beside one."""
        return self.patience if self.patience is not None else (None if not self.open_ended else DEFAULT_PATIENCE)

    @property
    def open_ended(self) -> bool:
        """True when no length limit was given: training stops on val-loss patience."""
        return self.max_steps is None and self.max_time is None and self.epochs is None


@dataclass
class DynamicConfig:
    lr: float = 1e-3  # step size of the RMS-normalised update (0: no adaptation, the static score)
    decay: float = 1e-3  # pull toward the trained weights per step, scaled per weight by its rms (0: none)
    segment: int = 50  # tokens scored per step: each segment is scored, then stepped on
    beta: float = 0.99  # running average of squared gradients: ms <- beta * ms + (1 - beta) * g^2
    eps: float = 1e-8  # added to the rms before dividing by it

    def validate(self) -> "DynamicConfig":
        problems = []
        number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)  # noqa: E731  (the API's)
        if not (number(self.lr) and 0.0 <= self.lr <= 1.0):  # a step moves each weight about this much: beyond 1
            problems.append(f"`--dynamic-lr` must be in [0, 1], got {self.lr!r}")  # it only destroys
        if not (number(self.decay) and 0.0 <= self.decay <= 1.0):
            problems.append(f"`--dynamic-decay` must be in [0, 1], got {self.decay!r}")
        if not (isinstance(self.segment, int) and not isinstance(self.segment, bool) and 1 <= self.segment < 2**63):
            problems.append(f"`--segment` must be an integer, at least 1 (below 2**63), got {self.segment!r}")
        if not 0.0 <= self.beta < 1.0:
            problems.append(f"`beta` must be in [0, 1), got {self.beta}")
        if not 0.0 < self.eps < float("inf"):
            problems.append(f"`eps` must be a positive number, got {self.eps}")
        raise_problems(problems)
        return self


def threads_problems(threads) -> list:
    """`--threads` outside 1..MAX_THREADS, as a list of (at most one) problem; None (measured) is fine."""
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        return [f"`--threads` must be between 1 and {MAX_THREADS}, got {threads}"]
    return []


def raise_problems(problems: list) -> None:
    if problems:
        raise ConfigError("; ".join(problems))


def from_dict(cls, data: dict):
    """Build a config dataclass from a plain dict, ignoring keys this version does not know."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?(?:e[+-]?\d+)?)\s*([smhd]?)\s*$")  # (1e4 too)
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90' or '90s' -> 90.0, '5m' -> 300.0, '1h' -> 3600.0."""
    m = _DURATION.match(text.lower())
    if not m or not 0 < float(m.group(1)) * _UNIT[m.group(2)] < float("inf"):
        raise ConfigError(f"`--max-time` wants a positive duration such as 300, 90s, 5m or 1h, not {text!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]


class NoCacheHome(CharnnError, OSError):
    """No folder for the cache: CHARNN_CACHE unset and no home folder (HOME unset for a user the system does not
    list, as in a container run under an arbitrary uid), or CHARNN_CACHE naming another user's home that is not
    there. An OSError too, so that what only caches (measured precision, compiled kernels) goes on without it."""


def cache_root() -> Path:
    """Where charnn keeps what it can make again (encoded corpora, downloads, compiled kernels, measurements):
    CHARNN_CACHE, else $XDG_CACHE_HOME/charnn (where that is an absolute path, as the XDG spec reads it), else
    ~/.cache/charnn; and ~/.cache/charnn where only it exists (a cache made before XDG_CACHE_HOME was read: its
    corpora, downloads and kernels are kept, not made again elsewhere)."""
    given = os.environ.get("CHARNN_CACHE")
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    xdg_dir = Path(xdg) / "charnn" if os.path.isabs(xdg) else None
    try:
        if given:
            return Path(given).expanduser()
        home = Path.home() / ".cache" / "charnn"
    except RuntimeError:  # (pathlib: "Could not determine home directory."; a traceback)
        if xdg_dir is not None and not given:
            return xdg_dir
        raise NoCacheHome(f"CHARNN_CACHE={given!r} starts at a home folder that cannot be found; set it to a folder"
                          if given else "this user has no home folder for charnn's cache (HOME is unset); set "
                          "CHARNN_CACHE to a folder") from None
    return home if xdg_dir is None or (home.is_dir() and not xdg_dir.exists()) else xdg_dir


def cache_umask() -> int:
    """The process's umask, read without setting it (os.umask sets it for every thread meanwhile): what the cache's
    entries are opened to (a temporary file's or folder's 0600/0700 closed a shared cache to other users)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022
