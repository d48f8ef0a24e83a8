"""nnssl's "onemmiso" preprocessing of one image: read, crop to nonzero, z-score, resample to 1 mm.

The steps and their parity target are in REFERENCE.md §2 (nnssl / nnU-Net v2): read with
SimpleITK (array in on-disk voxel order z, y, x; spacing ``abs(spacing[::-1])``; no
reorientation), crop to the box of nonzero voxels, z-score the whole box in float32, new shape
``round(spacing / target * shape)`` (half to even), cubic resampling with nnU-Net's separate-z
rule (:mod:`openmind_prep.preprocess.resample`). Masks follow the order-1 per-label path and stay uint8;
a label map (an nnU-Net raw dataset's ``labelsTr/`` file) must have its image's geometry, is cropped
with the image's box and resampled on the same path as nnU-Net v2 resamples segmentations, in the
smallest integer dtype that holds its labels (:func:`read_label`, :func:`preprocess_label`).

Bad input raises :class:`InputError` naming the file and the reason; the raw NIfTI bytes are
checked first (:mod:`openmind_prep.preprocess.nifti_check`) because SimpleITK silently zero-fills truncated
files and turns NaN/inf into 0.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import binary_fill_holes

from openmind_prep.store.schema import MASK_NAMES
from openmind_prep.preprocess.nifti_check import itk_pixels, read_voxels
from openmind_prep.core.paths import InputError
from openmind_prep.preprocess.resample import resample_image, resample_labels, resample_mask

__all__ = ["InputError", "ImageProps", "CropBox", "PreprocessedCase", "MASK_NAMES",
           "read_image", "read_mask", "read_label", "nonzero_box", "new_shape_for", "preprocess_array",
           "preprocess_mask", "preprocess_label", "preprocess_case", "to_dtype"]

# Mask name -> CSV column and file name inside `<image stem>__Data/` (the reference swaps these).


@dataclass(frozen=True)
class ImageProps:
    """What the reader records of an image: ``spacing`` and ``shape`` in array order (z, y, x);
    ``origin`` and ``direction`` (row-major 3×3) as SimpleITK reports them: physical (x, y, z), the reverse of the stored axis order."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    shape: tuple[int, int, int]


@dataclass(frozen=True)
class CropBox:
    """Half-open voxel box in array order (z, y, x): ``bounds[axis] == (start, stop)``.

    Iterating yields the ``(start, stop)`` pairs (nnU-Net's ``bbox`` layout).

    >>> box = CropBox(((1, 4), (0, 2), (2, 3)))
    >>> box.shape, [list(p) for p in box], np.zeros((5, 5, 5))[box.slices()].shape
    ((3, 2, 1), [[1, 4], [0, 2], [2, 3]], (3, 2, 1))
    """

    bounds: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in self.bounds)  # type: ignore[return-value]

    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in self.bounds)  # type: ignore[return-value]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.bounds)


@dataclass(frozen=True)
class PreprocessedCase:
    """One preprocessed image: ``image`` (z-scored, 1 mm, zyx), ``masks`` {name: uint8 array}
    for the masks that exist, its ``label`` map (integers, same shape; ``None`` without one) and the
    geometry needed to map back to the original file."""

    image: np.ndarray
    masks: dict[str, np.ndarray]
    props: ImageProps
    crop_bbox: CropBox
    shape_before_crop: tuple[int, int, int]
    new_shape: tuple[int, int, int]
    label: np.ndarray | None = None


