"""The fine-tuning data: which images of a store are labelled, patches of them, whole volumes to score.

A ``seg`` case is an ``ok`` image with a stored ``label`` array (an nnU-Net raw dataset preprocessed
with its label maps); a ``cls`` / ``reg`` case is an image with a target value, from a CSV
(``--labels FILE --target COLUMN``) or from a column the manifest already holds. Patches are cut in
the stored ``[Z, Y, X]`` order; a volume smaller than the patch is padded (image with 0, the
z-scored background; label with 0). For ``seg`` a third of the patches are centred on a random
foreground voxel, as nnU-Net's ``oversample_foreground_percent = 0.33``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from loaders.zarr_dataset import ZarrVolumeDataset
from openmind_prep.store.schema import row_key

FOREGROUND_FRACTION = 0.33


@dataclass(frozen=True)
class Case:
    """One labelled image: its store key, manifest row and (cls / reg) target."""

    key: str
    row: dict
    target: float | None = None


def labelled_cases(store: Path, task: str, targets: dict[str, float] | None = None) -> list[Case]:
    """The store's images usable for ``task`` (manifest order); ``ValueError`` when none are."""
    from openmind_prep.store.store import Store

    rows = Store.open(store).ok_rows()
    if task == "seg":
        cases = [Case(row_key(r), r) for r in rows if r.get("label_zarr_path")]
        if not cases:
            raise ValueError(f"{store}: no image has a label map (preprocess an nnU-Net raw dataset with labelsTr/)")
        return cases
    targets = targets or {}
    cases = [Case(row_key(r), r, float(targets[row_key(r)])) for r in rows if row_key(r) in targets]
    if not cases:
        raise ValueError(f"{store}: no image has a target (check --labels / --target)")
    if task == "cls":
        values = [c.target for c in cases]
        if any(v != int(v) or v < 0 for v in values):
            raise ValueError(f"{store}: --task cls needs class indices 0, 1, … as targets")
    return cases


def label_values(cases: Sequence[Case], store: Path) -> list[int]:
    """The label values of the cases' maps, sorted, 0 (background) first: output channel i predicts the
    i-th value (a dataset may label white matter 300; the network still has 3 outputs, not 301)."""
    ds = ZarrVolumeDataset(store, [c.key for c in cases])
    values = sorted({0, *(int(v) for i in range(len(ds)) for v in np.unique(ds[i]["label"].numpy()))})
    if values[0] < 0:
        raise ValueError(f"{store}: negative label value {values[0]} (labels are 0 = background, 1, 2, …)")
    return values


def output_values(cases: Sequence[Case], store: Path, task: str) -> list[int]:
    """What each output channel predicts: the label values (seg), the class indices (cls), one number (reg)."""
    if task == "seg":
        return label_values(cases, store)
    if task == "cls":
        return list(range(int(max(c.target for c in cases)) + 1))
    return [0]


