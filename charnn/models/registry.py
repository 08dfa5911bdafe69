"""The model registry: every model kind charnn can train, save, load, describe and step, by name.

A kind is one `ModelKind` record: its model class and config dataclass, which runs it serves (plain or labelled
text, or --pairs) and with which `--cell` values, its `charnn train` flags (as data: the CLI builds its model
options from them, `charnn.train` accepts them), what `charnn info` shows about it, what `--init-from` and
`--resume` keep, and how generation steps it (a fast stepper factory, or None: the Batcher steps the module
itself through `charnn.models.stepper.ModuleStepper`). The rest of charnn asks the registry rather than naming
classes: `checkpoint.build_model`, the Batcher, `charnn train`, `charnn info`, `training.init_from`,
`training.resume`. Adding a kind is `register(ModelKind(...))` (docs/MODEL_KINDS.md); a package outside charnn
registers its kinds from a module named by a `charnn.kinds` entry point.

This module imports no torch: the CLI reads the flags at start-up, and a kind's model class and stepper may be
named as "module:attribute", imported when first used.

Checkpoints save the flat `charnn.config.ModelConfig` as a dict (`model_config`); `kind_config` turns such a
dict (any charnn's: no "kind" key reads as "lm") or the flat config into the kind's own config.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

from charnn.config import ATTENTION_SCORES, CELLS, MIN_CELLS, POOLINGS, ModelConfig, from_dict
from charnn.models.configs import ClassifierConfig, LMConfig, MinRNNConfig, Seq2SeqConfig
from charnn.errors import CharnnError, ConfigError

SERVES = ("text", "pairs")  # what a kind trains on: plain or labelled text (a language model), or --pairs lines
PLUGINS = "charnn.kinds"  # the entry-point group whose modules register kinds from other packages


@dataclass(frozen=True)
class TrainFlag:
    """One `charnn train` flag of a kind (and keyword of `charnn.train`): `--name-with-dashes`."""

    name: str  # the config field
    type: type
    default: Any
    help: str
    decls: Tuple[str, ...] = ()  # Typer's spelling where it is not --name (" /--no-attention": an off switch)
    show_default: Any = True  # what the help shows as the default (True: the value)

    def spelled(self, value) -> str:
        """The value as a command line gives it, for messages: `--hidden 128`; a switch as typed (`--locked-dropout`,
        `--no-attention`), and its other state as its absence (`no --locked-dropout`) or its name (`attention`)."""
        flag = f"--{self.name.replace('_', '-')}"
        if self.type is not bool:
            return f"{flag} {value}"
        if self.decls and self.decls[0].startswith(" /"):  # an off switch (" /--no-attention")
            return str(self.show_default) if value else self.decls[0][2:]
        return flag if value else f"no {flag}"


@dataclass(frozen=True)
class ModelKind:
    name: str  # ModelConfig.kind, saved in every checkpoint
    model: Union[type, str]  # the class (or "module:Class"): model(config) is a fresh model
    config: type  # its config dataclass (fields a subset of ModelConfig's, or with defaults)
    flags: Tuple[TrainFlag, ...] = ()  # its `charnn train` flags
    serves: str = "text"  # what it trains on (SERVES): "text" (a language model) or "pairs" (--pairs)
    cells: Tuple[str, ...] = ()  # the --cell values it takes: `--cell X` picks the kind that takes X
    info_fields: Tuple[str, ...] = ("vocab_size",)  # the model_config keys `charnn info` shows, in order
    info_line: Optional[Callable[[dict], str]] = None  # `charnn info`'s model line from those (None: key value, ...)
    architecture: Tuple[str, ...] = ()  # what --init-from keeps from the base (flags that contradict it: an error)
    fixed_on_resume: Tuple[str, ...] = ()  # what --resume keeps (flags that contradict the run: an error)
    # how generation steps it: stepper(model, rows, banned ids, int8), or "module:function" (None: ModuleStepper,
    # through its forward)
    stepper: Optional[Union[Callable[..., Any], str]] = None
    generates: bool = True  # whether it continues text (False: no Batcher; seq2seq transduces instead)
    extra: Dict[str, Any] = field(default_factory=dict)  # anything else a kind wants to say about itself

    @property
    def model_class(self) -> type:
        return _resolve(self.model)

    def make_config(self, flat: Union[dict, ModelConfig, Any]):
        """The kind's own config from a saved model_config dict, the flat ModelConfig or its own config; the
        flat config's `extra` (the flags only some kinds have) counts as its own fields."""
        values = asdict(flat) if is_dataclass(flat) else dict(flat)
        values.update(values.pop("extra", None) or {})
        own = {f.name for f in self.flags}  # (one of its flags missing, as None: its default, as when it was built)
        return from_dict(self.config, {k: v for k, v in values.items() if v is not None or k not in own}).validate()

    def build(self, flat):
        return self.model_class(self.make_config(flat))


