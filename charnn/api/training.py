"""`charnn.train(corpus, **flags) -> TrainResult`: `charnn train` from Python, reporting through `on_event`."""

from __future__ import annotations

from dataclasses import fields
from typing import Callable, Optional, Sequence, Union

from charnn.config import ModelConfig, TrainConfig, parse_duration
from charnn.errors import ConfigError
from charnn.training.trainer import TrainResult

MODEL_FLAGS = {f.name for f in fields(ModelConfig)} - {"vocab_size", "kind", "source_vocab"}  # those two: pairs=True
TRAIN_FLAGS = {f.name for f in fields(TrainConfig)}
OTHER_FLAGS = {"glob", "encoding", "resume", "log_every"}


def train(corpus: Union[None, str, Sequence[str]] = None, *, on_event: Optional[Callable[[str, dict], None]] = None,
          **flags) -> TrainResult:
    """Train as `charnn train CORPUS --flag value ...` does, with the same defaults: `corpus` is a file, a folder,
    a catalog name, a list of those, or None for the built-in corpus; `flags` are the command's flags in
    Python spelling (`max_steps=200`, `max_time="5m"` or seconds, `hidden=128`, `out="checkpoints"`, ...).
    Progress goes to `on_event(kind, info)` (never printed); the run's metrics.jsonl is written as the CLI does.
    Returns where the run went, its steps, best and last val loss, elapsed seconds and why it stopped."""
    from charnn.data.labels import load_corpus
    from charnn.training.metrics import Callbacks, MetricsLogger, run_config
    from charnn.training.trainer import Trainer

    unknown = set(flags) - MODEL_FLAGS - TRAIN_FLAGS - OTHER_FLAGS
    if unknown:
        raise ConfigError(f"charnn.train got unknown flags: {', '.join(sorted(unknown))}")
    if isinstance(flags.get("max_time"), str):
        flags["max_time"] = parse_duration(flags["max_time"])
    model_cfg = ModelConfig(vocab_size=1, **{k: v for k, v in flags.items() if k in MODEL_FLAGS}).validate()
    cfg = TrainConfig(**{k: v for k, v in flags.items() if k in TRAIN_FLAGS}).validate()
    events = Callbacks(on_event)
    text = load_corpus(corpus, flags.get("encoding", "utf-8"), flags.get("glob"), events, cfg)
    resume = bool(flags.get("resume", False))
    trainer = Trainer(text, model_cfg, cfg, events, resume=resume, encoding=flags.get("encoding", "utf-8"),
                      explicit=set(flags))
    metrics = events.add(MetricsLogger(trainer.run_dir, flags.get("log_every", 10), resume,
                                       run_config(trainer, text.source)))
    try:
        return trainer.fit()
    finally:
        metrics.close()
