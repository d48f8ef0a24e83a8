"""Regions of a stored volume (tuples of slices in the stored axis order, axis 0/1/2 = z/y/x) and
the one sample reader both loaders use, so the Zarr dataset and the WebDataset stream yield
identical dicts."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from openmind_prep.affine import stored_affine
from openmind_prep.metadata import ARRAYS

Region = tuple[slice, ...]


def clip_region(region: Region | None, shape: Sequence[int]) -> Region:
    """Clip a zyx region (tuple of slices, step 1) to a volume; ``None`` means the whole volume.

    >>> clip_region((slice(-5, 10), slice(None), slice(3, 99)), (8, 8, 8))
    (slice(0, 8, None), slice(0, 8, None), slice(3, 8, None))
    """
    if region is None:
        return tuple(slice(0, int(n)) for n in shape)
    if len(region) != len(shape):
        raise ValueError(f"region {region} has {len(region)} axes, volume has {len(shape)}")
    out = []
    for s, n in zip(region, shape):
        if s.step not in (None, 1):
            raise ValueError(f"region {region}: only step 1 is supported")
        lo = 0 if s.start is None else min(max(int(s.start), 0), int(n))
        hi = int(n) if s.stop is None else min(max(int(s.stop), lo), int(n))
        out.append(slice(lo, hi))
    return tuple(out)


def random_region(shape: Sequence[int], size: int | Sequence[int], rng: np.random.Generator) -> Region:
    """A uniformly placed region of ``size`` voxels per axis (whole axis where the volume is smaller).

    >>> r = random_region((100, 50, 200), 64, np.random.default_rng(0))
    >>> [s.stop - s.start for s in r]
    [64, 50, 64]
    """
    sizes = [int(size)] * len(shape) if np.isscalar(size) else [int(s) for s in size]
    starts = [int(rng.integers(0, max(n - s, 0) + 1)) for n, s in zip(shape, sizes)]
    return tuple(slice(a, min(a + s, int(n))) for a, s, n in zip(starts, sizes, shape))


def read_sample(key: str, arrays: Mapping[str, Any], region: Region | None, meta: Mapping[str, Any]) -> dict:
    """Read ``region`` from an image and its masks (``zarr.Array``-like, sliced with ``[...]``).

    Shared by both loaders so they yield identical dicts. When the row has ``origin`` and
    ``direction``, ``meta["affine"]`` is the region's 4×4 RAS affine with columns in the tensor's
    own axis order (z, y, x) (:func:`openmind_prep.affine.stored_affine`).

    >>> s = read_sample("k", {"image": np.arange(8.0).reshape(2, 2, 2)}, (slice(1, 2),) * 3, {})
    >>> s["image"].shape, s["image"].flatten().tolist(), s["meta"]["region"], s["anat_mask"]
    (torch.Size([1, 1, 1, 1]), [7.0], [[1, 2], [1, 2], [1, 2]], None)
    """
    shape = tuple(int(n) for n in arrays["image"].shape)
    region = clip_region(region, shape)
    sample: dict[str, Any] = {"key": key}
    for name in ARRAYS:
        array = arrays.get(name)
        sample[name] = None if array is None else torch.from_numpy(np.ascontiguousarray(array[region])[None])
    sample["meta"] = {**meta, "region": [[s.start, s.stop] for s in region], "volume_shape": list(shape)}
    if meta.get("origin") and meta.get("direction"):  # rows of stores written before lack them
        sample["meta"]["affine"] = stored_affine(meta, [s.start for s in region]).tolist()
    return sample

