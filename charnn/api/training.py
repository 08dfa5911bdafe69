"""`charnn.train(corpus, **flags) -> TrainResult`: `charnn train` from Python, reporting through `on_event`."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

from charnn.training.run import start_run, train_configs
from charnn.training.trainer import TrainResult


def train(corpus: Union[None, str, Sequence[str]] = None, *, on_event: Optional[Callable[[str, dict], None]] = None,
          **flags) -> TrainResult:
    """Train as `charnn train CORPUS --flag value ...` does, with the same defaults: `corpus` is a file, a folder,
    a catalog name, a list of those, or None for the built-in corpus; `flags` are the command's flags in
    Python spelling (`max_steps=200`, `max_time="5m"` or seconds, `hidden=128`, `out="checkpoints"`, ...).
    Progress goes to `on_event(kind, info)` (never printed); the run's metrics.jsonl is written as the CLI does.
    Returns where the run went, its steps, best and last val loss, elapsed seconds and why it stopped."""
    model_cfg, cfg = train_configs(flags)
    run = start_run(corpus, model_cfg, cfg, on_event, encoding=flags.get("encoding", "utf-8"), glob=flags.get("glob"),
                    resume=bool(flags.get("resume", False)), log_every=flags.get("log_every", 10),
                    explicit=set(flags))
    return run.fit()
