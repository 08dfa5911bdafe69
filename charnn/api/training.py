"""`charnn.train(corpus, **flags) -> TrainResult`: `charnn train` from Python, reporting through `on_event`."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

from charnn.api.params import ParamError, check_flag, keyword_names, plain_value
from charnn.sampling import is_integer, python_shown
from charnn.training.run import start_run, train_configs
from charnn.training.stopping import StopRequest, TrainingInterrupted, graceful_signals
from charnn.training.trainer import TrainResult


def train(corpus: Union[None, str, Sequence[str]] = None, *, on_event: Optional[Callable[[str, dict], None]] = None,
          **flags) -> TrainResult:
    """Train as `charnn train CORPUS --flag value ...` does, with the same defaults: `corpus` is a file, a folder,
    a catalog name, a list of those, or None for the built-in corpus; `flags` are the command's flags in
    Python spelling (`max_steps=200`, `max_time="5m"` or seconds, `hidden=128`, `out="checkpoints"`, ...).
    Progress goes to `on_event(kind, info)` (never printed); the run's metrics.jsonl is written as the CLI does.
    Returns where the run went, its steps, best and last val loss, elapsed seconds and why it stopped.
    Ctrl-C (a notebook's interrupt; SIGTERM, SIGHUP) stops it after the current step with last.pt saved, as the
    command does, then raises KeyboardInterrupt (a second one: at once; before the first step, while the text is
    read, at once too: there is nothing to save); resume=True continues it."""
    if on_event is not None and not callable(on_event):  # (it failed at the first event, after the text was read)
        raise ParamError(f"`on_event` must be a function (kind, info) or None, got {type(on_event).__name__}",
                         "on_event")
    flags = {k: plain_value(v) for k, v in flags.items()}  # (NumPy's scalars, a Path, a torch.device, too)
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):  # (a seeded run seeds torch's generators: the caller's are put
        return _train(corpus, on_event, flags)  # back after it, as a notebook's later draws expect)


def _train(corpus, on_event, flags: dict) -> TrainResult:
    quiet, preview_every = flags.pop("quiet", False), flags.pop("preview_every", 0)  # (the command's own two: the
    check_flag("quiet", quiet)  # library prints nothing anyway; a preview is an event)
    if preview_every is not None and not (is_integer(preview_every) and preview_every >= 0):
        raise ParamError(f"`preview_every` must be an integer >= 0 (0: none), got {python_shown(preview_every)}",
                         "preview_every")
    with keyword_names():  # (errors name the keywords: `max_time`, not the flag `--max-time`)
        model_cfg, cfg = train_configs(flags)
    stop = StopRequest()
    with graceful_signals(stop):  # (in the main thread; elsewhere signals are left as they are)
        with keyword_names():
            run = start_run(corpus, model_cfg, cfg, on_event, encoding=flags.get("encoding", "utf-8"),
                            glob=flags.get("glob"), resume=bool(flags.get("resume", False)),
                            log_every=flags.get("log_every", 10), explicit=set(flags), stop=stop)
        if preview_every and on_event is not None and run.trainer.dist.is_main:  # ("preview": {"step", "text"})
            write = lambda step, text: on_event("preview", {"step": step, "text": text})  # noqa: E731
            run.events.add(run.task.preview(run.trainer.model, run.trainer.device, preview_every, write, cfg.seed))
        try:
            with keyword_names():
                return run.fit()
        except TrainingInterrupted as e:
            raise KeyboardInterrupt(f"charnn.train stopped at step {run.trainer.step}; saved {e.path} "
                                    "(resume=True continues it)") from None
