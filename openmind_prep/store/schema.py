"""The store's schema in one place: the arrays stored per image and every column of
``manifest.parquet`` (each array's path and checksum columns are derived from :data:`ARRAYS`, so an
array added here gets both, in the manifest, in :meth:`~openmind_prep.store.store.Store.is_done`,
in ``verify``, in the shards and in the loaders).

Adding a column or an array keeps old stores readable: a row read from a manifest written before
the column existed gets the column's empty value (:func:`complete_row`).
"""

from __future__ import annotations

import functools
from typing import Any

#: Mask array names, in this order everywhere: ``anon_mask`` = the defacing mask (``deface_mask.nii.gz``,
#: CSV column ``anon_mask_path``), ``anat_mask`` = the anatomy/foreground mask (``fb_mask.nii.gz``,
#: ``anat_mask_path``). nnssl swaps them on disk; we never do.
MASK_NAMES = ("anon_mask", "anat_mask")
IMAGE = "image"
#: A label map (segmentation) resampled as nnU-Net resamples segmentations, stored in the smallest
#: integer dtype that holds its labels; only for images whose source has one.
LABEL = "label"
#: The arrays stored per image; every one but ``image`` is optional.
ARRAYS = (IMAGE, *MASK_NAMES, LABEL)
#: The manifest column holding each array's path in the store ("" when the image lacks it).
ARRAY_COLUMNS = {name: "zarr_path" if name == IMAGE else f"{name}_zarr_path" for name in ARRAYS}
#: The manifest column holding each array's checksum (``sha256:<hex>`` of its decoded bytes).
CHECKSUM_COLUMNS = {name: "checksum" if name == IMAGE else f"{name}_checksum" for name in ARRAYS}

#: Every manifest column in order: (name, kind, meaning). Kinds: ``str``, ``int``, ``float``
#: (``None`` when unknown), ``ints`` / ``floats`` (lists), ``boxes`` (list of [start, stop]).
#: Shapes/spacings are zyx (on-disk order).
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("image_path", "str", "as in the source, relative to its root (OpenMind/ for the OpenMind tree)"),
    ("status", "str", '"ok" | "failed"'),
    ("error", "str", 'reason when failed, else ""'),
    *((ARRAY_COLUMNS[name], "str", f'the {name} array inside the store, <key>/{name}; "" when absent')
      for name in ARRAYS),
    ("shape", "ints", "stored (cropped, resampled) shape"),
    ("spacing", "floats", "original spacing in mm"),
    ("crop_bbox", "boxes", "[[z0, z1], [y0, y1], [x0, x1]], half-open, original voxels"),
    ("origin", "floats", "SimpleITK's origin of the original image (LPS, x-y-z, mm)"),
    ("direction", "floats", "SimpleITK's direction (row-major 3x3, LPS); see affine.py"),
    ("modality", "str", ""),
    ("dataset", "str", ""),
    ("subject", "str", ""),
    ("session", "str", ""),
    ("image_quality_score", "float", ""),
    *((CHECKSUM_COLUMNS[name], "str", f"sha256:<hex> of the {name} array's decoded bytes") for name in ARRAYS),
    ("dtype", "str", "the image's stored dtype"),
    ("bytes", "int", "bytes on disk of the image's group (all arrays)"),
    ("seconds", "float", "wall time spent on this image"),
    ("metadata", "str", "the source's other columns for this image (age, sex, ...) as a JSON object"),
)
#: Columns that depend on the run, not on the data (ignored when comparing two stores).
RUN_COLUMNS = ("seconds",)

_EMPTY = {"str": "", "int": 0, "float": None, "ints": [], "floats": [], "boxes": []}


def empty_row(image_path: str) -> dict:
    """A ``failed`` row with every column at its empty value.

    >>> empty_row("a.nii.gz")["status"], empty_row("a.nii.gz")["shape"], empty_row("a.nii.gz")["label_zarr_path"]
    ('failed', [], '')
    """
    row = {name: list(_EMPTY[kind]) if isinstance(_EMPTY[kind], list) else _EMPTY[kind]
           for name, kind, _ in COLUMNS}
    row.update(image_path=image_path, status="failed", seconds=0.0)
    return row


def complete_row(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with the columns it lacks (a manifest written before they existed) at their empty value.

    >>> complete_row({"image_path": "a.nii.gz", "status": "ok"})["label_checksum"]
    ''
    """
    missing = [name for name, _, _ in COLUMNS if name not in row]
    if not missing:
        return row
    empty = empty_row(row.get("image_path", ""))
    return {**row, **{name: empty[name] for name in missing}}


@functools.lru_cache(maxsize=1)
def arrow_schema():
    """The manifest's ``pyarrow`` schema (pyarrow imported here: this module stays light).

    >>> arrow_schema().field("crop_bbox").type
    ListType(list<item: list<item: int64>>)
    """
    import pyarrow as pa

    types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "ints": pa.list_(pa.int64()),
             "floats": pa.list_(pa.float64()), "boxes": pa.list_(pa.list_(pa.int64()))}
    return pa.schema([(name, types[kind]) for name, kind, _ in COLUMNS])


def row_key(row: dict) -> str:
    """The image (group) key of a manifest row: where its arrays live in the store, the sample key.

    >>> row_key({"zarr_path": "ds1/sub-1/anat/sub-1_T1w/image"})
    'ds1/sub-1/anat/sub-1_T1w'
    """
    return row["zarr_path"].rsplit("/", 1)[0]
