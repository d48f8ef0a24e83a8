"""Hand samples to TorchIO and MONAI: tensors in NIfTI's (i, j, k) order with their RAS affine.

Our samples are ``[1, z, y, x]`` in the stored order with ``meta["affine"]`` indexed the same
way (:mod:`openmind_prep.store.affine`). TorchIO and MONAI expect ``[C, i, j, k]`` (= ``[C, x, y, z]``)
with a 4×4 RAS affine, as they get from loading a NIfTI, so the adapters permute the axes
(a view, no copy) and the affine's columns to match: a subject or a MONAI dict built from the store
has the spacing (≈1 mm), origin and direction of the source image after cropping and resampling.
Masks that an image does not have are left out (never ``None``), so MONAI's ``list_data_collate``
and TorchIO's transforms see only real images. torchio and monai are imported only inside the
functions that use them (``pip install torchio`` / ``monai``).

Usage (``ds`` a ``ZarrVolumeDataset``; docs/loaders.md "MONAI and TorchIO" runs it on a real store)::

    from loaders.adapters import to_torchio, to_monai
    subject = to_torchio(ds[0])       # tio.Subject: image (+ anon_mask / anat_mask / label LabelMaps)
    item = to_monai(ds[0])            # {"image": MetaTensor, ...masks, "key": ...}
"""

from __future__ import annotations

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


def to_torchio(sample: Mapping[str, Any], *, dtype: torch.dtype = torch.float32):
    """A ``torchio.Subject``: ``image`` (``ScalarImage``, ``dtype``) and each stored mask and label map
    as a ``LabelMap`` (absent ones are not keys), plus ``key`` and ``meta`` as plain attributes.

    >>> import torchio as tio                                   # doctest: +SKIP
    >>> to_torchio(ds[0]).image.spacing                         # doctest: +SKIP
    (1.0, 1.0, 1.0)
    """
    import torchio as tio

    affine = sample_affine(sample)
    images = {"image": tio.ScalarImage(tensor=ijk(sample["image"]).to(dtype), affine=affine)}
    for name in _LABELS:
        if sample.get(name) is not None:
            images[name] = tio.LabelMap(tensor=ijk(sample[name]), affine=affine)
    return tio.Subject(**images, key=sample["key"], meta=dict(sample["meta"]))


def to_monai(sample: Mapping[str, Any], *, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """A MONAI dictionary: ``image`` and each stored mask and label map as ``monai.data.MetaTensor``
    with the RAS ``affine`` (absent ones are not keys), plus ``key``; ready for ``monai.transforms`` ``*d``
    transforms and ``list_data_collate``.

    >>> to_monai(ds[0])["image"].affine                         # doctest: +SKIP
    """
    from monai.data import MetaTensor

    affine = torch.as_tensor(sample_affine(sample))
    meta = {"filename_or_obj": sample["key"], "space": "RAS"}
    out: dict[str, Any] = {"image": MetaTensor(ijk(sample["image"]).to(dtype), affine=affine, meta=dict(meta))}
    for name in _LABELS:
        if sample.get(name) is not None:
            out[name] = MetaTensor(ijk(sample[name]), affine=affine.clone(), meta=dict(meta))
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


def monai_dataset(dataset: Any, transform: Callable | None = None):
    """A ``monai.data.Dataset`` over a map-style dataset of samples (e.g. ``ZarrVolumeDataset``):
    item ``i`` = ``transform(to_monai(dataset[i]))``; volumes are read when an item is asked for.

    >>> ds = monai_dataset(ZarrVolumeDataset(STORE), Compose([Orientationd(["image"], "RAS")]))  # doctest: +SKIP
    """
    import monai.data

    return monai.data.Dataset(data=_Adapted(dataset, to_monai), transform=transform)


@dataclass(frozen=True)
class _StoredArray:
    """TorchIO ``reader``: a stored array folder → (``[1, i, j, k]`` tensor, RAS affine); picklable."""

    affine: tuple[tuple[float, ...], ...]

    def __call__(self, path: Any) -> tuple[Tensor, np.ndarray]:
        from openmind_prep.store.region_read import open_array

        array = np.ascontiguousarray(open_array(path)[...])
        if array.dtype == np.float16:  # images as float32, as to_torchio gives them (nibabel has no float16)
            array = array.astype(np.float32)
        return ijk(torch.from_numpy(array)[None]), np.asarray(self.affine)


def torchio_subjects(dataset: Any, transform: Callable | None = None):
    """A ``tio.SubjectsDataset`` of a :class:`~loaders.zarr_dataset.ZarrVolumeDataset`'s images, read
    lazily (TorchIO calls the reader when a subject is loaded), so ``tio.Queue`` with its patch
    samplers and ``tio.SubjectsLoader`` work as on NIfTI files. Masks the image lacks are absent.

    >>> queue = tio.Queue(torchio_subjects(ZarrVolumeDataset(STORE)), 8, 4, tio.UniformSampler(64))  # doctest: +SKIP
    """
    import torchio as tio

    from openmind_prep.store.affine import stored_affine
    from openmind_prep.store.schema import ARRAY_COLUMNS

    subjects = []
    for key, row in zip(dataset.keys, dataset.rows):
        affine = _StoredArray(tuple(map(tuple, ijk_affine(stored_affine(row)).tolist())))
        images = {"image": tio.ScalarImage(dataset.store / row["zarr_path"], reader=affine)}
        for name in _LABELS:
            wanted = getattr(dataset, "labels", True) if name == LABEL else dataset.masks
            if wanted and row.get(ARRAY_COLUMNS[name]):
                images[name] = tio.LabelMap(dataset.store / row[ARRAY_COLUMNS[name]], reader=affine)
        subjects.append(tio.Subject(**images, key=key))
    return tio.SubjectsDataset(subjects, transform=transform)


__all__ = ["ijk", "sample_affine", "to_torchio", "to_monai", "monai_dataset", "torchio_subjects"]
