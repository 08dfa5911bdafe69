"""Resuming a run: finding its last.pt and deciding which training config the resumed run uses."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional, Tuple

from charnn.checkpoint import MOVED_ASIDE, NAMES, load_checkpoint, moved_aside
from charnn.config import DEFAULT_PATIENCE, ModelConfig, TrainConfig, from_dict
from charnn.data.training_text import TextOptions, run_names
from charnn.errors import CharnnError, ConfigError
from charnn.models import registry


def load_resume(run_dir: Path, out: str) -> dict:
    """The loaded last.pt of run_dir, with a clear error when there is no run to resume."""
    path = run_dir / "last.pt"
    if not run_dir.is_dir():
        runs = sorted(p.name for p in Path(out).glob("*") if any((p / n).is_file() for n in NAMES))
        known = f"runs there: {', '.join(runs[:10])}" if runs else "there are no runs there"
        raise CharnnError(f"--resume: there is no run {run_dir.name!r} under {out!r} ({known}); "
                          "check --name and --out, or train without --resume")
    if not path.is_file():
        older = str(run_dir / "previous")
        also = f" (the run before it is in {older!r}: {MOVED_ASIDE})" if moved_aside(run_dir) else ""
        raise CharnnError(f"--resume: {str(path)!r} does not exist, so run {run_dir.name!r} cannot be resumed; "
                          f"train without --resume to start it afresh{also}")
    data = load_checkpoint(path)
    if "optimizer" not in data or "progress" not in data:
        raise CharnnError(f"--resume: {str(path)!r} has no optimiser state or training position")
    return data


# Flags a resumed run cannot change: the data position and carried state only mean something with them; the
# tokenizer is the run's (a new one was recorded, not used); --eval-tokens measures the best so far (another amount
# would compare two yardsticks); --seed drew the validation lines of a --label-by line run.
FIXED_ON_RESUME = ("batch_size", "seq_len", "val_frac", "val_file", "tokenizer", "vocab_size", "eval_tokens", "seed")
MODEL_FLAGS = registry.get("lm").fixed_on_resume  # a language model's; each run's kind says its own


# What a checkpoint's train_config means: 2, a --patience of None is "not given" and a number was typed (1, the
# runs before it: every run saved 5 where none was given)
CONFIG_VERSION = 2

# What the text is read as: a resumed run reads its text before its checkpoint is loaded, so these come from the
# saved run here (they had to be given again: "run 'x' was trained with --pairs; resume it the same way")
TEXT_KIND = ("pairs", "label_by", "skip_bad_lines")


def saved_text_options(corpus, cfg: TrainConfig, model_cfg: ModelConfig, explicit: Optional[set],
                       encoding: str) -> Tuple[TrainConfig, ModelConfig, str]:
    """`cfg` with the saved run's --pairs, --label-by and --skip-bad-lines where this command line did not give
    them (`explicit` None: every field was given), a saved classifier's kind in `model_cfg` (the task is chosen
    by it) where neither --classifier nor --kind was given, and the saved --encoding where none was. The run is
    --name's, else the first of the names a run on CORPUS may have (a plain run and a --pairs run of one linked
    file, or of a catalog name, are named differently) that holds a last.pt, and --name is set to it: the run
    whose options were read is the run resumed. A run that cannot be read here is left to load_resume."""
    if explicit is None:
        return cfg, model_cfg, encoding
    try:
        names = [cfg.name] if cfg.name else run_names(corpus, TextOptions.of(cfg))
    except CharnnError:  # (CORPUS itself is wrong: reading it says so)
        return cfg, model_cfg, encoding
    found = next(((name, saved) for name in names if (saved := peek(Path(cfg.out) / name / "last.pt"))), None)
    if found is None:
        return cfg, model_cfg, encoding
    name, saved = found
    old = saved["train_config"]
    keep = _blank_as_none({k: old[k] for k in TEXT_KIND if k not in explicit and k in old})
    kind = (saved.get("model_config") or {}).get("kind")
    if kind == "classifier" and not {"classifier", "kind"} & set(explicit):
        model_cfg = replace(model_cfg, kind=kind)
    was = (saved.get("data") or {}).get("encoding") if isinstance(saved.get("data"), dict) else None
    if "encoding" not in explicit and isinstance(was, str):  # (recorded since 2026-12-07)
        encoding = was
    return replace(cfg, name=name, **keep), model_cfg, encoding


def _same_file(a: str, b: str) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)


def _blank_as_none(options: dict) -> dict:
    """A saved --val-file, --init-from or --label-by of only spaces as not given (so a run saved before an empty
    one was refused took it)."""
    for k in ("val_file", "init_from", "label_by"):
        if isinstance(options.get(k), str) and not options[k].strip():
            options[k] = None
    return options


def _used(old: TrainConfig, k: str):
    """What a resumed run used for field `k`, in words: its vocabulary as trained (a default one too)."""
    if k == "vocab_size":
        return "none: its tokenizer is chars" if old.pieces is None else old.pieces
    return "none" if getattr(old, k) is None else getattr(old, k)


def peek(path: Path) -> Optional[dict]:
    """A checkpoint's pickled part (its configs; the weights are memory-mapped, not read), or None where there is
    no readable one with a train_config."""
    try:
        if not path.is_file():
            return None
        import torch

        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - the trainer loads it again and says what is wrong
        return None
    return saved if isinstance(saved, dict) and isinstance(saved.get("train_config"), dict) else None


def resume_config(saved: dict, given: TrainConfig, model_cfg: ModelConfig, explicit: Optional[set]) -> TrainConfig:
    """The training config of a resumed run: the saved one, with the flags given on this command line
    (`explicit`; None means every field of `given`) laid over it. --out and --name always come from
    `given`, since they are how the run was found. Changing the data layout or the model is refused."""
    old = from_dict(TrainConfig, _blank_as_none(dict(saved.get("train_config", {}))))
    names = set(asdict(given)) if explicit is None else set(explicit)
    given_values = {k: v for k, v in asdict(given).items() if not (k == "batch_size" and v is None)}  # None: auto
    merged = {**asdict(old), **{k: v for k, v in given_values.items() if k in names | {"out", "name"}}}
    if "patience" not in names and merged.get("patience") == DEFAULT_PATIENCE and \
            saved.get("config_version", 1) < CONFIG_VERSION:  # a run saved before --patience worked beside a limit
        merged["patience"] = None  # kept the default 5 as a value: as not given (resumed with --max-steps, an
    # open-ended run that had stopped on patience stopped again at once); a later run's 5 was typed: kept
    flag = lambda k: "--" + k.replace("_", "-")  # noqa: E731
    if old.vocab_size is None and merged["vocab_size"] == old.pieces:  # (the default it trained with, typed now)
        merged["vocab_size"] = None
    if merged["val_file"] and old.val_file and _same_file(merged["val_file"], old.val_file):  # (typed relative; a
        merged["val_file"] = old.val_file  # run records it absolute: start_run)
    problems = [f"{flag(k)} {merged[k]} (the run used {_used(old, k)})"
                for k in FIXED_ON_RESUME if merged[k] != getattr(old, k)]
    if explicit is not None:
        saved_model, kind = saved.get("model_config", {}), registry.kind_of(saved.get("model_config", {}))
        switches = {f.name: f.spelled for f in kind.flags if f.type is bool}  # (as typed: not "--x False")
        shown = lambda k, v: switches[k](v) if k in switches else f"{flag(k)} {v}"  # noqa: E731
        was = lambda k, v: switches[k](v) if k in switches else str(v)  # noqa: E731
        problems += [f"{shown(k, model_cfg.value(k))} (the run used {was(k, saved_model[k])})"
                     for k in kind.fixed_on_resume
                     if k in explicit and k in saved_model and model_cfg.value(k) != saved_model[k]]
    if problems:
        raise ConfigError(f"--resume continues run {given.name or 'NAME'} as it was saved; it cannot change "
                          f"{', '.join(problems)}. Drop those flags, or start a new run under another --name")
    return TrainConfig(**merged).validate()


def check_steps_left(saved: dict, cfg: TrainConfig, explicit: Optional[set], run: Optional[str] = None) -> None:
    """A resumed run must have steps left under its --max-steps and --epochs, and time left under its --max-time
    (each counts from the run's start: it ended at once, saying only "done"); checked after its kind and its
    text, which say more about a wrong --resume."""
    progress = saved.get("progress") or {}
    done = {"max_steps": progress.get("step", saved.get("step")),  # (epochs: fractional, where saved: a run that
            "epochs": progress.get("epochs_done", progress.get("epoch", saved.get("epoch"))),  # had done --epochs
            "max_time": saved.get("elapsed")}  # 0.5 resumed with 0 steps left, as if it had not)
    for key in ("epochs", "max_time"):
        if isinstance(done[key], float):
            done[key] = int(done[key]) if done[key].is_integer() else round(done[key], 4 if key == "epochs" else 1)
    for key, unit in (("max_steps", "steps"), ("epochs", "epochs"), ("max_time", "seconds")):
        limit, at = getattr(cfg, key), done[key]
        spare = max(3.0, 0.05 * limit) if key == "max_time" and limit else 0.0  # (a run stopped by its --max-time
        # saves with the final evaluation's reserve unspent: a resume has too little left to start, let alone step)
        if not (limit and isinstance(at, (int, float)) and not isinstance(at, bool) and limit - spare <= at):
            continue
        flag, name = "--" + key.replace("_", "-"), run or cfg.name or "NAME"  # (run: its folder's name, which a
        # run of the built-in corpus or one named after its corpus has no --name for)
        amount = f"{at:,} {unit[:-1] if at == 1 else unit}"
        timed = key == "max_time"
        if explicit is None or key in explicit:
            more = f"{math.ceil(at + spare):,}s" if timed else f"{at:,}"  # (time: enough to start and step too)
            raise ConfigError(f"run {name} has trained {'for ' * timed}{amount}, and {flag} counts from the run's "
                              f"start: give more than {more} to train on")
        raise ConfigError(f"run {name} has {'used' if timed else 'trained'} its {flag} ({amount}): give a larger "
                          f"{flag} to train on")
