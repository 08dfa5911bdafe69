"""Scoring text: the one code path behind both training's val loss and `charnn eval`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from charnn.device import autocast
from charnn.data.batches import pad_rows
from charnn.scoring.rows import CHUNK, LOGITS_BYTES, chunk_steps, row_nats  # (CHUNK: steps per scoring call)
from charnn.text.tokenizer import CharTokenizer, start_id
from charnn.threadwatch import block

MIN_STREAM = 2048  # tokens per parallel stream (each stream starts from a zero state)
MAX_STREAMS = 64


@dataclass
class EvalResult:
    nats: float  # total negative log-likelihood of the predicted tokens, in nats
    tokens: int  # tokens predicted: all of them (the first is conditioned on the tokenizer's start id)
    chars: int  # characters those tokens stand for
    unknown: int = 0  # characters outside the vocabulary (scored as the unknown token)

    @property
    def nats_per_char(self) -> float:
        return self.nats / self.chars if self.chars else float("nan")

    @property
    def nats_per_token(self) -> float:
        return self.nats / self.tokens if self.tokens else float("nan")

    @property
    def bits_per_char(self) -> float:
        return self.nats_per_char / math.log(2)

    @property
    def perplexity(self) -> float:
        """Per character, so it compares across tokenizers."""
        if not self.chars:
            return float("nan")
        try:
            return math.exp(self.nats_per_char)
        except OverflowError:  # (a diverged model: above ~709.78 nats/char)
            return float("inf")

    def to_dict(self) -> dict:
        return {"nats_per_char": self.nats_per_char, "bits_per_char": self.bits_per_char,
                "nats_per_token": self.nats_per_token, "perplexity": self.perplexity,
                "chars": self.chars, "tokens": self.tokens, "unknown_chars": self.unknown}

    def __add__(self, other: "EvalResult") -> "EvalResult":
        return EvalResult(**{k: v + asdict(other)[k] for k, v in asdict(self).items()})


def stream_layout(n: int) -> Tuple[int, int]:
    """(streams, length): n predictions laid out as contiguous streams; the rest goes in a tail."""
    streams = max(1, min(MAX_STREAMS, n // MIN_STREAM))
    return streams, n // streams


@torch.no_grad()
def score_ids(model, ids: torch.Tensor, device: torch.device, precision: str = "fp32",
              part: Tuple[int, int] = (0, 1), labels: Optional[torch.Tensor] = None,
              per_label: Optional[np.ndarray] = None) -> float:
    """Total nats of predicting ids[1:] from ids[:-1], deterministic and in float64.

    part=(rank, world) scores only that rank's share of the streams (the last rank also takes the tail);
    the layout is the same for any world size, so the shares add up to the one-process total.
    A labelled model takes `labels`, the label of each predicted token (len(ids) - 1 of them); `per_label`
    (an array with a slot per label id) then gets each label's nats added to it."""
    n = len(ids) - 1
    if n <= 0:
        return 0.0
    was_training = model.training
    model.eval()
    S, L = stream_layout(n)
    steps = chunk_steps(model, S)  # (from all S streams: every world size scores in the same calls)
    rank, world = part
    lo, hi = rank * S // world, (rank + 1) * S // world
    x, y = ids[:-1], ids[1:]
    total = 0.0
    if hi > lo:
        streams = lambda t: t[: S * L].view(S, L)[lo:hi]  # noqa: E731
        total += _score_streams(model, streams(x), streams(y), device, precision,
                                None if labels is None else streams(labels), per_label, steps)
    if S * L < n and rank == world - 1:  # the tail that does not fill a stream
        tail = None if labels is None else labels[S * L:]
        total += _score_streams(model, x[S * L:].view(1, -1), y[S * L:].view(1, -1), device, precision,
                                None if tail is None else tail.view(1, -1), per_label, steps)
    model.train(was_training)
    return total


def _score_streams(model, X, Y, device, precision, labels=None, per_label=None, steps: int = CHUNK) -> float:
    state = None

    def chunk(t: int) -> float:  # one forward call's nats (on the threads charnn.threadwatch measured, if any)
        nonlocal state
        xb = X[:, t:t + steps].to(device, non_blocking=True).long()  # (a context may hold its ids in fewer bytes:
        yb = Y[:, t:t + steps].to(device, non_blocking=True).long()  # scoring_context)
        extra = {} if labels is None else {"labels": labels[:, t:t + steps].long().to(device, non_blocking=True)}
        with autocast(device, precision):
            logits, state = model(xb, state, **extra)
        flat = logits.float().reshape(-1, logits.shape[-1])
        if per_label is None:
            return F.cross_entropy(flat, yb.reshape(-1), reduction="sum").double().item()
        losses = F.cross_entropy(flat, yb.reshape(-1), reduction="none").double().cpu().numpy()
        np.add(per_label, np.bincount(extra["labels"].reshape(-1).cpu().numpy(), losses, minlength=len(per_label)),
               out=per_label)
        return float(losses.sum())

    tokens = lambda t: X[:, t:t + steps].numel()  # noqa: E731
    return sum(block(lambda: chunk(t), lambda _: tokens(t)) for t in range(0, X.shape[1], steps))


