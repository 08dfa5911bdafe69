"""Turning a corpus into train and validation ids in bounded memory, once: later runs load the cache.

The text streams through a few MB at a time and is never held whole. Characters take one pass
(charstream.py): ids through a lookup table, the vocabulary fixed afterwards from the characters first
seen before the split point (the training split's; the split is the last `val_frac` of the characters,
as nanoGPT, or a catalog corpus's fixed split). Subwords take three: count the characters (fixing the
split), read a sample of the training split for sentencepiece, encode runs of whole lines. The ids go
to the cache as uint8/uint16/uint32; validation characters the vocabulary lacks become the unknown id
and are counted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from charnn.data import cache, charstream
from charnn.data.sources import (SEPARATOR, Part, SourceFile, Undecodable, check_encoding, join_parts, read_chunks,
                                 skip_or_raise)
from charnn.config import TrainConfig
from charnn.data.training_text import TextOptions
from charnn.errors import CharnnError, missing
from charnn.text.tokenizer import tokenizer_from_state

Callback = Callable[[str, dict], None]
SPM_CHARS = 1 << 20  # sentencepiece encodes runs of whole lines of about this many characters


@dataclass
class Prepared:
    tokenizer: object
    train_ids: torch.Tensor  # compact unsigned ids, memory-mapped from the cache
    val_ids: np.ndarray  # the same for validation
    train_chars: int  # characters in the training split
    val_chars: int
    val_unknown: int  # validation characters outside the vocabulary (scored as the unknown id)
    cached: bool  # True when the ids came from the cache without encoding
    path: Optional[Path]  # the cache entry (None: a labelled corpus, encoded in memory)
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (file, why) left out of the corpus
    train_labels: Optional[torch.Tensor] = None  # a labelled corpus (data/labels.py): each token's label id
    val_labels: Optional[np.ndarray] = None
    val_label_chars: Optional[List[int]] = None  # validation characters per label (labels 1..N)
    train_doc_lengths: Optional[List[int]] = None  # --label-by line: tokens of each document, in order
    val_doc_lengths: Optional[List[int]] = None
    content: Optional[str] = None  # a digest of the text's files and texts as read (`--resume` checks it is the same)


def prepare(parts: Sequence[Part], encoding: str, split: dict, tokenizer_spec: dict,
            val_parts: Sequence[Part] = (), on_event: Optional[Callback] = None, threads: Optional[int] = None) -> Prepared:
    """Train and validation ids of a corpus, from the cache when it holds them.

    `parts` are the corpus files (or in-memory texts), joined with a separator; `val_parts` a separate
    validation file (then all of `parts` is training text). `split` is {"val_frac": f} or
    {"train": n, "val": m} (fixed character counts). `tokenizer_spec` is {"kind", "vocab_size"} to build
    one from the training split, or {"state": tokenizer state} to use a checkpoint's.
    """
    on_event = on_event or (lambda kind, info: None)
    check_encoding(encoding)
    t0 = time.perf_counter()
    memo = cache.load_memo()
    content = [_fingerprint(p, memo) for p in parts] + ["val:" + _fingerprint(p, memo) for p in val_parts]
    cache.save_memo(memo)
    stamps = [(p.path, memo[str(p.path.resolve())][:2]) for p in list(parts) + list(val_parts)
              if isinstance(p, SourceFile)]  # (size, mtime) when hashed: the ids must be of those bytes
    key = cache.entry_key(content, encoding, split, _spec_for_key(tokenizer_spec))
    meta = cache.find_entry(key)
    if meta is None and "fresh" in tokenizer_spec:  # a resumed run: the entry its first run wrote holds the same ids
        key, meta = _fresh_entry(content, encoding, split, tokenizer_spec) or (key, None)
    ids, tok = _open_entry(key, meta) if meta is not None else (None, None)
    if meta is not None and ids is None:  # damaged: built again (ids past the vocabulary were torch's IndexError
        shutil.rmtree(cache.entry_dir(key), ignore_errors=True)  # in training; a lost tokenizer.model failed
        key, meta = cache.entry_key(content, encoding, split, _spec_for_key(tokenizer_spec)), None  # every run)
    cached = meta is not None
    if meta is None:
        waiting = functools.partial(on_event, "data", {"stage": "wait", "key": key})
        with cache.build_lock(key, waiting):  # another process may be encoding this very corpus: wait, then reuse
            meta = cache.find_entry(key)
            cached = meta is not None
            if meta is None:
                on_event("data", {"stage": "encode", "key": key, "bytes": _size(list(parts) + list(val_parts))})
                meta = _build(key, list(parts), list(val_parts), encoding, split, tokenizer_spec, on_event, threads,
                              stamps)
    if ids is None:
        ids, tok = cache.open_ids(key, meta), _load_tokenizer(key, meta)
    n_train = meta["train_tokens"]
    all_files = [p for p in list(parts) + list(val_parts) if isinstance(p, SourceFile)]
    skipped = [(str(all_files[i].path), why) for i, why in meta.get("skipped", [])]
    out = Prepared(tok, torch.from_numpy(ids[:n_train]), ids[n_train:], meta["train_chars"], meta["val_chars"],
                   meta["val_unknown"], cached, cache.entry_dir(key), skipped,
                   content=hashlib.sha256(json.dumps([content, encoding.lower(), split]).encode()).hexdigest()[:32])
    seconds = time.perf_counter() - t0
    on_event("data", {"stage": "ready", "cached": cached, "seconds": seconds, "path": str(out.path),
                      "bytes": meta.get("bytes", 0), "train_tokens": n_train, "val_tokens": len(out.val_ids),
                      "dtype": meta["dtype"], "val_unknown": out.val_unknown, "skipped": skipped})
    return out


def _size(parts: Sequence[Part]) -> int:
    """Bytes of the files plus characters of the in-memory texts: what progress messages call the corpus size."""
    return sum(p.path.stat().st_size if isinstance(p, SourceFile) else len(p) for p in parts)


def _fingerprint(part: Part, memo: dict) -> str:
    if isinstance(part, str):
        return "text:" + cache.text_sha256(part)
    try:
        return "file:" + cache.file_sha256(part.path, memo)
    except OSError as e:
        raise CharnnError(f"cannot read corpus {str(part.path)!r}: {e.strerror or e}") from None


def _spec_for_key(spec: dict) -> dict:
    if "state" not in spec:
        return {"kind": spec["kind"], "vocab_size": spec.get("vocab_size")}
    state = dict(spec["state"])
    model = state.get("model")
    if model is not None:
        state["model"] = hashlib.sha256(_model_bytes(model)).hexdigest()
    return {"state": state, "extend": True} if spec.get("extend") and state["kind"] == "char" else {"state": state}


def _fresh_entry(content, encoding: str, split: dict, spec: dict):
    """(key, meta) of the entry a fresh run with these flags wrote, when its tokenizer is the resumed one."""
    fresh_key = cache.entry_key(content, encoding, split, _spec_for_key(spec["fresh"]))
    meta = cache.find_entry(fresh_key)
    if meta is None:
        return None
    same = _spec_for_key({"state": _load_tokenizer(fresh_key, meta).state()}) == _spec_for_key(spec)
    return (fresh_key, meta) if same else None


def _model_bytes(model) -> bytes:
    return model.numpy().tobytes() if hasattr(model, "numpy") else bytes(model)


# -- characters: one pass (charstream.py) ---------------------------------------------------------------
def _encode_chars(writer: cache.EntryWriter, parts, val_parts, encoding, split, state, extend, on_event):
    """(tokenizer, dtype, cut, end, unknown, skipped) after writing character ids to the entry."""
    tok0 = tokenizer_from_state(state) if state else None
    extend = bool(state) and extend
    dtypes = [np.uint8, np.uint16, np.uint32] if extend or not tok0 else [cache.id_dtype(tok0.vocab_size)]
    n_files = sum(isinstance(p, SourceFile) for p in parts)
    fixed_end = split["train"] + split["val"] if "train" in split and not val_parts else None
    for dtype in dtypes:
        writer.ids.seek(0)
        writer.ids.truncate()
        skipped: list = []
        try:
            w = charstream.CharWriter(writer.ids, np.dtype(dtype), tok0, extend)
            charstream.write_stream(w, parts, encoding, SEPARATOR, fixed_end, skipped, 0, on_event)
            n_main = w.pos
            if val_parts:
                charstream.write_stream(w, val_parts, encoding, None, None, skipped, n_files, on_event)
        except charstream.Overflow:
            continue
        if n_main == 0:
            raise CharnnError("none of the corpus files holds any text")
        cut, end = _split_points(n_main, split, w.pos - n_main if val_parts else None)
        tok, unknown = charstream.finish(w, writer.tmp / "ids.bin", cut, end)
        return tok or tok0, np.dtype(dtype), cut, end, unknown, skipped
    raise CharnnError("the corpus has more distinct characters than 32-bit ids hold")  # cannot happen


# -- subwords: count, sample, train, encode -----------------------------------------------------------
def _scan(parts: List[Part], encoding: str, on_event: Callback, skipped: list, offset: int = 0):
    """Parts that are text and their lengths; optional files that are not are dropped (and reported)."""
    kept, counts = [], []
    for i, part in enumerate(parts):
        try:
            counts.append(sum(len(chunk) for chunk in read_chunks(part, encoding)))
            kept.append(part)
        except Undecodable as e:
            skip_or_raise(part, e, offset + i, skipped, on_event)
    if parts and not any(counts):
        raise CharnnError("none of the corpus files holds any text")
    return kept, counts


def _stream(parts: Sequence[Part], encoding: str, end: int) -> Iterator[Tuple[int, str]]:
    """(position, chunk) over the parts in order, up to character `end`."""
    pos = 0
    for part in parts:
        for chunk in read_chunks(part, encoding):
            if pos >= end:
                return
            chunk = chunk[: end - pos]
            yield pos, chunk
            pos += len(chunk)


def _encode_subwords(writer: cache.EntryWriter, parts, val_parts, encoding, split, spec, on_event, threads):
    """(tokenizer, dtype, cut, end, unknown, skipped, train_tokens) after writing subword ids to the entry."""
    skipped: list = []
    n_files = sum(isinstance(p, SourceFile) for p in parts)
    kept, counts = _scan(parts, encoding, on_event, skipped)
    kept_val, val_counts = _scan(val_parts, encoding, on_event, skipped, n_files) if val_parts else ([], [])
    stream = join_parts(kept)
    n_main = sum(counts) + len(SEPARATOR) * (len(kept) - 1)
    cut, end = _split_points(n_main, split, sum(val_counts) if val_parts else None)
    stream += kept_val
    if "state" in spec:
        tok = tokenizer_from_state(spec["state"])
    else:
        tok = _train_subword(stream, encoding, cut, spec, on_event, threads)
    dtype = cache.id_dtype(tok.vocab_size)
    train_tokens, unknown = _write_subwords(tok, stream, encoding, cut, end, dtype, writer.ids)
    return tok, dtype, cut, end, unknown, skipped, train_tokens


def _build(key: str, parts: List[Part], val_parts: List[Part], encoding: str, split: dict, spec: dict,
           on_event: Callback, threads: Optional[int], stamps: Sequence[Tuple[Path, list]] = ()) -> dict:
    """Encode the corpus into cache entry `key`. `stamps`: each file's [size, mtime_ns] when it was hashed into the
    key; a file that changed since (written to while a run starts) fails the build, so the entry never holds ids of
    other bytes than its key's (they were cached under the old content's hash, and a later run read them)."""
    t0 = time.perf_counter()
    state = spec.get("state")
    writer = cache.EntryWriter(key)
    try:
        if (state or spec)["kind"] == "char":
            tok, dtype, cut, end, unknown, skipped = _encode_chars(writer, parts, val_parts, encoding, split, state,
                                                                    spec.get("extend", False), on_event)
            train_tokens = cut
        else:
            tok, dtype, cut, end, unknown, skipped, train_tokens = _encode_subwords(
                writer, parts, val_parts, encoding, split, spec, on_event, threads)
        writer.ids.flush()
        tokens = writer.ids.tell() // dtype.itemsize
        n_bytes = _size(parts + val_parts)
        meta = {"dtype": dtype.name, "tokens": tokens, "train_tokens": train_tokens, "train_chars": cut,
                "val_chars": end - cut, "val_unknown": unknown, "skipped": skipped, "tokenizer_kind": tok.kind,
                "bytes": n_bytes, "encode_seconds": time.perf_counter() - t0}
        extra = {}
        if tok.kind == "char":
            meta["tokenizer"] = tok.state()
        else:
            meta["tokenizer"] = {k: v for k, v in tok.state().items() if k != "model"}  # (its kind and spacing)
            extra = {"tokenizer.model": _model_bytes(tok.state()["model"])}
        for path, stamp in stamps:
            st = path.stat()
            if [st.st_size, st.st_mtime_ns] != stamp:
                raise CharnnError(f"corpus {str(path)!r} changed while it was read; run again once nothing writes "
                                  "to it")
        writer.commit(meta, extra)
    except BaseException:
        writer.abort()
        raise
    return meta


def _split_points(n_main: int, split: dict, n_val: Optional[int]) -> Tuple[int, int]:
    """(cut, end): training is characters [0, cut), validation [cut, end). n_val: a validation file's length."""
    if n_val is not None:
        cut, end = n_main, n_main + n_val
    elif "val_frac" in split:
        cut, end = int(n_main * (1.0 - split["val_frac"])), n_main
    else:
        cut = split["train"]
        end = min(n_main, cut + split["val"])
        if cut >= n_main:
            raise CharnnError(f"the corpus has {n_main:,} characters, fewer than its {cut:,}-character training split")
    if end - cut < 2:  # (the hint named --val-file to a user who had passed a one-character one)
        raise CharnnError(f"the validation text has {end - cut} character{'' if end - cut == 1 else 's'}; it needs "
                          "at least 2 "
                          + ("(a longer --val-file)" if n_val is not None else "(raise --val-frac or pass --val-file)"))
    if cut < 1:
        raise CharnnError("the training text is empty; lower --val-frac or use more text")
    return cut, end


