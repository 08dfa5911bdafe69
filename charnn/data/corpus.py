"""Where training text comes from: files and folders, a catalog corpus, or the built-in corpus of Python's
own source. A corpus of files is not read here: encode.py streams it."""

from __future__ import annotations

import difflib
import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

from charnn.data.sources import BINARY, SNIFF_BYTES, Part, SourceFile, check_encoding, find_files, looks_binary
from charnn.errors import CharnnError, missing

BUILTIN_NAME = "stdlib"
# The built-in corpus stops after this many characters (about 5 MB: a few minutes per epoch on a CPU).
BUILTIN_CAP = 5_000_000
_SKIP_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"}


@dataclass
class Corpus:
    text: Optional[str]  # the whole text, when it is held in memory (the built-in corpus); else None
    name: str  # default run name
    source: str  # where it came from, for messages and the checkpoint
    files: List[SourceFile] = field(default_factory=list)  # the files it streams from, in order (text None)
    encoding: Optional[str] = None  # the files' encoding when fixed (a catalog corpus); None: --encoding
    split: Optional[dict] = None  # a fixed split {"train": chars, "val": chars} (enwik8's convention)

    def parts(self) -> List[Part]:
        return [self.text] if self.text is not None else list(self.files)


def read_text(path: str, what: str = "corpus", encoding: str = "utf-8", allow_empty: bool = False) -> str:
    """Read a text file, turning every way it can fail into one clear CharnnError (an empty file too,
    unless `allow_empty`)."""
    p = check_text_file(path, what, encoding, allow_empty, sniff=False)  # (the head is read once, here: a pipe's
    try:  # first bytes read by the check would be gone)
        data = p.read_bytes()
    except OSError as e:
        raise CharnnError(f"cannot read {what} {path!r}: {e.strerror or e}") from None
    if looks_binary(data[:SNIFF_BYTES], check_encoding(encoding)):
        raise CharnnError(f"{what} {path!r} {BINARY}; pass a text file (or the right --encoding)")
    text = decode_bytes(data, f"{what} {path!r}", encoding)
    if text.startswith("\ufeff"):  # a byte-order mark (Windows editors write one) is not text: it made a label
        text = text[1:]  # "\ufeffgen" beside "gen" and a character of its own
    if not text and not allow_empty:
        raise CharnnError(f"{what} {path!r} is empty")
    return text


