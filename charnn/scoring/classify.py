"""Classifying text with a label-conditioned model, by Bayes' rule over the labels' likelihoods.

log p(label | text) = log p(text | label) + log p(label) - log p(text). Every label's likelihood comes
from one batched pass: each text is a row per label (rows of a block of texts padded to one length), the
label's vector added at every step, and the nats of each row's real tokens summed. Texts are scored as
training saw its documents: the first token conditioned on the start id, and a line ending in a newline.
Priors are the training label frequencies (documents for --label-by line, characters for file and folder
labels, which is how often a line of each turns up), or uniform.

`classifier_for` picks this or, for a model of the classifier kind, charnn.scoring.discriminative's.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from charnn.errors import CharnnError
from charnn.data.batches import pad_rows
from charnn.data.labels import log_prior
from charnn.scoring.rows import row_nats
from charnn.text.tokenizer import start_id
from charnn.threadwatch import block

MAX_ROWS = 512  # texts x labels per pass


@dataclass
class Scores:
    """One text's result: the labels' log-likelihoods (nats) and posteriors, best first by posterior."""

    names: List[str]
    loglik: Optional[np.ndarray]  # (N,) log p(text | label) (None: a classifier model, which has no likelihood)
    posterior: np.ndarray  # (N,) p(label | text)
    chars: int

    @property
    def best(self) -> str:
        return self.names[int(np.argmax(self.posterior))]

    def top(self, n: int) -> List[tuple]:
        order = np.argsort(-self.posterior, kind="stable")[:n]
        return [(self.names[i], float(self.posterior[i])) for i in order]

    def to_dict(self) -> dict:
        if self.loglik is None:
            return {"label": self.best, "chars": self.chars,
                    "labels": {n: {"posterior": float(p)} for n, p in zip(self.names, self.posterior)}}
        return {"label": self.best, "chars": self.chars,
                "labels": {n: {"loglik": float(ll), "posterior": float(p), "nats_per_char":
                               float(-ll / self.chars) if self.chars else None}
                           for n, ll, p in zip(self.names, self.loglik, self.posterior)}}


def classifier_for(model, tokenizer, labels: Optional[dict], device: torch.device, uniform_prior: bool = False):
    """What classifies with `model`: Bayes' rule over a label-conditioned language model (Classifier), or the
    classifier kind's own softmax (charnn.scoring.discriminative.WindowClassifier); both answer with Scores."""
    from charnn.models.classifier import TextClassifier

    if isinstance(model, TextClassifier):
        from charnn.scoring.discriminative import WindowClassifier
        return WindowClassifier(model, tokenizer, labels or {"names": []}, device, uniform_prior)
    return Classifier(model, tokenizer, labels, device, uniform_prior)


class Classifier:
    def __init__(self, model, tokenizer, labels: dict, device: torch.device, uniform_prior: bool = False):
        if not labels or not getattr(model, "label_embed", None):
            raise CharnnError("this model was trained without labels, so it cannot classify; train one with "
                              "--label-by file|folder|line")
        self.model, self.tokenizer, self.device = model.eval(), tokenizer, device
        self.names: List[str] = list(labels["names"])
        self.prior = log_prior(labels, uniform_prior)
        self.start = start_id(tokenizer)

    def classify(self, texts: Sequence[str]) -> List[Scores]:
        """Scores for each text (a line is scored with its newline, as training saw it)."""
        scored = [t if t.endswith("\n") else t + "\n" for t in texts]
        ll = self.loglik([self.tokenizer.encode(t) for t in scored])
        out = []
        for text, row in zip(scored, ll):  # (chars: those scored, the newline too, as eval counts them)
            joint = row + self.prior
            post = np.exp(joint - np.logaddexp.reduce(joint))
            out.append(Scores(self.names, row, post, len(text)))
        return out

    def loglik(self, ids: Sequence[np.ndarray]) -> np.ndarray:
        """(texts, labels) log p(text | label) of already-encoded texts."""
        return label_loglik(self.model, ids, self.start, len(self.names), self.device)


def label_loglik(model, ids: Sequence[np.ndarray], start: int, n: int, device: torch.device) -> np.ndarray:
    """(texts, labels) log p(ids | label) under labels 1..n, each text's first token conditioned on `start`;
    the texts go in blocks of up to MAX_ROWS rows (texts x labels), similar lengths together."""
    per = max(1, MAX_ROWS // n)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a block: less padding
    out = np.zeros((len(ids), n))
    for b in range(0, len(order), per):
        rows = order[b:b + per]
        texts = [ids[i] for i in rows]  # (on the threads charnn.threadwatch measured, if any)
        out[rows] = block(lambda: _block(model, texts, start, n, device), lambda _: n * sum(len(t) for t in texts))
    return out


def _block(model, ids: List[np.ndarray], start: int, n: int, device: torch.device) -> np.ndarray:
    """Text i under label j is row i * n + j, from a zero state after the start id."""
    k = len(ids)
    x, y = pad_rows(ids, start)
    labels = torch.arange(1, n + 1).repeat(k).view(-1, 1)
    nats = row_nats(model, x.repeat_interleave(n, 0), y.repeat_interleave(n, 0), labels, device)
    return -nats.view(k, n).cpu().numpy()


def label_id(labels: Optional[dict], name: str) -> int:
    """The id of label `name` (1..N), or one error listing the labels."""
    names: List[str] = list((labels or {}).get("names") or [])
    if not names:
        raise CharnnError("this model was trained without labels, so --label does not apply (train with "
                          "--label-by file|folder|line)")
    if name in names:
        return names.index(name) + 1
    same = [i for i, n in enumerate(names) if _label_key(n) == _label_key(name)]
    if len(same) == 1:  # (as training reads labels, spaces around them dropped; and in either Unicode form: a
        return same[0] + 1  # macOS folder name is NFD, a typed "Génesis" NFC, and they looked the same in the error)
    shown = ", ".join(names[:30]) + (f" and {len(names) - 30} more" if len(names) > 30 else "")
    raise CharnnError(f"unknown label {name!r}; the model's labels are: {shown}")


def _label_key(name: str) -> str:
    return unicodedata.normalize("NFC", name.strip())


def per_label_table(labels: dict) -> Dict[str, dict]:
    """{name: {train_docs, train_chars, val_nats_per_char}} for `info`."""
    val = labels.get("val_nats_per_char") or [None] * len(labels["names"])
    return {n: {"train_docs": d, "train_chars": c, "val_nats_per_char": v}
            for n, d, c, v in zip(labels["names"], labels["train_docs"], labels["train_chars"], val)}