def _read_checked(path: Path, max_bytes: int | None) -> tuple[np.ndarray, ImageProps]:
    """One pass over the file: :func:`read_voxels` decompresses and checks the voxels (SimpleITK's
    own pixel values, :func:`itk_pixels`); SimpleITK reads only the header for the geometry."""
    data, layout = read_voxels(path, max_bytes=max_bytes)
    try:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("NiftiImageIO")
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise InputError(path, f"SimpleITK cannot read it: {reason}") from None
    if reader.GetNumberOfComponents() != 1:
        raise InputError(path, "multi-component (vector/RGB) pixels, expected a scalar image")
    size = tuple(int(n) for n in reader.GetSize())
    if size[:3][::-1] != data.shape or any(n != 1 for n in size[3:]):
        raise InputError(path, f"SimpleITK sees size {size}, the header says {layout.shape}")
    dim = reader.GetDimension()
    spacing = tuple(abs(float(s)) for s in reader.GetSpacing()[:3][::-1])
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(path, f"invalid voxel spacing {spacing}")
    direction = np.asarray(reader.GetDirection(), dtype=float).reshape(dim, dim)[:3, :3]
    props = ImageProps(spacing=spacing, origin=tuple(float(o) for o in reader.GetOrigin()[:3]),
                       direction=tuple(direction.ravel().tolist()), shape=tuple(int(n) for n in data.shape))
    return itk_pixels(data, layout), props


def read_image(path: str | Path, *, max_bytes: int | None = None) -> tuple[np.ndarray, ImageProps]:
    """Read a NIfTI image as nnssl does: float32 array in on-disk order (z, y, x) and its props.

    Raises :class:`InputError` for a missing, non-NIfTI, truncated, NaN/inf, multi-volume, empty,
    badly spaced, too large (``max_bytes``, decoded float32 size) or all-zero image.

    >>> import nilearn
    >>> mni = Path(nilearn.__file__).parent / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    >>> data, props = read_image(mni)
    >>> data.dtype, props.shape, props.spacing
    (dtype('float32'), (189, 233, 197), (1.0, 1.0, 1.0))
    """
    path = Path(path)
    data, props = _read_pixels(path, max_bytes)
    data = np.asarray(data, dtype=np.float32)
    if not data.any():
        raise InputError(path, _ALL_ZERO)
    return data, props


_ALL_ZERO = "all-zero image (nothing to crop to)"


def _read_pixels(path: Path, max_bytes: int | None) -> tuple[np.ndarray, ImageProps]:
    """:func:`_read_checked`, with pixels whose nonzero voxels are those of their float32 cast: the file's
    integer / float16 / float32 values as they are (the crop box and the float32 cast of the cropped
    box only, :func:`preprocess_array`, are then what nnssl gets from the cast volume, at a fraction of
    the memory traffic); float64 is cast first (a tiny float64 value may be 0 in float32)."""
    data, props = _read_checked(path, max_bytes)
    if data.dtype.kind not in "iu" and data.dtype not in (np.float16, np.float32):
        data = np.asarray(data, dtype=np.float32)
    return data, props


def read_mask(path: str | Path, *, max_bytes: int | None = None) -> np.ndarray:
    """Read a mask file as a uint8 label volume (z, y, x); values must be integers in 0..255.

    >>> read_mask("missing_mask.nii.gz")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    openmind_prep.core.paths.InputError: missing_mask.nii.gz: file not found
    """
    path = Path(path)
    data, _ = _read_checked(path, max_bytes)
    return _integer_labels(data, path, np.uint8, "mask")


#: Label map dtypes, smallest first: the first that holds a file's labels is stored.
LABEL_STORE_DTYPES = (np.uint8, np.int16, np.int32)


def _integer_labels(data: np.ndarray, path: Path, dtype: type, what: str) -> np.ndarray:
    """``data`` as ``dtype`` when every value is an integer in its range, else :class:`InputError`."""
    if data.dtype == dtype:  # the common case: nothing to check, nothing to convert
        return data
    info = np.iinfo(dtype)
    bad = (data < info.min) | (data > info.max)
    if data.dtype.kind == "f":
        bad |= data != np.round(data)
    if bad.any():
        found = [float(v) for v in np.unique(data[bad])[:3]]  # only the offending values are sorted
        raise InputError(path, f"{what} values must be integer labels in {info.min}..{info.max}, found {found}")
    return data.astype(dtype)


