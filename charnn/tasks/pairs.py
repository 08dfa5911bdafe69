"""The pairs task (--pairs): input<TAB>target lines for an encoder-decoder, batched as whole pairs of similar
length and validated teacher-forced."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import numpy as np
import torch

from charnn.config import ModelConfig, TrainConfig
from charnn.data.pairs import PairBatches, prepare_pairs
from charnn.device import default_batch_size
from charnn.errors import ConfigError
from charnn.scoring.evaluate import evaluate_pairs
from charnn.tasks.base import Task, total
from charnn.text.tokenizer import start_id


class PairsTask(Task):
    kind = "pairs"
    serves = "pairs"

    def default_batch_size(self, device: torch.device) -> int:
        return default_batch_size(device, True)

    def prepare(self, cfg: TrainConfig, resumed: Optional[dict], parent, encoding: str, on_event) -> None:
        if parent is not None:
            raise ConfigError("`--init-from` fine-tunes language models; a `--pairs` model trains from scratch")
        tokenizers = (resumed["source_tokenizer"], resumed["tokenizer"]) if resumed else None
        data = self.data = prepare_pairs(self.corpus, tokenizers, cfg.eval_tokens)
        self.pairs = {**self.corpus.record(), "skipped_lines": self.corpus.skipped_lines}
        on_event("pairs", dict(self.pairs))
        self.tokenizer, self.source_tokenizer = data.tokenizer, data.source_tokenizer
        self.train_ids = data.train_ids
        self.data_record = {"corpus": self.corpus.source, "cache_entry": None, "train_tokens": len(self.train_ids),
                            "train_chars": len(self.train_ids)}
        self.val_ids = np.concatenate(data.val_tgt)
        self.chars_per_token = 1.0

    def make_batches(self, cfg: TrainConfig, device: torch.device):
        self.batches = PairBatches(self.data.train_src, self.data.train_tgt, cfg.batch_size,
                                   start_id(self.tokenizer), device)
        return self.batches

    def model_config(self, base: ModelConfig) -> ModelConfig:
        return replace(super().model_config(base), source_vocab=self.source_tokenizer.vocab_size)

    def record(self) -> dict:
        return {"pairs": self.pairs, "source_tokenizer": self.source_tokenizer.state()}

    def forward_extra(self, cond) -> dict:
        return {} if cond is None else {"source": cond}

    def evaluate(self, model, device: torch.device, precision: str, dist) -> float:
        """The targets' nats given their inputs, teacher-forced."""
        d = self.data
        return evaluate_pairs(model, d.val_src, d.val_tgt, start_id(self.tokenizer), device, precision, dist.part,
                              total(dist)).nats_per_char

    def preview(self, model, device: torch.device, every: int, write, seed: int):
        """A few validation inputs and the model's current outputs for them."""
        from charnn.tasks.preview import PairPreview

        return PairPreview(model, self.source_tokenizer, self.tokenizer, self.data.val_inputs, device, every, write,
                           self.pairs["max_ratio"])
