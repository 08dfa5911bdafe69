"""The on-disk cache: encoded corpora (id arrays plus their tokenizer) and downloaded catalog corpora.

It also keeps `precision.json`: measured decisions of auto precision, training's and decoding's, keyed by the
machine, torch and the model's shape (`decisions`, `remember_decision`).

It lives in $CHARNN_CACHE, else $XDG_CACHE_HOME/charnn, else ~/.cache/charnn (charnn.config.cache_root). An encoded
corpus is a folder `encoded/<key>/` holding `ids.bin` (the ids, train then val, as uint8/uint16/uint32) and
`meta.json`; the key hashes the corpus content, the tokenizer and the split. Entries are written into a temporary
folder and renamed into place, so a killed run never leaves a half entry that a later run would trust."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from charnn.config import cache_root, cache_umask
from charnn.data.files import NO_SPACE, write_atomic, write_error, write_failed
from charnn.errors import CharnnError

FORMAT = 3  # bump when the layout of an entry or what is encoded changes (2: files' byte-order marks left out; 3: a
# subword tokenizer without a space piece writes a space as its byte)
HASH_BLOCK = 8 << 20
HINT = "set CHARNN_CACHE to another folder"
DECISIONS = "precision.json"


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def file_sha256(path: Path, memo: Optional[dict] = None) -> str:
    """sha256 of a file's bytes; `memo` (path -> [size, mtime_ns, hash]) skips rehashing an unchanged file."""
    st = path.stat()
    key = str(path.resolve())
    if memo is not None and memo.get(key, [None])[:2] == [st.st_size, st.st_mtime_ns]:
        return memo[key][2]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(HASH_BLOCK), b""):
            h.update(block)
    digest = h.hexdigest()
    if memo is not None:
        memo[key] = [st.st_size, st.st_mtime_ns, digest]
    return digest


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def load_memo() -> dict:
    """The file hashes remembered by (size, mtime); its entries of another shape are dropped (a hand-edited or
    foreign hashes.json was an AttributeError or TypeError)."""
    try:
        memo = json.loads((cache_root() / "hashes.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(memo, dict):
        return {}
    return {k: v for k, v in memo.items() if isinstance(v, list) and len(v) == 3 and isinstance(v[2], str)}


def save_memo(memo: dict) -> None:
    try:
        write_atomic(cache_root() / "hashes.json", json.dumps(memo).encode("utf-8"))
    except CharnnError:
        pass  # the memo only saves time


def entry_key(content: Sequence[str], encoding: str, split: dict, tokenizer: dict) -> str:
    """The cache key: content hashes (in order), how they are decoded and split, and the tokenizer."""
    spec = {"format": FORMAT, "content": list(content), "encoding": encoding.lower(), "split": split,
            "tokenizer": tokenizer}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


def entry_dir(key: str) -> Path:
    return cache_root() / "encoded" / key


READABLE = (1, 2, FORMAT)  # formats whose entries hold the same layout: the ids a run of its day trained on


def find_entry(key: str, formats: Sequence[int] = (FORMAT,)) -> Optional[dict]:
    """The meta of a complete cached entry, or None. `formats`: READABLE where any run's own entry will do (its
    training text for `charnn novelty`), found by the key the run recorded."""
    folder = entry_dir(key)
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        ids = folder / "ids.bin"
        if not isinstance(meta, dict) or meta.get("format") not in formats or not ids.is_file():
            return None
        if ids.stat().st_size != meta["tokens"] * np.dtype(meta["dtype"]).itemsize:
            return None
    except (OSError, ValueError, KeyError, TypeError):  # (damaged: built again; a meta.json of another shape
        return None  # was a traceback)
    return meta


class EntryWriter:
    """Builds an entry in a temporary folder; `commit` renames it into place."""

    def __init__(self, key: str):
        self.key, self.final = key, entry_dir(key)
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(dir=self.final.parent, prefix=f".{key}-"))
            self.tmp.chmod(0o777 & ~cache_umask())  # (mkdtemp's 0700: another user of a shared cache could not read it)
        except OSError as e:
            raise CharnnError(f"cannot write the encoding cache in {str(self.final.parent)!r}: {e.strerror or e}; "
                              "set CHARNN_CACHE to a writable folder") from None
        self.ids = open(self.tmp / "ids.bin", "wb")
        sweep_unfinished(self.final.parent, key, self.tmp)


    def commit(self, meta: dict, files: Optional[dict] = None) -> Path:
        files = {**(files or {}), "meta.json": json.dumps({**meta, "format": FORMAT}).encode("utf-8")}
        try:
            self.ids.close()
            for name, data in files.items():
                (self.tmp / name).write_bytes(data)
        except OSError as e:
            written = self._discard()
            raise self._failed(e, written + sum(map(len, files.values()))) from None
        with _commit_lock(self.final.parent):  # processes encoding the same corpus (torchrun ranks) take turns
            if find_entry(self.key) is not None:  # another process committed it first: keep theirs, which it
                shutil.rmtree(self.tmp, ignore_errors=True)  # may already have open
                return self.final
            if self.final.is_dir() and not self.final.is_symlink():  # a stale or broken entry
                shutil.rmtree(self.final, ignore_errors=True)
            elif self.final.exists() or self.final.is_symlink():  # (a file there failed every run: "Not a directory")
                self.final.unlink()
            os.replace(self.tmp, self.final)
        return self.final

    def abort(self, error: Optional[BaseException] = None) -> None:
        """Remove the half-built entry. `error` (by default the exception being handled, as when called from
        an `except` block) that is a full disk or quota is raised as one CharnnError naming the cache folder."""
        written = self._discard()
        error = write_error(error if error is not None else sys.exc_info()[1], self.final.parent)
        if error is not None and error.errno in NO_SPACE:  # a read error of the corpus goes on as it is
            raise self._failed(error, written) from None

    def _discard(self) -> int:
        """Close and remove the temporary folder; the bytes it held."""
        written = 0
        try:
            written = sum(p.stat().st_size for p in self.tmp.iterdir())
            if not self.ids.closed:  # bytes still in its buffer count too
                written = max(written, self.ids.tell())
        except (OSError, ValueError):
            pass
        try:
            self.ids.close()
        except OSError:
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)
        return written

    def _failed(self, e: OSError, needed: int) -> CharnnError:
        return write_failed(e, self.final.parent / self.key, needed, HINT, exact=False,
                            what=f"the encoded corpus {self.key[:12]}")