def _lines(stream, encoding, cut, end) -> Iterator[Tuple[bool, str]]:
    """(is_validation, text): runs of whole lines of about SPM_CHARS characters, never across the cut."""
    pending, in_val = [], False
    size = 0
    for pos, chunk in _stream(stream, encoding, end):
        pieces = [(False, chunk[: max(0, cut - pos)]), (True, chunk[max(0, cut - pos):])]
        for is_val, piece in pieces:
            if not piece:
                continue
            if is_val != in_val:
                if pending:
                    yield in_val, "".join(pending)
                pending, size, in_val = [], 0, is_val
            pending.append(piece)
            size += len(piece)
            if size >= SPM_CHARS:
                text = "".join(pending)
                nl = text.rfind("\n")
                if nl >= 0 or size >= 8 * SPM_CHARS:
                    nl = nl if nl >= 0 else len(text) - 1
                    yield in_val, text[: nl + 1]
                    rest = text[nl + 1:]
                    pending, size = ([rest] if rest else []), len(rest)
    if pending:
        yield in_val, "".join(pending)


def _write_subwords(tok, stream, encoding, cut, end, dtype, out) -> Tuple[int, int]:
    train_tokens = unknown = 0
    for is_val, text in _lines(stream, encoding, cut, end):
        ids = tok.encode(text)
        if is_val:
            unknown += tok.count_unknown(text)
        else:
            train_tokens += len(ids)
        ids.astype(dtype).tofile(out)
    return train_tokens, unknown


