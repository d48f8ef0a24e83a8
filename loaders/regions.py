"""Regions of a stored volume (tuples of slices in the stored axis order, axis 0/1/2 = z/y/x) and
the one sample reader both loaders use, so the Zarr dataset and the WebDataset stream yield
identical dicts. Regions are boxes clamped to the volume by
:func:`openmind_prep.store.region_read.normalize_region` (``box=True``), the reader's one clipping."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from openmind_prep.store.affine import stored_affine
from openmind_prep.store.schema import ARRAYS
from openmind_prep.store.region_read import normalize_region

Region = tuple[slice, ...]


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
    """Read ``region`` (``None``: all) from an image and its masks (arrays sliced with ``[...]``).

    Shared by both loaders so they yield identical dicts. When the row has ``origin`` and
    ``direction``, ``meta["affine"]`` is the region's 4×4 RAS affine with columns in the tensor's
    own axis order (z, y, x) (:func:`openmind_prep.store.affine.stored_affine`).

    >>> s = read_sample("k", {"image": np.arange(8.0).reshape(2, 2, 2)}, (slice(1, 2),) * 3, {})
    >>> s["image"].shape, s["image"].flatten().tolist(), s["meta"]["region"], s["anat_mask"]
    (torch.Size([1, 1, 1, 1]), [7.0], [[1, 2], [1, 2], [1, 2]], None)
    """
    shape = tuple(int(n) for n in arrays["image"].shape)
    region = normalize_region(region, shape, box=True)
    sample: dict[str, Any] = {"key": key}
    for name in ARRAYS:
        array = arrays.get(name)
        sample[name] = None if array is None else torch.from_numpy(np.ascontiguousarray(array[region])[None])
    sample["meta"] = {**meta, "region": [[s.start, s.stop] for s in region], "volume_shape": list(shape)}
    if meta.get("origin") and meta.get("direction"):  # rows of stores written before lack them
        sample["meta"]["affine"] = stored_affine(meta, [s.start for s in region]).tolist()
    return sample

