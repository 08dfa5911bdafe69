"""Finding a corpus's files and reading them as a stream of text chunks, never as one string.

A corpus is a list of parts: files (read in byte blocks through an incremental decoder) and strings (an
in-memory text, the separator between files). Files named on the command line must be readable text;
files found inside a directory that turn out binary or undecodable are skipped with a note.
"""

from __future__ import annotations

import codecs
import fnmatch
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Union

from charnn.errors import CharnnError, ConfigError, missing

BLOCK_BYTES = 4 << 20  # bytes read per block from a file
BLOCK_CHARS = 4 << 20  # characters per chunk of an in-memory text
SEPARATOR = "\n\n"  # between the files of a corpus
SNIFF_BYTES = 8192  # a NUL byte in this many leading bytes marks a file as binary
BINARY = "looks binary (it contains NUL bytes)"


def looks_binary(head: bytes, encoding: str = "utf-8") -> bool:
    """A NUL byte in a file's head marks it binary, except in UTF-16 or UTF-32 text (`--encoding utf-16`), where
    every ASCII character has them (such a file was refused whatever the encoding)."""
    return b"\x00" in head and not codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))


@dataclass(frozen=True)
class SourceFile:
    path: Path
    optional: bool  # found inside a directory: skipped (not fatal) when binary or undecodable
    what: str = "corpus"  # what its errors call it ("validation file": --val-file)


Part = Union[SourceFile, str]


def find_files(paths: Sequence[str], glob: Optional[str] = None,
               on_skip: Optional[Callable[[str, str], None]] = None, encoding: str = "utf-8") -> List[SourceFile]:
    """The files of CORPUS arguments: files as given, directories walked recursively in sorted order
    (hidden entries left out; `glob` filters by name or relative path). Binary files inside a directory
    are reported through `on_skip(path, why)` and left out."""
    on_skip = on_skip or (lambda path, why: None)
    if glob is not None and paths and all(Path(a).exists() and not Path(a).is_dir() for a in paths):  # (ignored)
        raise ConfigError(f"--glob {glob!r} picks files inside folders, and CORPUS names only files: pass the folder "
                          "that holds them, or drop --glob")
    found: List[SourceFile] = []
    seen = set()
    for arg in paths:
        p = Path(arg)
        if not p.exists():
            raise CharnnError(f"corpus {arg!r} {missing(arg)}")
        if p.is_dir():
            if is_run_folder(p):
                run = p if p.name not in ("", ".", "..") else p.resolve()  # (as typed, where it names the run)
                where = f"--out {shlex.quote(str(run.parent))} --name {shlex.quote(run.name)}"
                raise ConfigError(f"corpus {arg!r} is a charnn run's folder (its checkpoints and logs), not text: "
                                  f"continue it with `charnn train CORPUS {where} --resume` (CORPUS: the text it "
                                  f"trained on), or fine-tune it on new text with `--init-from {shlex.quote(arg)}`")
            members = _walk(p, glob, on_skip)
            if not members:
                what = f" matching --glob {glob!r}" if glob else ""
                raise CharnnError(f"corpus {arg!r} is a directory with no files{what} in it; pass text files "
                                  "or a folder that holds some")
            items = [SourceFile(m, optional=True) for m in members]
        else:
            if not p.is_file():  # (its size reads 0, and what it holds can be read once)
                raise CharnnError(f"corpus {arg!r} is a pipe or a device, not a file; charnn reads a corpus more "
                                  "than once (and caches it by file): save the text to a file and pass that")
            if p.stat().st_size == 0:
                raise CharnnError(f"corpus {arg!r} is empty")
            try:
                with p.open("rb") as f:
                    head = f.read(SNIFF_BYTES)
            except OSError as e:
                raise CharnnError(f"cannot read corpus {arg!r}: {e.strerror or e}") from None
            if looks_binary(head, encoding):
                raise CharnnError(f"corpus {arg!r} {BINARY}; pass a text file (or the right --encoding)")
            items = [SourceFile(p, optional=False)]
        for item in items:
            key = item.path.resolve()
            if key in seen:
                continue
            seen.add(key)
            if item.optional:  # a folder's member that cannot be a text file is left out with a note
                why = _not_text(item.path, encoding)
                if why:
                    on_skip(str(item.path), why)
                    continue
            found.append(item)
    if not found:
        raise CharnnError(f"no text files in {', '.join(repr(a) for a in paths)}")
    return found


def is_run_folder(path: Path) -> bool:
    """A charnn run's folder: its config.json beside a checkpoint or its metrics (never a corpus: `charnn train .`
    in a project trained on ./checkpoints' JSON too)."""
    return (path / "config.json").is_file() and any((path / n).is_file() for n in RUN_MARKS)