def _train_subword(stream, encoding, cut, spec, on_event, threads):
    """A sentencepiece model trained on (a sample of) the training split, as subword.training_sample."""
    from charnn.text import subword
    ranges = subword.sample_ranges(cut)
    pieces = [[] for _ in ranges]
    for pos, chunk in _stream(stream, encoding, ranges[-1][1]):
        for j, (a, b) in enumerate(ranges):
            if a < pos + len(chunk) and pos < b:
                pieces[j].append(chunk[max(0, a - pos): b - pos])
    sample = "\n".join("".join(p) for p in pieces)
    return subword.SentencePieceTokenizer.train(spec["kind"], sample, spec.get("vocab_size"), on_event, threads,
                                                total_chars=cut)


def _open_entry(key: str, meta: dict):
    """(ids, tokenizer) of a cached entry, or (None, None) where it is damaged: its tokenizer gone or unreadable,
    or, where ids.bin changed after its meta.json was written, an id past the vocabulary (one pass over the ids:
    7 ms per 100M uint8 ids in the page cache on the AMX Xeon, a full read from a cold disk, so not every run)."""
    try:
        tok = _load_tokenizer(key, meta)
        ids = cache.open_ids(key, meta)
        folder = cache.entry_dir(key)
        changed = (folder / "ids.bin").stat().st_mtime_ns > (folder / "meta.json").stat().st_mtime_ns
        if changed and len(ids) and int(ids.max()) >= tok.vocab_size:
            return None, None
        return ids, tok
    except (OSError, ValueError, KeyError, TypeError, CharnnError):
        return None, None


