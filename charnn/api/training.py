"""`charnn.train(corpus, **flags) -> TrainResult`: `charnn train` from Python, reporting through `on_event`."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

from charnn.api.params import ParamError, keyword_names, plain_number
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
    command does, then raises KeyboardInterrupt (a second one: at once); resume=True continues it."""
    if on_event is not None and not callable(on_event):  # (it failed at the first event, after the text was read)
        raise ParamError(f"`on_event` must be a function (kind, info) or None, got {type(on_event).__name__}",
                         "on_event")
    flags = {k: plain_number(v) for k, v in flags.items()}  # (NumPy's scalars, from an array of settings, too)
    with keyword_names():  # (errors name the keywords: `max_time`, not the flag `--max-time`)
        model_cfg, cfg = train_configs(flags)
    stop = StopRequest()
    with graceful_signals(stop):  # (in the main thread; elsewhere signals are left as they are)
        with keyword_names():
            run = start_run(corpus, model_cfg, cfg, on_event, encoding=flags.get("encoding", "utf-8"),
                            glob=flags.get("glob"), resume=bool(flags.get("resume", False)),
                            log_every=flags.get("log_every", 10), explicit=set(flags), stop=stop)
        try:
            with keyword_names():
                return run.fit()
        except TrainingInterrupted as e:
            raise KeyboardInterrupt(f"charnn.train stopped at step {run.trainer.step}; saved {e.path} "
                                    "(resume=True continues it)") from None
