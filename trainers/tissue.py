"""A labelled volume for probing representations: nilearn's MNI152 T1 with tissue labels.

nilearn ships (offline) the ICBM152 2009a symmetric T1 template, skull-stripped, with grey- and
white-matter probability maps on the same grid. The T1 goes through our own onemmiso path
(:func:`openmind_prep.preprocess.onemmiso.preprocess_case`: crop to nonzero, z-score, resample to the target
spacing, cast to the store's dtype), so a probe sees what training saw; the labels take the same
crop and resampling (nnU-Net's order-1-per-label path, :func:`~openmind_prep.preprocess.onemmiso.preprocess_mask`).

Label rule (per voxel of the template grid; the T1 is rescaled to [0, 1] by nilearn):

* ``background`` (0) where the T1 is below 0.01 (outside the skull-stripped brain; the T1 is set to
  exactly 0 there, so the nonzero crop is the brain's box at both resolutions);
* otherwise the argmax of (CSF, grey, white) with ``p_csf = clip(1 − p_grey − p_white, 0, 1)``:
  ``csf`` (1), ``grey`` (2), ``white`` (3).

Axes: arrays are in SimpleITK's order (z, y, x) = (inferior→superior, posterior→anterior,
left→right) for this RAS-stored template, so the **last stored axis (2) is left-right**; index
< half is the left hemisphere. Volumes larger than ``crop`` are centre-cropped to ``crop`` voxels
per axis (a 128³ crop of the 1 mm brain keeps the deep structures and most cortex; the outermost
~1-2 cm of the 145 × 181 × 155 mm brain box are cut).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASSES = ("background", "csf", "grey", "white")
LR_AXIS = 2
BRAIN_THRESHOLD = 0.01

__all__ = ["CLASSES", "LR_AXIS", "TissueVolume", "tissue_labels", "remap_contrast", "centre_crop", "mni_tissue"]


@dataclass(frozen=True)
class TissueVolume:
    """``image`` float32 ``[z, y, x]`` (z-scored as in training), ``labels`` uint8 (index into
    :data:`CLASSES`) on the same grid, the voxel ``spacing`` in mm and the crop ``box`` (zyx
    start/stop) inside the preprocessed volume."""

    image: np.ndarray
    labels: np.ndarray
    spacing: float
    box: tuple[tuple[int, int], ...]


def tissue_labels(t1: np.ndarray, grey: np.ndarray, white: np.ndarray) -> np.ndarray:
    """Background / CSF / grey / white labels (uint8) from the T1 and the two probability maps.

    >>> t1 = np.array([0.0, 0.5, 0.5, 0.5]); g = np.array([0.9, 0.1, 0.6, 0.2]); w = np.array([0, 0.1, 0.3, 0.7])
    >>> tissue_labels(t1, g, w).tolist()
    [0, 1, 2, 3]
    """
    csf = np.clip(1.0 - grey - white, 0.0, 1.0)
    tissue = 1 + np.argmax(np.stack([csf, grey, white]), axis=0)
    return np.where(t1 >= BRAIN_THRESHOLD, tissue, 0).astype(np.uint8)


def centre_crop(shape: tuple[int, ...], crop: int, multiple: int = 1) -> tuple[tuple[int, int], ...]:
    """Start/stop per axis of the centred box of edge ``min(n, crop)`` rounded down to ``multiple``.

    >>> centre_crop((155, 181, 145), 128, 16)
    ((13, 141), (26, 154), (8, 136))
    >>> centre_crop((40, 50, 60), 128, 16)
    ((4, 36), (1, 49), (6, 54))
    """
    box = []
    for n in shape:
        edge = min(n, crop)
        edge -= edge % multiple
        if edge <= 0:
            raise ValueError(f"volume {tuple(shape)} is smaller than {multiple} voxels along an axis")
        start = (n - edge) // 2
        box.append((start, start + edge))
    return tuple(box)


def remap_contrast(t1: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The same anatomy in another contrast: inside the brain ``0.05 + |t1 − median grey-matter T1|`` (grey
    matter darkest, CSF brightest, white matter between), background 0. No monotone map of the T1 gives this
    order, so a probe fitted on T1 intensities cannot transfer by intensity alone.

    >>> [round(float(v), 2) for v in remap_contrast(np.array([0.0, 0.1, 0.5, 0.8]), np.array([0, 1, 2, 3]))]
    [0.0, 0.45, 0.05, 0.35]
    """
    grey = float(np.median(t1[labels == 2])) if (labels == 2).any() else float(np.median(t1[labels > 0]))
    return np.where(labels > 0, 0.05 + np.abs(t1 - grey), 0.0).astype(np.float32)


