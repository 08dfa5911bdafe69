"""The language model task: a corpus streamed and encoded once into the cache, trained as contiguous streams."""

from __future__ import annotations

from typing import Optional

import torch

from charnn.config import TrainConfig
from charnn.data.batches import StreamBatches
from charnn.data.encode import prepare_corpus
from charnn.data.training_text import TextOptions
from charnn.scoring.evaluate import evaluate_ids
from charnn.tasks.base import Task, text_digest, total


class LanguageModelTask(Task):
    kind = "lm"
    probes_eval = True

    def prepare(self, cfg: TrainConfig, resumed: Optional[dict], parent, encoding: str, on_event) -> None:
        """The tokenizer sees the training split only (or is the resumed run's, or the parent's, extended)."""
        base = resumed["tokenizer"] if resumed else parent.tokenizer_state if parent else None
        data = prepare_corpus(self.corpus, TextOptions.of(cfg), base, encoding, on_event, extend=parent is not None)
        self.tokenizer = data.tokenizer
        self.data_record = {"corpus": self.corpus.source, "cache_entry": data.path.name if data.path else None,
                            "encoding": self.corpus.encoding or encoding,  # (`charnn novelty --corpus` reads it so)
                            "train_tokens": len(data.train_ids), "train_chars": data.train_chars,
                            "content": text_digest(data.train_ids, data.val_ids, data.content)}
        # periodic evaluations score the first --eval-tokens validation ids (all of them when there are fewer)
        self.val_ids = data.val_ids[: cfg.eval_tokens or None]
        self.chars_per_token = data.train_chars / max(1, len(data.train_ids))
        self.train_ids = data.train_ids

    def keep_validation(self, n: int) -> None:
        """Score the first `n` validation ids from here (--max-time's cut, charnn.training.schedule.foresee_eval)."""
        self.val_ids = self.val_ids[:n]

    def make_batches(self, cfg: TrainConfig, device: torch.device):
        self.batches = StreamBatches(self.train_ids.to(device), cfg.batch_size, cfg.seq_len, None)
        return self.batches

    def evaluate(self, model, device: torch.device, precision: str, dist) -> float:
        return evaluate_ids(model, self.tokenizer, self.val_ids, device, precision, dist.part, total(dist),
                            None, None).nats_per_char