def evaluate_text(model, tokenizer, text: str, device: torch.device, precision: str = "fp32") -> EvalResult:
    """Score a text with the model: nats over its predicted tokens, normalised per character."""
    return evaluate_context(model, tokenizer, scoring_context(tokenizer, text), device, precision)


def scoring_context(tokenizer, text: str) -> np.ndarray:
    """What scoring reads: the start id, then the text's ids. A character tokenizer writes its ids straight in
    behind the start id (the two copies of a text's ids that evaluate_ids holds were 16 of the ~17 bytes a
    character `charnn eval` needed), as the smallest integers that hold its vocabulary (one byte for up to 256
    characters: 8 were 8 of the 9 bytes a character left); the caller may let the text go before scoring."""
    if isinstance(tokenizer, CharTokenizer):
        context = np.empty(len(text) + 1, dtype=id_dtype(tokenizer.vocab_size))
        context[0] = start_id(tokenizer)
        tokenizer.encode(text, out=context[1:])
        return context
    return with_start(tokenizer, tokenizer.encode(text))


def id_dtype(vocab_size: int) -> type:
    """The smallest integer type that holds every id of a vocabulary of `vocab_size`, of the types every torch
    charnn supports has (signed past 256 ids: charnn.data.cache.id_dtype's uint16 stores ids, not torch tensors)."""
    return np.uint8 if vocab_size <= 256 else np.int16 if vocab_size <= 32768 else np.int32


def with_start(tokenizer, ids: np.ndarray) -> np.ndarray:
    """The start id, then `ids` (int64)."""
    return np.concatenate([np.array([start_id(tokenizer)], dtype=np.int64), np.asarray(ids, dtype=np.int64)])


def evaluate_ids(model, tokenizer, ids: np.ndarray, device: torch.device, precision: str = "fp32",
                 part: Tuple[int, int] = (0, 1), total: Optional[Callable[[float], float]] = None,
                 labels: Optional[np.ndarray] = None, per_label: Optional[np.ndarray] = None) -> EvalResult:
    """Score already-encoded text (training caches its val ids and calls this directly): every token, the
    first conditioned on the start id that sampling without a prime starts from, so `chars` is the text's
    length for every tokenizer. Under torchrun each rank scores its `part` and `total` sums the nats over
    ranks (every rank gets the whole result). A labelled model takes each token's `labels` (and adds each
    label's nats into `per_label`, if given)."""
    return evaluate_context(model, tokenizer, with_start(tokenizer, ids), device, precision, part, total, labels,
                            per_label)


def evaluate_context(model, tokenizer, context: np.ndarray, device: torch.device, precision: str = "fp32",
                     part: Tuple[int, int] = (0, 1), total: Optional[Callable[[float], float]] = None,
                     labels: Optional[np.ndarray] = None, per_label: Optional[np.ndarray] = None) -> EvalResult:
    """evaluate_ids of a `context` that scoring_context or with_start made (the start id, then the ids)."""
    ids = context[1:]
    unknown = int(np.count_nonzero(ids == tokenizer.unk_id))
    lab = None if labels is None else torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    nats = score_ids(model, torch.from_numpy(context), device, precision, part, lab, per_label)
    if total is not None:
        nats = total(nats)
    chars = tokenizer.token_chars(ids) if len(ids) else 0
    return EvalResult(nats=nats, tokens=len(ids), chars=chars, unknown=unknown)