def mni_tissue(resolution: int = 1, crop: int = 128, *, dtype: str = "float16", multiple: int = 1,
               source_resolution: int | None = None, contrast: str = "t1") -> TissueVolume:
    """The MNI152 T1 at ``resolution`` mm through onemmiso (target spacing = ``resolution``), labelled.

    ``resolution`` 2 keeps the whole brain under 128³ but gives the network 2 mm voxels, which a
    1 mm-trained model has never seen; 1 (default) is what training saw, centre-cropped.
    ``source_resolution`` (default ``resolution``) picks nilearn's template file (1 or 2 mm) resampled to
    ``resolution`` by onemmiso: the other file is another volume of the same anatomy (its own sampling,
    interpolation and crop). ``contrast="remapped"`` passes the T1 through :func:`remap_contrast` first.

    >>> v = mni_tissue(2, crop=32, multiple=16)
    >>> v.image.shape, v.labels.shape, v.image.dtype, sorted(set(v.labels.ravel().tolist())) == [0, 1, 2, 3]
    ((32, 32, 32), (32, 32, 32), dtype('float32'), True)
    """
    import nibabel as nib
    from nilearn.datasets import load_mni152_gm_template, load_mni152_template, load_mni152_wm_template

    from openmind_prep.preprocess.onemmiso import preprocess_case, preprocess_mask, read_mask

    source = resolution if source_resolution is None else source_resolution
    if resolution not in (1, 2) or source not in (1, 2):
        raise ValueError(f"resolution must be 1 or 2 mm, got {resolution} (source {source})")
    if contrast not in ("t1", "remapped"):
        raise ValueError(f"contrast must be 't1' or 'remapped', got {contrast!r}")
    t1_img = load_mni152_template(source)
    t1 = np.asarray(t1_img.get_fdata(), dtype=np.float32)
    grey = np.asarray(load_mni152_gm_template(source).get_fdata(), dtype=np.float32)
    white = np.asarray(load_mni152_wm_template(source).get_fdata(), dtype=np.float32)
    labels = tissue_labels(t1, grey, white)
    t1[labels == 0] = 0.0  # resampling to 2 mm smears small values outside the brain
    if contrast == "remapped":
        t1 = remap_contrast(t1, labels)
    with tempfile.TemporaryDirectory(prefix="mni-tissue-") as tmp:
        t1_path, label_path = Path(tmp) / "t1.nii.gz", Path(tmp) / "labels.nii.gz"
        nib.save(nib.Nifti1Image(t1, t1_img.affine), t1_path)
        nib.save(nib.Nifti1Image(labels, t1_img.affine), label_path)
        case = preprocess_case(t1_path, dtype=np.dtype(dtype), target_spacing=float(resolution))
        lab = preprocess_mask(read_mask(label_path), case.crop_bbox, case.props.spacing, case.new_shape,
                              target_spacing=float(resolution))
    box = centre_crop(case.image.shape, crop, multiple)
    sl = tuple(slice(a, b) for a, b in box)
    return TissueVolume(image=np.ascontiguousarray(case.image[sl], dtype=np.float32),
                        labels=np.ascontiguousarray(lab[sl]), spacing=float(resolution), box=box)
