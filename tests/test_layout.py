"""The package's import rules (pyproject.toml's import-linter contracts) hold, and would catch a breach."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

LINT = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
pytestmark = pytest.mark.skipif(not Path(LINT).exists(), reason="import-linter is not installed (pip install -e '.[dev]')")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([LINT, "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_package_keeps_its_layers():
    run = _lint(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 kept, 0 broken" in run.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("models/lm.py", "import charnn.cli.output", "Layers"),             # a model importing the command line
    ("text/tokenizer.py", "from charnn.data import cache", "Layers"),   # a tokenizer importing the data layer
    ("training/trainer.py", "import rich.console", "Only the command line"),  # a library module drawing
    ("models/lm.py", "from charnn.models import registry", "Inside models"),  # a kind reaching up to the registry
])
def test_a_breach_of_the_rules_fails_the_check(tmp_path, module, line, contract):
    shutil.copytree(ROOT / "charnn", tmp_path / "charnn", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "charnn" / module
    target.write_text(f"{line}  # added by the test\n" + target.read_text())
    run = _lint(tmp_path)
    assert run.returncode != 0
    summary = " ".join(run.stdout.split("Contracts:")[0].split())  # the contract lines, unwrapped
    assert f"{contract}" in summary and "BROKEN" in summary.split(contract, 1)[1].split("KEPT")[0]
    assert module.replace("/", ".").removesuffix(".py") in run.stdout
