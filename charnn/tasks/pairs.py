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
from charnn.generation.decoded import references_of, score_decoded
from charnn.generation.seq2seq import Transducer
from charnn.sampling import DECODE_BATCH, TransduceConfig
from charnn.scoring.pairs import PairScore
from charnn.scoring.evaluate import evaluate_pairs
from charnn.tasks.base import Task, saved_val_file, text_digest, total
from charnn.text.tokenizer import start_id


# The encoder-decoder's size for its training pairs, where the flags leave it open: (up to this many training
# pairs, the flags), chosen on development WER (benchmarks/SEQ2SEQ.md, "Defaults that scale with the data"): a small
# dictionary overfits the language model's 2 x 256 within a minute, a large one underfits a small model.
PAIR_SIZES = ((2_000, {"layers": 1, "hidden": 128, "embed": 128, "dropout": 0.5}),
              (None, {"layers": 2, "hidden": 256, "embed": 64, "dropout": 0.1}))
SIZED = frozenset(PAIR_SIZES[0][1])
# Pairs per batch on a CPU where --batch-size is not given, by training pairs. A pair is a short line (tens of
# characters, where a stream window is 128): on the reversal task 32 pairs a step learnt in 566 steps (val 0.016
# nats/char) what 64 had not in 750 (0.13), and on English G2P 32 stayed ahead up to 15,000 pairs; from 25,000 the
# larger batch (fewer, larger products per character, and data enough for fewer steps) was ahead (benchmarks/
# SEQ2SEQ.md, "The batch follows the data"). On a GPU: 256 at every size (charnn.device).
PAIR_BATCHES = ((20_000, 32), (None, 64))


def _by_size(table: tuple, pairs: int):
    """The entry of a (up to this many pairs, value) table for a run on `pairs` training pairs."""
    return next(value for up_to, value in table if up_to is None or pairs <= up_to)


def sized_for(pairs: int) -> dict:
    """The model flags for a run on `pairs` training pairs."""
    return dict(_by_size(PAIR_SIZES, pairs))


def batch_for(pairs: int) -> int:
    """Pairs per batch on a CPU for a run on `pairs` training pairs."""
    return _by_size(PAIR_BATCHES, pairs)


class PairsTask(Task):
    kind = "pairs"
    serves = "pairs"

    def rows_per_process(self, device: torch.device) -> int:
        """On a CPU, sized for the training pairs (so asked after `prepare`); on a GPU, charnn.device's."""
        return batch_for(len(self.data.train_src)) if device.type == "cpu" else default_batch_size(device)

    def rows(self, cfg: TrainConfig) -> int:
        return len(self.data.train_src)

    def prepare(self, cfg: TrainConfig, resumed: Optional[dict], parent, encoding: str, on_event) -> None:
        if parent is not None:
            raise ConfigError("`--init-from` fine-tunes language models; a `--pairs` model trains from scratch")
        tokenizers = (resumed["source_tokenizer"], resumed["tokenizer"]) if resumed else None
        if resumed:  # the split the run was saved with (its --seed, --val-frac or --val-file: the command line's
            # defaults had split it, and it was "another text")
            self.corpus = saved_val_file(self.corpus, cfg, resumed, encoding).split(cfg.val_frac, cfg.seed)
        data = self.data = prepare_pairs(self.corpus, tokenizers, cfg.eval_tokens)
        self.pairs = {**self.corpus.record(), "skipped_lines": self.corpus.skipped_lines}
        # a fresh run's model flags the user left open, sized for the data (a resumed run keeps its model)
        self.sized = {} if resumed else {k: v for k, v in sized_for(len(data.train_src)).items() if k in cfg.sized}
        on_event("pairs", {**self.pairs, "sized": dict(self.sized), "val_file": cfg.val_file})
        self.tokenizer, self.source_tokenizer = data.tokenizer, data.source_tokenizer
        self.train_ids = data.train_ids
        self.val_ids = np.concatenate(data.val_tgt)
        self.val_unknown = data.val_unknown  # (the inputs' too: val_ids are the targets)
        self.data_record = {"corpus": self.corpus.source, "cache_entry": None, "encoding": encoding,
                            "train_tokens": len(self.train_ids),
                            "train_chars": len(self.train_ids), "content": text_digest(self.train_ids, self.val_ids)}
        self.chars_per_token = 1.0
        # --best-by: G2P and transliteration are judged by whole words right, which the loss tracks only loosely
        self.selects_by = "loss" if cfg.best_by == "loss" else "wer"
        self.references = references_of(zip(data.val_inputs, data.val_targets))

    def make_batches(self, cfg: TrainConfig, device: torch.device):
        self.batches = PairBatches(self.data.train_src, self.data.train_tgt, cfg.batch_size,
                                   start_id(self.tokenizer), device)
        return self.batches

    def model_config(self, base: ModelConfig) -> ModelConfig:
        return replace(super().model_config(base), source_vocab=self.source_tokenizer.vocab_size, **self.sized)

    def record(self) -> dict:
        return {"pairs": self.pairs, "source_tokenizer": self.source_tokenizer.state()}

    def forward_extra(self, cond) -> dict:
        return {} if cond is None else {"source": cond}

    def evaluate(self, model, device: torch.device, precision: str, dist) -> float:
        """The targets' nats given their inputs, teacher-forced."""
        d = self.data
        return evaluate_pairs(model, d.val_src, d.val_tgt, start_id(self.tokenizer), device, precision, dist.part,
                              total(dist)).nats_per_char

    def select_score(self, model, device: torch.device, dist) -> float:
        """Word error rate: each validation input decoded greedily (in fp32) and right when it equals one of its
        targets. Under torchrun each rank decodes its share of the inputs."""
        s = self._decoded(model, device, self._mine(dist))
        exact, words = dist.sum(float(s.exact)), dist.sum(float(s.words))
        return 1.0 - exact / max(1.0, words)

    def probe_select(self, model, device: torch.device, dist, clock) -> Optional[float]:
        """--max-time: the seconds select_score will take, foreseen before any evaluation (its decoding was not, and
        a 20-s run of a 2x512 model took 33 s): a first batch of this rank's inputs decoded (DECODE_BATCH, as the
        pass decodes them; in file order, not sorted by length, so the foresight errs long) and scaled by the
        batches. None where best.pt is picked by the loss."""
        if self.selects_by != "wer":
            return None
        mine = self._mine(dist)
        sample = dict(list(mine.items())[:DECODE_BATCH])
        t = clock()
        self._decoded(model, device, sample)
        return (clock() - t) * -(-len(mine) // max(1, len(sample)))

    def _mine(self, dist) -> dict:
        rank, world = dist.part
        return dict(list(self.references.items())[rank::world])

    def _decoded(self, model, device: torch.device, references: dict) -> PairScore:
        was_training = model.training  # (the transducer puts the model in eval mode)
        try:
            cfg = TransduceConfig(unknown="skip", precision="fp32")  # (as it trains: a decision per step is no use)
            transducer = Transducer(model, self.source_tokenizer, self.tokenizer, cfg, device, self.pairs["max_ratio"])
            return score_decoded(transducer, references, "validation", PairScore())
        finally:
            model.train(was_training)

    def preview(self, model, device: torch.device, every: int, write, seed: int):
        """A few validation inputs and the model's current outputs for them."""
        from charnn.tasks.preview import PairPreview

        return PairPreview(model, self.source_tokenizer, self.tokenizer, self.data.val_inputs, device, every, write,
                           self.pairs["max_ratio"])