def read_label(path: str | Path, *, max_bytes: int | None = None) -> tuple[np.ndarray, ImageProps]:
    """Read a label map (segmentation) in the smallest of :data:`LABEL_STORE_DTYPES` that holds its
    values, with its geometry; non-integer values or labels beyond int32 raise :class:`InputError`.

    >>> read_label("missing_label.nii.gz")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    openmind_prep.core.paths.InputError: missing_label.nii.gz: file not found
    """
    path = Path(path)
    data, props = _read_checked(path, max_bytes)
    if data.dtype.kind == "u" and data.itemsize == 1:
        return data, props
    low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    dtype = next((d for d in LABEL_STORE_DTYPES if np.iinfo(d).min <= low and high <= np.iinfo(d).max), np.int32)
    return _integer_labels(data, path, dtype, "label"), props


def preprocess_label(label: np.ndarray, label_props: ImageProps, image_props: ImageProps, crop: CropBox,
                     new_shape: tuple[int, int, int], *, inside: np.ndarray | None = None,
                     source: str | Path = "<label>", target_spacing: float = 1.0) -> np.ndarray:
    """Check a label map against its image (shape, spacing and direction must match, else
    :class:`InputError` naming ``source``), crop it with the image's box and resample it as nnU-Net v2
    resamples segmentations (:func:`~openmind_prep.preprocess.resample.resample_labels` on the image's
    spacing); the dtype is kept.

    ``inside``: the image's nonzero region inside the crop, holes filled (nnU-Net's ``crop_to_nonzero``).
    As nnU-Net, background outside it is the label -1 while resampling (so the background there and the
    background inside compete as two labels) and 0 afterwards, as nnU-Net's training reads it.

    >>> p = ImageProps((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), (6, 8, 8))
    >>> m = np.zeros((6, 8, 8), np.int16); m[2:4, 3:5, 3:5] = 300
    >>> preprocess_label(m, p, p, CropBox(((1, 5), (2, 6), (2, 6))), (8, 4, 4)).max()
    np.int16(300)
    """
    for what, mine, theirs in (("shape", label_props.shape, image_props.shape),
                               ("spacing", label_props.spacing, image_props.spacing),
                               ("direction", label_props.direction, image_props.direction)):
        if len(mine) != len(theirs) or not np.allclose(mine, theirs, rtol=1e-4, atol=1e-4):
            raise InputError(source, f"label map {what} {tuple(mine)} differs from its image's {tuple(theirs)}")
    cropped = np.ascontiguousarray(label[crop.slices()])
    if inside is not None:
        outside = (cropped == 0) & ~inside
        if outside.any():
            cropped = cropped.astype(np.int16 if cropped.dtype == np.uint8 else cropped.dtype)
            cropped[outside] = -1
    out = resample_labels(cropped, new_shape, image_props.spacing, (float(target_spacing),) * 3)
    if out.dtype != label.dtype:
        out = np.maximum(out, 0).astype(label.dtype)
    elif inside is not None:
        out[out < 0] = 0
    return out


def nonzero_box(data: np.ndarray) -> CropBox:
    """Bounding box of the nonzero voxels (equal to the box of nnU-Net's hole-filled mask).

    >>> d = np.zeros((4, 5, 6)); d[1, 2:4, 3] = 7
    >>> nonzero_box(d).bounds
    ((1, 2), (2, 4), (3, 4))
    """
    nonzero = data != 0
    plane = nonzero.any(axis=0)  # (y, x): two passes over the volume, not one per axis
    hits = (np.flatnonzero(nonzero.reshape(len(nonzero), -1).any(axis=1)),
            np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0)))
    if len(hits[0]) == 0:
        raise ValueError("all-zero volume has no nonzero box")
    bounds = [(int(hit[0]), int(hit[-1]) + 1) for hit in hits]
    return CropBox(tuple(bounds))  # type: ignore[arg-type]


def new_shape_for(shape: tuple[int, ...], spacing: tuple[float, ...], target_spacing: float = 1.0) -> tuple[int, ...]:
    """nnU-Net's target shape ``round(spacing / target * shape)`` (Python round: half to even).

    >>> new_shape_for((103, 100, 100), (1.5, 1.0, 1.0))
    (154, 100, 100)
    """
    return tuple(int(round(float(s) / float(target_spacing) * int(n))) for s, n in zip(spacing, shape))


