"""A small catalog of public corpora: download once into the cache, verify, unpack.

The catalog is charnn/data/catalog.json (or $CHARNN_CATALOG): per corpus its name, URL, sha256, size,
licence and a one-line description, plus what to take out of an archive, its encoding and a fixed split
where the corpus has a published one. Downloads stream into a temporary file next to the target and are
renamed into place only when complete and verified, so a dropped connection or a full disk leaves no half
file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import urllib.error
import urllib.request
import zipfile
from contextlib import closing
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

from charnn.data.cache import HINT, cache_root
from charnn.data.files import atomic_file, create_temp, write_error, write_failed
from charnn.errors import CharnnError

Callback = Callable[[str, dict], None]
BLOCK = 1 << 16
TIMEOUT = 30  # seconds without data before a download gives up
DEFAULT_CATALOG = Path(__file__).resolve().with_name("catalog.json")  # (package data: in a wheel too)


def catalog_path() -> Path:
    return Path(os.environ.get("CHARNN_CATALOG") or DEFAULT_CATALOG)


def load_catalog(path: Optional[Path] = None) -> List[dict]:
    path = path or catalog_path()
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        why = getattr(e, "strerror", None) or e
        raise CharnnError(f"cannot read the corpus catalog {str(path)!r}: {why}") from None
    entries = data.get("corpora") if isinstance(data, dict) else None  # (a list or a string: a Python TypeError)
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str)
                                                for e in entries):
        raise CharnnError(f"the corpus catalog {str(path)!r} is not {{\"corpora\": [{{\"name\": ..., ...}}, ...]}}")
    for e in entries:  # (a user's catalog: a field missing or of another type was a KeyError or TypeError traceback)
        if not isinstance(e.get("url"), str) or not e["url"]:
            raise CharnnError(f"the corpus catalog {str(path)!r}: entry {e['name']!r} has no \"url\"")
        for key, kinds, what in FIELDS:
            value = e.get(key)
            if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)
                                      or (isinstance(value, float) and not math.isfinite(value))):
                raise CharnnError(f"the corpus catalog {str(path)!r}: entry {e['name']!r}'s \"{key}\" must be {what}, "
                                  f"not {json.dumps(value)[:40]}")
    return entries


FIELDS = (("description", str, "text"), ("licence", str, "text"), ("size", int, "a whole number of bytes"),
          ("sha256", str, "a hex digest"), ("member", str, "a file name in the archive"), ("encoding", str, "a codec's "
          "name"), ("split", dict, "{\"train\": N, \"val\": M}"))  # a catalog entry's optional fields


def find(name: str, path: Optional[Path] = None) -> Optional[dict]:
    """The catalog entry called `name`, or None (also when there is no catalog to read)."""
    try:
        entries = load_catalog(path)
    except CharnnError:
        return None
    return next((e for e in entries if e["name"] == name), None)


def names() -> List[str]:
    """The catalog's names, or none where it cannot be read (for suggestions: the missing file is the error)."""
    try:
        return [e["name"] for e in load_catalog()]
    except CharnnError:
        return []


def local_path(entry: dict) -> Path:
    """Where the corpus's text lives once downloaded (and unpacked)."""
    return cache_root() / "corpora" / entry["name"] / (entry.get("member") or Path(entry["url"]).name)


def is_downloaded(entry: dict) -> bool:
    return local_path(entry).is_file()


def fetch(entry: dict, on_event: Optional[Callback] = None) -> Path:
    """The corpus's local text file, downloaded, verified and unpacked on first use."""
    target = local_path(entry)
    if target.is_file():
        return target
    on_event = on_event or (lambda kind, info: None)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_failed(e, target, entry.get("size") or 0, HINT, what=f"the download of {entry['name']}") from None
    tmp = _download(entry, target.parent, on_event)
    try:
        if entry.get("member"):
            _unpack(entry, tmp, target)
        else:
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def own_layout(entry: dict) -> bool:
    """Whether a catalog entry's file is not plain UTF-8 text to read whole: it has its own encoding or split."""
    return bool(entry.get("split") or entry.get("encoding"))


def resolve_entry(path: str, on_event: Optional[Callback] = None) -> Tuple[str, Optional[dict]]:
    """(`path`, None) when something is there; else, when the catalog has an entry of that name, (its local
    file, downloaded and verified on first use, the entry: its encoding and split apply to the file); else
    (`path`, None), for the caller's own error."""
    if Path(path).exists():
        return path, None
    entry = find(path)
    return (path, None) if entry is None else (str(fetch(entry, on_event)), entry)