def _resolve(ref):
    """A class or function, or one named "package.module:attribute" (imported now)."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


_KINDS: Dict[str, ModelKind] = {}
_plugins_loaded = False


def register(kind: ModelKind) -> ModelKind:
    """Add a kind (again with the same name: the new record replaces the old one)."""
    if kind.serves not in SERVES:
        raise ValueError(f"kind {kind.name!r}: serves must be one of {SERVES}, not {kind.serves!r}")
    own = {f.name for f in fields(kind.config)}
    missing = [f.name for f in kind.flags if f.name not in own]
    if missing:  # a flag its config has no field for would be accepted and then silently dropped
        raise ValueError(f"kind {kind.name!r}: flags {missing} are not fields of {kind.config.__name__}")
    _KINDS[kind.name] = kind
    return kind


def load_plugins() -> None:
    """Import the modules other packages name in the `charnn.kinds` entry-point group (each registers its kinds),
    once. A plug-in that fails to import is an error naming it."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points
    for point in entry_points(group=PLUGINS):
        try:
            point.load()
        except Exception as e:  # a broken plug-in: say which, not a traceback from deep inside importlib
            raise ConfigError(f"the model-kind plug-in {point.name!r} ({point.value}) failed to load: {e}") from e


def names() -> Tuple[str, ...]:
    return tuple(_KINDS)


def kinds() -> Tuple[ModelKind, ...]:
    return tuple(_KINDS.values())


def get(name: str) -> ModelKind:
    if name not in _KINDS:
        load_plugins()  # a kind from another package, registered when its entry point loads
    if name not in _KINDS:
        raise ConfigError(f"model kind {name!r} is not one this charnn knows ({', '.join(_KINDS)}); upgrade charnn "
                          "or install the package that provides it")
    return _KINDS[name]


def kind_of(model_config: Union[dict, ModelConfig, Any]) -> ModelKind:
    """The kind of a saved model_config dict or a config (no kind: "lm", as every checkpoint before kinds)."""
    name = model_config.get("kind", "lm") if isinstance(model_config, dict) else getattr(model_config, "kind", "lm")
    return get(name)


def kind_config(model_config):
    """The kind's own, validated config from a saved model_config dict or the flat ModelConfig."""
    return kind_of(model_config).make_config(model_config)


def build_model(model_config):
    """A fresh model of the config's kind (a saved dict, the flat ModelConfig)."""
    return kind_of(model_config).build(model_config)


def for_model(model) -> Optional[ModelKind]:
    """The kind whose class `model` is (None: no registered kind's)."""
    return next((k for k in _KINDS.values() if isinstance(model, k.model_class)), None)


# -- which kind a run trains, and its flags --------------------------------------------------------------------
def flag_table() -> Dict[str, Tuple[TrainFlag, Tuple[ModelKind, ...]]]:
    """Every kind's train flags by name, in registration order: (the first kind's TrainFlag, the kinds that take
    it). Kinds that share a flag share its type and default."""
    table: Dict[str, Tuple[TrainFlag, Tuple[ModelKind, ...]]] = {}
    for kind in _KINDS.values():
        for f in kind.flags:
            first, takers = table.get(f.name, (f, ()))
            if (first.type, first.default) != (f.type, f.default):
                raise ValueError(f"kinds {takers[0].name!r} and {kind.name!r} both have the flag {f.name!r}, with "
                                 "different types or defaults")
            table[f.name] = (first, takers + (kind,))
    return table


