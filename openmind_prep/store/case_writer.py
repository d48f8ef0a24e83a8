"""Writing one image's arrays as a new Zarr v3 group: one sharded array per entry, each array's
attributes carrying the ``sha256`` of its decoded bytes. This is the inside of
:meth:`openmind_prep.store.store.Store.write_case`, which writes the group under ``STORE/_tmp/`` and
then renames it to its key (so swapping this function keeps writes atomic).

Every array is ONE shard file (zarr's sharding codec) holding inner chunks (``chunks``³), each
compressed with blosc (:data:`CODEC`), one blosc block per chunk, encoded without zarr's event loop
(:mod:`openmind_prep.store.zarr_write`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from openmind_prep.store import zarr_write
from openmind_prep.store.schema import IMAGE
from openmind_prep.store.zarr_write import array_checksum  # noqa: F401  (re-exported: the store's checksum)

#: The chunk codec (blosc): name, level, shuffle. Readers need nothing from it (blosc chunks say
#: their own codec), so changing it never invalidates a store.
CODEC = {"cname": "lz4hc", "clevel": 2, "shuffle": "shuffle",
         "dense": {"cname": "zstd", "clevel": 1, "above": 0.65}}  # chunks lz4hc leaves > 0.65x: zstd-1 if smaller
#: Masks (uint8, never in a region read): zstd-1 + bit shuffle is ~9x smaller than lz4hc on them.
MASK_CODEC = {"cname": "zstd", "clevel": 1, "shuffle": "bitshuffle"}


def write_group(folder: Path, arrays: Mapping[str, np.ndarray], attributes: Mapping[str, Any], *,
                chunks: int = 64, clevel: int = CODEC["clevel"]) -> tuple[dict[str, str], int]:
    """Write a new Zarr group at ``folder`` with one sharded array per entry of ``arrays``
    (``attributes`` on ``image``); returns each array's checksum and the bytes of every file written.
    Encoded directly (:mod:`openmind_prep.store.zarr_write`, byte-identical to zarr's own writer).

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp()) / "g"
    >>> sums, nbytes = write_group(folder, {"image": np.zeros((2, 2, 2), np.uint8)}, {})
    >>> sums["image"] == array_checksum(np.zeros((2, 2, 2), np.uint8))
    True
    >>> nbytes == sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    True
    """
    nbytes = zarr_write.write_group(folder)
    checksums = {}
    for name, data in arrays.items():
        checksums[name], written = zarr_write.write_array(
            folder / name, data, chunks=chunks, codec={**CODEC, "clevel": clevel} if name == IMAGE else MASK_CODEC,
            attributes=_jsonable(attributes) if name == IMAGE else {})
        nbytes += written
    return checksums, nbytes


def _jsonable(value: Any) -> Any:
    """Tuples / numpy scalars / arrays → plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        return value.item()
    return value