def resolve(path: str, on_event: Optional[Callback] = None) -> str:
    """`path`, or a catalog name's local file (see resolve_entry), for files read whole as UTF-8: --val-file
    and `--pairs`/`--label-by` corpora. A catalog entry with its own encoding or split is refused here in one
    line (it would be read whole, in the wrong encoding)."""
    local, entry = resolve_entry(path, on_event)
    if entry is not None and own_layout(entry):
        own = " and ".join(w for k, w in (("encoding", "encoding"), ("split", "train/val/test split")) if entry.get(k))
        raise CharnnError(f"{path!r} has its own {own}; train on it as the corpus "
                          f"(`charnn train {path}`), or score its test split with `charnn eval RUN {path}`")
    return local


def _hint(entry: dict) -> str:
    unpack = f" (after unpacking {entry['member']!r} from it)" if entry.get("member") else ""
    return f"download {entry['url']} yourself and pass the file's path instead of {entry['name']!r}{unpack}"


def _download(entry: dict, folder: Path, on_event: Callback) -> Path:
    """Stream the URL into a temporary file in `folder`, checking its size and sha256; the temp path."""
    name = entry["name"]
    digest, done, total = hashlib.sha256(), 0, entry.get("size")
    tmp = None
    try:
        fd, tmp = create_temp(folder, f".{name}-", ".part")
        with os.fdopen(fd, "wb") as out, closing(_blocks(entry, on_event)) as blocks:
            for block, total in blocks:
                out.write(block)  # an OSError here is the disk's: _blocks turns the network's into CharnnError
                digest.update(block)
                done += len(block)
                on_event("download", {"stage": "progress", "name": name, "done": done, "total": total})
            out.flush()
            os.fsync(out.fileno())
        on_event("download", {"stage": "done", "name": name, "done": done, "total": done})
        _verify(entry, done, digest.hexdigest())
        if not entry.get("sha256"):
            on_event("download", {"stage": "unverified", "name": name, "sha256": digest.hexdigest()})
    except BaseException as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise write_failed(write_error(e, folder), local_path(entry), total or done, HINT, exact=bool(total),
                               what=f"the download of {name}") from None
        raise
    return tmp


def _blocks(entry: dict, on_event: Callback) -> Iterator[Tuple[bytes, Optional[int]]]:
    """(block, expected total size) as they arrive; a network failure is one CharnnError."""
    name, url, done = entry["name"], entry["url"], 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            total = int(response.headers.get("Content-Length") or entry.get("size") or 0) or None
            on_event("download", {"stage": "start", "name": name, "url": url, "total": total})
            while True:
                block = response.read(BLOCK)
                if not block:
                    return
                done += len(block)
                yield block, total
    except (urllib.error.URLError, OSError, socket.timeout, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise CharnnError(f"could not download {name} from {url} ({reason}); check the connection, or "
                          f"{_hint(entry)}") from None
    except Exception as e:  # http.client.IncompleteRead and friends: the connection dropped
        raise CharnnError(f"the download of {name} from {url} broke off after {done:,} bytes ({type(e).__name__}); "
                          f"try again, or {_hint(entry)}") from None


def _verify(entry: dict, size: int, sha256: str) -> None:
    name, want_size = entry["name"], entry.get("size")
    if want_size and size != want_size:
        raise CharnnError(f"the download of {name} has {size:,} bytes, not the catalog's {want_size:,} (a dropped "
                          f"connection or a changed file); nothing was kept. Try again, or {_hint(entry)}")
    want = entry.get("sha256")
    if want and sha256 != want.lower():
        raise CharnnError(f"checksum mismatch for {name}: sha256 {sha256}, the catalog expects {want}; nothing was "
                          f"kept. {_hint(entry)[0].upper()}{_hint(entry)[1:]}")


def _unpack(entry: dict, archive: Path, target: Path) -> None:
    member = entry["member"]
    try:
        with zipfile.ZipFile(archive) as zf:
            size = zf.getinfo(member).file_size
            with zf.open(member) as src, atomic_file(target, size, HINT) as out:
                for block in iter(lambda: src.read(1 << 20), b""):
                    out.write(block)
    except (zipfile.BadZipFile, KeyError) as e:
        raise CharnnError(f"the download of {entry['name']} is not a zip archive holding {member!r} ({e}); "
                          f"{_hint(entry)}") from None


def listing(path: Optional[Path] = None) -> List[dict]:
    """The catalog's entries, each with `downloaded` and `path` added."""
    return [{**e, "downloaded": is_downloaded(e), "path": str(local_path(e))} for e in load_catalog(path)]
