"""One assembly of a training run, shared by `charnn train` (charnn.cli.train) and `charnn.train`
(charnn.api.training): flags -> configs, the text loaded as the flags say, the Trainer and rank 0's
metrics.jsonl writer. The CLI adds only presentation (progress, previews, messages)."""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Iterable, Optional, Tuple, get_args, get_type_hints

from charnn.checkpoint import resolve_checkpoint
from charnn.config import ModelConfig, TrainConfig, parse_duration
from charnn.data.corpus import BUILTIN_SOURCE, corpus_paths
from charnn.data.training_text import TextOptions, load_training_text
from charnn.errors import CharnnError, ConfigError
from charnn.sampling import shown
from charnn.models import registry
from charnn.tasks.pairs import SIZED
from charnn.training.resume import peek, saved_text_options
from charnn.training.metrics import Callbacks, MetricsLogger, recorded_text, run_config
from charnn.training.trainer import StopRequest, Trainer, TrainResult

TRAIN_FLAGS = {f.name for f in fields(TrainConfig)}
OTHER_FLAGS = {"glob", "encoding", "resume", "log_every"}
FLAT = {f.name for f in fields(ModelConfig)} - {"extra"}  # the model flags with a field of their own


def model_flags() -> set:
    """Every registered kind's train flags (charnn.models.registry), and --kind."""
    return set(registry.flag_table()) | {"kind"}


