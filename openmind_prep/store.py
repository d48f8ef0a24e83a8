"""The preprocessed Zarr v3 store: one group per image, written atomically.

Layout (``STORE`` is a Zarr v3 group on a local or shared POSIX file system)::

    STORE/zarr.json                              root group
    STORE/<image_path without .nii[.gz]>/        one group per image
        image/      float16|float32, zyx as on disk, z-scored, 1 mm
        anon_mask/  uint8 (defacing mask), only if the image has one
        anat_mask/  uint8 (foreground mask), only if the image has one
    STORE/_manifest/*.parquet                    per-batch manifest fragments
    STORE/manifest.parquet                       merged manifest (one row per input image)
    STORE/_tmp/                                  groups being written (never read)

Every array is ONE shard file (zarr's sharding codec) holding inner chunks (64³ by default),
each compressed with blosc (:data:`CODEC`: lz4hc-4 + byte shuffle, one blosc block per chunk;
every option measured in ``benchmarks/NOTES.md``: lz4hc decodes 2.5× faster than zstd-5 for
float16, encodes as fast, and stays under half of nnssl's bytes in total). A group is first written under ``STORE/_tmp/``
and then renamed to its key, so a killed run never leaves a half-written array at a final key.
Each array's attributes carry ``checksum`` = ``"sha256:<hex>"`` of its decoded C-order bytes
in the stored dtype.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from openmind_prep.atomic import write_text
from openmind_prep.manifest import MANIFEST_DIR, read_manifest  # noqa: F401  (re-exported)
from openmind_prep.metadata import MASK_NAMES, strip_nifti_suffix  # noqa: F401  (MASK_NAMES re-exported)

TMP_DIR = "_tmp"
IMAGE = "image"
DTYPES = ("float16", "float32")
#: The chunk codec (blosc): name, level, shuffle. Readers need nothing from it (blosc chunks say
#: their own codec), so changing it never invalidates a store.
CODEC = {"cname": "lz4hc", "clevel": 4, "shuffle": "shuffle"}
_GROUP_META = {"zarr_format": 3, "node_type": "group", "attributes": {}}


@dataclass(frozen=True)
class StoredCase:
    """What :func:`write_case` wrote: array paths inside the store, checksums, bytes on disk."""

    key: str
    zarr_paths: dict[str, str] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)
    nbytes: int = 0


def image_key(image_path: str) -> str:
    """The group key of an image: its path without ``.nii`` / ``.nii.gz``.

    >>> image_key("ds1/sub-1/anat/sub-1_T1w.nii.gz")
    'ds1/sub-1/anat/sub-1_T1w'
    """
    return strip_nifti_suffix(image_path)


def array_checksum(array: np.ndarray) -> str:
    """``"sha256:<hex>"`` of the array's C-order bytes (in its own dtype).

    >>> array_checksum(np.zeros(2, np.uint8))[:15]
    'sha256:96a296d2'
    """
    return "sha256:" + hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def create_store(path: Path) -> Path:
    """Create (or reuse) a store folder with its root group; returns the path.

    >>> import tempfile
    >>> p = create_store(Path(tempfile.mkdtemp()) / "store")
    >>> (p / "zarr.json").is_file() and (p / "_manifest").is_dir()
    True
    """
    path = Path(path)
    (path / MANIFEST_DIR).mkdir(parents=True, exist_ok=True)
    (path / TMP_DIR).mkdir(exist_ok=True)
    if not (path / "zarr.json").exists():
        write_text(path / "zarr.json", json.dumps(_GROUP_META))
    return path


def clear_tmp(store: Path) -> None:
    """Remove leftovers of killed writers. Only call when no other run writes to ``store``."""
    shutil.rmtree(Path(store) / TMP_DIR, ignore_errors=True)
    (Path(store) / TMP_DIR).mkdir(exist_ok=True)


def _ensure_parent_groups(store: Path, key: str) -> None:
    parent = Path(store)
    for part in key.split("/")[:-1]:
        parent = parent / part
        parent.mkdir(exist_ok=True)
        if not (parent / "zarr.json").exists():
            write_text(parent / "zarr.json", json.dumps(_GROUP_META))


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def write_case(
    store: Path,
    key: str,
    arrays: Mapping[str, np.ndarray],
    attributes: Mapping[str, Any],
    *,
    chunks: int = 64,
    clevel: int = CODEC["clevel"],
) -> StoredCase:
    """Write one image group (``image`` plus masks) atomically at ``key``; replaces an old one.

    ``arrays`` maps names (``image``, ``anon_mask``, ``anat_mask``) to arrays already in the
    dtype to store. ``attributes`` go on the ``image`` array; every array gets its checksum.

    >>> import tempfile
    >>> s = create_store(Path(tempfile.mkdtemp()) / "s")
    >>> out = write_case(s, "ds1/sub-1/a", {"image": np.ones((3, 4, 5), np.float32)}, {"x": 1})
    >>> out.zarr_paths, image_array(s, "ds1/sub-1/a/image")[:].sum()
    ({'image': 'ds1/sub-1/a/image'}, np.float32(60.0))
    """
    from openmind_prep.zarr_write import write_array, write_group

    store = Path(store)
    tmp = store / TMP_DIR / uuid.uuid4().hex
    write_group(tmp)
    checksums, paths = {}, {}
    for name, data in arrays.items():  # encoded directly, byte-identical to zarr's own writer
        checksums[name], _ = write_array(tmp / name, data, chunks=chunks, codec={**CODEC, "clevel": clevel},
                                         attributes=_jsonable(attributes) if name == IMAGE else {})
        paths[name] = f"{key}/{name}"
    _ensure_parent_groups(store, key)
    final = store / key
    if final.exists():
        old = store / TMP_DIR / f"{uuid.uuid4().hex}-old"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    return StoredCase(key=key, zarr_paths=paths, checksums=checksums, nbytes=_folder_bytes(final))


def _jsonable(value: Any) -> Any:
    """Tuples / numpy scalars / arrays → plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        return value.item()
    return value


def case_exists(store: Path, zarr_path: str) -> bool:
    """Whether the array at ``zarr_path`` (e.g. ``<key>/image``) was fully written.

    Arrays only appear at their final key after being written completely, so the array's
    metadata file existing is enough.
    """
    return bool(zarr_path) and (Path(store) / zarr_path / "zarr.json").is_file()


def open_store(path: Path):
    """Open a store read-only as a ``zarr.Group``.

    >>> import tempfile
    >>> open_store(create_store(Path(tempfile.mkdtemp()) / "s")).metadata.zarr_format
    3
    """
    import zarr

    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise FileNotFoundError(f"{path}: not an openmind-prep store (no zarr.json)")
    return zarr.open_group(str(path), mode="r")


def image_array(store: Path, zarr_path: str):
    """Open one stored array (``zarr_path`` as in the manifest) read-only as a ``zarr.Array``."""
    import zarr

    return zarr.open_array(str(Path(store) / zarr_path), mode="r")