def choose(serves: str, cell: str = "lstm", kind: Optional[str] = None) -> ModelKind:
    """The kind a run trains: `kind` when it serves this run's text and takes `cell`, else the first kind that
    serves it and takes `cell` (`--cell mingru` picks the kind that has that cell)."""
    if kind is not None:
        chosen = get(kind)
        if chosen.serves == serves and (not chosen.cells or cell in chosen.cells):
            return chosen
    takers = [k for k in _KINDS.values() if k.serves == serves and cell in k.cells]
    if takers:
        return takers[0]
    cells = [c for k in _KINDS.values() if k.serves == serves for c in k.cells]
    raise ConfigError(f"`--cell` must be one of {', '.join(dict.fromkeys(cells))}"
                      f"{' with --pairs' if serves == 'pairs' else ''}, not {cell!r}")


def check_kind(kind: str, serves: str, given: Sequence[str], cell: str) -> ModelKind:
    """The kind a `charnn train --kind KIND` run trains, its flags checked: the kind must serve the run's text
    and take --cell, and every model flag given must be one of its flags."""
    chosen = get(kind)
    if chosen.serves != serves:
        raise ConfigError(f"a {kind} model trains on {'--pairs lines' if chosen.serves == 'pairs' else 'text'}"
                          f"{': add --pairs' if chosen.serves == 'pairs' else ', not --pairs'}")
    if chosen.cells and cell not in chosen.cells:
        raise ConfigError(f"`--cell` of a {kind} model must be one of {', '.join(chosen.cells)}, not {cell!r}")
    check_flags(chosen, given)
    return chosen


def check_flags(kind: ModelKind, given: Sequence[str]) -> None:
    """Every model flag in `given` must be one `kind` takes (others shape another kind: an error naming it)."""
    table, own = flag_table(), {f.name for f in kind.flags}
    for name in given:
        if name in table and name not in own:
            takers = table[name][1]
            flag = "--" + name.replace("_", "-")
            if all(k.serves == "pairs" for k in takers) and kind.serves != "pairs":
                raise ConfigError(f"`{flag}` shapes a --pairs (sequence-to-sequence) model; add --pairs")
            raise ConfigError(f"`{flag}` is a flag of {' and '.join(k.name for k in takers)} models; this run trains "
                              f"a {kind.name} model" + ("" if kind.cells else f" (no --{flag[2:]})"))


# -- generation -------------------------------------------------------------------------------------------------
def stepper_factory(model, int8: bool = False) -> Callable[[int, Sequence[int]], Any]:
    """How generation steps `model`: a function (rows, banned ids) -> a stepper. The kind's fast stepper where
    it has one (and it covers this model), else ModuleStepper through the module's own forward. Refused: a
    kind that does not continue text, and int8 without a fast stepper."""
    from charnn.models.stepper import ModuleStepper
    kind = for_model(model)
    if kind is not None and not kind.generates:
        raise CharnnError(f"generation continues text with a language model; a {kind.name} model does not "
                          + ("(a sequence-to-sequence model transduces: `charnn transduce`)" if kind.serves == "pairs"
                             else "(it says which label a text has: `charnn classify`)"))
    if getattr(model, "state_ops", None) is None and (kind is None or kind.stepper is None):
        raise CharnnError("generation needs a model kind from charnn.models.registry, or a model with state_ops")

    def make(rows: int, banned: Sequence[int] = ()):
        if kind is not None and kind.stepper is not None:
            try:
                return _resolve(kind.stepper)(model, rows, banned, int8)
            except NotImplementedError:  # a variant its fast stepper does not cover: the module steps instead
                if int8:
                    raise CharnnError("--int8 covers charnn's LSTM, GRU, RNN, minGRU and minLSTM language models "
                                      "only") from None
        elif int8:
            name = kind.name if kind else type(model).__name__
            raise CharnnError(f"--int8 needs a model kind with a fast stepper (charnn's LSTM, GRU, RNN, minGRU and "
                              f"minLSTM language models); this is {name}: leave --int8 out")
        return ModuleStepper(model, rows, banned)
    return make


# -- charnn's own kinds ---------------------------------------------------------------------------------------
def _layers(m: dict) -> str:
    return f"{m['layers']} layer{'s' * (m['layers'] != 1)}"


def _lm_line(m: dict) -> str:
    return (f"{m['cell']}, {_layers(m)} x {m['hidden']} hidden, embed {m['embed']}, dropout {m['dropout']}"
            + (f", conditioned on {m['labels']} labels" if m.get("labels") else ""))


