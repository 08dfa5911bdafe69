"""One training per run folder: an exclusive flock on the folder itself, held while a run writes it.

A second `charnn train --name x` (or a `--resume` of x) while x is training stops at once and names the
process that holds it. The kernel drops the lock when that process ends, however it ends (`kill -9`
included), so a dead run never blocks the next one, and no lock file is left in the folder. Under torchrun
only rank 0 writes the folder, so only rank 0 takes the lock: the ranks of one run are one training.
"""

from __future__ import annotations

import errno
import os
import weakref
from pathlib import Path
from typing import Optional, Tuple

from charnn.errors import CharnnError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not guarded there
    fcntl = None


class RunLock:
    """Holds the lock on `run_dir` until `release()` (or until the object, or the process, goes away)."""

    def __init__(self, run_dir: Path, fd: int, created: bool):
        self.run_dir, self.created = run_dir, created  # created: the folder did not exist before
        self._close = weakref.finalize(self, os.close, fd)

    @classmethod
    def take(cls, run_dir: Path, resume: bool, dist) -> Tuple[Optional["RunLock"], Optional[CharnnError]]:
        """(the lock, None) on rank 0 and (None, None) on the others; under torchrun, where rank 0 cannot have
        it, (None, the error) for `Dist.raise_together` once every rank has joined (raised at once here, the
        others waited for rank 0 until their timeout); in one process the error is raised here."""
        if not dist.is_main:
            return None, None
        try:
            return cls.acquire(run_dir, resume), None
        except CharnnError as e:
            if not dist.active:
                raise
            return None, e

    @classmethod
    def acquire(cls, run_dir: Path, resume: bool = False) -> Optional["RunLock"]:
        """Take the run folder (making it first, unless resuming a folder that is not there: resume says
        that better); None where locking is not possible. One-line error when another process holds it."""
        if fcntl is None or (resume and not run_dir.is_dir()):
            return None
        if run_dir.exists() and not run_dir.is_dir():
            raise CharnnError(f"{str(run_dir)!r} is a file, not a run folder; choose another --name (or --out)")
        created = not run_dir.exists()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(run_dir, os.O_RDONLY)
        except OSError as e:
            raise CharnnError(f"cannot write to {str(run_dir)!r}: {e.strerror or e}; choose another --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None  # a filesystem without flock: train unguarded rather than not at all
            holder = holder_pid(run_dir)
            who = f"another process (pid {holder})" if holder else "another process"
            then = "wait for it to finish, then --resume" if resume else "pick another --name, or wait for it to finish"
            raise CharnnError(f"run {run_dir.name!r} ({str(run_dir)!r}) is being trained by {who}; {then}") from None
        return cls(run_dir, fd, created)

    def release(self) -> None:
        """Unlock, and remove the folder this lock made if nothing was written in it (a start that failed, a run
        stopped by a NaN or a signal before its first save: an empty folder was left)."""
        self._close()
        if self.created:
            try:
                self.run_dir.rmdir()
            except OSError:
                pass


def holder_pid(path: Path) -> Optional[int]:
    """The pid holding a flock on `path`, from Linux's /proc/locks (None elsewhere or when not found)."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        fields = line.split()
        if "FLOCK" in fields and where in fields:
            pid = fields[fields.index(where) - 1]
            if pid.isdigit() and int(pid) != os.getpid():
                return int(pid)
    return None