def preprocess_array(data: np.ndarray, spacing: tuple[float, float, float],
                     target_spacing: float = 1.0, *, max_bytes: int | None = None,
                     source: str | Path = "<array>") -> tuple[np.ndarray, CropBox]:
    """Crop to nonzero, z-score (float32, whole box) and resample to ``target_spacing`` mm. ``data`` may be
    float32 or the file's integer / float16 pixels (cast to float32 after the crop); an all-zero volume
    raises :class:`InputError` naming ``source``.

    The resampled float32 volume must fit ``max_bytes`` too, and have no empty axis: an absurd
    (finite, positive) spacing such as 1e6 mm raises :class:`InputError` naming ``source``
    before anything is resampled.

    >>> d = np.zeros((6, 8, 8), np.float32); d[1:5, 2:6, 2:6] = np.arange(64).reshape(4, 4, 4)
    >>> out, box = preprocess_array(d, (2.0, 1.0, 1.0))
    >>> out.shape, box.bounds, out.dtype
    ((8, 4, 4), ((1, 5), (2, 6), (2, 6)), dtype('float32'))
    """
    try:
        box = nonzero_box(data)
    except ValueError:
        raise InputError(source, _ALL_ZERO) from None
    image = np.array(data[box.slices()], dtype=np.float32)  # an integer file: only the box is cast
    with np.errstate(over="ignore", invalid="ignore"):  # checked on the next line, not printed as warnings
        mean, std = image.mean(), image.std()
    if not (np.isfinite(mean) and np.isfinite(std)):  # e.g. scl_slope 1e30: x² overflows float32
        raise InputError(source, f"intensities too large for float32 statistics (mean {mean}, std {std}, max "
                                 f"{float(np.abs(image).max()):.3g}); check the header's scl_slope/scl_inter")
    image -= mean
    image /= max(std, 1e-8)
    target = (float(target_spacing),) * 3
    shape = new_shape_for(image.shape, spacing, target_spacing)
    voxels = int(np.prod(shape, dtype=object))
    if voxels == 0:
        raise InputError(source, f"resampled to {target_spacing} mm the volume would be empty (shape {shape}, "
                                 f"spacing {tuple(spacing)})")
    if max_bytes is not None and voxels * 4 > max_bytes:
        raise InputError(source, f"resampled to {target_spacing} mm the volume would need {voxels * 4:,} bytes "
                                 f"({voxels:,} voxels × 4, shape {shape}, spacing {tuple(spacing)}), above the "
                                 f"limit of {max_bytes:,} bytes")
    return resample_image(image, shape, spacing, target), box


def preprocess_mask(mask: np.ndarray, crop: CropBox, spacing: tuple[float, float, float],
                    new_shape: tuple[int, int, int], *, image_shape: tuple[int, ...] | None = None,
                    source: str | Path = "<mask>", target_spacing: float = 1.0) -> np.ndarray:
    """Crop a uint8 mask with the image's box and resample it (order 1 per label) to ``new_shape``.

    ``image_shape`` (the uncropped image's shape) is checked when given: a mask of another shape
    raises :class:`InputError` naming ``source``.

    >>> m = np.zeros((6, 8, 8), np.uint8); m[2:4, 3:5, 3:5] = 1
    >>> preprocess_mask(m, CropBox(((1, 5), (2, 6), (2, 6))), (2.0, 1.0, 1.0), (8, 4, 4)).shape
    (8, 4, 4)
    """
    if image_shape is not None and tuple(mask.shape) != tuple(image_shape):
        raise InputError(source, f"mask shape {tuple(mask.shape)} differs from the image's {tuple(image_shape)}")
    cropped = np.ascontiguousarray(mask[crop.slices()], dtype=np.uint8)
    return resample_mask(cropped, new_shape, spacing, (float(target_spacing),) * 3)


#: float32 values at or above this magnitude round to inf in float16 (65520 ties to even: inf)
_FLOAT16_OVERFLOW = 65520.0


#: voxels a process casts to float16 with numpy before it imports torch for the cast: numpy's wheels
#: cast without F16C (~2.3 ns a voxel on the 2-core workspace CPU, torch ~0.3 ns), torch's import costs
#: ~1.3 CPU-s, i.e. ~600 M voxels of numpy's extra cost (about 75 typical 1 mm brains). A short job never
#: imports torch; a long one pays at most twice the cheaper choice ("rent until the rent equals the price").
HALF_BY_NUMPY = 600_000_000
_half_by_numpy = 0