def to_indices(label: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """A label map's values as output-channel indices (``values`` from :func:`label_values`).

    >>> to_indices(np.array([0, 300, 1, 300]), [0, 1, 300]).tolist()
    [0, 2, 1, 2]
    """
    lut = np.zeros(max(values) + 1, np.int64)
    lut[list(values)] = np.arange(len(values))
    return lut[label]


def _pad(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    pad = [(0, max(0, s - n)) for n, s in zip(array.shape, size)]
    return np.pad(array, pad) if any(p[1] for p in pad) else array


def patch_start(shape: Sequence[int], size: Sequence[int], rng: np.random.Generator,
                centre: Sequence[int] | None = None) -> list[int]:
    """A patch's first voxel: uniform, or around ``centre`` (clamped into the volume).

    >>> patch_start((10, 40, 40), (16, 16, 16), np.random.default_rng(0), centre=(5, 39, 0))
    [0, 24, 0]
    """
    if centre is None:
        return [int(rng.integers(0, max(n - s, 0) + 1)) for n, s in zip(shape, size)]
    return [int(min(max(c - s // 2, 0), max(n - s, 0))) for c, n, s in zip(centre, shape, size)]


class Patches:
    """Random training patches of the cases, drawn from a seeded generator (exact replay on resume)."""

    def __init__(self, store: Path, cases: Sequence[Case], task: str, patch: Sequence[int],
                 values: Sequence[int] = (0, 1)) -> None:
        self.cases, self.task, self.patch, self.values = list(cases), task, tuple(int(p) for p in patch), list(values)
        self.ds = ZarrVolumeDataset(store, [c.key for c in self.cases])
        self._foreground: dict[int, np.ndarray] = {}

    def _fg(self, index: int) -> np.ndarray:
        if index not in self._foreground:  # up to 10k foreground voxels per case, read once
            label = self.ds[index]["label"][0].numpy()
            where = np.argwhere(label > 0)
            self._foreground[index] = where[:: max(1, len(where) // 10000)]
        return self._foreground[index]

    def batch(self, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` patches: images ``[B, 1, Z, Y, X]`` float32 and labels ``[B, Z, Y, X]`` (seg, int64) or
        targets ``[B]`` (cls int64, reg float32)."""
        images, labels = [], []
        for _ in range(size):
            index = int(rng.integers(len(self.cases)))
            shape = self.ds.shape(index)
            centre = None
            if self.task == "seg" and rng.random() < FOREGROUND_FRACTION and len(self._fg(index)):
                fg = self._fg(index)
                centre = fg[int(rng.integers(len(fg)))]
            start = patch_start(shape, self.patch, rng, centre)
            region = tuple(slice(a, a + s) for a, s in zip(start, self.patch))
            sample = self.ds.read(index, region)
            images.append(_pad(sample["image"][0].float().numpy(), self.patch))
            if self.task == "seg":
                labels.append(_pad(to_indices(sample["label"][0].numpy(), self.values), self.patch))
            else:
                labels.append(self.cases[index].target)
        x = torch.from_numpy(np.stack(images)[:, None])
        if self.task == "seg":
            return x, torch.from_numpy(np.stack(labels))
        dtype = torch.int64 if self.task == "cls" else torch.float32
        return x, torch.tensor(labels, dtype=dtype)


def whole_case(store: Path, case: Case) -> tuple[np.ndarray, np.ndarray | None]:
    """The stored image (float32 ``[Z, Y, X]``) and its label map (seg) of one case."""
    sample = ZarrVolumeDataset(store, [case.key])[0]
    label = sample.get("label")
    return sample["image"][0].float().numpy(), None if label is None else label[0].numpy()


def centre_patch(image: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """The centre ``patch`` of a volume, padded where the volume is smaller (cls / reg inference).

    >>> centre_patch(np.ones((4, 40, 40)), (8, 16, 16)).shape
    (8, 16, 16)
    """
    start = [max((n - s) // 2, 0) for n, s in zip(image.shape, patch)]
    cut = image[tuple(slice(a, a + s) for a, s in zip(start, patch))]
    return _pad(cut, patch)


def sliding_windows(shape: Sequence[int], patch: Sequence[int], step: float = 0.5) -> list[tuple[slice, ...]]:
    """Windows covering a (padded-to-patch) volume with ``step`` × patch overlap (nnU-Net's 0.5).

    >>> [w[0] for w in sliding_windows((40, 16, 16), (16, 16, 16))]
    [slice(0, 16, None), slice(8, 24, None), slice(16, 32, None), slice(24, 40, None)]
    """
    axes = []
    for n, p in zip(shape, patch):
        n = max(n, p)
        count = math.ceil((n - p) / (p * step)) + 1
        starts = [round(i * (n - p) / (count - 1)) if count > 1 else 0 for i in range(count)]
        axes.append([slice(s, s + p) for s in starts])
    return [(a, b, c) for a in axes[0] for b in axes[1] for c in axes[2]]


def gaussian_weights(patch: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """nnU-Net's importance map: a Gaussian of sigma = patch / 8 centred in the patch, scaled to max 1."""
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros(patch, np.float32)
    impulse[tuple(p // 2 for p in patch)] = 1
    g = gaussian_filter(impulse, [p * sigma_scale for p in patch], mode="constant")
    g /= g.max()
    g[g == 0] = g[g > 0].min()
    return g

