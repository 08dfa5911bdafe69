"""Classifying text with the many-to-one classifier (kind "classifier"): one pass per text, a softmax over the
labels. A text longer than the model's window (its training --seq-len) is read in windows, each from the zero
state, and their answers combined: the mean of the windows' log-probabilities, weighted by their lengths,
renormalised. Windows of similar length go through together (few pad positions), in blocks of ROWS.

It answers as `charnn.scoring.classify.Classifier` does (Scores, best first), so `charnn classify`, `eval` and
`Model.classify` serve either kind with the same flags and output."""

from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch

from charnn.data.labels import log_prior
from charnn.data.textbatches import cut_windows, pad_windows

ROWS = 256  # windows per forward pass


@torch.inference_mode()
def window_logprobs(model, ids: Sequence[np.ndarray], window: int, device: torch.device) -> np.ndarray:
    """(texts, labels) log p(label | text) of already-encoded texts, their windows combined."""
    lengths = np.asarray([len(x) for x in ids], dtype=np.int64)
    flat = torch.from_numpy(np.concatenate(ids).astype(np.int64)) if lengths.sum() else torch.zeros(1, dtype=torch.long)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    w_start, w_len, w_text = cut_windows(starts, lengths, np.arange(len(ids)), window)
    logp = np.zeros((len(w_start), model.config.labels))
    order = np.argsort(w_len, kind="stable")  # similar lengths share a pass
    for b in range(0, len(order), ROWS):
        rows = order[b:b + ROWS]
        x, n = pad_windows(flat, w_start[rows], w_len[rows])
        logits, _ = model(x.to(device), None, lengths=n)
        logp[rows] = torch.log_softmax(logits[:, 0].float(), -1).cpu().numpy()
    weight = np.maximum(w_len, 1).astype(float)
    total = np.zeros((len(ids), logp.shape[1]))
    np.add.at(total, w_text, logp * weight[:, None])
    total /= np.bincount(w_text, weights=weight, minlength=len(ids))[:, None]
    return total - np.logaddexp.reduce(total, axis=1, keepdims=True)


class WindowClassifier:
    """`Classifier`'s interface over a classifier model: classify(texts) -> Scores, loglik is None."""

    def __init__(self, model, tokenizer, labels: dict, device: torch.device, uniform_prior: bool = False):
        self.model, self.tokenizer, self.device = model.eval(), tokenizer, device
        self.names: List[str] = list(labels["names"])
        self.window = int(labels.get("window") or 128)
        # --uniform-prior divides the training label frequencies out (a --class-weights balanced model has
        # learnt them out already)
        self.adjust = -log_prior(labels) if uniform_prior and labels.get("class_weights") != "balanced" else None

    def classify(self, texts: Sequence[str]) -> list:
        from charnn.scoring.classify import Scores

        ids = [self.tokenizer.encode(t if t.endswith("\n") else t + "\n") for t in texts]
        logp = self.logprobs(ids)
        return [Scores(self.names, None, np.exp(row), len(t)) for t, row in zip(texts, logp)]

    def logprobs(self, ids: Sequence[np.ndarray]) -> np.ndarray:
        """(texts, labels) log p(label | text), already-encoded texts (a line with its newline)."""
        logp = window_logprobs(self.model, ids, self.window, self.device)
        if self.adjust is not None:
            logp = logp + self.adjust
            logp -= np.logaddexp.reduce(logp, axis=1, keepdims=True)
        return logp
