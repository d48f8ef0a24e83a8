"""The checks every reader of a store makes before it uses an image: ``verify``, ``shard``, ``show`` and
:class:`loaders.ZarrVolumeDataset` ask here, so a damaged image is refused the same way everywhere.

An ``ok`` manifest row is usable when (in this order, the first failure is the answer):

1. it names its image array and that array's checksum (:func:`row_problem`);
2. each array path lies inside the store, and every file under it is a regular file
   (:meth:`~openmind_prep.store.store.Store.path`: a FIFO in place of a chunk file is never opened);
3. each array path is the image's own (``<key>/<array>``, key = the image path without ``.nii[.gz]``):
   rows whose paths were swapped or edited point at another image's arrays;
4. each array's ``zarr.json`` is the store's layout and declares the manifest's ``shape``;
5. each array decodes to the manifest's checksum (:func:`check_checksums`, the store's one
   :func:`~openmind_prep.store.zarr_write.array_checksum`): a deleted chunk, a flipped byte or an edited
   ``zarr.json`` changes it.

Steps 1-4 read metadata only (:func:`open_image`); step 5 decodes every voxel. A failure raises
:class:`DamagedImage`, one line naming the array folder, the reason and the image.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from openmind_prep.store.namespace import image_key
from openmind_prep.store.schema import ARRAY_COLUMNS, ARRAYS, CHECKSUM_COLUMNS, row_key
from openmind_prep.store.store import Store, StoreError
from openmind_prep.store.zarr_write import array_checksum


class DamagedImage(StoreError):
    """An ``ok`` image that must not be used: its row or arrays differ from what the manifest promises."""


def row_problem(row: Mapping[str, Any]) -> str:
    """Why an ``ok`` row names no usable image ('' when it does): no ``zarr_path`` or ``checksum``
    (missing columns, ``None`` or empty), or a mask path without its checksum.

    >>> row_problem({"image_path": "a.nii.gz", "zarr_path": None, "checksum": "sha256:0"})
    "'ok' row a.nii.gz: no zarr_path (None); run preprocess again for it"
    """
    for name, column in ARRAY_COLUMNS.items():
        path, checksum = row.get(column), row.get(CHECKSUM_COLUMNS[name])
        if name == ARRAYS[0] and (not isinstance(path, str) or not path):
            return f"'ok' row {row.get('image_path')}: no {column} ({path!r}); run preprocess again for it"
        if path and (not isinstance(checksum, str) or not checksum):
            return (f"'ok' row {row.get('image_path')}: no {CHECKSUM_COLUMNS[name]} ({checksum!r}) for {path}; "
                    "run preprocess again for it")
    return ""


def usable_rows(rows: Iterable[Mapping[str, Any]]) -> tuple[list[dict], list[str]]:
    """The rows that pass :func:`row_problem`, and the problems of the others (one line each).

    >>> usable_rows([{"image_path": "a.nii.gz", "zarr_path": "a/image", "checksum": "sha256:0"},
    ...              {"image_path": "b.nii.gz", "zarr_path": "", "checksum": ""}])[1]
    ["'ok' row b.nii.gz: no zarr_path (''); run preprocess again for it"]
    """
    good, problems = [], []
    for row in rows:
        problem = row_problem(row)
        if problem:
            problems.append(problem)
        else:
            good.append(dict(row))
    return good, problems


def _damaged(folder: Any, reason: str, row: Mapping[str, Any]) -> DamagedImage:
    key = image_key(str(row.get("image_path")))
    return DamagedImage(f"{folder}: {reason} (image {row.get('image_path')}; to repair it, delete the folder "
                        f"{key}/ of the store and run preprocess again)")


def open_image(store: Store, row: Mapping[str, Any], names: Sequence[str] = ARRAYS) -> dict[str, Any]:
    """The arrays ``names`` of an ``ok`` row that it has (region readers,
    :class:`~openmind_prep.store.region_read.ShardedArray`), after checks 1-4 (metadata only).

    >>> import tempfile; from pathlib import Path
    >>> from openmind_prep.store.manifest import empty_row
    >>> s = Store.create(Path(tempfile.mkdtemp()) / "s")
    >>> case = s.write_case("ds/a", {"image": np.ones((2, 3, 4), np.float32)}, {})
    >>> row = {**empty_row("ds/a.nii.gz"), "status": "ok", "shape": [2, 3, 4], **case.columns()}
    >>> open_image(s, row)["image"].shape
    (2, 3, 4)
    >>> open_image(s, {**row, "shape": [4, 3, 4]})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    openmind_prep.store.integrity.DamagedImage: .../ds/a/image/zarr.json: shape (2, 3, 4), the manifest says (4, 3, 4) ...
    """
    from openmind_prep.store.region_read import open_array

    problem = row_problem(row)
    if problem:
        raise DamagedImage(f"{store.root}: {problem}")
    key, shape = image_key(str(row["image_path"])), tuple(int(n) for n in row.get("shape") or ())
    arrays = {}
    for name in names:
        path = row.get(ARRAY_COLUMNS[name])
        if not path:
            continue
        folder = store.path(path)  # confined, no FIFO or device under it (StoreError)
        if path != f"{key}/{name}":
            raise _damaged(folder, f"the manifest row's {ARRAY_COLUMNS[name]} is {path!r}, not this image's "
                                   f"{key}/{name} (rows swapped or edited)", row)
        if not (folder / "zarr.json").is_file():
            raise _damaged(folder, "missing (its manifest row is ok)", row)
        try:
            array = open_array(folder)
        except ValueError as err:
            raise _damaged(folder, f"cannot be opened ({err})", row) from None
        if shape and tuple(array.shape) != shape:
            raise _damaged(folder / "zarr.json", f"shape {tuple(array.shape)}, the manifest says {shape}", row)
        arrays[name] = array
    return arrays


def check_checksums(store: Store, row: Mapping[str, Any], arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Decode each of ``arrays`` (from :func:`open_image`) whole and compare it with the row's checksum
    (check 5); returns the decoded arrays (a caller may cut its region from them)."""
    decoded = {}
    for name, array in arrays.items():
        folder = store.root / row[ARRAY_COLUMNS[name]]
        try:
            values = array[...]
        except ValueError as err:  # a truncated shard, a damaged chunk or index
            raise _damaged(folder, f"cannot be decoded ({err})", row) from None
        actual, expected = array_checksum(values), row.get(CHECKSUM_COLUMNS[name])
        if actual != expected:
            raise _damaged(folder, f"checksum {actual} != manifest {expected}", row)
        decoded[name] = values
    return decoded


