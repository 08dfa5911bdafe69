"""What `pip install charnn` gets: the wheel built from this checkout carries every file the package reads at run time
(the corpus catalog was outside the package, so `charnn corpora` and `charnn train tinyshakespeare` failed in a wheel
install), and the sdist carries what its tests need (conftest.py, the fixtures) and the licence."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _setuptools_ok() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 77  # pyproject.toml's build requirement


pytestmark = [
    pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout"),
    pytest.mark.skipif(not _setuptools_ok(), reason="needs setuptools>=77 (the [dev] extra) to build offline"),
]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The checkout's files as git sees them (tracked, and new files not ignored), copied: building in place would
    leave build/ and *.egg-info in it."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    out = tmp_path_factory.mktemp("src")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, out / name)
    return out


def _package_files(source: Path) -> set:
    return {p.relative_to(source).as_posix() for p in (source / "charnn").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_the_wheel_carries_every_file_of_the_package_and_nothing_else(source, tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("charnn-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    package = {n for n in names if n.startswith("charnn/")}
    assert package == _package_files(source)  # the catalog, the C sources, the HTML pages, every module
    assert "charnn/data/catalog.json" in package
    assert any(n.endswith("/licenses/LICENSE") for n in names)
    assert not [n for n in names if n.endswith((".so", ".pyc")) or n.startswith(("tests/", "benchmarks/"))]


def test_the_package_reads_its_data_from_inside_itself():
    import charnn
    from charnn.data import catalog

    assert catalog.DEFAULT_CATALOG.is_file()
    assert catalog.DEFAULT_CATALOG.is_relative_to(Path(charnn.__file__).resolve().parent)


def test_the_sdist_carries_the_tests_helpers_fixtures_and_licence(source, tmp_path):
    build = f"from setuptools import build_meta; build_meta.build_sdist({str(tmp_path)!r})"
    subprocess.run([sys.executable, "-c", build], cwd=source, check=True, capture_output=True)
    sdist = next(tmp_path.glob("charnn-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    tests = {p.relative_to(source).as_posix() for p in (source / "tests").rglob("*") if p.is_file()}
    assert tests <= names, sorted(tests - names)[:5]  # conftest.py, bag_kind.py, fixtures/ (pytest ran without them)
    assert {"LICENSE", "install.py", "charnn/data/catalog.json", "README.md"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith((".so", ".pyc"))]