RUN_MARKS = ("best.pt", "last.pt", "metrics.jsonl")


def _walk(root: Path, glob: Optional[str], on_skip: Callable[[str, str], None] = lambda path, why: None) -> List[Path]:
    out: List[Path] = []
    unreadable = lambda e: on_skip(str(e.filename) + os.sep, f"cannot be read ({e.strerror})")  # noqa: E731
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):  # (a folder left out said nothing)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        runs = [d for d in dirnames if is_run_folder(Path(dirpath) / d)]
        for d in runs:
            on_skip(str(Path(dirpath) / d) + os.sep, "is a charnn run's folder (checkpoints and logs, not text)")
        dirnames[:] = [d for d in dirnames if d not in runs]
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if glob is None or fnmatch.fnmatch(name, glob) or fnmatch.fnmatch(rel, glob):
                out.append(path)
    return out


def _not_text(path: Path, encoding: str = "utf-8") -> Optional[str]:
    """Why a folder's member is left out (None: it is kept): a broken link, a pipe or a device (opening a FIFO would
    wait for a writer), a file this user may not read, or one that looks binary."""
    if not path.is_file():
        return "is not a file (a broken link, a pipe or a device)"
    try:
        with path.open("rb") as f:
            return BINARY if looks_binary(f.read(SNIFF_BYTES), encoding) else None
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"


def check_encoding(encoding: str) -> str:
    """A codec Python knows that turns bytes into text (rot13, base64 and hex are codecs too, of other kinds: they
    were tracebacks)."""
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise ConfigError(f"`--encoding`: unknown encoding {encoding!r}; try utf-8, latin-1 or cp1252") from None
    if not getattr(info, "_is_text_encoding", True):
        raise ConfigError(f"`--encoding`: {encoding!r} is not a text encoding (it does not turn bytes into text); try "
                          "utf-8, latin-1 or cp1252")
    return encoding


class Undecodable(Exception):
    """A file that is not text in the corpus's encoding (or cannot be read)."""

    def __init__(self, path: Path, why: str):
        super().__init__(why)
        self.path, self.why = path, why


def skip_or_raise(part: Part, e: Undecodable, index: int, skipped: list, on_event) -> None:
    """A part that is not text: a file found in a folder is skipped (recorded as [index, why] and reported);
    a file named directly is an error."""
    if not (isinstance(part, SourceFile) and part.optional):
        what = part.what if isinstance(part, SourceFile) else "corpus"
        raise CharnnError(f"{what} {str(e.path)!r} {e.why}; pass a text file (or the right --encoding)")
    skipped.append([index, e.why])
    on_event("corpus_skip", {"path": str(e.path), "why": e.why})


def read_chunks(part: Part, encoding: str, block: int = BLOCK_BYTES) -> Iterator[str]:
    """The text of one part in chunks; raises Undecodable for a file that is not valid text. A file's leading
    byte-order mark (Windows editors write one) is not text: left out, as `read_text` does."""
    if isinstance(part, str):
        for i in range(0, len(part), BLOCK_CHARS):
            yield part[i:i + BLOCK_CHARS]
        return
    path = part.path
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    offset, first = 0, True
    try:
        with open(path, "rb") as f:
            while True:
                data = f.read(block)
                final = len(data) < block
                if offset == 0 and looks_binary(data[:SNIFF_BYTES], encoding):  # as read_text: only the head
                    raise Undecodable(path, BINARY)
                try:
                    text = decoder.decode(data, final=final)
                except UnicodeDecodeError as e:
                    at = offset + e.start
                    raise Undecodable(path, f"is not valid {encoding}: bad byte 0x{data[e.start]:02x} at offset {at}") from None
                except UnicodeError as e:  # (UTF-16 without a BOM: a plain UnicodeError, not a decode error)
                    raise Undecodable(path, f"is not valid {encoding}: {e}") from None
                if first and text:  # the file's first character (a block of a few bytes may decode to none)
                    first, text = False, text[1:] if text.startswith("\ufeff") else text
                offset += len(data)
                if text:
                    yield text
                if final:
                    return
    except OSError as e:
        raise Undecodable(path, f"cannot be read: {e.strerror or e}") from None


def join_parts(files: Sequence[Part]) -> List[Part]:
    """Parts with the separator between consecutive ones."""
    out: List[Part] = []
    for i, part in enumerate(files):
        if i:
            out.append(SEPARATOR)
        out.append(part)
    return out
