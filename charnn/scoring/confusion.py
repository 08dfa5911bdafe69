"""How well labels were guessed: accuracy, macro-F1 and the confusion table (`charnn eval --label-by`, the
classifier's validation), the same for either kind of model that classifies."""

from __future__ import annotations

from typing import List, Sequence

import numpy as np


def label_report(truth: Sequence[int], pred: Sequence[int], names: List[str]) -> dict:
    """truth and pred: label indices 0..N-1 -> accuracy, macro-F1 (the mean of every label's F1, a label never
    seen nor guessed counting 0), per-label precision/recall/F1/support, and confusion[true][guessed]."""
    n = len(names)
    t, p = np.asarray(truth, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (t, p), 1)
    hits = np.diag(confusion).astype(float)
    guessed, actual = confusion.sum(0), confusion.sum(1)
    precision = np.divide(hits, guessed, out=np.zeros(n), where=guessed > 0)
    recall = np.divide(hits, actual, out=np.zeros(n), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=precision + recall > 0)
    return {"texts": int(len(t)), "accuracy": float(hits.sum() / max(1, len(t))), "macro_f1": float(f1.mean()),
            "labels": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                              "support": int(actual[i])} for i, name in enumerate(names)},
            "names": list(names), "confusion": confusion.tolist()}


def confusion_lines(report: dict, width: int = 12) -> List[str]:
    """The report as text: a summary line, then the confusion table (rows: the true label; columns: the guess),
    with each label's recall and F1."""
    names = report["names"]
    short = [n[:width] for n in names]
    lines = [f"accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}  texts {report['texts']:,}", ""]
    corner = "true \\ guess"
    lines.append(f"{corner:<{width}} " + " ".join(f"{s:>{width}}" for s in short) + f" {'recall':>7} {'F1':>7}")
    for name, s, row in zip(names, short, report["confusion"]):
        lab = report["labels"][name]
        lines.append(f"{s:<{width}} " + " ".join(f"{v:>{width},}" for v in row)
                     + f" {lab['recall']:>7.3f} {lab['f1']:>7.3f}")
    return lines