def train_configs(flags: dict, caller: str = "charnn.train",
                  given: Optional[Iterable[str]] = None) -> Tuple[ModelConfig, TrainConfig]:
    """The model and training configs of `charnn train`'s flags (Python spelling; missing ones: defaults).
    `given`: the flags the user gave (default: all of `flags`); a model flag the run's kind does not take is an
    error. The kind is --kind, else the one that serves the run's text (--pairs or not) and takes --cell."""
    model_names = model_flags()
    unknown = set(flags) - model_names - TRAIN_FLAGS - OTHER_FLAGS
    if unknown:
        raise ConfigError(f"{caller} got unknown flags: {', '.join(sorted(unknown))}")
    given = set(flags) if given is None else set(given)
    check_types(flags, caller)
    flags = classifier_kind(flags)
    if flags.get("kind") is not None and ("kind" in given or flags.get("classifier")):
        _check_kind_kept(flags)
    _check_flags_have_effect(flags, given)
    serves = "pairs" if flags.get("pairs") else "text"
    # a kind's own flag (--expand) without --cell on --resume/--init-from: checked against the saved run's kind
    saved = _saved_model(flags) if flags.get("kind") is None and "cell" not in given and given & model_names else None
    if saved is not None and registry.kind_of(saved).serves == serves:  # the saved run's kind and cell
        flags = {**flags, "kind": registry.kind_of(saved).name, "cell": saved.get("cell", flags.get("cell"))}
    cells = registry.get(flags["kind"]).cells if flags.get("kind") is not None else ()
    if cells and "cell" not in given and flags.get("cell", "lstm") not in cells:  # --kind minrnn alone: its first
        flags = {**flags, "cell": cells[0]}
    cell = flags.get("cell", "lstm")
    if flags.get("kind") is not None:
        kind = registry.check_kind(flags["kind"], serves, given & model_names, cell)
    else:
        kind = registry.choose(serves, cell)
        registry.check_flags(kind, given & model_names)
    if serves == "pairs" and "seq_len" in given:  # (it was accepted and ignored)
        raise ConfigError("`--seq-len` is the BPTT length of a model of text; a --pairs model reads each pair whole "
                          "(long pairs: --batch-size sets how many go together)")
    values = {k: v for k, v in flags.items() if k in model_names - {"kind"}}
    values.update({f.name: f.default for f in kind.flags if f.name not in values})  # (charnn.train's: all saved)
    # a kind's own defaults for shared flags it was not given (the classifier's smaller encoder; a language model
    # of plain text's AR/TAR)
    own = {**kind.extra.get("defaults", {}), **({} if flags.get("label_by") else kind.extra.get("plain_defaults", {}))}
    values.update({k: v for k, v in own.items() if k not in given})
    model_cfg = ModelConfig(vocab_size=1, kind=kind.name, **{k: v for k, v in values.items() if k in FLAT},
                            extra={k: v for k, v in values.items() if k not in FLAT}).validate()
    kind.make_config(model_cfg)  # the kind's own checks, before any text is read
    train = {k: v for k, v in flags.items() if k in TRAIN_FLAGS}
    # a kind's own defaults for training settings it was not given (the parallel-scan cells' --lr)
    train.update({k: v for k, v in kind.extra.get("train_defaults", {}).items() if k not in given})
    if serves == "pairs":  # what the user left open, the task sizes for its training pairs
        train["sized"] = tuple(sorted(SIZED - given))
    if kind.name == "classifier":  # --kind classifier is --classifier (it checks for --label-by)
        train["classifier"] = True
    if isinstance(train.get("max_time"), str):
        train["max_time"] = parse_duration(train["max_time"])
    # the default warm-up is at most a quarter of a --max-steps run (--max-steps 20 warmed up all the way and
    # never trained at --lr; a tenth was too short for a 200-step run at --lr 2e-2); a --warmup given is the user's
    if train.get("max_steps") and not flags.get("resume") and "warmup" not in given:
        train["warmup"] = min(TrainConfig.warmup, max(1, train["max_steps"] // 4))
    return model_cfg, TrainConfig(**train).validate(resuming=bool(flags.get("resume")))


def _check_flags_have_effect(flags: dict, given: set) -> None:
    """Flags given other than their defaults that this run would ignore (they were accepted without a word): the
    label flags without labels, --skip-bad-lines without lines to skip, --val-frac beside --val-file. A --resume
    takes its labels and text from the saved run, so its label flags are checked there."""
    if flags.get("resume"):
        return
    if flags.get("label_contrast") and not flags.get("label_by"):
        raise ConfigError("`--label-contrast` sets each text's own label above the others: add "
                          "`--label-by file|folder|line`")
    defaults = TrainConfig()  # (a default passed counts as not given: charnn.train's loops pass every keyword)
    given = {k for k in given if k in flags and flags[k] != getattr(defaults, k, None)}
    for name, does in (("label_dropout", "shows training windows without their label"),
                       ("label_negatives", "sets how many other labels --label-contrast compares with")):
        if name in given and not flags.get("label_by"):
            raise ConfigError(f"`--{name.replace('_', '-')}` {does}: add `--label-by file|folder|line`")
    if "label_negatives" in given and not flags.get("label_contrast"):
        raise ConfigError("`--label-negatives` sets how many other labels --label-contrast compares with: add "
                          "`--label-contrast`")
    if "skip_bad_lines" in given and not (flags.get("pairs") or flags.get("label_by") == "line"):
        raise ConfigError("`--skip-bad-lines` skips lines that are not label<TAB>text or input<TAB>target: it "
                          "needs --label-by line or --pairs")
    if "val_frac" in given and flags.get("val_file"):
        raise ConfigError("`--val-frac` splits validation text off the corpus; with `--val-file` the validation "
                          "text is that file: drop one")


def check_types(flags: dict, caller: str) -> None:
    """Each flag's value of the type its config field (or its kind's flag) takes: charnn.train's keywords arrive
    as any Python value (hidden="64" failed deep in torch, hidden=True trained a model 1 wide, resume="no" resumed).
    An int is a float's value too; None is a value of an Optional field; max_time may be a string ("5m")."""
    kinds = {name: flag.type for name, (flag, _) in registry.flag_table().items()}
    hints = {**get_type_hints(TrainConfig), "resume": bool, "glob": str, "encoding": str, "log_every": int}
    for name, value in flags.items():
        want = kinds.get(name) or hints.get(name)
        optional = type(None) in get_args(want)
        base = next(a for a in get_args(want) if a is not type(None)) if optional else want
        if base not in _TYPE_WORDS or value is None and optional or name == "max_time" and isinstance(value, str):
            continue
        if not _is(value, base):
            raise ConfigError(f"{caller}: `{name}` takes {_TYPE_WORDS[base]}{' or None' if optional else ''}, "
                              f"got {shown(value)}")
    if flags.get("log_every", 1) < 1:  # (the command's option has min=1; 0 wrote no records at all)
        raise ConfigError(f"`--log-every` must be at least 1, got {shown(flags['log_every'])}")


_TYPE_WORDS = {int: "a whole number", float: "a number", bool: "True or False", str: "a string"}


def _is(value, base: type) -> bool:
    """isinstance, but a bool is no number and an int is a float's value too."""
    if base in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if base is float else base)


def _saved_model(flags: dict) -> Optional[dict]:
    """The saved model_config of the run --resume continues (named by --name) or of the checkpoint --init-from
    starts from, so that flags like --expand are checked against that run's kind when --cell is not given; None
    where there is none or it cannot be read here (the trainer then says what is wrong)."""
    if flags.get("init_from"):
        path = flags["init_from"]
    elif flags.get("resume") and flags.get("name"):
        path = Path(flags.get("out") or "checkpoints") / flags["name"] / "last.pt"
    else:
        return None
    try:  # (its configs only: the weights and optimiser state, 600 MB for a 2x2048 LSTM, are mapped, not read)
        saved = peek(resolve_checkpoint(path))
    except (CharnnError, OSError):
        return None
    return saved.get("model_config") if saved else None


def _check_kind_kept(flags: dict) -> None:
    """--kind on --resume or --init-from names the saved run's kind (it was ignored); only a classifier may start
    from a language model of another kind."""
    saved = _saved_model(flags)
    if saved is None:
        return
    was, init = registry.kind_of(saved).name, bool(flags.get("init_from"))
    if flags["kind"] == was or (init and flags["kind"] == "classifier"):
        return
    how = "--init-from keeps the base's kind" if init else "--resume continues the run as it was saved"
    raise ConfigError(f"{how}; it cannot change --kind {flags['kind']} (the {'base' if init else 'run'} is a {was} "
                      "model)")


def classifier_kind(flags: dict) -> dict:
    """`--classifier` is `--kind classifier` (another --kind beside it is an error)."""
    if not flags.get("classifier"):
        return flags
    if flags.get("kind") not in (None, "classifier"):
        raise ConfigError(f"Can't provide both `--classifier` and `--kind {flags['kind']}`: --classifier trains "
                          "the classifier kind. Choose one")
    return {**flags, "kind": "classifier"}


@dataclass
class TrainingRun:
    trainer: Trainer
    events: Callbacks  # the run's on_event: add callbacks (previews, say) before fit
    metrics: Optional[MetricsLogger]  # rank 0's metrics.jsonl writer (None on other ranks)

    @property
    def task(self):
        return self.trainer.task

    def fit(self) -> TrainResult:
        self.trainer.stop.training = True  # (from here a signal stops after the step, which saves)
        try:  # (under torchrun a rank that died fails DDP's all-reduce inside backward too: one PeerLost line)
            with self.trainer.dist.guard():
                return self.trainer.fit()
        finally:
            if self.metrics is not None:
                self.metrics.close()  # the last step's record, also when training stopped early


def start_run(corpus, model_cfg: ModelConfig, cfg: TrainConfig, on_event: Optional[Callable[[str, dict], None]] = None,
              *, encoding: str = "utf-8", glob: Optional[str] = None, resume: bool = False, log_every: int = 10,
              explicit: Optional[set] = None, stop: Optional[StopRequest] = None, dist=None,
              loaded: Optional[Callable[[], None]] = None, started: Optional[float] = None) -> TrainingRun:
    """Load the text (a plain corpus, labelled documents or pairs, as `cfg` says), make the Trainer and, on
    rank 0, the metrics writer. `loaded` is called once loading ends (the CLI closes its download bar).
    `started`: when the run's clock (--max-time) started, as time.perf_counter() (default: now, so loading the
    text counts; the CLI passes its process's start, so its imports count too)."""
    started = time.perf_counter() if started is None else started
    events, stop = Callbacks(on_event), stop or StopRequest()
    events.stop = stop  # (a callback's StopTraining: the loop ends as at a limit)
    if cfg.val_file and os.path.isfile(cfg.val_file):  # (recorded absolute: a resume from another folder finds it)
        cfg = replace(cfg, val_file=os.path.abspath(cfg.val_file))
    if resume:
        cfg, model_cfg, encoding = saved_text_options(corpus, cfg, model_cfg, explicit, encoding)
        if corpus is None and cfg.name:  # (no CORPUS: the run's own text, where it recorded one)
            corpus, glob = _recorded_text(Path(cfg.out) / cfg.name, glob, events)
    try:
        text = load_training_text(corpus, encoding, glob, events, TextOptions.of(cfg))
    finally:
        if loaded is not None:
            loaded()
    trainer = Trainer(text, model_cfg, cfg, events, resume=resume, stop=stop, encoding=encoding, explicit=explicit,
                      dist=dist, started=started)
    metrics = None
    if trainer.dist.is_main:
        config = run_config(trainer, text.source, corpus_args(corpus), glob)
        metrics = events.add(MetricsLogger(trainer.run_dir, log_every, resume, config))
    return TrainingRun(trainer, events, metrics)


def corpus_args(corpus) -> Optional[list]:
    """The corpus arguments as a resume without them reads them again: paths made absolute (a catalog name as it
    is); None for the built-in corpus."""
    paths = corpus_paths(corpus)
    return None if paths is None else [os.path.abspath(p) if os.path.exists(p) else p for p in paths]


def _recorded_text(run_dir: Path, glob: Optional[str], events) -> Tuple[object, Optional[str]]:
    """(CORPUS, --glob) for a resume given no CORPUS: what the run recorded (recorded_text; --glob as typed, if it
    was), said in a note; (None, glob) where it recorded none (the built-in corpus)."""
    args, was, words = recorded_text(run_dir)
    out = "" if run_dir.parent == Path("checkpoints") else f"--out {shlex.quote(str(run_dir.parent))} "
    give = f"give its text: charnn train TEXT {out}--name {shlex.quote(run_dir.name)} --resume"
    if args is None and words and not words.startswith(BUILTIN_SOURCE):  # (a run recorded before its arguments
        raise CharnnError(f"run {run_dir.name!r} trained on {words!r}, not the built-in corpus; {give}")  # were)
    if args is None:
        return None, glob
    gone = [a for a in args if os.path.isabs(a) and not os.path.exists(a)]
    if gone:
        raise CharnnError(f"run {run_dir.name!r} trained on {gone[0]!r}, which is not there now; {give}")
    events("resume_text", {"corpus": args, "glob": glob or was})
    return args, glob or was
