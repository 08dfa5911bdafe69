"""Install charnn with the torch build this machine wants, in the Python that runs this script.

    python install.py --dev        # charnn and its test tools (pip install -e ".[dev]"), after torch
    python install.py --dry-run    # print the commands, run nothing

A bare `pip install torch` on Linux is the CUDA build: about 5 GB of nvidia-* packages, useless without an
NVIDIA GPU. So, in order:

1. a torch that is already installed is kept (whatever its build: you chose it);
2. with an NVIDIA GPU (`nvidia-smi -L` lists one): `pip install torch`, the default CUDA build;
3. without one: torch's CPU build from its own index (--cpu-index). Where that index cannot be reached, pip's
   own index is asked what it would install, and that is installed only if it is not a CUDA build (macOS and
   Windows wheels); else the newest `+cpu` torch that pip's index offers (a mirror, local wheels); else it
   stops and says how to get the CPU build.

Then `pip install -e .` (with --dev: `.[dev]`). uv users can instead run
`uv pip install -e ".[dev]" --torch-backend=auto`, which makes the same choice.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import List, Optional

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
MIN_PYTHON = (3, 10)  # pyproject.toml's requires-python (charnn's CLI uses inspect.signature(eval_str=True): 3.10)
ROOT = Path(__file__).resolve().parent
PIP = [sys.executable, "-m", "pip", "install"]


def installed_torch() -> Optional[str]:
    """The version of the torch this Python already has, or None (looked up without importing it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return None


def has_nvidia_gpu() -> bool:
    """An NVIDIA driver that lists at least one GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def reachable(url: str, timeout: float = 10.0) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/torch/", timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def torch_command(gpu: bool, cpu_index: str) -> List[str]:
    return PIP + ["torch"] if gpu else PIP + ["torch", "--index-url", cpu_index]


def charnn_command(dev: bool) -> List[str]:
    return PIP + ["-e", f"{ROOT}[dev]" if dev else str(ROOT)]


def pip_would_install_cuda(spec: str = "torch") -> Optional[str]:
    """What pip's own index would install for `spec`: the CUDA packages it pulls in ('' when none), or None
    when pip cannot say."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        done = subprocess.run(PIP + [spec, "--dry-run", "--quiet", "--report", str(report)],
                              capture_output=True, text=True)
        if done.returncode or not report.is_file():
            return None
        names = [item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]]
    return ", ".join(n for n in names if n.startswith("nvidia-"))


def cpu_build_on_pips_index() -> Optional[str]:
    """The newest torch version labelled `+cpu` that pip's own index offers (a mirror, local wheels), or None."""
    done = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "torch"], capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("Available versions:"):
            return next((v.strip() for v in line.split(":", 1)[1].split(",") if v.strip().endswith("+cpu")), None)
    return None


def shown(cmd: List[str]) -> str:
    """The command as a shell line to paste (`.../repo[dev]` quoted: zsh would glob the brackets)."""
    return " ".join(["python", *(shlex.quote(a) for a in cmd[1:])])


def say(line: str) -> None:
    print(f"install.py: {line}", file=sys.stderr, flush=True)


def cpu_fallback(cpu_index: str) -> Optional[str]:
    """With the CPU index out of reach: what to ask pip's own index for (see the module doc, 3), or None."""
    cuda = pip_would_install_cuda()
    if cuda == "":
        say(f"{cpu_index} cannot be reached; pip's own index has a torch without CUDA libraries: using it")
        return "torch"
    version = cpu_build_on_pips_index()
    if version and pip_would_install_cuda(f"torch=={version}") == "":
        say(f"{cpu_index} cannot be reached; pip's own index has torch {version}: using it")
        return f"torch=={version}"
    say(f"no NVIDIA GPU, and {cpu_index} cannot be reached; pip's own index would install "
        + (f"torch's CUDA build ({cuda}: several GB)" if cuda else "a torch it could not describe")
        + ". Install a CPU build of torch first (a wheel from that index, or --cpu-index URL of a mirror), "
        "then run this again")
    return None


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dev", action="store_true", help="also the test tools: pip install -e '.[dev]'")
    ap.add_argument("--dry-run", action="store_true", help="print the pip commands (one a line) and run nothing")
    ap.add_argument("--cpu-index", default=CPU_INDEX, help=f"torch's CPU-build index (default {CPU_INDEX})")
    ap.add_argument("-q", "--quiet", action="store_true", help="pass -q to pip")
    args = ap.parse_args(argv)
    if tuple(sys.version_info[:2]) < MIN_PYTHON:  # (before 5 GB of torch for a Python charnn cannot run on)
        say(f"charnn needs Python {'.'.join(map(str, MIN_PYTHON))} or newer; this is {sys.version.split()[0]} "
            f"({sys.executable}): run install.py with a newer Python, in a virtual environment")
        return 1

    commands, have, gpu = [], installed_torch(), has_nvidia_gpu()
    if have:
        say(f"keeping the installed torch {have}")
    else:
        say("an NVIDIA GPU: torch's default (CUDA) build" if gpu else
            f"no NVIDIA GPU: torch's CPU build from {args.cpu_index}")
        commands.append(torch_command(gpu, args.cpu_index))
    commands.append(charnn_command(args.dev))
    if args.dry_run:  # (no network: whether the CPU index can be reached is found out by a real run)
        if not have and not gpu:
            say(f"--dry-run does not try {args.cpu_index}; out of reach, a real run falls back to pip's own index "
                "when it has a torch without CUDA")
        for cmd in commands:
            print(shown(cmd))
        return 0
    if not have and not gpu and not reachable(args.cpu_index):
        fallback = cpu_fallback(args.cpu_index)
        if fallback is None:
            return 1
        commands[0] = PIP + [fallback]
    for cmd in commands:
        cmd = cmd + ["-q"] if args.quiet else cmd
        say(shown(cmd))
        if subprocess.run(cmd, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}).returncode:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
