"""The one region reader (openmind_prep.store.region_read) against zarr's own read, on real MRI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

import openmind_prep.store.region_read as rr
from _store_builder import real_volumes
from openmind_prep.shards.zshard import decode_array, encode_array
from openmind_prep.store.store import Store


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A few real volumes written by the store writer (small chunks: many chunks, edge chunks)."""
    store = Store.create(tmp_path_factory.mktemp("rr") / "s").root
    vols = real_volumes()
    arrays = {"f16": vols["mni_half"].astype(np.float16), "f32": vols["aniso"],
              "mask": (vols["mni_third"] > 0.3).astype(np.uint8)}
    for name, data in arrays.items():
        Store(store).write_case(name, {"image": data}, {}, chunks=24)
    return store, arrays


def _regions(shape, rng, n=12):
    out = [(Ellipsis,), (slice(0, 1),) * 3, tuple(slice(n - 1, n) for n in shape)]
    for _ in range(n):
        lo = [int(rng.integers(-5, s)) for s in shape]
        out.append(tuple(slice(a, a + int(rng.integers(0, s + 10))) for a, s in zip(lo, shape)))
    return out


@pytest.mark.parametrize("name", ["f16", "f32", "mask"])
def test_folder_and_blob_reads_equal_zarr(stored, name):
    store, arrays = stored
    folder = store / name / "image"
    ours, blob, ref = rr.open_array(folder), decode_array(encode_array(folder)), zarr.open_array(str(folder), mode="r")
    assert ours.shape == ref.shape and ours.dtype == ref.dtype == blob.dtype
    rng = np.random.default_rng(0)
    for region in _regions(ref.shape, rng):
        # slices starting below 0 mean "from the end" in NumPy/zarr; keep both sides on the same meaning
        expected = ref[region]
        np.testing.assert_array_equal(ours[region], expected, err_msg=str(region))
        np.testing.assert_array_equal(blob[region], expected, err_msg=str(region))
    np.testing.assert_array_equal(ours[...], arrays[name])  # and the values that were written
    assert ours[3, 2:5, -1].tolist() == ref[3, 2:5, -1].tolist()


@pytest.mark.parametrize("source", ["folder", "blob"])
def test_a_region_decodes_only_its_chunks(stored, monkeypatch, source):
    store, arrays = stored
    folder = store / "f16" / "image"  # (95, 117, 99) in 24³ chunks: 4 x 5 x 5
    arr = rr.open_array(folder) if source == "folder" else decode_array(encode_array(folder))
    decoded = []
    real = rr._decompress
    monkeypatch.setattr(rr, "_decompress", lambda d, dest, what: (decoded.append(what), real(d, dest, what)))
    region = (slice(30, 50), slice(0, 24), slice(47, 49))
    np.testing.assert_array_equal(arr[region], arrays["f16"][region])
    got = sorted(tuple(json.loads("[" + w.rsplit("chunk (", 1)[1].rstrip(")") + "]")) for w in decoded)
    assert got == [(1, 0, 1), (1, 0, 2), (2, 0, 1), (2, 0, 2)]  # z 24-47 & 48-71, y 0-23, x 24-47 & 48-71
    assert rr.chunks_in(arr.layout, rr.normalize_region(region, arr.shape)) == got


def test_missing_chunks_and_shards_read_as_fill_value(tmp_path):
    data = np.zeros((40, 30, 20), np.float32)
    data[:10, :10, :10] = np.arange(1000, dtype=np.float32).reshape(10, 10, 10) + 1  # other chunks stay empty
    arr = zarr.create_array(str(tmp_path / "a"), shape=data.shape, dtype=data.dtype, chunks=(8, 8, 8),
                            shards=(16, 16, 16), fill_value=-1.5,
                            compressors=BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"))
    arr[:10, :10, :10] = data[:10, :10, :10]  # later shards are never written: no files at all
    ref = arr[...]
    assert (ref == -1.5).sum() > 0 and len(list((tmp_path / "a" / "c").rglob("*"))) < 10
    np.testing.assert_array_equal(rr.open_array(tmp_path / "a")[...], ref)
    np.testing.assert_array_equal(rr.open_array(tmp_path / "a")[5:33, 2:29, 1:19], ref[5:33, 2:29, 1:19])


@pytest.mark.parametrize("shuffle", ["bitshuffle", "noshuffle"])
def test_other_blosc_settings_of_older_stores_read_the_same(tmp_path, shuffle):
    data = real_volumes()["anat"][:40].astype(np.float16)
    arr = zarr.create_array(str(tmp_path / "a"), shape=data.shape, dtype=data.dtype, chunks=(16, 16, 16),
                            shards=tuple(-(-n // 16) * 16 for n in data.shape),
                            compressors=BloscCodec(cname="lz4", clevel=5, shuffle=shuffle))
    arr[...] = data
    np.testing.assert_array_equal(rr.open_array(tmp_path / "a")[...], data)


def test_unsupported_layouts_and_damage_are_named(tmp_path, stored):
    store, _ = stored
    plain = zarr.create_array(str(tmp_path / "plain"), shape=(4, 4), dtype="f4", chunks=(2, 2))
    plain[...] = 1
    with pytest.raises(ValueError, match=r"plain: unsupported Zarr array layout \(codecs"):
        rr.open_array(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="no zarr.json"):
        rr.open_array(tmp_path / "nothing")
    blob = bytearray(encode_array(store / "f16" / "image"))
    blob[-10] ^= 0xFF  # inside the shard index: crc32c catches it
    with pytest.raises(ValueError, match="x.tar:k.image.zshard: shard"):
        decode_array(bytes(blob), "x.tar:k.image.zshard")[...]
    blob = bytearray(encode_array(store / "f16" / "image"))
    header = 16 + int.from_bytes(blob[8:16], "little") + len((store / "f16/image/zarr.json").read_bytes())
    blob[header:header + 16] = b"\0" * 16  # the first chunk's blosc header
    with pytest.raises(ValueError, match=r"k: chunk \(0, 0, 0\)"):
        decode_array(bytes(blob), "k")[:2, :2, :2]


def test_reads_leave_blosc_threading_as_it_was(stored):
    import numcodecs.blosc

    store, _ = stored
    before = numcodecs.blosc.use_threads
    rr.open_array(store / "f32" / "image")[...]
    assert numcodecs.blosc.use_threads is before
