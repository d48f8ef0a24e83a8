"""The arrays stored per image and the manifest columns that name them (the store's schema)."""

from __future__ import annotations

#: Mask array names, in this order everywhere: ``anon_mask`` = the defacing mask (``deface_mask.nii.gz``,
#: CSV column ``anon_mask_path``), ``anat_mask`` = the anatomy/foreground mask (``fb_mask.nii.gz``,
#: ``anat_mask_path``). nnssl swaps them on disk; we never do.
MASK_NAMES = ("anon_mask", "anat_mask")
#: The arrays stored per image and the manifest column holding each one's path in the store.
ARRAYS = ("image", *MASK_NAMES)
ARRAY_COLUMNS = {"image": "zarr_path", **{name: f"{name}_zarr_path" for name in MASK_NAMES}}


def row_key(row: dict) -> str:
    """The image (group) key of a manifest row: where its arrays live in the store, the sample key.

    >>> row_key({"zarr_path": "ds1/sub-1/anat/sub-1_T1w/image"})
    'ds1/sub-1/anat/sub-1_T1w'
    """
    return row["zarr_path"].rsplit("/", 1)[0]