STACK_FLAGS = (  # every recurrent kind's
    TrainFlag("cell", str, "lstm", f"Recurrent cell: {', '.join(CELLS)}."),
    TrainFlag("layers", int, 2, "Stacked recurrent layers."),
    TrainFlag("hidden", int, 256, "Hidden units per layer."),
    TrainFlag("embed", int, 64, "Embedding width."),
    TrainFlag("dropout", float, 0.1, "Dropout between layers and before the head."),
)
REGULARISER_FLAGS = (  # charnn.models.regularize: the torch-stack kinds' (lm, seq2seq)
    TrainFlag("weight_drop", float, 0.0, "Weight drop (DropConnect): each step zeroes this share of the recurrent "
              "hidden-to-hidden weights (AWD-LSTM). Training only, as every regulariser here."),
    TrainFlag("locked_dropout", bool, False, "Dropout masks fixed across time, one per sequence, for --dropout and "
              "--input-dropout (variational dropout).", decls=("--locked-dropout",), show_default="off"),
    TrainFlag("input_dropout", float, 0.0, "Dropout on the embeddings the first layer reads (--pairs: default "
              "--dropout)."),
    TrainFlag("embed_dropout", float, 0.0, "Drop whole characters: each step zeroes this share of the "
              "embedding's rows."),
    TrainFlag("ar", float, 0.0, "Activation regularisation: this weight times the mean square of the last "
              "layer's (dropped) outputs, added to the loss.",
              show_default="2 for an lstm/gru/rnn language model of plain text, else 0"),
    TrainFlag("tar", float, 0.0, "Temporal activation regularisation: this weight times the mean square of the "
              "last layer's step-to-step change, added to the loss.",
              show_default="1 for an lstm/gru/rnn language model of plain text, else 0"),
)
RECURRENT_FLAGS = STACK_FLAGS + REGULARISER_FLAGS
SEQ2SEQ_FLAGS = RECURRENT_FLAGS + (
    TrainFlag("attention", bool, True, "--pairs: no attention; the decoder starts from the encoder's final state "
              "only.", decls=(" /--no-attention",), show_default="attention"),
    TrainFlag("bidirectional", bool, True, "--pairs: the encoder reads the input left to right only.",
              decls=(" /--unidirectional",), show_default="bidirectional"),
    TrainFlag("attention_score", str, "general", f"--pairs: how the decoder scores input positions: "
              f"{' or '.join(ATTENTION_SCORES)} (Luong's h^T W a; Bahdanau's v^T tanh(W h + U a))."),
)
RECURRENT_INFO = ("cell", "layers", "hidden", "labels", "embed", "dropout", "vocab_size")
RECURRENT_ARCHITECTURE = ("cell", "layers", "hidden", "embed")  # and vocab_size, which the tokenizer sets
STACK_FIXED = ("cell", "layers", "hidden", "embed", "dropout")
RECURRENT_FIXED = STACK_FIXED + tuple(f.name for f in REGULARISER_FLAGS)  # a resume keeps the run's regularisers too

# A language model of plain text trains with AR 2 / TAR 1 unless told otherwise: at equal wall time they bought
# 0.09 nats/char on tinyshakespeare and 0.08 on the King James Bible (300 s, two seeds each, a 2-core Xeon), where
# the dropout variants and weight drop lost (benchmarks/REGULARIZE.md). Labelled runs are not measured yet (and in
# a small test they blunted --label-contrast), so they keep 0, as do checkpoints from before (the config's default)
# and the parallel cells (minrnn: the head reads a LayerNorm; AR/TAR cost the minGRU 0.014, benchmarks/PARALLEL.md).
LM_DEFAULTS = {"ar": 2.0, "tar": 1.0}
register(ModelKind("lm", "charnn.models.lm:CharRNN", LMConfig, RECURRENT_FLAGS, cells=CELLS,
                   info_fields=RECURRENT_INFO, info_line=_lm_line, architecture=RECURRENT_ARCHITECTURE,
                   fixed_on_resume=RECURRENT_FIXED, stepper="charnn.models.stepper:fast_stepper",
                   extra={"plain_defaults": LM_DEFAULTS}))
