"""The copying check: how much of a sample a run found verbatim in its own training text.

The training text is the run's encoding-cache entry (the checkpoint's `data` record names it) or, when that
is gone, the corpus read again (`--corpus`, or the built-in corpus by itself) and encoded as training did.
Its suffix-array index (data/textindex.py) is built once, inside the entry, and reused.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from charnn.checkpoint import is_seq2seq, load_checkpoint, resolve_checkpoint
from charnn.config import TrainConfig, from_dict
from charnn.data import cache, textindex
from charnn.data.corpus import BUILTIN_SOURCE, builtin_corpus, load_corpus
from charnn.data.encode import prepare_corpus
from charnn.errors import CharnnError
from charnn.text.tokenizer import UNK_TEXT, tokenizer_from_state

NS = (16, 32, 64)  # window lengths reported by default
CHUNK = 4 << 20  # training ids decoded at a time
BUILTIN = BUILTIN_SOURCE
Callback = Callable[[str, dict], None]


@dataclass
class Span:
    length: int  # characters
    text: str
    sample_offset: int  # where it starts in the sample (characters from 0)
    train_offset: int  # where it starts in the training text (characters from 0)
    line: int  # the training text's line it starts on (from 1)
    source: Optional[str]  # the corpus file it is in, where that is known (a single file, the built-in corpus)


@dataclass
class Windows:
    n: int  # characters per window
    windows: int  # the sample's n-character windows (0: the sample is shorter than n)
    found: int  # how many of them occur in the training text
    share: Optional[float]  # found / windows (None without windows)


@dataclass
class Novelty:
    checkpoint: str
    corpus: str  # where the training text came from
    train_chars: int
    sample_chars: int
    longest: Optional[Span]  # None when no character of the sample occurs in the training text
    windows: List[Windows] = field(default_factory=list)
    index: str = ""  # the index folder
    index_built: bool = False  # True when this call built it
    index_seconds: float = 0.0  # how long building it took (now or when it was built)
    query_seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def novelty(checkpoint: str, sample: str, ns: Sequence[int] = NS, corpus: Sequence[str] = (),
            glob: Optional[str] = None, encoding: Optional[str] = None, on_event: Optional[Callback] = None) -> Novelty:
    """Compare `sample` with the training text of `checkpoint` (a .pt file or run folder)."""
    on_event = on_event or (lambda kind, info: None)
    if not sample:
        raise CharnnError("the sample is empty; pass a file of generated text, or pipe one in: "
                          "`charnn sample RUN | charnn novelty RUN`")
    path = resolve_checkpoint(checkpoint)
    data = load_checkpoint(path, finite=False)
    if is_seq2seq(data):
        raise CharnnError(f"{path} is a sequence-to-sequence model; `charnn novelty` checks a language model's "
                          "samples against its training text")
    key, meta, source = _training_entry(path, data, corpus, glob, encoding, on_event)
    index, built = _index(key, meta, tokenizer_from_state(data["tokenizer"]), on_event)
    t0 = time.perf_counter()
    q = textindex.Query.of(sample)
    cap = max(ns)
    lengths, where = textindex.match_lengths(index, q, np.arange(len(sample)), np.full(len(sample), cap))
    longest = _longest(index, q, lengths, where, cap, sample, source)
    result = Novelty(str(path), source, index.chars, len(sample), longest, [_windows(lengths, n) for n in ns],
                     str(index.folder), built, index.seconds)
    result.query_seconds = time.perf_counter() - t0
    return result


def _windows(lengths: np.ndarray, n: int) -> Windows:
    count = max(0, len(lengths) - n + 1)
    found = int(np.count_nonzero(lengths[:count] >= n))
    return Windows(n, count, found, found / count if count else None)


def _longest(index, q, lengths, where, cap: int, sample: str, source: str) -> Optional[Span]:
    i, n, at = textindex.longest_match(index, q, lengths, where, cap)
    if n == 0:
        return None
    offset, line = textindex.locate(index, at)
    name, own_line = _source_file(index, at, source)
    return Span(n, sample[i: i + n], i, offset, own_line or line, name)


def _source_file(index, at: int, source: str) -> Tuple[Optional[str], Optional[int]]:
    """(the file a text position is in, its line there where that differs from the text's): the corpus itself
    when it is one file; in the built-in corpus, the `# file: PATH` line that heads each of its files, and the
    line counted from there (the joined text's line, 125,528 of a 736-line file, was given)."""
    if source.startswith(BUILTIN):
        back = bytes(index.text[max(0, at - (1 << 22)): at + 1])  # stdlib files are far shorter than 4 MB
        head = back.rfind(b"# file: ")
        if head < 0:
            return None, None
        name, _, body = back[head + 8:].partition(b"\n")
        return name.decode("utf-8", "replace"), body[:-1].count(b"\n") + 1
    return (source if Path(source).is_file() else None), None


def _training_entry(path: Path, data: dict, corpus: Sequence[str], glob, encoding: str, on_event: Callback):
    """(cache key, entry meta, corpus description) of the run's training ids, encoding them again if needed."""
    record = data.get("data") or {}
    encoding = encoding or record.get("encoding", "utf-8")  # (the run's, recorded since 2026-12-07)
    if data.get("labels"):
        raise CharnnError(f"{str(path)!r} is a labelled model (--label-by); the copying check covers runs "
                          "trained on one text stream, not labelled ones, yet")
    key = record.get("cache_entry")
    meta = cache.find_entry(key, cache.READABLE) if key and not corpus else None  # (the entry the run recorded,
    # of its day's format: a run from before the last format change read "no longer in the cache")
    if meta is not None:
        return key, meta, record.get("corpus", "")
    if corpus:
        chosen = load_corpus(list(corpus), encoding, glob)
    elif str(record.get("corpus", "")).startswith(BUILTIN):
        chosen = builtin_corpus(root=record["corpus"][len(BUILTIN):])
    else:
        raise CharnnError(_no_text(path, record))
    on_event("corpus", {"source": chosen.source})
    cfg = from_dict(TrainConfig, data.get("train_config") or {})
    prepared = prepare_corpus(chosen, cfg, data["tokenizer"], encoding)
    if "train_chars" in record and prepared.train_chars != record["train_chars"]:  # another text: a wrong answer
        raise CharnnError(f"--corpus {chosen.source!r} is not the text {str(path)!r} trained on: it has "
                          f"{prepared.train_chars:,} training characters, the run read {record['train_chars']:,} "
                          f"(from {record.get('corpus')!r}); pass that text")
    if record.get("content") and prepared.content and prepared.content != record["content"]:  # (same length)
        raise CharnnError(f"--corpus {chosen.source!r} is not the text {str(path)!r} trained on: as many "
                          f"characters, but others (or in another order); pass that text, as it was")
    key = prepared.path.name
    return key, cache.find_entry(key), chosen.source


def _no_text(path: Path, record: dict) -> str:
    if not record:
        why = "does not record its training text (it was written before checkpoints did)"
    else:
        why = (f"trained on {record.get('corpus')!r}, whose encoded text is no longer in the cache "
               f"({cache.cache_root()})")
    return f"checkpoint {str(path)!r} {why}; pass the training files again with --corpus PATH"


def _index(key: str, meta: dict, tokenizer, on_event: Callback):
    """(index, built now) of the entry's training text, built once under a lock."""
    folder = cache.entry_dir(key) / "novelty"
    index = textindex.open_index(folder)
    if index is not None:
        return index, False
    with cache.build_lock(f"novelty-{key}", lambda: on_event("index", {"stage": "wait"})):
        index = textindex.open_index(folder)
        if index is not None:
            return index, False
        on_event("index", {"stage": "build", "chars": meta["train_chars"], "folder": str(folder)})
        index = textindex.build_index(folder, _train_text(key, meta, tokenizer))
        on_event("index", {"stage": "built", "seconds": index.seconds})
    return index, True


def _train_text(key: str, meta: dict, tokenizer) -> Iterator[bytes]:
    """The training split's ids, decoded, as UTF-8 chunks."""
    ids = cache.open_ids(key, meta)[: meta["train_tokens"]]
    if tokenizer.kind == "char":  # ids 1.. are the characters in id order, 0 the unknown
        table = np.array([ord(UNK_TEXT)] + [ord(c) for c in tokenizer.chars], dtype="<u4")
        for a in range(0, len(ids), CHUNK):
            text = table[ids[a: a + CHUNK]].tobytes().decode("utf-32-le", "surrogatepass")
            yield text.encode("utf-8", "surrogatepass")
        return
    decoder = tokenizer.decoder()
    for a in range(0, len(ids), CHUNK):
        yield decoder.push(ids[a: a + CHUNK].tolist()).encode("utf-8", "surrogatepass")
    yield decoder.flush().encode("utf-8", "surrogatepass")
