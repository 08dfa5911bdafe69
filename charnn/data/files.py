"""Writing files safely, for every writer in charnn: checkpoints, metrics.jsonl, config.json, the encoding
cache and catalog downloads.

- Atomic: a temp file `.NAME.XXXXXXXX.tmp` in the same folder, flushed and fsynced, then renamed over the
  target (and the folder fsynced), so a crash leaves the old file or the new one, never half of one.
- Ordinary permissions: the temp file is created with mode 0666 and the umask applied, as `open()` would
  (tempfile.mkstemp's 0600 would survive the rename and hide a run from the other users of a machine).
- A failed write (a full disk above all) removes the temp file, leaves the target as it was and becomes
  one CharnnError naming the folder, the space needed and the space free (`write_failed`).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional, Tuple, Union

from charnn.errors import CharnnError

NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
# torch.save reports a failed write as a RuntimeError from its zip writer ("[enforce fail at
# inline_container.cc] . unexpected pos 704 vs 598", "PytorchStreamWriter failed writing file ...", or
# "basic_ios::clear: iostream error" when given a path), with the OSError, if any, as its __context__
_TORCH_WRITE_FAILED = re.compile(r"unexpected pos|failed writing|iostream error")
_SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")  # numpy's ndarray.tofile, errno unset


def create_temp(folder: Path, prefix: str, suffix: str = ".tmp") -> Tuple[int, Path]:
    """A new empty file in `folder`, opened for writing: (fd, path). Mode 0666 less the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        path = Path(folder) / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(folder))


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (where the OS allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_error(e: BaseException, folder: Path, needed: int = 0) -> Optional[OSError]:
    """The OSError behind a failed write, or None when `e` is not one (a bug, which must go on as it is).

    `e` itself when it is an OSError (ENOSPC for numpy's errno-less short write); for torch.save's
    RuntimeError, the OSError it wraps, or ENOSPC when it hides none but `folder` has less free space than
    the `needed` bytes.
    """
    if isinstance(e, OSError):
        if e.errno is None and _SHORT_WRITE.search(str(e)):  # numpy's tofile: a short write, the disk is full
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return e
    if not isinstance(e, RuntimeError) or not _TORCH_WRITE_FAILED.search(str(e)):
        return None
    inner = e.__cause__ or e.__context__
    while inner is not None:
        if isinstance(inner, OSError):
            return inner
        inner = inner.__cause__ or inner.__context__
    if needed and free_space(folder) is not None and free_space(folder) < needed:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


def free_space(folder: Path) -> Optional[int]:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def free_inodes(folder: Path) -> Optional[int]:
    """Files that can still be made there (None where the system does not say: Windows)."""
    try:
        return os.statvfs(folder).f_favail
    except (OSError, AttributeError):
        return None


def size_text(n: int) -> str:
    """Bytes for people: 512 B, 3.4 kB, 1.2 MB, 5.0 GB, 8.5 PB."""
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def write_failed(e: OSError, path: Path, needed: int = 0, hint: str = "", exact: bool = True,
                 what: Optional[str] = None, kept: bool = False) -> CharnnError:
    """One line for a write of `needed` bytes to `path` that failed with `e`: the folder, and for a full disk
    (or quota) the space needed and free; `hint` says where else to write (e.g. "choose another --out").
    `exact`: False when `needed` is only what had been written when it failed. `kept`: say that the
    previous `path` is still there."""
    path = Path(path)
    folder = path.parent
    reason = e.strerror or str(e) or type(e).__name__
    line = f"could not write {what or path.name} in {str(folder)!r}: {reason}"
    if e.errno in NO_SPACE:
        free = free_space(folder)
        need = (f"it needs {'about' if exact else 'more than'} {size_text(needed)}" if needed else "")
        have = "" if free is None else f"{size_text(free)} free"
        if free is not None and free > 2 * needed and free_inodes(folder) == 0:  # (ENOSPC with space left)
            need, have = "", f"{size_text(free)} free, but no free inodes: too many files there"
        if need or have:
            line += f" ({', '.join(p for p in (need, have) if p)})"
        if hint:
            hint = f"free some space there or {hint}"
    if kept:
        line += f"; the previous {path.name} is kept"
    return CharnnError(f"{line}; {hint}" if hint else line)


class _Writes:
    """Atomic writes (and saves) in progress, and the signal held back until they are done (`hold_interrupt`)."""
    open, held = 0, None


class HeldInterrupt(KeyboardInterrupt):
    """A signal `hold_interrupt` held back, raised once the writes it arrived in are done (the files in place)."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def hold_interrupt(signum: int = 2) -> bool:
    """From a signal handler that would raise KeyboardInterrupt (training's second Ctrl-C): while an atomic write
    is in progress, hold it back (True) and raise it, as a HeldInterrupt of `signum`, once the file is in place; a
    further one (the write hangs) is not held. Raised inside torch.save, the interrupt broke its zip writer, whose
    own error then surfaced as a traceback."""
    if _Writes.open and _Writes.held is None:  # (one held at most: another, say for a save that hangs, quits at once)
        _Writes.held = int(signum)
        return True
    _Writes.held = None  # (raised now: none is left to raise later, whatever the write is doing)
    return False


@contextmanager
def interrupts_held():
    """A block (an atomic write; a save and the records of it) that a held signal waits for (hold_interrupt)."""
    _Writes.open += 1
    try:
        yield
    except BaseException:  # a failed write raises its own error (and the user is told of it)
        _Writes.open -= 1
        _Writes.held = _Writes.held if _Writes.open else None
        raise
    _Writes.open -= 1
    if _Writes.held is not None and not _Writes.open:
        signum, _Writes.held = _Writes.held, None
        raise HeldInterrupt(signum)


@contextmanager
def atomic_file(path: Path, size: Union[int, Callable[[], int], None] = None, hint: str = "",
                what: Optional[str] = None) -> Iterator[BinaryIO]:
    """`_atomic_file`, with an interrupt held back (`hold_interrupt`) until the file is in place."""
    with interrupts_held(), _atomic_file(path, size, hint, what) as f:
        yield f


@contextmanager
def _atomic_file(path: Path, size: Union[int, Callable[[], int], None] = None, hint: str = "",
                 what: Optional[str] = None) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new content into; on leaving the block it replaces `path` atomically.

    Any failure removes the temp file and leaves `path` as it was. A failed write (an OSError, or torch.save's
    RuntimeError that wraps one) becomes `write_failed`'s CharnnError; `size` (bytes, or a function giving
    them) is what the content needs, else the bytes written when it failed are quoted as a lower bound.
    """
    path = Path(path)
    try:
        fd, tmp = create_temp(path.parent, f".{path.name}.")
    except OSError as e:
        raise write_failed(e, path, 0, hint, what=what) from None
    f = os.fdopen(fd, "wb")
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        written = _size_of(tmp)
        try:
            tmp.unlink()
        except OSError:
            pass
        needed = size() if callable(size) else size
        failure = write_error(e, path.parent, needed or written)
        if failure is None and _interrupted(e):  # (a third Ctrl-C inside torch.save: its zip writer's RuntimeError
            raise KeyboardInterrupt from None  # came out as a traceback)
        if failure is None:
            raise
        raise write_failed(failure, path, needed or written, hint, exact=bool(needed), what=what,
                           kept=path.exists()) from None
    fsync_dir(path.parent)


def _interrupted(e: BaseException) -> bool:
    """An interrupt, or an error raised while one was on its way (its context)."""
    seen = 0
    while e is not None and seen < 20:
        if isinstance(e, KeyboardInterrupt):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def write_output(path: Path, data: bytes, what: str) -> None:
    """A command's output file (a page, a plot): a regular file (or a new one) is replaced atomically, so a full
    disk leaves the older one whole; a symbolic link (/dev/stdout), a device or a pipe is written through, as it
    is (a rename would replace the link itself)."""
    path = Path(path)
    if not path.is_symlink() and (not path.exists() or path.is_file()):
        write_atomic(path, data, what=f"{what} {path.name}")
        return
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise write_failed(e, path, len(data), what=f"{what} {path.name}") from None


def write_atomic(path: Path, data: bytes, hint: str = "", what: Optional[str] = None) -> None:
    """Replace `path`'s content with `data` atomically, creating its folder if needed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_failed(e, path, len(data), hint, what=what) from None
    with atomic_file(path, len(data), hint, what) as f:
        f.write(data)
