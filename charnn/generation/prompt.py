"""What generation starts from: the prompt (a prime) read, checked against the vocabulary, and turned into the
ids the model is conditioned on (with token healing for a subword prompt cut mid-word)."""

from __future__ import annotations

import sys
from typing import List, Optional, Tuple

import numpy as np

from charnn.errors import CharnnError, chars_shown
from charnn.text.tokenizer import start_id


def read_prime(path: str, encoding: str = "utf-8", what: str = "prime file") -> str:
    """The text of --prime-file PATH, or of stdin for '-' (sample's --adapt file too, `what` naming it); empty
    is an error for both (an empty file was, an empty stdin sampled from the start)."""
    from charnn.data.corpus import decode_bytes, read_text
    if path != "-":
        return read_text(path, what, encoding)
    text = decode_bytes(sys.stdin.buffer.read(), "stdin", encoding)
    if not text:
        closed = getattr(sys.stdin, "shut", False)  # (the command line's stand-in for a stdin the shell closed)
        raise CharnnError(f"the {what} on stdin (-) is empty" + (": stdin is closed (<&-)" if closed else ""))
    return text


def clean_prime(tokenizer, prime: str, unknown: str = "error", what: str = "the prime") -> Tuple[str, List[str]]:
    """The prime to condition on and the distinct characters dropped from it (`unknown="skip"`); `what` names
    the text in the error (sample's --adapt file goes through here too)."""
    missing = tokenizer.unknown(prime) if prime else []
    if not missing:
        return prime, []
    shown = chars_shown(missing)
    if unknown != "skip":
        raise CharnnError(f"{what} has characters the model's vocabulary lacks: {shown}; "
                          "drop them with --unknown skip")
    gone = set(missing)
    return "".join(c for c in prime if c not in gone), missing


def start_ids(tokenizer, prime: str) -> np.ndarray:
    """The ids the model is conditioned on: the start id (a newline), then the prime's. Training and scoring
    condition a text's first token on the start id, so a prime is read the same way (from a zero state its
    first characters would be out of distribution, and the sample after a short prime garbage)."""
    ids = np.asarray(tokenizer.encode(prime) if prime else [], dtype=np.int64)
    return np.concatenate([np.array([start_id(tokenizer)], dtype=np.int64), ids])


def heal(tokenizer, ids: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray], bytes]:
    """Token healing for a subword prime: (ids to condition on, ids the first draw may take, bytes to skip).

    A prime cut mid-word ("the bro") ends in a piece ("▁bro") that in training was mostly part of a longer
    one ("▁brown"), so conditioning on it asks the model for a split it rarely saw. Instead the last piece
    is taken back, the first draw is limited to the pieces that start with its text ("▁bro", "▁brown",
    "▁brother", ...), and that text, already printed with the prime, is skipped in the output. Character
    tokenizers, byte pieces and an empty prime are left as they are."""
    extending = getattr(tokenizer, "extending", None)
    allowed = extending(int(ids[-1])) if extending is not None and len(ids) > 1 else None
    if allowed is None:
        return ids, None, b""
    return ids[:-1], allowed, tokenizer.pieces[int(ids[-1])]
