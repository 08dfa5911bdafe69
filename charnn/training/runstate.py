"""A run's saved state: where it lives, what a checkpoint holds (weights, optimiser, progress, the carried
recurrent state of every stream, random number generators), writing it, and taking it back on --resume.

The recurrent state goes through the model's `state_ops` (charnn.models.state): this module knows no layout.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional, Tuple

import torch

from charnn.checkpoint import (PREVIOUS, build_model, load_checkpoint, run_checkpoints, save_checkpoint,
                               sweep_temp_files)
from charnn.config import ModelConfig, TrainConfig
from charnn.data.files import HeldInterrupt
from charnn.errors import CharnnError, ConfigError, first_line, is_out_of_memory
from charnn.training.init_from import FINETUNE_LR, graft, load_parent
from charnn.training.resume import CONFIG_VERSION, check_steps_left, load_resume, resume_config


def run_dir_for(cfg: TrainConfig, corpus) -> Path:
    return Path(cfg.out) / (cfg.name or corpus.name)


def check_writable(run_dir: Path) -> None:
    """Fail before training, not after it, when the run folder cannot be written. Also sweeps away temp
    files that a killed save left behind (they never hold the only copy of anything)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CharnnError(f"cannot write to {str(run_dir)!r}: {e.strerror or e}; choose another --out") from None
    sweep_temp_files(run_dir)


def begin(run_dir: Path, cfg: TrainConfig, model_cfg: ModelConfig, resume: bool,
          explicit: Optional[set]) -> Tuple[TrainConfig, Optional[dict], object]:
    """(the run's config, the checkpoint it resumes, the parent it fine-tunes): --resume takes the run's saved
    settings (flags given now override); --init-from loads the parent and defaults --lr to FINETUNE_LR."""
    if resume and cfg.init_from and (explicit is None or "init_from" in explicit):
        raise ConfigError("Can't provide both `--resume` and `--init-from`: a resumed run continues from its "
                          "own last.pt, which remembers its parent. Choose one")
    resumed = load_resume(run_dir, cfg.out) if resume else None
    if resumed:
        cfg = resume_config(resumed, cfg, model_cfg, explicit)
    parent = None
    if cfg.init_from and not resumed:
        parent = load_parent(cfg.init_from, model_cfg, cfg, explicit, run_dir)
        if explicit is not None and "lr" not in explicit:  # fine-tuning wants a gentler default
            cfg = replace(cfg, lr=FINETUNE_LR)
    return cfg, resumed, parent


def model_for(task, model_cfg: ModelConfig, resumed: Optional[dict], parent, seed: int, on_event):
    """(config, model, parent record): the resumed run's model, the parent's (fine-tuning, its vocabulary maybe
    grown, its label table grafted) or a fresh one for the task's data."""
    if resumed:
        model_cfg = ModelConfig.from_saved(resumed["model_config"])
    else:
        model_cfg = task.model_config(task.base_config(model_cfg, parent))
    model_cfg = model_cfg.validate()
    model = build_model(model_cfg)
    record = resumed.get("parent") if resumed else None
    if parent:
        own = getattr(task, "graft", None)  # a task that fills its kind of model from the parent (the classifier)
        own(model, parent, seed) if own else graft(model, parent, seed, task.label_names)
        tok = task.tokenizer
        parent.added = list(tok.decode(range(parent.model_cfg.vocab_size, tok.vocab_size)))
        record = parent.record()
        if hasattr(tok, "byte_chars") and getattr(task, "train_ids", None) is not None:  # (pieces: nothing is added)
            record.update(byte_chars=tok.byte_chars(task.train_ids), text_chars=task.data_record.get("train_chars"))
        dropped = [n for n in (parent.data.get("labels") or {}).get("names") or [] if n not in (task.label_names or [])]
        on_event("init_from", {**record, **({"labels_dropped": dropped} if dropped else {})})  # (dropped silently)
    return model_cfg, model, record