def _half(image: np.ndarray) -> np.ndarray:
    """``image`` (float32) as float16, round to nearest even: torch's cast where this process has
    imported torch (or has cast :data:`HALF_BY_NUMPY` voxels with numpy), numpy's before. Same bits."""
    global _half_by_numpy
    torch = sys.modules.get("torch")
    if torch is None and _half_by_numpy >= HALF_BY_NUMPY:
        import torch
    if torch is None:
        _half_by_numpy += image.size
        return image.astype(np.float16)
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(torch.float16).numpy()


def to_dtype(image: np.ndarray, dtype: type | np.dtype, *, source: str | Path = "<array>") -> np.ndarray:
    """``image`` (float32) in the stored ``dtype`` (float16 by :func:`_half`). Raises
    :class:`InputError` naming ``source`` where float16 would overflow to inf (checked on the float32
    range, so the float16 copy needs no scan).

    >>> to_dtype(np.array([1.0, 2049.0], np.float32), np.float16).tolist()
    [1.0, 2048.0]
    """
    dtype = np.dtype(dtype)
    if dtype != np.float16:
        return image.astype(dtype, copy=False)
    if image.size and max(float(image.max()), -float(image.min())) >= _FLOAT16_OVERFLOW:
        raise InputError(source, "values overflow float16 after z-scoring; use --dtype float32")
    return _half(image)


def preprocess_case(image_path: str | Path, masks: Mapping[str, str | Path | None] | None = None, *,
                    dtype: type | np.dtype = np.float16, max_bytes: int | None = None,
                    target_spacing: float = 1.0, label: str | Path | None = None) -> PreprocessedCase:
    """Preprocess one image, its masks (``anon_mask`` = deface_mask, ``anat_mask`` = fb_mask) and its
    ``label`` map (:func:`preprocess_label`).

    ``None`` mask paths mean "no mask" and are left out of ``PreprocessedCase.masks``; ``label`` None
    or "" means no label map.

    >>> import nilearn
    >>> mni = Path(nilearn.__file__).parent / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    >>> case = preprocess_case(mni, {"anat_mask": None})
    >>> case.image.dtype, case.image.shape, case.crop_bbox.bounds, sorted(case.masks)
    (dtype('float16'), (155, 181, 145), ((0, 155), (27, 208), (26, 171)), [])
    """
    image_path = Path(image_path)
    masks = dict(masks or {})
    unknown = set(masks) - set(MASK_NAMES)
    if unknown:
        raise ValueError(f"unknown mask names {sorted(unknown)}; expected {MASK_NAMES}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float16, np.float32):
        raise ValueError(f"dtype must be float16 or float32, got {dtype}")
    data, props = _read_pixels(image_path, max_bytes)  # as read_image, cast to float32 after the crop
    image, box = preprocess_array(data, props.spacing, target_spacing, max_bytes=max_bytes, source=image_path)
    out_masks = {}
    for name, mask_path in masks.items():
        if mask_path is None or str(mask_path) == "":
            continue
        mask = read_mask(mask_path, max_bytes=max_bytes)
        out_masks[name] = preprocess_mask(mask, box, props.spacing, image.shape, image_shape=data.shape,
                                          source=mask_path, target_spacing=target_spacing)
    out_label = None
    if label is not None and str(label) != "":
        label_data, label_props = read_label(label, max_bytes=max_bytes)
        inside = binary_fill_holes(data[box.slices()] != 0)  # nnU-Net's nonzero mask (the box's crop of it)
        out_label = preprocess_label(label_data, label_props, props, box, image.shape, inside=inside,
                                     source=label, target_spacing=target_spacing)
    return PreprocessedCase(image=to_dtype(image, dtype, source=image_path), masks=out_masks, props=props,
                            crop_bbox=box, shape_before_crop=props.shape,
                            new_shape=tuple(image.shape), label=out_label)  # type: ignore[arg-type]
