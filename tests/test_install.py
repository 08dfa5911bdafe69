"""install.py, the README's first command: torch's CPU build without an NVIDIA GPU, its default (CUDA) build with
one, an installed torch kept. Dry runs in a fresh virtual environment (no torch, no pip), with a fake
`nvidia-smi` on PATH or none; the fallback for an unreachable CPU index with pip's answers faked."""

import importlib.util
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "install.py"
CPU = "--index-url https://download.pytorch.org/whl/cpu"


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory):
    """The python of a new virtual environment: no torch, no pip (a dry run needs neither)."""
    root = tmp_path_factory.mktemp("fresh") / "venv"
    venv.EnvBuilder(with_pip=False).create(root)
    return root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def fake_smi(folder: Path, listing: str, code: int = 0) -> str:
    """A PATH whose nvidia-smi prints `listing` and exits `code` (and nothing else of the real PATH's GPUs)."""
    folder.mkdir(exist_ok=True)
    smi = folder / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho '{listing}'\nexit {code}\n")
    smi.chmod(0o755)
    return f"{folder}{os.pathsep}/usr/bin{os.pathsep}/bin"


def dry_run(python, path: str, *args):
    r = subprocess.run([str(python), str(SCRIPT), "--dry-run", *args], capture_output=True, text=True,
                       env={**os.environ, "PATH": path}, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines(), r.stderr


@pytest.mark.skipif(os.name == "nt", reason="the fake nvidia-smi is a shell script")
def test_no_gpu_gets_the_cpu_build_in_a_fresh_venv(fresh_python, tmp_path):
    lines, notes = dry_run(fresh_python, f"/usr/bin{os.pathsep}/bin", "--dev")
    assert lines == [f"python -m pip install torch {CPU}", f"python -m pip install -e '{ROOT}[dev]'"]
    assert "no NVIDIA GPU" in notes
    # a driver without a GPU (nvidia-smi fails, or lists none) is no GPU either
    for listing, code in (("NVIDIA-SMI has failed", 9), ("No devices found.", 0)):
        lines, _ = dry_run(fresh_python, fake_smi(tmp_path / f"smi{code}", listing, code))
        assert lines[0] == f"python -m pip install torch {CPU}", listing


@pytest.mark.skipif(os.name == "nt", reason="the fake nvidia-smi is a shell script")
def test_an_nvidia_gpu_gets_the_default_cuda_build(fresh_python, tmp_path):
    path = fake_smi(tmp_path / "gpu", "GPU 0: NVIDIA H200 (UUID: GPU-0)")
    lines, notes = dry_run(fresh_python, path)
    assert lines == ["python -m pip install torch", f"python -m pip install -e {ROOT}"]
    assert "CUDA" in notes


def test_an_installed_torch_is_kept(tmp_path):
    lines, notes = dry_run(sys.executable, fake_smi(tmp_path / "gpu", "GPU 0: NVIDIA H200 (UUID: GPU-0)"), "--dev")
    assert lines == [f"python -m pip install -e '{ROOT}[dev]'"]
    assert "keeping the installed torch" in notes


@pytest.fixture
def installer(monkeypatch):
    """install.py as a module, on a machine without torch or a GPU whose CPU index cannot be reached; the pip
    commands it would run are recorded, not run."""
    spec = importlib.util.spec_from_file_location("charnn_install", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ran = []
    monkeypatch.setattr(mod, "installed_torch", lambda: None)
    monkeypatch.setattr(mod, "has_nvidia_gpu", lambda: False)
    monkeypatch.setattr(mod, "reachable", lambda url, timeout=10.0: False)
    monkeypatch.setattr(mod.subprocess, "run",
                        lambda cmd, **k: (ran.append(cmd), subprocess.CompletedProcess(cmd, 0))[1])
    mod.ran = ran
    return mod


def test_unreachable_cpu_index_and_only_a_cuda_build_on_pips_index_stops_with_advice(installer, monkeypatch, capsys):
    monkeypatch.setattr(installer, "pip_would_install_cuda", lambda spec="torch": "nvidia-cublas-cu12, nvidia-cudnn")
    monkeypatch.setattr(installer, "cpu_build_on_pips_index", lambda: None)
    assert installer.main([]) == 1
    assert installer.ran == []  # nothing installed: not 5 GB of CUDA on a machine without a GPU
    err = capsys.readouterr().err
    assert "cannot be reached" in err and "nvidia-cublas-cu12" in err and "CPU build of torch first" in err


def test_unreachable_cpu_index_and_a_cpu_build_on_pips_index_installs_it(installer, monkeypatch):
    monkeypatch.setattr(installer, "pip_would_install_cuda", lambda spec="torch": "")  # macOS, Windows wheels
    assert installer.main(["--dev"]) == 0
    assert [cmd[3:] for cmd in installer.ran] == [["install", "torch"], ["install", "-e", f"{ROOT}[dev]"]]


def test_unreachable_cpu_index_and_a_cpu_build_among_pips_versions_installs_that(installer, monkeypatch):
    # this machine: the newest torch on its package index is a CUDA build, a local wheel is torch 2.13.0+cpu
    cuda = {"torch": "nvidia-cublas, nvidia-cudnn-cu13", "torch==2.13.0+cpu": ""}
    monkeypatch.setattr(installer, "pip_would_install_cuda", lambda spec="torch": cuda[spec])
    monkeypatch.setattr(installer, "cpu_build_on_pips_index", lambda: "2.13.0+cpu")
    assert installer.main([]) == 0
    assert [cmd[3:] for cmd in installer.ran] == [["install", "torch==2.13.0+cpu"], ["install", "-e", str(ROOT)]]


def test_readme_starts_with_the_installer():
    block = (ROOT / "README.md").read_text(encoding="utf-8").split("```bash\n", 1)[1].split("```", 1)[0]
    first = block.splitlines()[:2]
    assert all(line.startswith("python install.py") for line in first), first
    assert "pip install -e" not in block  # the bare install that pulls torch's CUDA build on Linux


def test_a_python_older_than_charnn_needs_stops_first_with_one_line(installer, monkeypatch, capsys):
    """Python 3.9 took torch (which still ships for it), then charnn's CLI failed at import with a traceback
    (inspect.signature's eval_str is 3.10's). pyproject.toml's requires-python says the same minimum."""
    monkeypatch.setattr(installer.sys, "version_info", (3, 9, 18, "final", 0))
    assert installer.main(["--dev"]) == 1 and installer.ran == []
    err = capsys.readouterr().err
    assert "charnn needs Python 3.10 or newer" in err and len(err.strip().splitlines()) == 1
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'requires-python = ">={".".join(map(str, installer.MIN_PYTHON))}"' in pyproject
