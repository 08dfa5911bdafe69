"""The exceptions library code raises for mistakes a user can fix, and the few checks that word them (an
allocation that failed, a path that is not there)."""

import errno
import re
import os
import unicodedata


class CharnnError(Exception):
    """A problem the user caused and can fix; the CLI prints it as one line and exits 1."""


class ConfigError(CharnnError):
    """A flag value out of range or inconsistent; the CLI treats it as a usage error (exit 2)."""


# What a terminal acts on or hides: C0/C1 controls (ESC sequences clear the screen or set the window's title, BEL),
# the bidi controls (an override reverses the rest of a line) and the line/paragraph separators. Not the other
# invisible characters of ordinary text (ZWJ in emoji and Persian, no-break and ideographic spaces).
TERMINAL_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str) -> str:
    """`text` with TERMINAL_CONTROL's characters written as Python escapes (\\x1b, \\u202e), the rest as it is: for
    names, paths and text in tables and one-line messages."""
    return TERMINAL_CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def chars_shown(chars, most: int = 10) -> str:
    """Characters for a message, quoted as repr quotes them, and at most `most` of them (then how many more); a
    combining mark as its code point and name (U+0301 COMBINING ACUTE ACCENT): quoted alone it was drawn onto the
    quote, unreadable (an NFD "cafe\u0301" sent to a model that knows NFC text)."""
    def one(c: str) -> str:
        if unicodedata.category(c).startswith("M"):
            name = unicodedata.name(c, "")
            return f"U+{ord(c):04X}" + (f" {name}" if name else "")
        return repr(c)
    chars = list(chars)
    return ", ".join(one(c) for c in chars[:most]) + (f" and {len(chars) - most} more" if len(chars) > most else "")


def weights_problem(e: BaseException) -> str:
    """torch's load_state_dict error in a line: its first problem ("Error(s) in loading state_dict for CharRNN:" was
    all a one-line error quoted), shapes as the checkpoint's and the model's."""
    lines = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
    if not lines:
        return first_line(e)
    line = re.sub(r"copying a param with shape torch\.Size\((\[[^\]]*\])\) from checkpoint, the shape in current "
                  r"model is torch\.Size\((\[[^\]]*\])\)\.?", r"the checkpoint's is \1, the model's \2", lines[0])
    return first_line(line + (f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""), 240)


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type's name), cut to `limit` characters: what a
    one-line error quotes from a library's multi-line message."""
    lines = str(e).strip().splitlines()
    line = lines[0] if lines else type(e).__name__
    if len(line) <= limit:
        return line
    cut = line[:limit - 3].rsplit(" ", 1)[0]  # at a word's end, and say that it is cut
    return (cut if len(cut) > limit // 2 else line[:limit - 3]).rstrip(" ,;:") + "..."



class ParamError(ConfigError):
    """A setting out of range or of the wrong type; `param` names it (the server's error JSON carries it)."""

    def __init__(self, message: str, param=None):
        super().__init__(message)
        self.param = param


class WrongKind(CharnnError, AttributeError):
    """A call of another model kind's (a language model's transduce(), a sequence-to-sequence model's generate()):
    charnn's error, and an AttributeError, so hasattr() still tells the kinds apart."""


def is_out_of_memory(e: BaseException) -> bool:
    """Whether `e` says an allocation failed: a MemoryError, torch's RuntimeError of one (CPU or CUDA), or the
    system's ENOMEM (an OSError: numpy's memory map of a big file under a memory limit)."""
    if isinstance(e, OSError):  # (by its errno only: its text holds the file name, which may say anything)
        return e.errno == errno.ENOMEM
    text = str(e).lower()
    return isinstance(e, MemoryError) or "out of memory" in text or "can't allocate memory" in text \
        or "not enough memory" in text


def missing(path) -> str:
    """Why a path Path.exists() denies is not there, as the end of a sentence: "does not exist", or where a symbolic
    link is the cause, "is a symbolic link to 'x', which does not exist" or "goes through a loop of symbolic links"
    (which Path.exists() also calls not existing)."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "goes through a loop of symbolic links"
        if os.path.islink(path):
            return f"is a symbolic link to {os.readlink(path)!r}, which does not exist"
    if "\n" in str(path):  # (charnn.train("some text\n..."): text where a file's path goes)
        return "does not exist (it holds a line break: text, not a path? write the text to a file and pass that)"
    return "does not exist"
