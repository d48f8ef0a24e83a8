"""Shared fixtures: the embedded real-MRI sample tree in the OpenMind layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from openmind_prep.embedded import build_sample_tree


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
