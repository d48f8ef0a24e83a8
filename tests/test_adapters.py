"""TorchIO and MONAI routes (loaders/adapters.py) with the real packages, on real MRI preprocessed by
the real pipeline: spacing, origin and direction against the source NIfTI as nibabel reads it."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from loaders import ZarrVolumeDataset
from loaders.adapters import monai_dataset, to_monai, to_torchio, torchio_subjects
from openmind_prep.sources.metadata import IMAGES_DIR

tio = pytest.importorskip("torchio")
monai = pytest.importorskip("monai")


def _reference(row: dict, src) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """From nibabel alone: the source affine A, and for the stored grid (skimage grid mode after the
    crop; axes reversed from z, y, x to i, j, k) the spacing, the first voxel's RAS position and
    the direction. Re-typed here, independent of openmind_prep.store.affine."""
    img = nib.load(src)
    a = img.affine
    zooms = np.asarray(img.header.get_zooms()[:3], float)
    lo = np.array([b[0] for b in row["crop_bbox"]], float)[::-1]           # i, j, k
    n_in = np.array([b[1] - b[0] for b in row["crop_bbox"]], float)[::-1]
    n_out = np.asarray(row["shape"], float)[::-1]
    first = lo + 0.5 * n_in / n_out - 0.5                                   # continuous source index
    return a, zooms * n_in / n_out, (a @ [*first, 1])[:3], a[:3, :3] / zooms


@pytest.fixture(scope="module")
def dataset(train_store):
    return ZarrVolumeDataset(train_store)


def test_torchio_and_monai_geometry_equals_the_source_nifti(dataset, sample_tree):
    for i, row in enumerate(dataset.rows):
        src = sample_tree / IMAGES_DIR / row["image_path"]
        a, spacing, origin, direction = _reference(row, src)
        sample = dataset[i]

        subject = to_torchio(sample)
        image = subject["image"]
        np.testing.assert_allclose(image.spacing, spacing, rtol=1e-6)
        np.testing.assert_allclose(image.spacing, 1.0, atol=0.02)              # the 1 mm grid
        np.testing.assert_allclose(image.origin, origin, atol=1e-4)
        np.testing.assert_allclose(np.reshape(image.direction, (3, 3)), direction, atol=1e-6)
        assert image.orientation == nib.aff2axcodes(a) == tio.ScalarImage(src).orientation
        # the data is the stored volume with axes (z, y, x) -> (i, j, k)
        assert torch.equal(image.data[0], sample["image"][0].permute(2, 1, 0).float())
        # a far voxel too: our affine at stored voxel q = nibabel's affine at its source index
        q = np.asarray(image.shape[1:]) - 1
        n_in = np.array([b[1] - b[0] for b in row["crop_bbox"]], float)[::-1]
        src_index = np.array([b[0] for b in row["crop_bbox"]], float)[::-1] + (q + 0.5) * n_in / image.shape[1:] - 0.5
        np.testing.assert_allclose(image.affine @ [*q, 1], a @ [*src_index, 1], atol=1e-4)

        item = to_monai(sample)
        np.testing.assert_allclose(item["image"].affine.numpy(), image.affine, atol=1e-9)
        np.testing.assert_allclose(monai.data.utils.affine_to_spacing(item["image"].affine).numpy(), spacing,
                                   rtol=1e-6)
        masks = [m for m in ("anon_mask", "anat_mask") if sample[m] is not None]
        assert sorted(k for k in item if k.endswith("_mask")) == sorted(masks)   # absent, never None
        assert sorted(k for k in subject.keys() if k.endswith("_mask")) == sorted(masks)


def test_region_affines_are_the_volume_affine_shifted(dataset):
    whole = np.asarray(dataset[0]["meta"]["affine"])
    start = [3, 5, 7]
    part = dataset[0, tuple(slice(s, s + 8) for s in start)]
    np.testing.assert_allclose(np.asarray(part["meta"]["affine"]) @ [0, 0, 0, 1], whole @ [*start, 1], atol=1e-9)
    np.testing.assert_allclose(to_torchio(part)["image"].affine @ [0, 0, 0, 1], whole @ [*start, 1], atol=1e-9)


def test_monai_dataset_runs_monai_transforms_and_collate(dataset):
    from monai.transforms import Compose, Orientationd, ScaleIntensityd

    keys = ["image"]
    ds = monai_dataset(dataset, Compose([Orientationd(keys, axcodes="LPS"), ScaleIntensityd(keys)]))
    assert len(ds) == len(dataset)
    without_masks = [i for i, r in enumerate(dataset.rows) if not r["anat_mask_zarr_path"]]
    loader = monai.data.DataLoader(torch.utils.data.Subset(ds, without_masks[:1]), batch_size=1)
    batch = next(iter(loader))
    assert set(batch) == {"image", "key"}
    assert nib.aff2axcodes(batch["image"].affine[0].numpy()) == ("L", "P", "S")
    assert float(batch["image"].min()) == 0.0 and float(batch["image"].max()) == 1.0


def test_torchio_queue_over_lazy_subjects(dataset):
    subjects = torchio_subjects(dataset, transform=tio.ToCanonical())
    assert len(subjects) == len(dataset)
    first = subjects.dry_iter()[0]
    assert not first["image"]._loaded                                        # nothing read yet
    eager = to_torchio(dataset[0])
    np.testing.assert_allclose(first["image"].affine, eager["image"].affine, atol=1e-9)
    assert torch.equal(first["image"].data, eager["image"].data)
    queue = tio.Queue(subjects, max_length=4, samples_per_volume=2, sampler=tio.UniformSampler(16),
                      num_workers=0, shuffle_subjects=False, shuffle_patches=False)
    patches = [queue[i] for i in range(4)]
    assert all(p["image"].shape == (1, 16, 16, 16) for p in patches)
    assert all(p["image"].orientation == ("R", "A", "S") for p in patches)


def _thin(dataset) -> int:
    """The index of a volume thinner than 64 voxels along some axis (nibabel's anatomical.nii: 50)."""
    thin = [i for i, r in enumerate(dataset.rows) if min(r["shape"]) < 64]
    assert thin, [r["shape"] for r in dataset.rows]
    return thin[0]


def test_thin_volume_is_padded_to_the_patch_keeping_world_positions(dataset):
    i = _thin(dataset)
    sample = dataset[i]
    plain, padded = to_torchio(sample)["image"], to_torchio(sample, min_shape=64)["image"]
    shape = np.asarray(plain.shape[1:])
    assert tuple(padded.shape[1:]) == tuple(np.maximum(shape, 64))
    before = (np.maximum(shape, 64) - shape) // 2
    # the stored voxels, unchanged, where they were in the world
    inner = padded.data[0][tuple(slice(b, b + n) for b, n in zip(before, shape))]
    assert torch.equal(inner, plain.data[0])
    for q in (np.zeros(3), shape - 1):
        np.testing.assert_allclose(padded.affine @ [*(q + before), 1], plain.affine @ [*q, 1], atol=1e-9)
    # the margin is the volume's minimum (the z-scored background), masks 0
    margin = torch.ones(padded.shape[1:], dtype=torch.bool)
    margin[tuple(slice(b, b + n) for b, n in zip(before, shape))] = False
    assert margin.any() and bool((padded.data[0][margin] == plain.data.min()).all())
    item = to_monai(sample, min_shape=64)
    np.testing.assert_allclose(item["image"].affine.numpy(), padded.affine, atol=1e-9)
    for name in (m for m in ("anon_mask", "anat_mask") if m in item):
        assert item[name].shape == item["image"].shape and int(item[name].sum()) == int(sample[name].sum())


def test_adapters_iterate_a_batch_with_a_thin_volume(dataset):
    """A MONAI DataLoader batch of 64³ random crops and a TorchIO queue of 64³ patches, over a store
    holding a volume thinner than 64 (without min_shape TorchIO refuses it, MONAI cannot stack it)."""
    from monai.transforms import RandSpatialCropd

    thin = _thin(dataset)
    pair = torch.utils.data.Subset(monai_dataset(dataset, RandSpatialCropd(["image"], (64, 64, 64)), min_shape=64),
                                   [thin, (thin + 1) % len(dataset)])
    batch = next(iter(monai.data.DataLoader(pair, batch_size=2)))
    assert tuple(batch["image"].shape) == (2, 1, 64, 64, 64)

    subjects = torchio_subjects(dataset, min_shape=64)
    queue = tio.Queue(tio.SubjectsDataset([subjects.dry_iter()[thin]]), max_length=2, samples_per_volume=2,
                      sampler=tio.UniformSampler(64), num_workers=0)
    patches = next(iter(tio.SubjectsLoader(queue, batch_size=2)))
    assert tuple(patches["image"][tio.DATA].shape) == (2, 1, 64, 64, 64)
    with pytest.raises(Exception, match="cannot be larger"):  # what the padding is for
        next(iter(tio.Queue(tio.SubjectsDataset([torchio_subjects(dataset).dry_iter()[thin]]), 2, 2,
                            tio.UniformSampler(64), num_workers=0)))