@contextmanager
def _commit_lock(folder: Path):
    """An exclusive lock on folder/.lock, held while an entry is renamed into place."""
    with _flock(folder / ".lock"):
        yield


@contextmanager
def build_lock(key: str, on_wait: Optional[Callable[[], None]] = None):
    """Held while an entry is built: processes encoding the same corpus at once (torchrun ranks, two runs)
    take turns, so the first encodes it and the others, once let in, find its entry. `on_wait` is called
    once if the lock is busy, before waiting for it. The OS drops the lock of a process that dies."""
    folder = entry_dir(key).parent / ".locks"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # no lock file then (see _flock); EntryWriter says what is wrong with the folder
    with _flock(folder / key, on_wait):
        yield


@contextmanager
def _flock(path: Path, on_wait: Optional[Callable[[], None]] = None):
    """An exclusive POSIX flock on `path` (created if missing). No lock where there is no flock (Windows) or
    the file cannot be created (a read-only cache: the write that follows says why)."""
    try:
        import fcntl
        f = open(path, "a")
    except (ImportError, OSError):
        yield
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sweep_unfinished(folder: Path, own: str, keep: Path) -> None:
    """Remove the temporary folders of builds that will never finish (a process killed while it encoded: 65 MB of a
    138 MB corpus stayed for good): this key's others (the caller holds its build lock), and another key's whose
    lock nobody holds. Called by a build; `keep` is its own folder."""
    locked = _has_flock() and (folder / ".locks" / own).is_file()  # (else the caller's lock was nothing: Windows)
    for tmp in folder.glob(".*-*"):
        key = tmp.name[1:].rsplit("-", 1)[0]
        if tmp == keep or not tmp.is_dir() or not key:
            continue
        if (key == own and locked) or _unlocked(folder / ".locks" / key) or _idle(tmp) > ABANDONED_SECONDS:
            shutil.rmtree(tmp, ignore_errors=True)


ABANDONED_SECONDS = 24 * 3600  # a build folder untouched this long is abandoned, lock or no lock


def _has_flock() -> bool:
    import importlib.util
    return importlib.util.find_spec("fcntl") is not None


def _idle(folder: Path) -> float:
    """Seconds since anything in `folder` was written (0 where that cannot be told)."""
    try:
        newest = max([folder.stat().st_mtime] + [p.stat().st_mtime for p in folder.iterdir()])
        return time.time() - newest
    except OSError:
        return 0.0


def _unlocked(path: Path) -> bool:
    """Whether no process holds the build lock at `path` (False where that cannot be told: no flock, no file)."""
    try:
        import fcntl
        with open(path, "r") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(f, fcntl.LOCK_UN)
            return True
    except (ImportError, OSError):
        return False


def open_ids(key: str, meta: dict) -> np.ndarray:
    """The entry's ids, memory-mapped (copy-on-write, so torch.from_numpy takes it without a warning)."""
    return np.memmap(entry_dir(key) / "ids.bin", dtype=np.dtype(meta["dtype"]), mode="c", shape=(meta["tokens"],))


def decisions() -> Dict[str, dict]:
    """Measured decisions remembered in the cache (auto precision: key -> {"precision", "speedup", "date"})."""
    try:
        data = json.loads((cache_root() / DECISIONS).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def remember_decision(key: str, entry: dict) -> None:
    """Add a measured decision, dated; a cache that cannot be written only means measuring again next time."""
    entries = decisions()
    entries[key] = {**entry, "date": time.strftime("%Y-%m-%d")}
    try:
        write_atomic(cache_root() / DECISIONS, json.dumps(entries, indent=1).encode("utf-8"))
    except (CharnnError, OSError):
        pass
