"""The model registry: every model kind charnn can train, save, load, describe and step, by name.

A kind is one `ModelKind` record: its model class and config dataclass, its `charnn train` flags (as data), what
`charnn info` shows about it, what `--init-from` and `--resume` keep, and how generation steps it (a fast stepper
factory, or None: the Batcher steps the module itself through `charnn.models.stepper.ModuleStepper`). The rest
of charnn asks the registry rather than naming classes: `checkpoint.build_model`, the Batcher, `charnn info`,
`training.init_from`, `training.resume`. Adding a kind is `register(ModelKind(...))` (docs/MODEL_KINDS.md).

Checkpoints save the flat `charnn.config.ModelConfig` as a dict (`model_config`); `kind_config` turns such a
dict (any charnn's: no "kind" key reads as "lm") or the flat config into the kind's own config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch.nn as nn

from charnn.config import ATTENTION_SCORES, CELLS, LMConfig, ModelConfig, Seq2SeqConfig, from_dict
from charnn.errors import CharnnError, ConfigError
from charnn.models.lm import CharRNN
from charnn.models.seq2seq import Seq2Seq
from charnn.models.stepper import FastStepper, ModuleStepper


@dataclass(frozen=True)
class TrainFlag:
    """One `charnn train` flag of a kind, as data (not yet read by the CLI: `charnn train`'s options are written
    out in charnn/cli/train.py; building them from these is issue 30's open item)."""

    name: str  # the config field; the flag is --name with dashes
    type: type
    default: Any
    help: str


@dataclass(frozen=True)
class ModelKind:
    name: str  # ModelConfig.kind, saved in every checkpoint
    model: Callable[[Any], nn.Module]  # the class: model(config) is a fresh model
    config: type  # its config dataclass (fields a subset of ModelConfig's, or with defaults)
    flags: Tuple[TrainFlag, ...] = ()  # its `charnn train` flags
    info_fields: Tuple[str, ...] = ("vocab_size",)  # the model_config keys `charnn info` shows, in order
    info_line: Optional[Callable[[dict], str]] = None  # `charnn info`'s model line from those (None: key value, ...)
    architecture: Tuple[str, ...] = ()  # what --init-from keeps from the base (flags that contradict it: an error)
    fixed_on_resume: Tuple[str, ...] = ()  # what --resume keeps (flags that contradict the run: an error)
    # how generation steps it: stepper(model, rows, banned ids, int8) (None: ModuleStepper, through its forward)
    stepper: Optional[Callable[..., Any]] = None
    generates: bool = True  # whether it continues text (False: no Batcher; seq2seq transduces instead)
    extra: Dict[str, Any] = field(default_factory=dict)  # anything else a kind wants to say about itself

    def make_config(self, flat: Union[dict, ModelConfig, Any]):
        """The kind's own config from a saved model_config dict, the flat ModelConfig or its own config."""
        values = asdict(flat) if is_dataclass(flat) else dict(flat)
        return from_dict(self.config, values).validate()

    def build(self, flat) -> nn.Module:
        return self.model(self.make_config(flat))


_KINDS: Dict[str, ModelKind] = {}


def register(kind: ModelKind) -> ModelKind:
    """Add a kind (again with the same name: the new record replaces the old one)."""
    _KINDS[kind.name] = kind
    return kind


def names() -> Tuple[str, ...]:
    return tuple(_KINDS)


def get(name: str) -> ModelKind:
    if name not in _KINDS:
        raise ConfigError(f"model kind {name!r} is not one this charnn knows ({', '.join(_KINDS)}); upgrade charnn")
    return _KINDS[name]


def kind_of(model_config: Union[dict, ModelConfig, Any]) -> ModelKind:
    """The kind of a saved model_config dict or a config (no kind: "lm", as every checkpoint before kinds)."""
    name = model_config.get("kind", "lm") if isinstance(model_config, dict) else getattr(model_config, "kind", "lm")
    return get(name)


def kind_config(model_config):
    """The kind's own, validated config from a saved model_config dict or the flat ModelConfig."""
    return kind_of(model_config).make_config(model_config)


def build_model(model_config) -> nn.Module:
    """A fresh model of the config's kind (a saved dict, the flat ModelConfig)."""
    return kind_of(model_config).build(model_config)


def for_model(model: nn.Module) -> Optional[ModelKind]:
    """The kind whose class `model` is (None: no registered kind's)."""
    return next((k for k in _KINDS.values() if isinstance(k.model, type) and isinstance(model, k.model)), None)


def stepper_factory(model: nn.Module, int8: bool = False) -> Callable[[int, Sequence[int]], Any]:
    """How generation steps `model`: a function (rows, banned ids) -> a stepper. The kind's fast stepper where
    it has one (and it covers this model), else ModuleStepper through the module's own forward. Refused: a
    kind that does not continue text, and int8 without a fast stepper."""
    kind = for_model(model)
    if kind is not None and not kind.generates:
        raise CharnnError(f"generation continues text with a language model; a {kind.name} model does not "
                          "(a sequence-to-sequence model transduces: `charnn transduce`)")
    if getattr(model, "state_ops", None) is None and (kind is None or kind.stepper is None):
        raise CharnnError("generation needs a model kind from charnn.models.registry, or a model with state_ops")

    def make(rows: int, banned: Sequence[int] = ()):
        if kind is not None and kind.stepper is not None:
            try:
                return kind.stepper(model, rows, banned, int8)
            except NotImplementedError:  # a variant its fast stepper does not cover: the module steps instead
                if int8:
                    raise CharnnError("--int8 covers charnn's LSTM, GRU and RNN language models only") from None
        elif int8:
            raise CharnnError(f"--int8 needs a model kind with a fast stepper (charnn's LSTM, GRU and RNN language "
                              f"models); this is {kind.name if kind else type(model).__name__}: leave --int8 out")
        return ModuleStepper(model, rows, banned)
    return make


def _lm_line(m: dict) -> str:
    return (f"{m['cell']}, {m['layers']} layers x {m['hidden']} hidden, embed {m['embed']}, dropout {m['dropout']}"
            + (f", conditioned on {m['labels']} labels" if m.get("labels") else ""))


def _fast_stepper(model: nn.Module, rows: int, banned=(), int8: bool = False) -> FastStepper:
    return FastStepper(model, rows, banned, int8=int8)


RECURRENT_FLAGS = (
    TrainFlag("cell", str, "lstm", f"Recurrent cell: {', '.join(CELLS)}."),
    TrainFlag("layers", int, 2, "Stacked recurrent layers."),
    TrainFlag("hidden", int, 256, "Hidden units per layer."),
    TrainFlag("embed", int, 64, "Embedding width."),
    TrainFlag("dropout", float, 0.1, "Dropout between layers and before the head."),
)
SEQ2SEQ_FLAGS = RECURRENT_FLAGS + (
    TrainFlag("attention", bool, True, "--pairs: the decoder attends over every input position (--no-attention: "
              "it starts from the encoder's final state alone)."),
    TrainFlag("bidirectional", bool, True, "--pairs: the encoder reads the input both ways (--unidirectional: "
              "left to right only)."),
    TrainFlag("attention_score", str, "general", f"--pairs: how the decoder scores input positions: "
              f"{' or '.join(ATTENTION_SCORES)}."),
)
RECURRENT_INFO = ("cell", "layers", "hidden", "labels", "embed", "dropout", "vocab_size")
RECURRENT_ARCHITECTURE = ("cell", "layers", "hidden", "embed")  # and vocab_size, which the tokenizer sets
RECURRENT_FIXED = ("cell", "layers", "hidden", "embed", "dropout")

register(ModelKind("lm", CharRNN, LMConfig, RECURRENT_FLAGS, info_fields=RECURRENT_INFO, info_line=_lm_line,
                   architecture=RECURRENT_ARCHITECTURE, fixed_on_resume=RECURRENT_FIXED, stepper=_fast_stepper))
register(ModelKind("seq2seq", Seq2Seq, Seq2SeqConfig, SEQ2SEQ_FLAGS, info_fields=RECURRENT_INFO,
                   architecture=RECURRENT_ARCHITECTURE, fixed_on_resume=RECURRENT_FIXED, generates=False))
