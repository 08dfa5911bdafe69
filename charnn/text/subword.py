"""Subword tokenizers: sentencepiece BPE or unigram, trained in-process, that give back any text exactly.

How text survives a round trip:
- identity normalisation (sentencepiece's default NFKC would rewrite text), no dummy prefix, whitespace
  kept as it is, and byte fallback: a character outside the vocabulary becomes its UTF-8 byte pieces;
- charnn decodes ids itself, through a table id -> UTF-8 bytes (a piece's text with sentencepiece's
  space marker U+2581 turned back into a space; a byte piece is its byte). Joining bytes and decoding
  UTF-8 once makes one-shot and streamed decoding the same thing;
- the two things sentencepiece cannot carry are dealt with before it sees them: a literal U+2581 in the
  text (sentencepiece would read it back as a space) is encoded as its three byte pieces, and a lone
  surrogate (not UTF-8 at all; only a mis-decoded command line can hold one) maps to the unknown id.

Training reads the training split only, from an iterator, and writes the model into memory: no files.
On a text longer than SAMPLE_CHARS it trains on SAMPLE_BLOCKS evenly spaced blocks of it, SAMPLE_CHARS
characters in all. The model's bytes are the tokenizer's state, so a checkpoint carries them.
"""

from __future__ import annotations

import codecs
import io
import os
import re
import time
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from charnn.config import DEFAULT_VOCAB
from charnn.errors import CharnnError, ConfigError, first_line

KINDS = ("bpe", "unigram")
SAMPLE_CHARS = 4_000_000  # train sentencepiece on at most this many characters of the training text...
SAMPLE_BLOCKS = 200  # ...taken as this many evenly spaced blocks
SENTENCE_CHARS = 2000  # training "sentences" are runs of whole lines up to about this long
MAX_THREADS = 8
SPACE = "\u2581"  # sentencepiece's whitespace marker
UNK_TEXT = "\ufffd"
_SPECIAL = re.compile("[\u2581\ud800-\udfff]")  # what sentencepiece cannot carry (see the docstring)
_SPECIAL_SPACE = re.compile("[ \u2581\ud800-\udfff]")  # and a space, where no piece is the whitespace marker
_SURROGATE = re.compile("[\ud800-\udfff]")  # how undecodable bytes survive as text (surrogateescape)
_TOO_SMALL = re.compile(r"smaller than required_chars\. (\d+) vs (\d+)")


def _spm():
    import sentencepiece  # imported on first use: char models never need it

    return sentencepiece