def read_verified(store: Store, row: Mapping[str, Any], names: Sequence[str] = ARRAYS) -> dict[str, np.ndarray]:
    """All checks (1-5) on an ``ok`` row; its arrays ``names`` decoded whole. :class:`DamagedImage` (or
    :class:`~openmind_prep.store.store.StoreError` for a path out of the store) on the first failure."""
    return check_checksums(store, row, open_image(store, row, names))


def content_digest(images: Iterable[tuple[str, Mapping[str, str]]]) -> str:
    """The identity of a set of images: sha256 over their keys and array checksums (``(key, {array:
    checksum})`` pairs, any order). A store's (:func:`store_digest`) equals its shards' index's exactly
    when the shards hold the store's current images, so shards of another store, or of images changed
    since, are told apart.

    >>> content_digest([("a", {"image": "sha256:1"})]) == content_digest([("a", {"image": "sha256:2"})])
    False
    """
    lines = sorted("\t".join([key, *(f"{name}={sums[name]}" for name in sorted(sums))]) for key, sums in images)
    return "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()


def store_digest(rows: Iterable[Mapping[str, Any]]) -> str:
    """:func:`content_digest` of a store's ``ok`` rows.

    >>> row = {"zarr_path": "a/image", "checksum": "sha256:1"}
    >>> store_digest([row]) == content_digest([("a", {"image": "sha256:1"})])
    True
    """
    return content_digest((row_key(r), checksums(r)) for r in rows)


def checksums(row: Mapping[str, Any]) -> dict[str, str]:
    """``{array name: checksum}`` of the arrays an ``ok`` row has.

    >>> checksums({"zarr_path": "a/image", "checksum": "sha256:1", "anat_mask_zarr_path": ""})
    {'image': 'sha256:1'}
    """
    return {name: str(row.get(CHECKSUM_COLUMNS[name])) for name, column in ARRAY_COLUMNS.items() if row.get(column)}
