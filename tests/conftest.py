"""Shared fixtures: the embedded real-MRI sample tree in the OpenMind layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_server import HubFixture
from openmind_prep.sources.embedded import build_sample_tree


@pytest.fixture(scope="session")
def sample_tree(tmp_path_factory) -> Path:
    """Small real-MRI tree (3 images: downsampled MNI with masks, nibabel anatomical, dipy aniso)."""
    return build_sample_tree(tmp_path_factory.mktemp("sample_small"), small=True)


@pytest.fixture(scope="session")
def broken_tree(tmp_path_factory) -> Path:
    """The small tree plus one deliberately broken case per failure mode (dataset ds999999)."""
    return build_sample_tree(tmp_path_factory.mktemp("sample_broken"), small=True, broken=True)


@pytest.fixture(scope="session")
def full_tree(tmp_path_factory) -> Path:
    """The full embedded default (6 real-MRI images incl. a 1 mm MNI and a separate-z FLAIR)."""
    return build_sample_tree(tmp_path_factory.mktemp("sample_full"))


@pytest.fixture(scope="session")
def train_store(sample_tree, tmp_path_factory) -> Path:
    """The small sample tree (real MRI) through the real onemmiso preprocessing into a Zarr store."""
    from openmind_prep.store.manifest import merge_manifest
    from openmind_prep.sources.metadata import METADATA_CSV, read_metadata
    from openmind_prep.preprocess.job import PreprocessOptions, process_batch
    from openmind_prep.store.store import Store

    s = Store.create(tmp_path_factory.mktemp("cva") / "store").root
    rows = process_batch(read_metadata(sample_tree / METADATA_CSV), sample_tree, s, PreprocessOptions())
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    merge_manifest(s)
    return s


@pytest.fixture
def hub_env(monkeypatch):
    """huggingface_hub against the local fixture: plain HTTP transfers (no Xet), no progress bars."""
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture
def hub(sample_tree, hub_env):
    """The embedded sample served by a local HF-compatible server. The CSV (673 B) and the defacing
    mask (511 B) are plain git files, everything else is LFS."""
    fixture = HubFixture(sample_tree, lfs_threshold=1000)
    yield fixture
    fixture.close()