class SentencePieceTokenizer:
    """The tokenizer interface of `CharTokenizer` over a sentencepiece model with byte fallback."""

    def __init__(self, kind: str, model: bytes, space: str = "byte"):
        """`space`: how a space goes where no piece is sentencepiece's space marker (text without spaces trained
        the tokenizer): "byte", its byte piece; "marker", the marker's bytes (decoded as a literal U+2581), as
        tokenizers saved before their state said which did (their runs resume on the ids they were trained on)."""
        if kind not in KINDS:
            raise CharnnError(f"unknown subword tokenizer {kind!r}")
        self.kind, self.model, self.space = kind, bytes(model), space
        try:
            self.sp = _spm().SentencePieceProcessor(model_proto=self.model)
        except (RuntimeError, OSError) as e:
            raise CharnnError(f"the checkpoint's sentencepiece model is unreadable: {e}") from None
        sp = self.sp
        self.unk_id = sp.unk_id()
        self.pieces: List[bytes] = [self._piece_bytes(i) for i in range(sp.get_piece_size())]
        self._is_byte = np.array([sp.is_byte(i) for i in range(len(self.pieces))], dtype=bool)  # (asked thrice)
        # characters a piece starts: its bytes that are not UTF-8 continuation bytes (10xxxxxx)
        self._starts = np.array([sum((b & 0xC0) != 0x80 for b in p) for p in self.pieces], dtype=np.int64)
        self._byte_ids = [sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)]
        # a tokenizer trained on text without spaces (Chinese, Japanese) has no piece for sentencepiece's space
        # marker: a space was written as the marker's bytes and came back as a literal "▁"; it goes as its byte
        self._special = _SPECIAL_SPACE if sp.piece_to_id(SPACE) == self.unk_id and space == "byte" else _SPECIAL
        self._utf8: Optional[Tuple[np.ndarray, np.ndarray]] = None  # see utf8_tables

    @property
    def spacing(self) -> Optional[str]:
        """How a space is written where no piece is the space marker: "byte" (its byte piece) or "marker" (the
        marker's bytes: tokenizers saved before 2026-12-07); None where a piece is the marker."""
        return None if self.sp.piece_to_id(SPACE) != self.unk_id else self.space

    def names(self) -> List[str]:
        """Each id's text, to name it among others (show's and token_logprobs' alternatives): its characters, or
        for a byte piece "bytes:\\xNN", as OpenAI names a token that is not whole characters (decoded, the 128
        bytes of no character alone were all U+FFFD, and an ASCII byte piece the same as its character's piece:
        alternatives keyed by their text collided)."""
        return [f"bytes:\\x{p[0]:02x}" if self._is_byte[i] else self.decode([i]) for i, p in enumerate(self.pieces)]

    def _piece_bytes(self, i: int) -> bytes:
        sp = self.sp
        if sp.is_byte(i):
            return bytes([int(sp.id_to_piece(i)[3:5], 16)])  # "<0xE6>" -> b"\xe6"
        if sp.is_unknown(i) or sp.is_control(i):
            return UNK_TEXT.encode()
        return sp.id_to_piece(i).replace(SPACE, " ").encode("utf-8")

    @classmethod
    def train(cls, kind: str, text: str, vocab_size: Optional[int] = None,
              on_event: Optional[Callable[[str, dict], None]] = None, threads: Optional[int] = None,
              total_chars: Optional[int] = None):
        """Train on `text` (the training split, or a sample of `total_chars` of it) in memory; report start
        and end as "tokenizer" events."""
        if kind not in KINDS:
            raise ConfigError(f"`--tokenizer` must be char, {' or '.join(KINDS)}, not {kind!r}")
        vocab_size = vocab_size or DEFAULT_VOCAB
        if not text:
            raise CharnnError("cannot train a tokenizer on empty text")
        on_event = on_event or (lambda kind, info: None)
        sample = training_sample(text)
        on_event("tokenizer", {"stage": "start", "kind": kind, "vocab_size": vocab_size,
                               "chars": len(sample), "of_chars": total_chars or len(text)})
        t0, buf = time.perf_counter(), io.BytesIO()
        try:
            _spm().SentencePieceTrainer.train(
                sentence_iterator=sentences(sample), model_writer=buf, model_type=kind, vocab_size=vocab_size,
                normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
                split_by_whitespace=True, allow_whitespace_only_pieces=True, byte_fallback=True,
                character_coverage=0.9995, hard_vocab_limit=False, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
                max_sentence_length=8 * SENTENCE_CHARS,  # bytes: no sentence is ever skipped
                num_threads=min(MAX_THREADS, threads or os.cpu_count() or 1),
                minloglevel=2)
        except RuntimeError as e:
            m = _TOO_SMALL.search(str(e))
            if m:
                raise ConfigError(f"`--vocab-size` {m.group(1)} is too small for this text: byte fallback needs 256 "
                                  f"byte pieces, <unk> and its characters, {m.group(2)} in all; use at least "
                                  f"{m.group(2)}") from None
            raise CharnnError(f"sentencepiece could not train a {kind} tokenizer: {first_line(e)}") from None
        tok = cls(kind, buf.getvalue())
        on_event("tokenizer", {"stage": "done", "kind": kind, "vocab_size": tok.vocab_size,
                               "seconds": time.perf_counter() - t0})
        return tok

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def encode(self, text: str) -> np.ndarray:
        """Ids as an int64 array; decode(encode(text)) == text for any text without lone surrogates."""
        if not self._special.search(text):
            return np.asarray(self.sp.encode(text), dtype=np.int64)
        ids, pos = [], 0
        for m in self._special.finditer(text):
            ids += self.sp.encode(text[pos:m.start()]) if m.start() > pos else []
            c = m.group()
            ids += [self._byte_ids[b] for b in c.encode("utf-8")] if c in (SPACE, " ") else [self.unk_id]
            pos = m.end()
        ids += self.sp.encode(text[pos:]) if pos < len(text) else []
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids: Sequence[int]) -> str:
        return self._bytes(ids).decode("utf-8", "replace")

    def _bytes(self, ids: Sequence[int]) -> bytes:
        pieces, n, unk = self.pieces, len(self.pieces), UNK_TEXT.encode()
        return b"".join(pieces[i] if 0 <= i < n else unk for i in (int(i) for i in ids))

    def unknown(self, text: str) -> List[str]:
        """What the tokenizer cannot represent: only lone surrogates (byte fallback covers everything else)."""
        return list(dict.fromkeys(c for c in text if "\ud800" <= c <= "\udfff"))

    def count_unknown(self, text: str) -> int:
        """Characters that no piece covers: with byte fallback only the undecodable bytes kept as surrogates.
        (A regex scans in C: 0.03 s for 5.6M characters, against 0.13 s for a Python loop over them.)"""
        return sum(1 for _ in _SURROGATE.finditer(text))

    def token_chars(self, ids: np.ndarray) -> int:
        """Characters that start inside the given ids (a character split over byte pieces counts once,
        where its first byte is), so the counts of consecutive runs of ids add up to the text's length."""
        return int(self._starts[np.asarray(ids, dtype=np.int64)].sum())

    def byte_chars(self, ids: np.ndarray, block: int = 1 << 24) -> int:
        """How many characters the ids spell in byte pieces (characters the vocabulary has no piece for), read
        `block` ids at a time (a fine-tune's note: its new text's characters that its base's pieces lack)."""
        starts = np.where(self._is_byte, self._starts, 0)
        return sum(int(starts[np.asarray(ids[lo:lo + block], dtype=np.int64)].sum())
                   for lo in range(0, len(ids), block))

    def extending(self, i: int) -> Optional[np.ndarray]:
        """Ids of the pieces whose text starts with piece i's text, i among them: what may follow a prime when
        its last piece, i, is taken back (token healing). None for a byte, unknown or control piece."""
        sp = self.sp
        if sp.is_byte(i) or sp.is_unknown(i) or sp.is_control(i):
            return None
        head = self.pieces[i]
        return np.array([j for j, p in enumerate(self.pieces)
                         if p.startswith(head) and not (sp.is_unknown(j) or sp.is_control(j))], dtype=np.int64)

    def utf8_tables(self) -> Tuple[np.ndarray, np.ndarray]:
        """What keeps drawn byte pieces UTF-8 (generation's `Utf8Mask`): (allowed, next), both (UTF8_STATES, V):
        allowed[s, i] whether piece i may come in state s, next[s, i] the state after it. Made once."""
        if self._utf8 is None:
            self._utf8 = utf8_tables([p if b else None for p, b in zip(self.pieces, self._is_byte)])
        return self._utf8

    def decoder(self, skip: bytes = b"") -> "ByteStreamDecoder":
        return ByteStreamDecoder(self, skip)

    def state(self) -> dict:
        return {"kind": self.kind, "model": self.model, **({"space": "byte"} if self.space == "byte" else {})}