def checkpoint_data(t, val_loss: float, with_training_state: bool) -> dict:
    """What trainer `t` saves; with the training state, a collective under torchrun (every rank must be here)."""
    data = {
        "model_config": t.model_cfg.saved(), "tokenizer": t.tokenizer.state(),
        "model": {k: v.detach().cpu() for k, v in t.model.state_dict().items()},
        "train_config": asdict(t.cfg), "config_version": CONFIG_VERSION, "step": t.step, "epoch": t.epoch,
        "chars_seen": t.chars_seen, "elapsed": t.elapsed(), "val_loss": val_loss,
        "best_val_loss": min(t.best_val, val_loss), "device": t.device.type, "precision": t.precision,
        "data": t.task.data_record,
        "threads": t.threads_choice.threads,  # a resumed run without --threads keeps it (training.choices)
    }
    if t.task.selects_by != "loss":  # this checkpoint's score, and the best so far, by what picks best.pt
        data["selection"] = {"by": t.task.selects_by, "score": t.last_score, "best": t.best_score}
    if t.parent:
        data["parent"] = t.parent
    data.update(t.task.record())
    if with_training_state:
        ops = t.model.state_ops
        # the carried state of all B streams: every rank's rows gathered
        gathered = ops.map(t.state, lambda h, axis: t.dist.gather_rows(h, dim=axis))
        hidden = None if gathered is None else [h.detach().cpu() for h in ops.pack(gathered)]
        data["optimizer"] = t.opt.state_dict()
        data["progress"] = {"step": t.step, "epoch": t.epoch, "epochs_done": t.epochs_done(), "window": t.window,
                            "offset": t.offset,
                            "bad_evals": t.bad_evals, "patience_mark": t.patience_mark, "hidden": hidden,
                            "schedule_from": t.schedule_from,
                            "best_by": t.task.selects_by, "best_score": t.best_score}
        data["rng"] = {"torch": torch.get_rng_state()}
        if t.device.type == "cuda":
            data["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    return data


def write(t, path: Path, val_loss: float) -> None:
    """Save trainer `t`'s checkpoint to `path` (rank 0 writes; under torchrun no rank goes on, or resumes from
    this file, before rank 0 has written it)."""
    data = checkpoint_data(t, val_loss, with_training_state=True)
    failed = None
    if t.dist.is_main:
        try:
            save_checkpoint(data, path)
        except CharnnError as e:
            failed = e
    if t.dist.any(failed is not None):
        raise failed or CharnnError(f"the first process could not write {path}; see its error")


def check_same_text(saved: dict, now: dict, run: str, val_file: Optional[str] = None) -> None:
    """A resumed run reads the text it was trained on: its position in the data and its carried state mean nothing
    in another text (a corpus left off the command line, a --glob forgotten, the file edited)."""
    was = saved.get("data") or {}
    again = AGAIN_PAIRS if saved.get("source_tokenizer") is not None else AGAIN
    # another --encoding first: the length or the content below differ because of it
    if was.get("encoding") and now.get("encoding") and was["encoding"] != now["encoding"]:
        raise ConfigError(f"--resume continues run {run!r} on the text it was trained on, read as "
                          f"{was['encoding']}; this one was read as {now['encoding']}: drop --encoding, or give "
                          f"--encoding {was['encoding']}")
    if "encoding" not in was:  # (saved before runs kept it: it cannot be taken from the run, nor named here)
        again += "; a run saved before 2026-12-07 does not record its --encoding: if it had one, give it again"
    for k in ("train_tokens", "train_chars"):
        if k in was and k in now and was[k] != now[k]:
            what = k.replace("train_", "training ")
            raise ConfigError(f"--resume continues run {run!r} on the text it was trained on ({was.get('corpus')}: "
                              f"{was[k]:,} {what}); this text ({now.get('corpus')}) has {now[k]:,}. {again}")
    if was.get("content") and now.get("content") and was["content"] != now["content"]:  # (same length, edited)
        also = f" and its validation file {val_file!r}" if val_file else ""  # (the digest holds both)
        raise ConfigError(f"--resume continues run {run!r} on the text it was trained on ({was.get('corpus')}); this "
                          f"text ({now.get('corpus')}{also}) has as many characters but is not the same. {again}")


AGAIN = ("Pass that text again (with its --glob), or fine-tune the run on this one under a new --name with --init-from "
         "and the run's folder")
AGAIN_PAIRS = ("Pass those pairs again (with their --glob), or train a new run on these under a new --name (a --pairs "
               "model trains from scratch: --init-from fine-tunes language models)")


def text_and_folder(resumed: Optional[dict], data_record: dict, run_dir: Path, cfg: TrainConfig,
                    explicit: Optional[set]) -> str:
    """Once the text is read: a resumed run must have the text it trained on (check_same_text), then steps left
    (check_steps_left); a fresh run in the folder of an older run of the same name returns what it holds ("" where
    nothing), said before training, since its first save moves that run into previous/ (keep_previous)."""
    if resumed:
        check_same_text(resumed, data_record, run_dir.name, cfg.val_file)
        check_steps_left(resumed, cfg, explicit, run_dir.name)
        return ""
    return " and ".join(run_checkpoints(run_dir))


RUN_FILES = ("best.pt", "last.pt", "metrics.jsonl", "config.json")


def keep_previous(run_dir: Path, resumed: bool) -> None:
    """Before the first save of a fresh run into the folder of an older run of the same name: move that run's files
    into run_dir/previous/ (replacing what an earlier replacement left there), so an accidental rerun loses no
    checkpoint, and its best.pt is not picked over this run's last.pt."""
    old = [run_dir / n for n in RUN_FILES if (run_dir / n).is_file()]
    if resumed or not any(f.suffix == ".pt" for f in old):
        return
    keep = run_dir / PREVIOUS
    try:
        keep.mkdir(exist_ok=True)
        for name in RUN_FILES:
            (keep / name).unlink(missing_ok=True)
        for f in old:
            os.replace(f, keep / f.name)
    except OSError as e:
        raise CharnnError(f"could not move the older run in {str(run_dir)!r} to {str(keep)!r}: "
                          f"{e.strerror or e}; choose another --name") from None


def save_on_stop(t) -> Optional[Path]:
    """Save last.pt on a signal, unless this process has not trained a step: then an existing run of
    the same name stays exactly as it was (None when there is no last.pt at all)."""
    if t.step > t.start_step:
        try:
            return t.save(("last.pt",), t.last_val)
        except HeldInterrupt:  # (another signal came while it saved: it waited for the save, which is done)
            return t.run_dir / "last.pt"
    existing = t.run_dir / "last.pt"
    return existing if t.resumed and existing.is_file() else None


def older_run_kept(t) -> bool:
    """A fresh run that trained no step (stopped at once: a callback, --max-time too short for a step) in the
    folder of an older run of its name saves nothing at its end, so that run stays as it was: its first save would
    have moved the older run into previous/ for an untrained model (a signal's stop leaves it too: save_on_stop)."""
    return t.step == t.start_step and not t.resumed and not t._saved_once and t.dist.any(
        t.dist.is_main and bool(run_checkpoints(t.run_dir)))


def end_save_due(t, last_eval_step: int) -> bool:
    """Whether training's end evaluates and saves: steps since the last evaluation, or no last.pt yet; not where a
    fresh run trained no step in the folder of an older run of its name (older_run_kept)."""
    return not older_run_kept(t) and (last_eval_step != t.step or t.dist.any(
        t.dist.is_main and not (t.run_dir / "last.pt").exists()))


def on_eval_error(t, e: BaseException) -> BaseException:
    """What a validation pass's error `e` raises: where it ran out of memory (CUDA's: what training leaves cached,
    and a subword vocabulary's logits for every stream), last.pt takes the steps since the last save (the error
    left the run as its last save had it) and the error is one line; any other, or one under torchrun, as it is."""
    if not is_out_of_memory(e) or t.dist.active:
        return e
    if t.device.type == "cuda":
        torch.cuda.empty_cache()
    path = save_on_stop(t)
    held = f"; {path} holds every step (train --resume continues it)" if path else ""
    return CharnnError(f"out of memory in the validation pass at step {t.step}{held}; try a smaller --batch-size, "
                       "--seq-len or --hidden, or another --device")


def optimizer_state(saved: dict, opt) -> dict:
    """A saved optimiser state with how the step runs (fused or foreach) made this optimiser's: load_state_dict would
    bring back the saving run's (a run from before AdamW was fused on a CPU would stay unfused, one saved on a CPU
    would ask for a fused kernel on a device without one)."""
    how = {k: opt.defaults[k] for k in ("fused", "foreach") if k in opt.defaults}
    return {**saved, "param_groups": [{**group, **how} for group in saved["param_groups"]]}


def _best_pt_scores(run_dir: Path, by: str) -> Optional[Tuple[float, float]]:
    """(val loss, score by `by`) recorded in run_dir/best.pt (inf where it has none); None where it cannot be
    read."""
    try:
        data = load_checkpoint(run_dir / "best.pt")
    except (CharnnError, OSError):
        return None
    number = lambda x: float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.inf  # noqa: E731
    loss, selection = number(data.get("val_loss")), data.get("selection") or {}
    return loss, loss if by == "loss" else (number(selection.get("score")) if selection.get("by") == by else math.inf)


def restore(t, data: dict) -> None:
    """Put trainer `t` back where checkpoint `data` left it: weights, optimiser, progress, state, generators."""
    try:
        t.model.load_state_dict(data["model"])
        t.opt.load_state_dict(optimizer_state(data["optimizer"], t.opt))
    except (RuntimeError, ValueError, KeyError) as e:  # (a hand-edited or foreign last.pt: a traceback)
        raise CharnnError(f"--resume: the checkpoint's weights or optimiser state do not fit its own model config: "
                          f"{first_line(RuntimeError(' '.join(str(e).split())))}") from None  # (its lines joined)
    p = data["progress"]
    t.step, t.epoch, t.window, t.offset = p["step"], p["epoch"], p["window"], p["offset"]
    t.best_val, t.last_val = data.get("best_val_loss", math.inf), data.get("val_loss", math.inf)
    t.bad_evals, t.chars_seen = p.get("bad_evals", 0), data.get("chars_seen", 0)
    t.patience_mark = p.get("patience_mark", t.best_val)  # older runs: the best so far
    t.best_score = p.get("best_score", t.best_val)
    t.last_score = (data.get("selection") or {}).get("score", t.last_val)
    best = _best_pt_scores(t.run_dir, t.task.selects_by)  # (best.pt read once)
    if p.get("best_by", "loss") != t.task.selects_by:  # picked by another score until now: start this one afresh
        t.best_score = t.patience_mark = t.last_score = math.inf
        if t.task.selects_by == "loss":  # (back to the loss: best.pt's own loss is the one to beat, and the best
            t.best_score = t.patience_mark = t.best_val = math.inf if best is None else best[0]  # val is best.pt's)
    if best is None:  # no best.pt to read (deleted, cut short): the first evaluation writes one (the run said
        t.best_val = t.best_score = math.inf  # "done -> best.pt" of a file that was not there)
    else:  # (a run stopped between its two saves left a best.pt better than last.pt records: the resumed run
        t.best_val, t.best_score = min(t.best_val, best[0]), min(t.best_score, best[1])  # replaced it at once)
    t.elapsed_before, t.schedule_from = data.get("elapsed", 0.0), p.get("schedule_from", 0.0)
    was = data.get("train_config") or {}  # the limits the run was saved with, where this resume changed them
    t.limits_changed = {k: (was.get(k), getattr(t.cfg, k)) for k in ("max_steps", "max_time", "epochs")
                        if k in was and was.get(k) != getattr(t.cfg, k)  # (time drives the schedule only alone)
                        and not (k == "max_time" and (t.cfg.max_steps or t.cfg.epochs))}
    ops = t.model.state_ops
    state = ops.unpack(p.get("hidden"))
    if state is not None:
        if t.dist.active:  # last.pt holds every stream's state: take this rank's rows
            state = ops.narrow(state, *t.dist.rows(ops.rows(state)))
        t.state = ops.to(state, t.device)
    rng = data.get("rng", {})
    try:
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and t.device.type == "cuda":
            torch.cuda.set_rng_state_all(list(rng["cuda"]))
    except (TypeError, ValueError, RuntimeError) as e:  # (a checkpoint damaged or written by hand: torch's words)
        raise CharnnError(f"--resume: the checkpoint's random state is damaged ({first_line(e, 100)}); resume from "
                          "another checkpoint, or start again") from None