def check_text_file(path: str, what: str = "corpus", encoding: str = "utf-8", allow_empty: bool = False,
                    sniff: bool = True) -> Path:
    """read_text's checks that need only the file's head (it is there, not a folder; with `sniff`, a regular file's
    head: readable, not binary, not empty), as one CharnnError each: a command that reads several files one at a
    time checks them all first. A pipe's head is left for its one reader (`<(cat f)`, a FIFO: read here, its first
    bytes were gone, or its writer)."""
    p = Path(path)
    if not str(path).strip():  # (Path('') is the current folder: "is a directory")
        raise CharnnError(f"{what} {path!r} is an empty string (an unset variable?)")
    if not p.exists():
        raise CharnnError(f"{what} {path!r} {missing(path)}")
    if p.is_dir():
        raise CharnnError(f"{what} {path!r} is a directory; pass a text file")
    if not sniff or not p.is_file():
        return p
    try:
        with p.open("rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as e:
        raise CharnnError(f"cannot read {what} {path!r}: {e.strerror or e}") from None
    if looks_binary(head, check_encoding(encoding)):
        raise CharnnError(f"{what} {path!r} {BINARY}; pass a text file (or the right --encoding)")
    if not head and not allow_empty:
        raise CharnnError(f"{what} {path!r} is empty")
    return p


def decode_bytes(data: bytes, name: str, encoding: str = "utf-8") -> str:
    """bytes -> text, or one CharnnError naming `name`, the first bad byte and its offset."""
    try:
        return data.decode(check_encoding(encoding))
    except UnicodeDecodeError as e:
        raise CharnnError(f"{name} is not valid {encoding}: bad byte 0x{data[e.start]:02x} at offset {e.start} "
                          "(see --encoding)") from None  # (pairs, eval, classify: a Latin-1 file had no hint)
    except UnicodeError as e:  # (UTF-16 without a BOM)
        raise CharnnError(f"{name} is not valid {encoding}: {e} (see --encoding)") from None


def corpus_paths(paths) -> Optional[List[str]]:
    """CORPUS arguments as a list of strings; None for the built-in corpus. A path-like is a path; an empty
    string or an empty list is refused, not read as "here" or as "the built-in corpus" (`charnn train "$UNSET"`
    trained on the current folder, `charnn.train(glob(...))` matching nothing on the standard library)."""
    if paths is None:
        return None
    items = [paths] if isinstance(paths, (str, os.PathLike)) else paths
    if not isinstance(items, (list, tuple)) or not all(isinstance(p, (str, os.PathLike)) for p in items):
        raise CharnnError(f"the corpus must be a path, a list of paths, or None for the built-in corpus; got "
                          f"{type(paths).__name__}")
    items = [os.fspath(p) for p in items]
    if not items:
        raise CharnnError("the list of corpus files is empty (a pattern that matched nothing?); give files, or "
                          "None for the built-in corpus")
    if any(not p for p in items):
        raise CharnnError("a corpus argument is an empty string (an unset variable?); give a file, a folder or "
                          "a catalog name")
    return items


def load_corpus(paths: Union[None, str, Sequence[str]], encoding: str = "utf-8", glob: Optional[str] = None,
                on_event: Optional[Callable[[str, dict], None]] = None) -> Corpus:
    """CORPUS arguments -> a Corpus: files and folders (recursive, filtered by `glob`), a catalog name
    (downloaded once into the cache), or nothing for the built-in corpus. Files are read later, streamed."""
    on_event = on_event or (lambda kind, info: None)
    paths = corpus_paths(paths)
    if paths is None:
        return builtin_corpus()
    if len(paths) == 1 and not Path(paths[0]).exists():
        from charnn.data import catalog
        entry = catalog.find(paths[0])
        if entry is not None:
            path = catalog.fetch(entry, on_event)
            return Corpus(None, entry["name"], entry["name"], [SourceFile(path, optional=False)],
                          entry.get("encoding"), entry.get("split"))
        close = difflib.get_close_matches(paths[0], catalog.names(), n=1)
        if close:  # most likely a typo of a catalog name
            raise CharnnError(f"corpus {paths[0]!r} does not exist, and it is not a catalog name; did you mean "
                              f"{close[0]!r}? (`charnn corpora` lists them)")
    files = find_files(paths, glob, lambda path, why: on_event("corpus_skip", {"path": path, "why": why}),
                       check_encoding(encoding))
    first = Path(paths[0])
    source = str(files[0].path.resolve()) if len(paths) == 1 and not first.is_dir() else " ".join(paths)
    return Corpus(None, plain_run_name(first), source, files)


def plain_run_name(first: Path) -> str:
    """The default run name of a plain corpus whose first CORPUS argument is `first`: a file's stem (a link's own),
    a folder's own name."""
    return first.resolve().stem if first.is_dir() else (first.stem or "run")


def lines_run_name(first) -> str:
    """The default run name of --pairs and --label-by runs: the stem of the first CORPUS argument's real file (a
    catalog name's local file)."""
    return Path(first).resolve().stem or "run"


def stdlib_files(root: Optional[str] = None) -> List[Path]:
    """The standard library's .py files in a stable (sorted, depth-first) order, test folders left out."""
    base = Path(root or sysconfig.get_paths()["stdlib"])
    found: List[Path] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py")]
    return found


BUILTIN_SOURCE = "python-stdlib:"  # how the built-in corpus describes itself (then its folder)


def builtin_corpus(cap: int = BUILTIN_CAP, root: Optional[str] = None) -> Corpus:
    """Python's standard library source, joined file by file up to `cap` characters.

    Needs no network and ships no copied text: it is assembled from the running interpreter.
    """
    base = Path(root or sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for f in stdlib_files(str(base)):
        try:
            body = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        part = f"# file: {f.relative_to(base).as_posix()}\n{body.rstrip()}\n\n"
        if size + len(part) > cap:
            part = part[: cap - size]
        parts.append(part)
        size += len(part)
        if size >= cap:
            break
    if not parts:
        raise CharnnError(f"found no Python source under {base} for the built-in corpus; pass a text file")
    return Corpus("".join(parts), BUILTIN_NAME, f"{BUILTIN_SOURCE}{base}")
