"""Tasks: what one corpus kind needs in training (fairseq's tasks). A task owns its data preparation, its
batches, what its loss adds, its validation, its checkpoint record, its preview and its resume checks, so the
trainer's loop never asks which kind of run it is.

The kind of a run is decided once, here, from the text that was loaded (`task_for`), and read from `task.kind`.
"""

from __future__ import annotations

from charnn.data.labels import LabelledText
from charnn.data.pairs import PairText
from charnn.tasks.base import Task
from charnn.tasks.classify import ClassifierTask
from charnn.tasks.labelled import LabelledTask
from charnn.tasks.lm import LanguageModelTask
from charnn.tasks.pairs import PairsTask

__all__ = ["Task", "LanguageModelTask", "LabelledTask", "PairsTask", "ClassifierTask", "task_for"]


def task_for(corpus, kind: str = "lm") -> Task:
    """The task for a loaded text: pairs (input<TAB>target lines), labelled documents (for a label-conditioned
    language model, or for the classifier when the run's model `kind` is "classifier"), or a plain corpus."""
    if isinstance(corpus, PairText):
        return PairsTask(corpus)
    if isinstance(corpus, LabelledText):
        return ClassifierTask(corpus) if kind == "classifier" else LabelledTask(corpus)
    return LanguageModelTask(corpus)
