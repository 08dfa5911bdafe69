"""Tokenizers: text <-> integer ids, with a plain-data state that travels inside the checkpoint.

Every tokenizer has `encode`, `decode`, `vocab_size`, `unk_id`, `count_unknown`, `state()` and an
incremental decoder for streaming; `build_tokenizer` makes one from training text and
`tokenizer_from_state` rebuilds one from a checkpoint. Subword (sentencepiece) tokenizers live in subword.py.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from charnn.errors import CharnnError

UNK_TEXT = "\ufffd"  # what an unknown id decodes to


ENCODE_BLOCK = 1 << 20  # characters CharTokenizer.encode turns into ids at a time


def codepoints(text: str) -> np.ndarray:
    """The Unicode code points of `text` as a uint32 array (no Python-level loop)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


class CharTokenizer:
    """One id per character seen in the training text; id 0 is reserved for unknown characters.

    A vocabulary built from text is sorted. One extended for fine-tuning (`--init-from`) keeps its base's
    ids and appends the new characters, so `chars` is in id order, not necessarily sorted."""

    kind = "char"
    unk_id = 0

    def __init__(self, chars: Sequence[str], ordered: bool = False):
        """`chars` in id order (ids 1, 2, ...) when `ordered`; else any characters, sorted and deduplicated."""
        self.chars: List[str] = list(chars) if ordered else sorted(set(chars))
        if ordered and len(set(self.chars)) != len(self.chars):
            raise CharnnError("a character vocabulary lists a character twice; the checkpoint is damaged")
        cps = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        order = np.argsort(cps, kind="stable")
        self._cps = cps[order]  # sorted code points, for searchsorted
        self._ids = (order + 1).astype(np.int64)  # the id of each of them
        self._index: Dict[str, int] = {c: i + 1 for i, c in enumerate(self.chars)}

    @classmethod
    def build(cls, text: str) -> "CharTokenizer":
        if not text:
            raise CharnnError("cannot build a vocabulary from empty text")
        return cls([chr(c) for c in np.unique(codepoints(text))])

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Ids as an int64 array; characters outside the vocabulary map to `unk_id`. Encoded ENCODE_BLOCK characters
        at a time into the result: the whole text at once made five full-length temporaries (about 37 bytes a
        character at the peak; `charnn eval` of a 2 GB file was killed by the system), now 8 bytes and a block's.
        `out`: an integer array of len(text) to write them into (scoring's, behind its start id: int64, or the
        smallest type that holds the vocabulary), returned."""
        out = np.zeros(len(text), dtype=np.int64) if out is None else out
        if len(self._cps) == 0:
            out[:] = self.unk_id
            return out
        for lo in range(0, len(text), ENCODE_BLOCK):
            cps = codepoints(text[lo:lo + ENCODE_BLOCK])
            pos = np.minimum(np.searchsorted(self._cps, cps), len(self._cps) - 1)
            out[lo:lo + len(cps)] = np.where(self._cps[pos] == cps, self._ids[pos], self.unk_id)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        chars = self.chars
        return "".join(chars[i - 1] if 0 < i <= len(chars) else UNK_TEXT for i in ids)

    def unknown(self, text: str) -> List[str]:
        """The distinct characters of `text` the vocabulary lacks, in order of first appearance."""
        seen = dict.fromkeys(c for c in text if c not in self._index)
        return list(seen)

    def count_unknown(self, text: str) -> int:
        return int((self.encode(text) == self.unk_id).sum())

    def token_chars(self, ids: np.ndarray) -> int:
        """How many characters the given ids stand for."""
        return len(ids)

    def names(self) -> List[str]:
        """Each id's text, to name it among others (show's and token_logprobs' alternatives): its character."""
        return [self.decode([i]) for i in range(self.vocab_size)]

    def decoder(self) -> "IncrementalDecoder":
        return IncrementalDecoder(self)

    def state(self) -> dict:
        return {"kind": self.kind, "chars": "".join(self.chars)}


class IncrementalDecoder:
    """Turns a stream of ids into text pieces; a character tokenizer needs no look-behind."""

    def __init__(self, tokenizer: CharTokenizer):
        self.tokenizer = tokenizer

    def push(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def flush(self) -> str:
        return ""


def build_tokenizer(text: str, kind: str = "char", vocab_size: Optional[int] = None,
                    on_event: Optional[Callable[[str, dict], None]] = None, threads: Optional[int] = None):
    """A tokenizer built from (training) text: one id per character, or a sentencepiece model."""
    if kind == "char":
        return CharTokenizer.build(text)
    from charnn.text.subword import SentencePieceTokenizer

    return SentencePieceTokenizer.train(kind, text, vocab_size, on_event, threads)


def start_id(tokenizer) -> int:
    """The id that stands before a text with nothing before it: a newline (or id 1 where the vocabulary has
    none). Sampling without a prime starts from it, and scoring conditions a text's first token on it."""
    ids = tokenizer.encode("\n")
    return int(ids[0]) if len(ids) and ids[0] != tokenizer.unk_id else 1


def tokenizer_from_state(state: dict):
    kind = state.get("kind") if isinstance(state, dict) else None
    if kind == "char":
        chars = state.get("chars")
        if not isinstance(chars, (list, tuple, str)) or not all(isinstance(c, str) and len(c) == 1 for c in chars):
            raise CharnnError("the checkpoint's character vocabulary is missing or damaged")  # (a KeyError traceback)
        return CharTokenizer(list(chars), ordered=True)
    if kind in ("bpe", "unigram"):
        from charnn.text.subword import SentencePieceTokenizer

        model = state.get("model")
        if hasattr(model, "numpy"):  # a uint8 tensor
            model = model.numpy().tobytes()
        if not isinstance(model, (bytes, bytearray)):
            raise CharnnError(f"checkpoint's {kind} tokenizer carries no sentencepiece model")
        return SentencePieceTokenizer(kind, model, "byte" if state.get("space") == "byte" else "marker")
    raise CharnnError(f"checkpoint uses tokenizer {kind!r}, which this version of charnn does not know")
