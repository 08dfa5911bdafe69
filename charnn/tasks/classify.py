"""The classifier task (`--label-by ... --classifier`): labelled text for the many-to-one classifier. Every
training example is a text (a line) or a window of one, with its label (charnn.data.textbatches); the loss is
cross-entropy per text, weighted per label with `--class-weights balanced`; validation reads the held-out texts
(the same split the label-conditioned language model makes) and its number is their mean cross-entropy, with
accuracy and macro-F1 kept in the labels record for `charnn info`."""

from __future__ import annotations

from dataclasses import replace
from typing import List, Optional

import numpy as np
import torch

from charnn.config import ModelConfig, TrainConfig
from charnn.data.labels import line_split_of, prepare_labelled
from charnn.data.textbatches import TextBatches, cut_windows
from charnn.scoring.confusion import label_report
from charnn.scoring.discriminative import window_logprobs
from charnn.tasks.base import Task, saved_val_file, text_digest


def doc_spans(labels: np.ndarray, lengths: Optional[List[int]]):
    """(starts, lengths, label indices 0..N-1) of the documents laid one after another: line documents by their
    lengths, file and folder documents (one per label, in order) where the token labels change."""
    labels = np.asarray(labels, dtype=np.int64)
    if lengths is None:
        starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]]) if len(labels) else np.zeros(0, np.int64)
        lengths = np.diff(np.r_[starts, len(labels)])
    else:
        lengths = np.asarray(lengths, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return starts, lengths, (labels[starts] - 1 if len(starts) else starts)


CPU_BATCH, GPU_BATCH = 64, 512  # texts per step when --batch-size is not given


class ClassifierTask(Task):
    kind = "classify"
    unit = "text"

    def rows_per_process(self, device: torch.device) -> int:
        """Texts per step: 64 on the CPU. The language model's 8 streams would be 8 verses a step here, and on KJV
        ten books 300 such steps reached 0.50 held-out accuracy where 300 steps of 64 reached 0.74-0.79."""
        return CPU_BATCH if device.type == "cpu" else GPU_BATCH

    def rows(self, cfg: TrainConfig) -> int:
        return len(cut_windows(*self.train_spans, cfg.seq_len, 0, self.stream)[0])

    def prepare(self, cfg: TrainConfig, resumed: Optional[dict], parent, encoding: str, on_event) -> None:
        base = resumed["tokenizer"] if resumed else parent.tokenizer_state if parent else None
        # the labelled model's split (a resumed run's recorded way)
        self.corpus = saved_val_file(self.corpus, cfg, resumed, encoding)
        corpus = self.corpus = self.corpus.split(cfg.val_frac, cfg.seed, line_split_of(resumed))
        data = self.data = prepare_labelled(corpus, cfg.tokenizer, cfg.vocab_size, base, parent is not None,
                                            on_event, cfg.threads)
        self.stream = corpus.by != "line"  # one long document per label: read in windows
        self.labels = {**corpus.record(), "window": cfg.seq_len, "class_weights": cfg.class_weights}
        on_event("labels", {**self.labels, "skipped_lines": corpus.skipped_lines})
        self.tokenizer, self.train_ids, self.val_ids = data.tokenizer, data.train_ids, data.val_ids
        self.train_spans = doc_spans(data.train_labels.numpy(), data.train_doc_lengths)
        self._val_texts(cfg)
        self.data_record = {"corpus": corpus.source, "cache_entry": None, "encoding": encoding,
                            "train_tokens": len(data.train_ids),
                            "train_chars": data.train_chars, "content": text_digest(data.train_ids, data.val_ids)}
        self.chars_per_token = 1.0  # a step's "tokens" are its texts: the loss is per text
        self.text_chars_per_token = data.train_chars / max(1, len(data.train_ids))  # (the tokenizer's, as said)

    def _val_texts(self, cfg: TrainConfig) -> None:
        """The held-out texts (a label document's windows, for file and folder labels), up to --eval-tokens."""
        starts, lengths, labels = doc_spans(self.data.val_labels, self.data.val_doc_lengths)
        if self.stream:
            starts, lengths, labels = cut_windows(starts, lengths, labels, cfg.seq_len, 0, stream=True)
        keep = len(lengths)
        if cfg.eval_tokens:
            keep = max(1, int(np.searchsorted(np.cumsum(lengths), cfg.eval_tokens, side="right")))
        ids = self.val_ids.astype(np.int64)
        self.val_texts = [ids[s:s + n] for s, n in zip(starts[:keep], lengths[:keep])]
        self.val_truth = labels[:keep]

    @property
    def val_units(self) -> int:
        return len(self.val_texts)  # a step's "tokens" are texts

    @property
    def label_names(self) -> list:
        return self.labels["names"]

    def make_batches(self, cfg: TrainConfig, device: torch.device):
        self.batches = TextBatches(self.train_ids, *self.train_spans, cfg.batch_size, cfg.seq_len, self.stream,
                                   device)
        self.weights = None
        if cfg.class_weights == "balanced":  # each label weighs as much in the loss: n / (labels x its windows)
            labels = cut_windows(*self.train_spans, cfg.seq_len, 0, self.stream)[2]
            counts = np.maximum(np.bincount(labels, minlength=len(self.label_names)), 1)
            self.weights = torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32, device=device)
        return self.batches

    def model_config(self, base: ModelConfig) -> ModelConfig:
        return replace(base, kind="classifier", vocab_size=self.tokenizer.vocab_size, labels=len(self.label_names),
                       label_output=False)

    def base_config(self, flags: ModelConfig, parent) -> ModelConfig:
        """--init-from a language model: this run's encoder, with the parent's embedding width (its embedding is
        copied in; charnn.models.classifier.graft_from)."""
        return flags if parent is None else replace(flags, embed=parent.model_cfg.embed)

    def graft(self, model, parent, seed: int) -> None:
        from charnn.models.classifier import graft_from

        parent.copied = graft_from(model, parent.data["model"], parent.data["model_config"])

    def record(self) -> dict:
        return {"labels": self.labels}

    def forward_extra(self, cond) -> dict:
        return {} if cond is None else {"lengths": cond}

    def step_loss(self, nll, y, real, ctx, state, ops, cfg: TrainConfig):
        """--class-weights balanced: each text's loss times its label's weight (the trainer's mean plus this)."""
        if self.weights is None:
            return None, state
        return ((self.weights[y] - 1.0) * nll).sum() / real, state

    def evaluate(self, model, device: torch.device, precision: str, dist) -> float:
        """The held-out texts' mean cross-entropy (nats per text); accuracy and macro-F1 go into the record."""
        was = model.training
        model.eval()
        try:
            logp = window_logprobs(model, self.val_texts, self.labels["window"], device)
        finally:
            model.train(was)
        truth = self.val_truth
        report = label_report(truth, logp.argmax(1), self.label_names)
        self.labels.update(val_accuracy=report["accuracy"], val_macro_f1=report["macro_f1"],
                           val_texts=report["texts"])
        return float(-logp[np.arange(len(truth)), truth].mean())

    def preview(self, model, device: torch.device, every: int, write, seed: int):
        """After each evaluation, the held-out accuracy (a classifier writes no text to preview)."""
        def show(kind: str, info: dict) -> None:
            if kind == "eval":
                write(info["step"], f"held-out accuracy {self.labels.get('val_accuracy', 0):.4f}, macro-F1 "
                                    f"{self.labels.get('val_macro_f1', 0):.4f}")
        return show