class ByteStreamDecoder:
    """Streams ids to text: bytes of a character split across pushes are held back until it is whole."""

    def __init__(self, tokenizer: SentencePieceTokenizer, skip: bytes = b""):
        self.tokenizer, self.skip = tokenizer, skip  # skip: bytes the stream starts with that are not output
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def push(self, ids: Sequence[int]) -> str:
        data = self.tokenizer._bytes(ids)
        if self.skip:
            n = min(len(self.skip), len(data))
            data, self.skip = data[n:], self.skip[n:]
        return self._utf8.decode(data)

    def flush(self) -> str:
        """Whatever is held back, as U+FFFD (a stream that ended inside a character)."""
        return self._utf8.decode(b"", final=True)


# Where a UTF-8 character is, byte by byte: state 0 between characters; else (continuation bytes still to come, the
# lowest and highest byte the next one may be), as RFC 3629's table has it (no overlong forms, no surrogates, nothing
# past U+10FFFF).
UTF8_STATES = ((0, 0, 0), (1, 0x80, 0xBF), (2, 0x80, 0xBF), (2, 0xA0, 0xBF), (2, 0x80, 0x9F), (3, 0x80, 0xBF),
               (3, 0x90, 0xBF), (3, 0x80, 0x8F))


def utf8_next(state: int, byte: int) -> int:
    """The state after `byte` in `state` (UTF8_STATES' index), -1 where no UTF-8 text has that byte there."""
    left, lo, hi = UTF8_STATES[state]
    if left:
        return -1 if not lo <= byte <= hi else (0 if left == 1 else UTF8_STATES.index((left - 1, 0x80, 0xBF)))
    if byte < 0x80:
        return 0
    for first, last, nxt in ((0xC2, 0xDF, 1), (0xE0, 0xE0, 3), (0xE1, 0xEC, 2), (0xED, 0xED, 4), (0xEE, 0xEF, 2),
                             (0xF0, 0xF0, 6), (0xF1, 0xF3, 5), (0xF4, 0xF4, 7)):
        if first <= byte <= last:
            return nxt
    return -1  # a continuation byte, C0, C1 or F5..FF: never first


