"""The direct shard encoder writes what zarr-python writes, byte for byte, and zarr reads it back.

Reference: zarr's own ``create_array(..., shards=...)`` + ``array[...] = data`` with the store's codec
(``store.CODEC``) and two other blosc settings (the writer :func:`openmind_prep.store.store.write_case` used before), on real MRI (nibabel's
``anatomical.nii``) as float16 / float32 and on masks with empty chunks, edge chunks, several labels.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec
from zarr.storage import LocalStore

from openmind_prep.store.store import CODEC, MASK_CODEC
from openmind_prep.store.zarr_write import SHARD_KEY, morton_order, write_array

ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"


def _zarr_write(folder: Path, data: np.ndarray, chunks: int, codec: dict, attributes: dict) -> None:
    inner = tuple(min(chunks, n) for n in data.shape)
    shard = tuple(-(-n // c) * c for n, c in zip(data.shape, inner))
    array = zarr.create_array(
        store=LocalStore(folder), shape=data.shape, dtype=data.dtype, chunks=inner, shards=shard,
        compressors=BloscCodec(cname=codec["cname"], clevel=codec["clevel"], shuffle=codec["shuffle"],
                               blocksize=int(np.prod(inner)) * data.itemsize),
        fill_value=0, attributes=attributes, zarr_format=3)
    array[...] = data


def _volumes() -> dict[str, np.ndarray]:
    mri = np.asarray(nib.load(ANATOMICAL).dataobj).astype(np.float32)  # 33 x 41 x 25, real MRI
    z = (mri - mri.mean()) / mri.std()
    big = np.repeat(np.repeat(z, 3, axis=0), 2, axis=1)  # 99 x 82 x 25: several edge chunks
    mask = (mri > np.percentile(mri, 60)).astype(np.uint8)
    labels = mask + (mri > np.percentile(mri, 90)).astype(np.uint8)
    sparse = np.zeros((99, 82, 25), np.uint8)
    sparse[70:, 40:, :5] = 3  # one corner: most chunks are empty and skipped
    return {"f16": big.astype(np.float16), "f32": z, "mask": mask, "labels": labels, "sparse": sparse,
            "empty": np.zeros((40, 9, 33), np.uint8)}


PLAIN = {k: v for k, v in CODEC.items() if k != "dense"}  # zarr's writer has one codec per array
CODECS = [PLAIN, {"cname": "zstd", "clevel": 5, "shuffle": "shuffle"}, MASK_CODEC]


@pytest.mark.parametrize("name", list(_volumes()))
@pytest.mark.parametrize("chunks,codec", [(64, CODECS[0]), (16, CODECS[0]), (64, CODECS[1]), (16, CODECS[2])])
def test_files_equal_zarrs_own_writer_and_read_back(tmp_path, name, chunks, codec):
    data = _volumes()[name]
    attributes = {"spacing": [2.0, 2.0, 2.2], "image_path": "ds/sub/anat/x.nii.gz"}
    checksum, nbytes = write_array(tmp_path / "ours", data, chunks=chunks, codec=codec, attributes=attributes)
    expected_checksum = "sha256:" + hashlib.sha256(data.tobytes()).hexdigest()
    assert checksum == expected_checksum
    _zarr_write(tmp_path / "zarr", data, chunks, codec, {**attributes, "checksum": expected_checksum})
    for file in ("zarr.json", SHARD_KEY):
        ours, theirs = tmp_path / "ours" / file, tmp_path / "zarr" / file
        assert ours.exists() == theirs.exists(), file
        if theirs.exists():
            assert ours.read_bytes() == theirs.read_bytes(), file
    assert nbytes == sum(f.stat().st_size for f in (tmp_path / "ours").rglob("*") if f.is_file())
    back = zarr.open_array(str(tmp_path / "ours"), mode="r")
    np.testing.assert_array_equal(back[...], data)
    assert back.dtype == data.dtype and back.attrs["checksum"] == expected_checksum


@pytest.mark.parametrize("grid", [(1, 1, 1), (2, 3, 1), (3, 2, 5), (4, 4, 4)])
def test_morton_order_interleaves_bits_axis_zero_first(grid):
    # re-typed from the Zarr sharding spec's Morton order: bit b of axis a (among axes that still
    # have bits) goes to the next output bit, axes in order, lower bits first
    bits = [(n - 1).bit_length() for n in grid]

    def code(c):
        out, k = 0, 0
        for b in range(max(bits, default=0)):
            for a in range(3):
                if b < bits[a]:
                    out |= ((c[a] >> b) & 1) << k
                    k += 1
        return out

    expected = sorted(np.ndindex(*grid), key=code)
    assert [tuple(c) for c in morton_order(grid).tolist()] == expected


@pytest.mark.parametrize("name", ["f16", "f32", "labels"])
def test_dense_chunks_take_the_smaller_of_the_two_codecs_and_zarr_reads_them(tmp_path, name):
    from numcodecs import Blosc

    data = _volumes()[name]
    dense = {"cname": "zstd", "clevel": 1, "above": 0.3}
    codec = {"cname": "lz4hc", "clevel": 2, "shuffle": "shuffle", "dense": dense}
    write_array(tmp_path / "ours", data, chunks=16, codec=codec, attributes={})
    back = zarr.open_array(str(tmp_path / "ours"), mode="r")
    np.testing.assert_array_equal(back[...], data)
    # the shard, rebuilt from the rule: lz4hc-2; above 0.3x raw, zstd-1 when that frame is smaller
    first = Blosc("lz4hc", 2, Blosc.SHUFFLE, blocksize=16 ** 3 * data.itemsize, typesize=data.itemsize)
    second = Blosc("zstd", 1, Blosc.SHUFFLE, blocksize=16 ** 3 * data.itemsize, typesize=data.itemsize)
    grid = tuple(-(-n // 16) for n in data.shape)
    frames, names = [], set()
    for coord in morton_order(grid).tolist():
        chunk = np.zeros((16, 16, 16), data.dtype)
        part = data[tuple(slice(16 * c, 16 * c + 16) for c in coord)]
        chunk[tuple(slice(0, n) for n in part.shape)] = part
        if not chunk.any():
            continue
        a = bytes(first.encode(chunk))
        b = bytes(second.encode(chunk)) if len(a) > 0.3 * chunk.nbytes else a
        frames.append(b if len(b) < len(a) else a)
        names.add("zstd" if len(b) < len(a) else "lz4hc")
    shard = (tmp_path / "ours" / SHARD_KEY).read_bytes()
    assert shard[:sum(map(len, frames))] == b"".join(frames)
    if name != "labels":  # float noise: both codecs occur in one shard
        assert names == {"zstd", "lz4hc"}
