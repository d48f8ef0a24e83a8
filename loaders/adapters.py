"""Hand samples to TorchIO and MONAI: tensors in NIfTI's (i, j, k) order with their RAS affine.

Our samples are ``[1, z, y, x]`` in the stored order with ``meta["affine"]`` indexed the same
way (:mod:`openmind_prep.store.affine`). TorchIO and MONAI expect ``[C, i, j, k]`` (= ``[C, x, y, z]``)
with a 4×4 RAS affine, as they get from loading a NIfTI, so the adapters permute the axes
(a view, no copy) and the affine's columns to match: a subject or a MONAI dict built from the store
has the spacing (≈1 mm), origin and direction of the source image after cropping and resampling.
Masks that an image does not have are left out (never ``None``), so MONAI's ``list_data_collate``
and TorchIO's transforms see only real images. torchio and monai are imported only inside the
functions that use them (``pip install torchio`` / ``monai``).

Volumes smaller than a patch: with ``min_shape`` (an edge or an ``(i, j, k)`` triple, e.g. the patch
size), each axis shorter than it is padded on both sides (image: its minimum, the z-scored
background; masks: 0) and the affine shifted to match, so TorchIO's patch samplers and a MONAI
random crop always get whole patches (a 50-voxel-thin volume with 64³ patches, for instance).

Usage (``ds`` a ``ZarrVolumeDataset``; docs/loaders.md "MONAI and TorchIO" runs it on a real store)::

    from loaders.adapters import to_torchio, to_monai
    subject = to_torchio(ds[0])       # tio.Subject: image (+ anon_mask / anat_mask / label LabelMaps)
    item = to_monai(ds[0])            # {"image": MetaTensor, ...masks, "key": ...}
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from openmind_prep.store.affine import ijk_affine
from openmind_prep.store.schema import LABEL, MASK_NAMES

#: The label volumes handed over as TorchIO ``LabelMap`` / MONAI label tensors.
_LABELS = (*MASK_NAMES, LABEL)


def ijk(tensor: Tensor) -> Tensor:
    """``[C, z, y, x]`` → ``[C, x, y, z]`` = ``[C, i, j, k]`` (a permuted view).

    >>> ijk(torch.zeros(1, 2, 3, 4)).shape
    torch.Size([1, 4, 3, 2])
    """
    return tensor.permute(0, 3, 2, 1)


def sample_affine(sample: Mapping[str, Any]) -> np.ndarray:
    """The sample's 4×4 RAS affine for the (i, j, k) order of :func:`ijk`; a clear error without one.

    >>> sample_affine({"key": "k", "meta": {"affine": np.diag([1.0, 2.0, 3.0, 1.0]).tolist()}})[:3, :3].tolist()
    [[0.0, 0.0, 1.0], [0.0, 2.0, 0.0], [3.0, 0.0, 0.0]]
    """
    affine = sample.get("meta", {}).get("affine")
    if affine is None:
        raise ValueError(f"sample {sample.get('key')!r} has no meta['affine']: its store's manifest lacks "
                         "origin/direction (written before they were recorded); re-run preprocess")
    return ijk_affine(np.asarray(affine, dtype=np.float64))


MinShape = int | tuple[int, int, int] | None


def pad_to(tensor: Tensor, affine: np.ndarray, min_shape: MinShape, value: float | None = None
           ) -> tuple[Tensor, np.ndarray]:
    """``[C, i, j, k]`` padded to at least ``min_shape`` per axis (half before, half after; ``value``,
    default the tensor's minimum) and its affine moved so every voxel keeps its world position.

    >>> t, a = pad_to(torch.ones(1, 4, 8, 8), np.eye(4), 6, value=0.0)
    >>> tuple(t.shape), a[:3, 3].tolist(), float(t[0, 0].sum()), float(t[0, 1].sum())
    ((1, 6, 8, 8), [-1.0, 0.0, 0.0], 0.0, 64.0)
    """
    if min_shape is None:
        return tensor, affine
    wanted = (min_shape,) * 3 if isinstance(min_shape, int) else tuple(min_shape)
    need = [max(0, w - n) for w, n in zip(wanted, tensor.shape[1:])]
    if not any(need):
        return tensor, affine
    before = np.array([n // 2 for n in need], dtype=np.float64)
    pads = [p for n in reversed(need) for p in (n // 2, n - n // 2)]  # F.pad: last axis first
    fill = float(tensor.min()) if value is None else value
    affine = np.array(affine, dtype=np.float64)
    affine[:3, 3] -= affine[:3, :3] @ before
    return torch.nn.functional.pad(tensor, pads, value=fill), affine


def to_torchio(sample: Mapping[str, Any], *, dtype: torch.dtype = torch.float32, min_shape: MinShape = None):
    """A ``torchio.Subject``: ``image`` (``ScalarImage``, ``dtype``) and each stored mask and label map
    as a ``LabelMap`` (absent ones are not keys), plus ``key`` and ``meta`` as plain attributes;
    padded to ``min_shape`` (see :func:`pad_to`).

    >>> import torchio as tio                                   # doctest: +SKIP
    >>> to_torchio(ds[0]).image.spacing                         # doctest: +SKIP
    (1.0, 1.0, 1.0)
    """
    import torchio as tio

    stored = sample_affine(sample)
    image, affine = pad_to(ijk(sample["image"]).to(dtype), stored, min_shape)
    images = {"image": tio.ScalarImage(tensor=image, affine=affine)}
    for name in _LABELS:
        if sample.get(name) is not None:
            images[name] = tio.LabelMap(tensor=pad_to(ijk(sample[name]), stored, min_shape, 0)[0], affine=affine)
    return tio.Subject(**images, key=sample["key"], meta=dict(sample["meta"]))


def to_monai(sample: Mapping[str, Any], *, dtype: torch.dtype = torch.float32,
             min_shape: MinShape = None) -> dict[str, Any]:
    """A MONAI dictionary: ``image`` and each stored mask and label map as ``monai.data.MetaTensor``
    with the RAS ``affine`` (absent ones are not keys), plus ``key``; ready for ``monai.transforms`` ``*d``
    transforms and ``list_data_collate``; padded to ``min_shape`` (see :func:`pad_to`).

    >>> to_monai(ds[0])["image"].affine                         # doctest: +SKIP
    """
    from monai.data import MetaTensor

    stored = sample_affine(sample)
    image, padded = pad_to(ijk(sample["image"]).to(dtype), stored, min_shape)
    affine = torch.as_tensor(padded)
    meta = {"filename_or_obj": sample["key"], "space": "RAS"}
    out: dict[str, Any] = {"image": MetaTensor(image, affine=affine, meta=dict(meta))}
    for name in _LABELS:
        if sample.get(name) is not None:
            mask = pad_to(ijk(sample[name]), stored, min_shape, 0)[0]
            out[name] = MetaTensor(mask, affine=affine.clone(), meta=dict(meta))
    out["key"] = sample["key"]
    return out


class _Adapted(torch.utils.data.Dataset):
    """``adapt(dataset[i])`` for every ``i``: the sequence ``monai.data.Dataset`` indexes."""

    def __init__(self, dataset: Any, adapt: Callable[[Mapping[str, Any]], Any]) -> None:
        self.dataset, self.adapt = dataset, adapt

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self.adapt(self.dataset[index])


def monai_dataset(dataset: Any, transform: Callable | None = None, *, min_shape: MinShape = None):
    """A ``monai.data.Dataset`` over a map-style dataset of samples (e.g. ``ZarrVolumeDataset``):
    item ``i`` = ``transform(to_monai(dataset[i], min_shape=min_shape))``; volumes are read when an
    item is asked for. Pass the crop size as ``min_shape`` so thin volumes still give whole crops.

    >>> ds = monai_dataset(ZarrVolumeDataset(STORE), Compose([Orientationd(["image"], "RAS")]))  # doctest: +SKIP
    """
    import monai.data

    return monai.data.Dataset(data=_Adapted(dataset, functools.partial(to_monai, min_shape=min_shape)),
                              transform=transform)


@dataclass(frozen=True)
class _StoredArray:
    """TorchIO ``reader``: a stored array folder → (``[1, i, j, k]`` tensor, RAS affine), padded to
    ``min_shape`` (masks with 0); picklable."""

    affine: tuple[tuple[float, ...], ...]
    min_shape: MinShape = None
    label: bool = False

    def __call__(self, path: Any) -> tuple[Tensor, np.ndarray]:
        from openmind_prep.store.region_read import open_array

        array = np.ascontiguousarray(open_array(path)[...])
        if array.dtype == np.float16:  # images as float32, as to_torchio gives them (nibabel has no float16)
            array = array.astype(np.float32)
        return pad_to(ijk(torch.from_numpy(array)[None]), np.asarray(self.affine), self.min_shape,
                      0 if self.label else None)


def torchio_subjects(dataset: Any, transform: Callable | None = None, *, min_shape: MinShape = None):
    """A ``tio.SubjectsDataset`` of a :class:`~loaders.zarr_dataset.ZarrVolumeDataset`'s images, read
    lazily (TorchIO calls the reader when a subject is loaded), so ``tio.Queue`` with its patch
    samplers and ``tio.SubjectsLoader`` work as on NIfTI files. Masks the image lacks are absent.
    Pass the patch size as ``min_shape`` so volumes thinner than a patch are padded, not refused.

    >>> queue = tio.Queue(torchio_subjects(ZarrVolumeDataset(STORE)), 8, 4, tio.UniformSampler(64))  # doctest: +SKIP
    """
    import torchio as tio

    from openmind_prep.store.affine import stored_affine
    from openmind_prep.store.schema import ARRAY_COLUMNS

    subjects = []
    for key, row in zip(dataset.keys, dataset.rows):
        affine = tuple(map(tuple, ijk_affine(stored_affine(row)).tolist()))
        images = {"image": tio.ScalarImage(dataset.store / row["zarr_path"], reader=_StoredArray(affine, min_shape))}
        for name in _LABELS:
            wanted = getattr(dataset, "labels", True) if name == LABEL else dataset.masks
            if wanted and row.get(ARRAY_COLUMNS[name]):
                images[name] = tio.LabelMap(dataset.store / row[ARRAY_COLUMNS[name]],
                                            reader=_StoredArray(affine, min_shape, label=True))
        subjects.append(tio.Subject(**images, key=key))
    return tio.SubjectsDataset(subjects, transform=transform)


__all__ = ["ijk", "pad_to", "sample_affine", "to_torchio", "to_monai", "monai_dataset", "torchio_subjects"]