def utf8_tables(byte_pieces: Sequence[Optional[bytes]]) -> Tuple[np.ndarray, np.ndarray]:
    """(allowed, next) over a vocabulary where byte_pieces[i] is piece i's one byte, or None for a piece of whole
    characters (text, unknown, control: they may come between characters only, and leave the state there)."""
    S, V = len(UTF8_STATES), len(byte_pieces)
    allowed, nxt = np.zeros((S, V), dtype=bool), np.zeros((S, V), dtype=np.int64)
    allowed[0] = True
    for i, piece in enumerate(byte_pieces):
        if piece is not None:
            for s in range(S):
                after = utf8_next(s, piece[0])
                allowed[s, i], nxt[s, i] = after >= 0, max(after, 0)
    return allowed, nxt


def training_sample(text: str, cap: Optional[int] = None, blocks: Optional[int] = None) -> str:
    """All of `text` if it fits in `cap` characters, else `blocks` evenly spaced blocks of it, `cap` in all."""
    return "\n".join(text[a:b] for a, b in sample_ranges(len(text), cap, blocks))


def sample_ranges(n: int, cap: Optional[int] = None, blocks: Optional[int] = None) -> List[Tuple[int, int]]:
    """The [start, end) character ranges of `training_sample` for a text of n characters (also used when the
    text is streamed, not held)."""
    cap = SAMPLE_CHARS if cap is None else cap
    blocks = SAMPLE_BLOCKS if blocks is None else blocks
    if n <= cap:
        return [(0, n)]
    size, stride = cap // blocks, n // blocks
    return [(i * stride, i * stride + size) for i in range(blocks)]


def sentences(text: str, size: int = SENTENCE_CHARS) -> Iterator[str]:
    """Cut text into training sentences: runs of whole lines (newlines kept, so pieces can learn them) of
    about `size` characters; a longer line is cut every `size` characters. A literal U+2581 is cut out
    (sentencepiece would take it for a space) and so are lone surrogates."""
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            nl = text.rfind("\n", start, end)
            end = nl + 1 if nl > start else end
        for part in _SPECIAL.split(text[start:end]):
            if part:
                yield part
        start = end
