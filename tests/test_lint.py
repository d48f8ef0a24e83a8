"""House style a machine can check: ``ruff check`` with the configuration in ``pyproject.toml`` passes
on the whole tree, and the packages ship their type hints (``py.typed``, PEP 561; the built wheel
holds them: ``tests/test_packaging.py``)."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("openmind_prep", "loaders", "trainers")


def test_ruff_passes():
    ruff = shutil.which("ruff") or (Path(__import__("sys").executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[test]' brings it)")
    done = subprocess.run([str(ruff), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_catches_what_it_is_configured_for(tmp_path):
    """The configuration is live: an unused import and an over-long line in a copy are reported."""
    ruff = shutil.which("ruff") or (Path(__import__("sys").executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "bad.py").write_text("import os\n\nx = '" + "a" * 160 + "'\n")
    done = subprocess.run([str(ruff), "check", "--no-cache", "--output-format", "concise", "."], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 1 and "F401" in done.stdout and "E501" in done.stdout


def test_packages_ship_py_typed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = config["tool"]["setuptools"]["package-data"]
    for package in PACKAGES:
        assert (ROOT / package / "py.typed").is_file(), package
        assert "py.typed" in data.get(package, []), package