def _load_tokenizer(key: str, meta: dict):
    state = dict(meta["tokenizer"])
    if state["kind"] != "char":
        state["model"] = (cache.entry_dir(key) / "tokenizer.model").read_bytes()
    return tokenizer_from_state(state)


def prepare_corpus(corpus, options: Union[TextOptions, TrainConfig], tokenizer_state: Optional[dict] = None,
                   encoding: str = "utf-8", on_event: Optional[Callback] = None, extend: bool = False) -> Prepared:
    """`prepare` for a Corpus: its split (--val-frac, --val-file or the corpus's own) and tokenizer
    (--tokenizer/--vocab-size, or a resumed checkpoint's state, or with `extend` a base model's character
    vocabulary that the new text's characters are added to). `options` may be a whole TrainConfig."""
    o = options if isinstance(options, TextOptions) else TextOptions.of(options)
    val_parts: List[Part] = []
    if o.val_file:
        from charnn.data.catalog import resolve

        p = Path(resolve(o.val_file, on_event))
        if not p.exists():
            raise CharnnError(f"validation file {o.val_file!r} {missing(p)}")
        if p.is_dir():
            raise CharnnError(f"validation file {o.val_file!r} is a directory; pass a text file")
        val_parts = [SourceFile(p, optional=False, what="validation file")]
    split = corpus.split or {"val_frac": o.val_frac}
    fresh = {"kind": o.tokenizer, "vocab_size": o.vocab_size}
    spec = {"state": tokenizer_state, "fresh": fresh} if tokenizer_state else fresh
    if extend:
        spec = {"state": tokenizer_state, "extend": True}
    return prepare(corpus.parts(), corpus.encoding or encoding, split, spec, val_parts, on_event, o.threads)
