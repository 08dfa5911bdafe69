"""The task interface, and what the language model, labelled and pairs tasks share."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Callable, Optional, Tuple

import numpy as np
import torch

from charnn.config import ModelConfig, TrainConfig
from charnn.data.batches import IGNORE, StreamBatches
from charnn.device import default_batch_size
from charnn.errors import CharnnError, ConfigError
from charnn.models import registry

Callback = Callable[[str, dict], None]


class Task:
    """One corpus kind in training. `prepare` fills tokenizer, train_ids, val_ids, chars_per_token and
    data_record; `make_batches` lays the training ids out; the rest is asked for by the trainer's loop."""

    kind = ""  # "lm", "labelled", "classify" or "pairs": the run's kind, read from here and nowhere else
    serves = "text"  # the model kinds that train on it (charnn.models.registry.ModelKind.serves)
    label_names: Optional[list] = None  # the labels a fine-tuned model's label table is grafted for
    unit = "char"  # what the loss is per and chars/s counts ("text": the classifier's)

    def __init__(self, corpus):
        self.corpus = corpus
        self.labels: Optional[dict] = None  # the checkpoint's labels record (labelled runs)
        self.tokenizer = None
        self.train_ids: Optional[torch.Tensor] = None
        self.val_ids: Optional[np.ndarray] = None  # what periodic evaluations score (the first --eval-tokens)
        self.val_unknown: Optional[int] = None  # validation characters outside the vocabularies (None: val_ids')
        self.chars_per_token = 1.0
        self.data_record: dict = {}  # where the training ids live (`charnn novelty` finds the run's text again)
        self.batches = None

    # -- data ---------------------------------------------------------------------------------------
    def default_batch_size(self, device: torch.device, cfg: TrainConfig, world: int = 1) -> int:
        """The batch when --batch-size is not given, over `world` processes: `rows_per_process` each, cut to a
        share of the rows the training data fills (a short text trains on fewer streams, where it was an error
        about a flag never given; under torchrun the share is per process)."""
        rows = self.rows(cfg)
        if 0 < rows < world:  # (each process was given a row that is not there, and told to lower --batch-size)
            raise CharnnError(f"the training data fills {rows} batch row{'s' if rows > 1 else ''}, fewer than the "
                              f"{world} processes: use fewer processes, or more text")
        return world * max(1, min(self.rows_per_process(device), rows // world))

    def rows_per_process(self, device: torch.device) -> int:
        """Rows per batch and process by default (asked after `prepare`): charnn.device's."""
        return default_batch_size(device)

    def rows(self, cfg: TrainConfig) -> int:
        """How many rows the training data fills (asked after `prepare`): streams of --seq-len tokens here."""
        return (len(self.train_ids) - 1) // cfg.seq_len

    def check_resume(self, saved: dict, run: str) -> None:
        """A resumed run must be trained on the same kind of text it was started on."""
        check_same_labels(saved.get("labels"), self, run)
        check_same_kind(saved, self, run)

    def prepare(self, cfg: TrainConfig, resumed: Optional[dict], parent, encoding: str, on_event: Callback) -> None:
        raise NotImplementedError

    def make_batches(self, cfg: TrainConfig, device: torch.device):
        raise NotImplementedError

    def model_config(self, base: ModelConfig) -> ModelConfig:
        """The fresh model's config for this data: its vocabulary (and labels, encoder) on top of the flags'."""
        return replace(base, kind=self.model_kind(base), vocab_size=self.tokenizer.vocab_size, labels=0,
                       label_output=False)

    def base_config(self, flags: ModelConfig, parent) -> ModelConfig:
        """What a fresh model's config starts from: the flags', or the architecture of the --init-from parent."""
        return flags if parent is None else parent.model_cfg

    def model_kind(self, base: ModelConfig) -> str:
        """The flags' kind where it trains on this text and takes their --cell, else the kind that does."""
        return registry.choose(self.serves, base.cell, base.kind).name

    def record(self) -> dict:
        """What a checkpoint keeps of this task besides the model, tokenizer and configs."""
        return {}

    # -- a training step ----------------------------------------------------------------------------
    def step_inputs(self, x: torch.Tensor, y: torch.Tensor, cond, state, ops, cfg: TrainConfig):
        """(inputs, targets, the forward's keyword arguments, state, what step_loss needs) for one batch."""
        return x, y, self.forward_extra(cond), state, None

    def forward_extra(self, cond) -> dict:
        """The keyword arguments a batch's `cond` (what it holds besides x and y) becomes in the forward."""
        return {}

    def step_loss(self, nll: torch.Tensor, y: torch.Tensor, real: float, ctx, state, ops,
                  cfg: TrainConfig) -> Tuple[Optional[torch.Tensor], object]:
        """What this task adds to the mean token loss (None: nothing), and the state to carry on."""
        return None, state

    def real_tokens(self, y: torch.Tensor, dist) -> int:
        """Targets this step trains on, over all ranks (streams: every position; documents: all but padding)."""
        if isinstance(self.batches, StreamBatches):
            return y.numel() * dist.world
        return int(dist.sum(float((y != IGNORE).sum())))

    # -- validation and previews --------------------------------------------------------------------
    @property
    def val_units(self) -> int:
        """What validation reads, in the units a step's tokens count (--max-time foresees an evaluation from it)."""
        return len(self.val_ids)

    probes_eval = False  # whether --max-time foresees an evaluation by timing a forward (streams of val ids); such a
    # task has keep_validation(n), the cut to the first n val ids where a whole pass would not fit the time
    text_chars_per_token: Optional[float] = None  # the text's characters a token, where a step's "tokens" are not
    # tokens (the classifier's are texts; chars_per_token is then 1); None: chars_per_token

    def probe_select(self, model, device: torch.device, dist, clock) -> Optional[float]:
        """--max-time: the seconds select_score will add to an evaluation, foreseen before any (None: nothing)."""
        return None

    # what picks best.pt and counts --patience: "loss" (val nats/char), or a lower-is-better score the task
    # measures after each evaluation (pairs: "wer", the validation inputs decoded)
    selects_by = "loss"

    def evaluate(self, model, device: torch.device, precision: str, dist) -> float:
        """Val nats per character."""
        raise NotImplementedError

    def select_score(self, model, device: torch.device, dist) -> float:
        """The score `selects_by` names, of the model as it is now (asked only when that is not "loss")."""
        raise NotImplementedError

    def preview(self, model, device: torch.device, every: int, write: Callable[[int, str], None], seed: int):
        """An on_event callback that shows, every `every` steps, what the model makes now."""
        from charnn.tasks.preview import SamplePreview

        return SamplePreview(model, self.tokenizer, device, every, write, seed=seed)


def total(dist):
    """evaluate_*'s `total`: the sum over ranks under torchrun, else nothing to add up."""
    return dist.sum if dist.active else None


def check_same_kind(saved: dict, task: Task, run: str) -> None:
    """A --pairs run resumes with --pairs, and a language model without it."""
    was = (saved.get("model_config") or {}).get("kind") == "seq2seq"
    if was != (task.kind == "pairs"):
        raise ConfigError(f"--resume: run {run!r} was trained {'with' if was else 'without'} --pairs; "
                          "resume it the same way")
    was = (saved.get("model_config") or {}).get("kind") == "classifier"
    if was != (task.kind == "classify"):
        raise ConfigError(f"--resume: run {run!r} was trained {'with' if was else 'without'} --classifier; "
                          "resume it the same way")


def check_same_labels(saved: Optional[dict], task: Task, run: str) -> None:
    """A resumed run must see the labels it was trained on: the same way of labelling, the same names."""
    corpus = task.corpus
    if bool(saved) != (task.kind in ("labelled", "classify")):
        by = (saved or {}).get("by")
        raise ConfigError(f"--resume: run {run!r} was trained {'with --label-by ' + by if by else 'without labels'}; "
                          "resume it the same way")
    names = list((saved or {}).get("names", []))
    if saved and saved.get("by") == corpus.by == "line" and names != corpus.names and \
            sorted({n.strip() for n in names}) == corpus.names:  # (charnn strips them now: "pos " was its own label)
        how = ("train it again under another --name (a classifier is not fine-tuned with --init-from)"
               if task.kind == "classify" else "continue it as a new run: --init-from the run's folder, under another "
               "--name")
        raise ConfigError(f"--resume: run {run!r} was trained on labels that differ only by spaces around them "
                          f"({', '.join(repr(n) for n in names)}), which --label-by line now strips; {how}")
    if saved and (saved.get("by") != corpus.by or names != corpus.names):
        raise ConfigError(f"--resume: run {run!r} was trained on labels {', '.join(saved.get('names', []))} "
                          f"(--label-by {saved.get('by')}); this corpus has {', '.join(corpus.names)} "
                          f"(--label-by {corpus.by}). Resume with the same corpus, or start a new run")


def saved_val_file(corpus, cfg: TrainConfig, resumed: Optional[dict], encoding: str):
    """The text of a resumed run that was validated on a --val-file not given again on this command line (the text
    was read without it, so it split by --val-frac and was "another text"): validated on that file once more.
    `corpus`: a PairText or LabelledText (their `held_out` is the --val-file's part, None where none was read)."""
    if resumed and cfg.val_file and corpus.held_out is None:
        from charnn.data.catalog import resolve
        return corpus.with_val_file(resolve(cfg.val_file), encoding, cfg.skip_bad_lines)
    return corpus


def text_digest(train_ids, val_ids, content: Optional[str] = None) -> str:
    """What a checkpoint records of its training text, so that --resume can refuse another text of the same length
    (a word edited): the corpus files' digest where they were encoded through the cache, else the ids' own."""
    if content:
        return content
    h = hashlib.blake2b(digest_size=16)
    for ids in (train_ids, val_ids):
        h.update(np.ascontiguousarray(ids.numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)).tobytes())
    return h.hexdigest()


def fingerprint(task: Task) -> int:
    """A number that differs when two processes tokenized different text (or built different tokenizers)."""
    blob = repr((sorted(task.tokenizer.state().items()), len(task.train_ids), len(task.val_ids))).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little")
