"""The labelled task (--label-by): documents encoded in memory with a label per token; line documents train
each alone from a zero state, file and folder documents stream. Its loss may add the label contrast."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import numpy as np
import torch

from charnn.data.labels import log_prior
from charnn.config import ModelConfig, TrainConfig
from charnn.data.batches import DocumentBatches, StreamBatches
from charnn.data.labels import line_split_of, prepare_labelled
from charnn.scoring.evaluate import evaluate_documents, evaluate_ids
from charnn.tasks.base import Task, saved_val_file, text_digest, total
from charnn.text.tokenizer import start_id


class LabelledTask(Task):
    kind = "labelled"

    def prepare(self, cfg: TrainConfig, resumed: Optional[dict], parent, encoding: str, on_event) -> None:
        base = resumed["tokenizer"] if resumed else parent.tokenizer_state if parent else None
        # the run's own split (a resumed run's saved settings and way)
        self.corpus = saved_val_file(self.corpus, cfg, resumed, encoding)
        corpus = self.corpus = self.corpus.split(cfg.val_frac, cfg.seed, line_split_of(resumed))
        data = prepare_labelled(corpus, cfg.tokenizer, cfg.vocab_size, base, parent is not None, on_event,
                                cfg.threads)
        self.labels = corpus.record()
        self.data = data
        self.val_doc_lengths = data.val_doc_lengths
        # --eval-tokens of streamed labels: a share of every label's tail ("spread"; the first N tokens, the first
        # labels' tails only, where a run recorded before 2026-12-07 did)
        self.labels["val_cut"] = ((resumed.get("labels") or {}).get("val_cut", "first") if resumed else "spread")
        if self.val_doc_lengths is not None and cfg.eval_tokens:  # whole documents, at least one
            keep = max(1, int(np.searchsorted(np.cumsum(self.val_doc_lengths), cfg.eval_tokens, side="right")))
            self.val_doc_lengths = self.val_doc_lengths[:keep]
            self._keep(slice(0, sum(self.val_doc_lengths)))
        elif self.labels["val_cut"] == "spread":
            self.keep_validation(cfg.eval_tokens or len(data.val_ids))
        else:
            self._keep(slice(0, cfg.eval_tokens or None))
        on_event("labels", {**self.labels, "skipped_lines": corpus.skipped_lines})
        self.tokenizer = data.tokenizer
        self.data_record = {"corpus": corpus.source, "cache_entry": data.path.name if data.path else None,
                            "encoding": encoding,
                            "train_tokens": len(data.train_ids), "train_chars": data.train_chars,
                            "content": text_digest(data.train_ids, data.val_ids, data.content)}
        self.chars_per_token = data.train_chars / max(1, len(data.train_ids))
        self.train_ids = data.train_ids

    @property
    def probes_eval(self) -> bool:  # streams (file and folder labels): timed as a plain model's (the labels cost
        return self.val_doc_lengths is None  # an embedding row); line documents are scored in padded rows

    def keep_validation(self, n: int) -> None:
        """Score about `n` of the val ids: the first of every label's tail, in proportion to its length (as
        --eval-tokens keeps them; the first n tokens were the first labels' alone)."""
        self._keep(spread(self.data.val_labels, n))

    def _keep(self, which) -> None:
        self.val_labels, self.val_ids = self.data.val_labels[which], self.data.val_ids[which]
        self.val_label_chars = [self.data.tokenizer.token_chars(self.val_ids[self.val_labels == i])
                                for i in range(1, len(self.labels["names"]) + 1)]

    @property
    def label_names(self) -> list:
        return self.labels["names"]

    def rows(self, cfg: TrainConfig) -> int:
        """--label-by line: one row a line; else streams of --seq-len tokens."""
        lengths = self.data.train_doc_lengths
        return len(lengths) if lengths is not None else super().rows(cfg)

    def make_batches(self, cfg: TrainConfig, device: torch.device):
        data = self.data
        # log p(label) by id (0: no label), for --label-contrast's Bayes' rule
        self.log_prior = torch.tensor(np.concatenate([[0.0], log_prior(self.labels)]), dtype=torch.float32,
                                      device=device)
        if data.train_doc_lengths is not None:  # --label-by line: every line its own text, from a zero state
            self.batches = DocumentBatches(self.train_ids, data.train_doc_lengths, cfg.batch_size, cfg.seq_len,
                                           start_id(self.tokenizer), data.train_labels, device)
        else:
            self.batches = StreamBatches(self.train_ids.to(device), cfg.batch_size, cfg.seq_len,
                                         data.train_labels.to(device))
        return self.batches

    def model_config(self, base: ModelConfig) -> ModelConfig:
        return replace(base, kind=self.model_kind(base), vocab_size=self.tokenizer.vocab_size,
                       labels=len(self.labels["names"]),
                       label_output=True)

    def record(self) -> dict:
        return {"labels": self.labels} if self.labels else {}

    def forward_extra(self, cond) -> dict:
        return {} if cond is None else {"labels": cond}

    # -- label dropout and the label contrast -------------------------------------------------------
    def step_inputs(self, x: torch.Tensor, y: torch.Tensor, labels, state, ops, cfg: TrainConfig):
        if labels is not None and cfg.label_dropout > 0:  # some windows without their label: the
            hide = torch.rand(labels.shape[0], 1, device=labels.device) < cfg.label_dropout  # unlabelled path
            labels = labels.masked_fill(hide, 0)
        if labels is None or cfg.label_contrast <= 0:
            return x, y, self.forward_extra(labels), state, None
        # every row again under `copies - 1` other labels, in the same forward (rows stacked)
        n = len(self.labels["names"])
        copies = min(cfg.label_negatives, n - 1) + 1
        wrong = other_labels(labels, n, copies - 1)
        x, labels = x.repeat(copies, 1), torch.cat([labels, wrong])
        return x, y.repeat(copies, 1), {"labels": labels}, ops.repeat(state, copies), (copies, labels)

    def step_loss(self, nll, y, real, ctx, state, ops, cfg: TrainConfig):
        if ctx is None:
            return None, state
        copies, labels = ctx
        state = ops.narrow(state, 0, y.shape[0])
        # Bayes' rule over the text's own label and `copies - 1` others, with the training-frequency prior
        # classify applies: -log of the own label's share of their prior x likelihood
        prior = self.log_prior[labels[:, 0]].view(copies, -1)
        score = prior - nll.sum(1).view(copies, -1)
        margin = score - score[:1]
        lab = labels[: y.shape[0], 0] > 0
        return cfg.label_contrast * (torch.logsumexp(margin, 0) * lab).sum() / real, state

    # -- validation ---------------------------------------------------------------------------------
    def evaluate(self, model, device: torch.device, precision: str, dist) -> float:
        """Each validation token under its own label; the per-label values go into the labels record."""
        per = np.zeros(len(self.labels["names"]) + 1)
        args = (device, precision, dist.part, total(dist), self.val_labels, per)
        if self.val_doc_lengths is not None:  # line documents: each scored alone, as training and classify see them
            result = evaluate_documents(model, self.tokenizer, self.val_ids, self.val_doc_lengths, *args)
        else:
            result = evaluate_ids(model, self.tokenizer, self.val_ids, *args)
        per = [dist.sum(float(v)) if dist.active else float(v) for v in per[1:]]
        self.labels["val_nats_per_char"] = [v / c if c else None for v, c in zip(per, self.val_label_chars)]
        return result.nats_per_char


def other_labels(labels: torch.Tensor, n: int, k: int = 1) -> torch.Tensor:
    """k copies of the rows, stacked: in each, every labelled row's labels moved to another label (1..n, the
    same shift along the row, the k shifts of a row distinct, so its k labels differ); label 0 stays."""
    shifts = torch.rand(labels.shape[0], n - 1, device=labels.device).argsort(1)[:, :k] + 1  # (rows, k) in 1..n-1
    moved = (labels.unsqueeze(0) - 1 + shifts.T.unsqueeze(-1)) % n + 1  # (k, rows, T)
    return torch.where(labels > 0, moved, labels).reshape(-1, labels.shape[1])


def spread(labels: np.ndarray, n: int) -> np.ndarray:
    """Which of the tokens labelled `labels` (runs of one label each) to keep for about `n`: the first of every run,
    in proportion to its length (at least one); all of them where n covers them."""
    total = len(labels)
    if n >= total:
        return np.ones(total, dtype=bool)
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    lengths = np.diff(np.r_[starts, total])
    keep = np.maximum(1, lengths * n // total)
    return np.arange(total) - np.repeat(starts, lengths) < np.repeat(keep, lengths)
