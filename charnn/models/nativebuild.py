"""Building charnn's C libraries (charnn.models.native) and keeping them in the cache: each source compiled with the
C compiler already there (`$CC`, else `cc`), linked into one shared library named by a digest of its sources, the
compiler, this CPU and the flags, written under a temporary name, synced and renamed, with its own sha256 beside it
(checked before every load: a file cut short passed the dynamic loader and crashed the process in ctypes' load)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from charnn.config import cache_root, cache_umask
from charnn.device import cpuinfo, mac_cpu_name

COMMON = ["-shared", "-fPIC", "-pthread", "-fno-math-errno", "-ffp-contract=fast"]  # (a * b + c: one FMA in every
# file alike, which the int8 block's bit-for-bit agreement with the per-token cells rests on)
if sys.platform == "darwin":  # (macOS's linker refuses min_native.c's weak int8 symbols, undefined where
    COMMON += ["-Wl,-U,_int8_groups", "-Wl,-U,_gumbel"]  # int8_native.c is not built, unless told of each)
DIGEST = ".sha256"  # beside each built library: its digest, checked before it is loaded
STALE_SECONDS = 3600  # a temp library this old is a killed build's (a build takes seconds)


def build(name: str, attempts, headers) -> Path:
    """The shared library `name` for these sources, compiler and CPU: from the cache where it is whole (its
    digest, written beside it, agrees), else compiled into it by the first of `attempts` that compiles (written under
    a temporary name, synced and renamed, so two processes building at once both end with a whole file)."""
    compiler = os.environ.get("CC") or "cc"
    if not shutil.which(compiler) or not developer_tools(compiler):
        raise OSError(f"no C compiler ({compiler})")
    files = dict.fromkeys(f for sources, _ in attempts for f in sources)
    sources = [f.read_bytes() for f in (*files, *headers)]
    flags = repr([flags for _, flags in attempts]).encode()  # (a change of flags builds anew)
    key = hashlib.sha256(b"\0".join([*sources, compiler.encode(), _cpu().encode(), flags])).hexdigest()[:16]
    folder = cache_root() / "native"
    target = folder / f"{name}-{key}{'.dll' if os.name == 'nt' else '.so'}"
    if target.exists() and whole(target):
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        sweep_stale(folder, target.suffix)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=target.suffix)
    except OSError:  # a cache this process cannot write (shared, read-only): one built before digests were kept
        if target.exists() and not Path(str(target) + DIGEST).exists():  # is loaded as it is, as it was then
            return target
        raise
    os.close(fd)
    try:
        for sources, flags in attempts:
            error = _compile(compiler, flags, sources, tmp)
            if error is None:
                os.chmod(tmp, 0o755 & ~cache_umask())  # (mkstemp's 0600: others sharing the cache could not load it)
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())  # (renamed before its data reached the disk, a crash left it cut short)
                Path(tmp + DIGEST).write_text(_digest(Path(tmp)), encoding="ascii")
                os.replace(tmp + DIGEST, str(target) + DIGEST)
                os.replace(tmp, target)
                return target
        raise OSError(error[:200])
    finally:
        for left in (tmp, tmp + DIGEST):
            if os.path.exists(left):
                os.unlink(left)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def whole(target: Path) -> bool:
    """Whether a cached library is the file its build wrote: one cut short (a full disk, a crash) or changed
    crashed the process in ctypes' load (a bus error, no message) where the dynamic loader did not refuse it.
    One from before digests were kept is built again, once."""
    try:
        return (Path(str(target) + DIGEST).read_text(encoding="ascii") == _digest(target))
    except (OSError, UnicodeDecodeError):
        return False


def sweep_stale(folder: Path, suffix: str) -> None:
    """Remove the temp files of builds killed mid-compile (`kill -9`: their `finally` never ran) from `folder`."""
    now = time.time()
    for left in [*folder.glob(f"tmp*{suffix}"), *folder.glob(f"tmp*{suffix}{DIGEST}")]:
        with contextlib.suppress(OSError):
            if now - left.stat().st_mtime > STALE_SECONDS:
                left.unlink()


@functools.lru_cache(maxsize=None)
def developer_tools(compiler: str) -> bool:
    """On macOS /usr/bin/cc is there without Xcode's command line tools, and running it opens a dialog offering to
    install them (on every charnn run): there, a compiler under /usr/bin counts only where `xcode-select -p` names
    the tools. True elsewhere."""
    if sys.platform != "darwin" or not str(shutil.which(compiler)).startswith("/usr/bin/"):
        return True
    try:
        r = subprocess.run(["xcode-select", "-p"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0 and Path(r.stdout.strip()).is_dir()  # (a folder chosen with -s, then deleted: no tools)


def _compile(compiler: str, flags, sources, out: str) -> Optional[str]:
    """Each source to an object file, all at once (one compiler process each: training's two files took 4.8 s one
    after the other on a 2-core AMX Xeon, 3.2 s side by side; the sampler's four 1.4 s and 0.7 s), then one link
    into `out`. None, or what the compiler said where a step failed."""
    objects, steps = [f"{out}.{i}.o" for i in range(len(sources))], []
    try:
        steps += [subprocess.Popen([compiler, *flags, *COMMON, "-c", "-o", o, str(f)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE) for f, o in zip(sources, objects)]
        for step in steps:
            try:
                error = step.communicate(timeout=120)[1]
            except subprocess.TimeoutExpired:
                step.kill()
                step.communicate()
                return "the compiler took more than 120 s"
            if step.returncode:
                return error.decode(errors="replace").strip() or "the compiler failed"
        r = subprocess.run([compiler, *flags, *COMMON, "-o", out, *objects], capture_output=True, timeout=120)
        return None if r.returncode == 0 else r.stderr.decode(errors="replace").strip() or "the linker failed"
    finally:
        for step in steps:  # (any still running where another failed: stopped before its object goes)
            if step.poll() is None:
                step.kill()
                step.communicate()
        for o in objects:
            if os.path.exists(o):
                os.unlink(o)


def _cpu() -> str:
    """What -march=native compiled for: the CPU's model and feature flags (a cache shared by several machines
    must not hand one CPU's instructions to another)."""
    info = cpuinfo()
    if info is None:
        return platform.machine() + platform.processor() + mac_cpu_name()
    lines = [x for x in info.splitlines() if x.startswith(("model name", "flags", "Features", "CPU part"))]
    return platform.machine() + "\n" + "\n".join(sorted(set(lines)))