register(ModelKind("seq2seq", "charnn.models.seq2seq:Seq2Seq", Seq2SeqConfig, SEQ2SEQ_FLAGS, serves="pairs",
                   cells=CELLS, info_fields=RECURRENT_INFO, architecture=RECURRENT_ARCHITECTURE,
                   fixed_on_resume=RECURRENT_FIXED + ("attention", "bidirectional", "attention_score"),
                   generates=False))


# -- the parallel-scan recurrent kind (--cell mingru / minlstm) ---------------------------------------------------
def _minrnn_line(m: dict) -> str:
    return (f"{m['cell']}, {_layers(m)} x {m['hidden']} wide (state x{m.get('expand', 1)}, feed-forward "
            f"x{m.get('ffn', 2)}), embed "
            f"{m['embed']}, dropout {m['dropout']}" + (f", conditioned on {m['labels']} labels" if m.get("labels")
                                                       else ""))


MIN_REGULARISER_FLAGS = tuple(f for f in REGULARISER_FLAGS if f.name != "weight_drop")  # no hidden-to-hidden matrix
MINRNN_FLAGS = STACK_FLAGS + (
    TrainFlag("expand", int, 1, "--cell mingru/minlstm: each layer's state width, as a multiple of --hidden."),
    TrainFlag("ffn", int, 2, "--cell mingru/minlstm: each layer's feed-forward width, as a multiple of --hidden "
              "(0: none)."),
) + MIN_REGULARISER_FLAGS
# --lr 3e-3 unless told otherwise: after 300 s on tinyshakespeare (2-core Xeon, bf16, batch 8) the default minGRU
# reached 1.4638 / 1.4678 (two seeds) at 3e-3 against 1.4863 / 1.4994 at charnn's 1e-2, and the minLSTM 1.4658
# against 1.4942 (benchmarks/PARALLEL.md, session 19)
MINRNN_TRAIN = {"lr": 3e-3}
register(ModelKind("minrnn", "charnn.models.minrnn:MinRNN", MinRNNConfig, MINRNN_FLAGS, cells=MIN_CELLS,
                   info_fields=RECURRENT_INFO[:3] + ("expand", "ffn") + RECURRENT_INFO[3:], info_line=_minrnn_line,
                   architecture=RECURRENT_ARCHITECTURE + ("expand", "ffn"),
                   fixed_on_resume=STACK_FIXED + ("expand", "ffn") + tuple(f.name for f in MIN_REGULARISER_FLAGS),
                   stepper="charnn.models.minstep:min_stepper", extra={"train_defaults": MINRNN_TRAIN}))


# -- the many-to-one classifier (`train --label-by ... --classifier`) -----------------------------------------
def _classifier_line(m: dict) -> str:
    return (f"classifier over {m.get('labels')} labels: bidirectional {m['cell']}, {_layers(m)} x "
            f"{m['hidden']} hidden, embed {m['embed']}, {m.get('pooling', 'max')} pooling, "
            + (f"hashed 1-{m['ngrams']}-grams, " if m.get("ngrams") else "") + f"dropout {m['dropout']}")


CLASSIFIER_FLAGS = STACK_FLAGS + (
    TrainFlag("pooling", str, "max", f"--classifier: how the encoder's states become one vector: "
              f"{', '.join(POOLINGS)}."),
    TrainFlag("ngrams", int, 5, "--classifier: also average vectors of hashed n-grams of 1..N tokens (fastText's "
              "bag) beside the encoder's; 0: the encoder alone."),
)
# shared flags keep the language model's defaults in the help; a classifier run takes these unless typed
CLASSIFIER_DEFAULTS = {"layers": 1, "hidden": 64}
register(ModelKind("classifier", "charnn.models.classifier:TextClassifier", ClassifierConfig, CLASSIFIER_FLAGS,
                   cells=CELLS + MIN_CELLS, info_fields=("cell", "layers", "hidden", "embed", "pooling", "ngrams", "labels",
                                             "dropout", "vocab_size"),
                   info_line=_classifier_line, architecture=RECURRENT_ARCHITECTURE,
                   fixed_on_resume=STACK_FIXED + ("pooling", "ngrams"), generates=False,
                   extra={"defaults": CLASSIFIER_DEFAULTS, "init_keeps": ("embed",)}))