def evaluate_documents(model, tokenizer, ids: np.ndarray, lengths, device: torch.device, precision: str = "fp32",
                       part: Tuple[int, int] = (0, 1), total: Optional[Callable[[float], float]] = None,
                       labels: Optional[np.ndarray] = None, per_label: Optional[np.ndarray] = None,
                       rows: int = 256) -> EvalResult:
    """Score independent documents (`ids` holds them one after another, `lengths` tokens each), every one
    from a zero state after the start id, as training on documents (DocumentBatches) and `classify` see
    them; the same result as evaluate_ids otherwise (labels: each token's label; per_label as there).
    Under torchrun each rank scores every world-th block of similar-length documents."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    order = np.argsort(lengths, kind="stable")
    was_training = model.training
    model.eval()
    nats = 0.0
    rank, world = part
    for b, lo in enumerate(range(0, len(order), rows)):
        if b % world != rank:
            continue
        docs = order[lo:lo + rows]
        x, y = pad_rows([ids[starts[d]:starts[d] + lengths[d]] for d in docs], start_id(tokenizer))
        lab = None if labels is None else torch.from_numpy(labels[starts[docs]].astype(np.int64)).view(-1, 1)
        per_row = block(lambda: row_nats(model, x, y, lab, device, precision).cpu().numpy(), lambda _: x.numel())
        nats += float(per_row.sum())
        if per_label is not None:
            per_label += np.bincount(labels[starts[docs]].astype(np.int64), per_row, minlength=len(per_label))
    model.train(was_training)
    if total is not None:
        nats = total(nats)
    return EvalResult(nats=nats, tokens=len(ids), chars=tokenizer.token_chars(ids) if len(ids) else 0,
                      unknown=int((ids == tokenizer.unk_id).sum()))


def pair_nats(model, src, tgt, start: int, device: torch.device, precision: str = "fp32", part: Tuple[int, int] = (0, 1),
              rows: int = 256) -> np.ndarray:
    """Teacher-forced nats of each pair's target (its characters and its end) given its input, for an
    encoder-decoder; `src` and `tgt` are encoded sides (charnn.data.pairs.encode_side), `start` the decoder's
    start id. Pairs go through in length-sorted blocks (pair_blocks); under torchrun a rank scores every world-th
    block (the others stay 0)."""
    from charnn.data.pairs import pair_batch

    out = np.zeros(len(tgt))
    order = np.argsort([len(t) for t in tgt], kind="stable")
    was_training = model.training
    model.eval()
    rank, world = part
    c = getattr(model, "config", None)
    width = max(getattr(c, "vocab_size", 1), 4 * getattr(c, "hidden", 1))
    for b, rows_at in enumerate(pair_blocks(order, src, tgt, rows, width)):
        if b % world != rank:
            continue
        x, y, source = pair_batch([src[i] for i in rows_at], [tgt[i] for i in rows_at], start)
        out[rows_at] = block(lambda: row_nats(model, x, y, None, device, precision, source).cpu().numpy(),
                             lambda _: x.numel())
    model.train(was_training)
    return out


def pair_blocks(order, src, tgt, rows: int, width: int, most: Optional[int] = None) -> List[list]:
    """The pairs in `order` cut into blocks of at most `rows`, and fewer where a block's padded (rows, target, width)
    or (rows, target, input) float32s (the logits, the gates; the attention's weights) would pass `most` bytes: one
    5,000-character pair among 255 short ones was padded into 26 GB of attention weights (eval was killed)."""
    most = LOGITS_BYTES if most is None else most
    blocks: List[list] = []
    block_, T, S = [], 0, 0
    for i in order:
        t, s = max(T, len(tgt[i]) + 1), max(S, len(src[i]))
        if block_ and (len(block_) >= rows or 4 * (len(block_) + 1) * t * max(s, width) > most):
            blocks.append(block_)
            block_, t, s = [], len(tgt[i]) + 1, len(src[i])
        block_.append(int(i))
        T, S = t, s
    return blocks + [block_] if block_ else blocks


def evaluate_pairs(model, src, tgt, start: int, device: torch.device, precision: str = "fp32", part: Tuple[int, int] = (0, 1),
                   total: Optional[Callable[[float], float]] = None) -> EvalResult:
    """Validation of an encoder-decoder: nats per target character (the end of each target counted as one),
    teacher-forced; `total` sums over ranks under torchrun."""
    nats = float(pair_nats(model, src, tgt, start, device, precision, part).sum())
    if total is not None:
        nats = total(nats)
    n = sum(len(t) for t in tgt)
    return EvalResult(nats=nats, tokens=n, chars=n, unknown=sum(int((t == 0).sum()) for t in tgt))


def combine(results: List[EvalResult]) -> EvalResult:
    out = EvalResult(0.0, 0, 0, 0)
    for r in results:
        out = out + r
    return out


def evaluate_labels(model, tokenizer, text: str, device: torch.device, names: List[str]) -> dict:
    """A labelled model's score of `text` under each of its labels: {name: EvalResult}, from one batched
    pass with a row per label (charnn.scoring.classify), the first token conditioned on the start id as above."""
    from charnn.scoring.classify import label_loglik

    ids = tokenizer.encode(text)
    loglik = label_loglik(model.eval(), [ids], start_id(tokenizer), len(names), device)[0]
    chars = tokenizer.token_chars(ids) if len(ids) else 0
    unknown = int((ids == tokenizer.unk_id).sum())
    return {n: EvalResult(nats=float(-ll), tokens=len(ids), chars=chars, unknown=unknown) for n, ll in zip(names, loglik)}
