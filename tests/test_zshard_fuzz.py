"""Hostile zshard blobs and tar members (issue 13): fuzzed headers, size bombs, escaping names.

Contract: :func:`openmind_prep.shards.zshard.decode_array` on any bytes either raises ``ValueError``
naming the blob, or returns an array whose declared size is in proportion to the blob
(``FREE_BYTES`` / ``MAX_EXPANSION``) and whose reads give that shape or a named ``ValueError``;
never another exception, never an allocation beyond that bound. The stream refuses shards with
absolute or ``..`` member names, naming the shard. ``max_examples`` is bounded (seconds).
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from loaders.webdataset_stream import CorruptShardError, WebDatasetStream
from openmind_prep.store.store import Store
from openmind_prep.shards.zshard import FREE_BYTES, MAX_EXPANSION, MAGIC, decode_array, encode_array, tar_key

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
NAME = "x.tar:k.image.zshard"


def _real_blob(tmp: Path) -> bytes:
    """A real stored array (nibabel's anatomical MRI, float16, 16³ chunks) as a zshard blob."""
    import nibabel as nib

    data = np.asarray(nib.load(Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii").dataobj)
    store = Store.create(tmp / "s").root
    Store(store).write_case("a", {"image": data.T.astype(np.float16)}, {}, chunks=16)
    return encode_array(store / "a" / "image")


@pytest.fixture(scope="module")
def blob(tmp_path_factory) -> bytes:
    return _real_blob(tmp_path_factory.mktemp("zshard"))


def _parts(blob: bytes) -> tuple[list, dict, list[bytes]]:
    (n,) = struct.unpack("<Q", blob[8:16])
    files = json.loads(blob[16:16 + n])["files"]
    out, start = [], 16 + n
    for _, size in files:
        out.append(blob[start:start + size])
        start += size
    return files, json.loads(out[0]), out


def _assemble(files: list, payloads: list[bytes], header_n: int | None = None) -> bytes:
    header = json.dumps({"files": files}).encode()
    return MAGIC + struct.pack("<Q", len(header) if header_n is None else header_n) + header + b"".join(payloads)


def _check_contract(blob: bytes) -> str:
    """Decode and read ``blob`` under tracemalloc; assert the contract; return what happened."""
    tracemalloc.start()
    try:
        try:
            arr = decode_array(blob, NAME)
        except ValueError as err:
            assert NAME in str(err), err
            return "refused: " + str(err).split(NAME, 1)[1][:40]
        declared = int(np.prod(arr.shape, dtype=object)) * arr.dtype.itemsize
        assert declared <= max(FREE_BYTES, MAX_EXPANSION * len(blob))
        if declared > 64 * 2**20:
            return "accepted, not read (large but in proportion)"
        try:
            out = arr[...]
        except ValueError as err:
            assert NAME in str(err), err
            return "read refused: " + str(err).split(NAME, 1)[1][:30]
        assert out.shape == arr.shape and out.dtype == arr.dtype
        return "read"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 80 * 2**20 + 4 * len(blob), f"peak {peak} bytes for a {len(blob)}-byte blob"


_NAMES = ["zarr.json", "c/0/0/0", "../x", "/etc/passwd", "", "c//0", "c/./0", 5, None, ["a"]]
_SIZES = [-1, 0, 1, 2**31, 2**64 - 1, 10**30, "7", 1.5]


@FUZZ
@given(data=st.data())
def test_fuzzed_zshard_headers_are_refused_by_name_or_read_within_bounds(blob, data):
    files, meta, payloads = _parts(blob)
    choice = data.draw(st.sampled_from(["header_n", "file_entry", "meta", "flip", "cut", "files_type"]))
    if choice == "header_n":
        out = _assemble(files, payloads, data.draw(st.sampled_from([0, 1, 2**32, 2**64 - 1, len(blob)])))
    elif choice == "file_entry":
        i = data.draw(st.integers(0, len(files) - 1))
        files = [list(f) for f in files]
        field = data.draw(st.integers(0, 1))
        files[i][field] = data.draw(st.sampled_from(_NAMES if field == 0 else _SIZES))
        out = _assemble(files, payloads)
    elif choice == "files_type":
        files = data.draw(st.sampled_from([None, 3, "zarr.json", [[1]], [["zarr.json"]], {"a": 1}]))
        out = _assemble(files, payloads)
    elif choice == "meta":
        grid, sharding = meta["chunk_grid"]["configuration"], meta["codecs"][0]["configuration"]
        field = data.draw(st.sampled_from(["shape", "shard", "chunk", "data_type", "fill_value", "codecs"]))
        value = data.draw(st.sampled_from({
            "shape": [[1000, 1000, 1000], [0, 0, 0], [-1, 5, 5], [2**40, 1, 1], ["a", 1, 1], [5, 5], None],
            "shard": [[1, 1, 1], [0, 16, 16], [2**20] * 3, [16, 16]],
            "chunk": [[1, 1, 1], [0, 16, 16], [7, 16, 16], [2**20] * 3, [16.5, 16, 16]],
            "data_type": ["float32", "uint8", "<U4", "V8", "bogus", 5, "float64"],
            "fill_value": ["NaN", [1, 2], None, 1e300, "x"],
            "codecs": [[], [{"name": "gzip"}], None, [{"name": "sharding_indexed"}]],
        }[field]))
        if field == "shape":
            meta["shape"] = value
        elif field == "shard":
            grid["chunk_shape"] = value
        elif field == "chunk":
            sharding["chunk_shape"] = value
        elif field == "codecs":
            meta["codecs"] = value
        else:
            meta[field] = value
        payloads = [json.dumps(meta).encode(), *payloads[1:]]
        files = [[files[0][0], len(payloads[0])], *files[1:]]
        out = _assemble(files, payloads)
    elif choice == "flip":
        raw = bytearray(blob)
        for pos in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=8)):
            raw[pos] ^= data.draw(st.integers(1, 255))
        out = bytes(raw)
    else:
        out = blob[: data.draw(st.integers(0, len(blob) - 1))]
    event(f"{choice}: {_check_contract(out)}")


def test_a_1248_byte_zshard_claiming_1000_cubed_float32_allocates_nothing(blob):
    files, meta, _ = _parts(blob)
    meta["shape"], meta["data_type"] = [1000, 1000, 1000], "float32"
    meta["chunk_grid"]["configuration"]["chunk_shape"] = [1024, 1024, 1024]
    meta["codecs"][0]["configuration"]["chunk_shape"] = [64, 64, 64]
    zarr_json = json.dumps(meta).encode()
    bomb = b""
    while len(bomb) < 1248:  # pad zarr.json with spaces to the reported size; no shard: "all fill value"
        bomb = _assemble([["zarr.json", len(zarr_json)]], [zarr_json])
        zarr_json += b" "
    assert len(bomb) == 1248
    tracemalloc.start()
    with pytest.raises(ValueError, match=r"declares 4000000000 bytes .* holds only 1248"):
        decode_array(bomb, NAME)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2**20


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("name", ["../evil", "/abs/evil", "a/../../evil", "a//b"])
def test_stream_refuses_absolute_and_dotdot_members_naming_the_shard(blob, tmp_path, name):
    good = [(f"{tar_key('ds/ok')}.image.zshard", blob), (f"{tar_key('ds/ok')}.json", b"{}")]
    _tar(tmp_path / "bad.tar", [*good, (f"{name}.image.zshard", blob), (f"{name}.json", b"{}")])
    with pytest.raises(CorruptShardError, match=r"bad\.tar.*not a relative path"):
        list(WebDatasetStream([str(tmp_path / "bad.tar")], rank=0, world_size=1, shuffle_buffer=0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = list(WebDatasetStream([str(tmp_path / "bad.tar")], rank=0, world_size=1, shuffle_buffer=0,
                                    skip_corrupt=True))
    assert [s["key"] for s in got] == ["ds/ok"] and any("bad.tar" in str(w.message) for w in caught)


def test_tar_keys_are_always_relative_and_decoded_keys_checked():
    for key in ["/etc/passwd", "../x", "a/../b", ""]:
        with pytest.raises(ValueError, match="not a relative path"):
            tar_key(key)
    assert tar_key("a/..b") == "a/%2E%2Eb"  # dots are encoded: a member name never holds '..'
    from openmind_prep.shards.zshard import untar_key

    with pytest.raises(ValueError, match="not a relative path"):
        untar_key("%2E%2E/etc/passwd")
