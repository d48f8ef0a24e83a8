"""Packaging: a built wheel installs and runs with the core dependencies only; ``--help`` stays light.

The wheel test builds the wheel from a copy of the source (setuptools, no network), installs it
with ``--no-deps`` into a fresh venv, and lets that venv see the test environment's packages through
a ``.pth`` path entry (offline and fast). So that this cannot hide an import of an optional
package, the fresh venv also gets an import blocker (a ``.pth`` ``import`` line) that refuses
every module of the extras ([train], [sample], test-only packages): what runs there runs on the
core dependencies.
"""

from __future__ import annotations

import email
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
#: Top-level modules of the optional dependencies: none may load on a core install.
EXTRAS = ("nilearn", "dipy", "sklearn", "timm", "dynamic_network_architectures", "dask_jobqueue",
          "monai", "torchio", "skimage", "hypothesis", "pytest")
HEAVY = ("numpy", "torch", "pyarrow", "dask", "zarr", "SimpleITK", "scipy", "matplotlib")

_BLOCKER = f"""
import sys
class _Block:
    names = {EXTRAS!r}
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"{{name}} is an optional dependency (blocked: core-only install)")
        return None
sys.meta_path.insert(0, _Block())
"""


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["MPLBACKEND"] = "Agg"
    return env


def test_top_level_help_imports_no_library_module():
    """``openmind-prep --help`` loads click and the command modules only: no numpy, torch, dask."""
    code = ("import sys\nfrom openmind_prep.cli import main\n"
            "try:\n    main(['--help'], prog_name='openmind-prep')\nexcept SystemExit:\n    pass\n"
            f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "Commands:" in out and "preprocess" in out
    assert out.strip().splitlines()[-1] == "LOADED []"


def _source_copy(dest: Path) -> Path:
    skip = shutil.ignore_patterns(".git", ".venv*", "runs", "build", "dist", "*.egg-info", "__pycache__",
                                  ".pytest_cache", ".hypothesis")
    shutil.copytree(ROOT, dest, ignore=skip)
    return dest


@pytest.mark.slow
def test_wheel_installs_core_only_and_runs(tmp_path):
    src = _source_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(src)], check=True, env=_clean_env(), cwd=tmp_path)
    (wheel,) = dist.glob("openmind_prep-*.whl")

    # What the wheel declares and holds.
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(z.read(meta_name))
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["License-Expression"] == "Apache-2.0"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "openmind_prep/sources/selections/t1w-iqs2.5.toml" in names
    assert {"openmind_prep/py.typed", "loaders/py.typed", "trainers/py.typed"} <= set(names)  # PEP 561
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    core = {r.name.lower().replace("_", "-"): r for r in requires if r.marker is None}
    assert not core["huggingface-hub"].specifier.contains("1.9") and core["huggingface-hub"].specifier.contains("2.0")
    for optional in ("nilearn", "dipy", "scikit-learn", "timm", "dynamic-network-architectures", "monai"):
        assert optional not in core, optional
    assert set(meta.get_all("Provides-Extra")) >= {"train", "sample", "all", "test"}

    # A fresh venv with the wheel (no deps) and the core packages visible, the extras blocked.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, env=_clean_env(), cwd=tmp_path)
    (site / "zz_core_only_blocker.py").write_text(_BLOCKER)
    (site / "zz_core_only.pth").write_text("import zz_core_only_blocker\n" + sysconfig.get_paths()["purelib"] + "\n")

    run = lambda *argv: subprocess.run(argv, capture_output=True, text=True, env=_clean_env(), cwd=tmp_path)  # noqa: E731
    help_ = run(str(venv / "bin" / "openmind-prep"), "--help")
    assert help_.returncode == 0, help_.stderr
    assert "Commands:" in help_.stdout and "download" in help_.stdout
    probe = run(str(py), "-c", "import json, loaders, openmind_prep.sources.selection as s\n"
                "print(json.dumps({'loaders': loaders.__file__, 'selection': str(s.find_selection('t1w-iqs2.5'))}))")
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert found["loaders"].startswith(str(site)) and found["selection"].startswith(str(site))
    # The blocker is real: an optional package is refused there.
    refused = run(str(py), "-c", "import nilearn")
    assert refused.returncode == 1 and "optional dependency" in refused.stderr
