"""WebDataset shard writer: round trip against the store and manifest, index, resume, CLI."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from _store_builder import build_store
from openmind_prep.cli import main
from openmind_prep.store.manifest import read_manifest
from openmind_prep.shards.writer import merge_index, parse_size, write_shards
from openmind_prep.shards.zshard import decode_array, encode_array, tar_key, untar_key
from openmind_prep.store.store import Store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, dict]:
    return build_store(tmp_path_factory.mktemp("shard_store") / "store")


def _read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for info in tar:
            stem, _, ext = info.name.rpartition("/")[2].partition(".")
            key = untar_key(info.name.rpartition("/")[0] + "/" + stem)
            samples.setdefault(key, {})[ext] = tar.extractfile(info).read()
    return samples


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_round_trip_matches_store_and_manifest(store, tmp_path):
    root, written = store
    out = tmp_path / "wds"
    shards = write_shards(root, out, shard_size=300_000, progress=False)
    index = merge_index(out)
    assert len(shards) >= 4, "small shard size must give several shards"
    rows = {r["zarr_path"].rsplit("/", 1)[0]: r for r in read_manifest(root).to_pylist() if r["status"] == "ok"}
    seen = []
    for info in index["shards"]:
        path = out / info["url"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == info["sha256"]
        assert path.stat().st_size == info["bytes"]
        samples = _read_tar(path)
        assert list(samples) == info["keys"] and len(samples) == info["samples"]
        for key, members in samples.items():
            seen.append(key)
            row = json.loads(members["json"])
            assert row == json.loads(json.dumps(rows[key], default=str))
            image = decode_array(members["image.zshard"])[...]
            np.testing.assert_array_equal(image, written[key]["image"])  # independent: what we wrote
            digest = "sha256:" + hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
            assert digest == row["checksum"]
            for mask in ("anon_mask", "anat_mask"):
                assert (f"{mask}.zshard" in members) == (mask in written[key])
                if mask in written[key]:
                    decoded = decode_array(members[f"{mask}.zshard"])[...]
                    np.testing.assert_array_equal(decoded, written[key][mask])
                    assert decoded.dtype == np.uint8
            # the encoding is no larger than the Zarr copy (+ its small header)
            assert len(members["image.zshard"]) <= _dir_bytes(root / key / "image") + 256
    assert sorted(seen) == sorted(rows) and index["samples"] == len(rows) == 8
    table = __import__("pyarrow.parquet", fromlist=["x"]).read_table(out / "index.parquet").to_pylist()
    assert [(t["url"], t["samples"], t["sha256"]) for t in table] == \
        [(s["url"], s["samples"], s["sha256"]) for s in index["shards"]]


def test_region_of_decoded_blob_equals_slice(store):
    root, written = store
    key = next(k for k in written if "mni_half" in k)
    arr = decode_array(encode_array(root / key / "image"))
    np.testing.assert_array_equal(arr[10:70, 64:117, 5:37], written[key]["image"][10:70, 64:117, 5:37])


def test_resume_rewrites_only_missing_and_is_byte_identical(store, tmp_path):
    root, _ = store
    out = tmp_path / "wds"
    first = write_shards(root, out, shard_size=300_000, progress=False)
    victim = out / first[1].url
    victim.unlink()
    mtimes = {s.url: (out / s.url).stat().st_mtime_ns for s in first if s.url != victim.name}
    again = write_shards(root, out, shard_size=300_000, progress=False)
    assert again == first
    assert {s.url: (out / s.url).stat().st_mtime_ns for s in again if s.url != victim.name} == mtimes
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == first[1].sha256  # deterministic bytes
    assert not list(out.glob(".*.tmp"))


def test_batch_prefixes_merge_into_one_index(store, tmp_path):
    root, written = store
    keys = sorted(written)
    out = tmp_path / "wds"
    write_shards(root, out, keys=keys[:3], prefix="batch-00000", progress=False)
    write_shards(root, out, keys=keys[3:], prefix="batch-00001", progress=False)
    index = merge_index(out)
    assert sorted(k for s in index["shards"] for k in s["keys"]) == keys
    with pytest.raises(ValueError, match="prefix"):
        write_shards(root, out, prefix="../evil", progress=False)


def test_damaged_blob_names_itself(store):
    root, written = store
    blob = encode_array(root / next(iter(written)) / "image")
    with pytest.raises(ValueError, match="x.tar:k.image.zshard.*truncated"):
        decode_array(blob[: len(blob) // 2], "x.tar:k.image.zshard")
    with pytest.raises(ValueError, match="bad magic"):
        decode_array(b"PK" + blob, "x")


def test_tar_key_round_trip_and_sizes():
    for key in ["ds1/sub-1/anat/sub-1_T1w", "ds2/sub-2/ses-1.5T/anat/a.b%c_T2w"]:
        stem = tar_key(key)
        assert "." not in stem.rsplit("/", 1)[1] and untar_key(stem) == key
    assert parse_size("1GB") == 10**9 and parse_size("1 GiB") == 2**30 and parse_size("750") == 750


def test_cli_shard_command(store, tmp_path):
    root, written = store
    result = CliRunner().invoke(main, ["shard", str(root), "--out", str(tmp_path / "o"), "--shard-size", "1MB"])
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "o" / "index.json").read_text())
    assert index["samples"] == len(written) and f"{len(written)} samples" in result.output
    member = io.BytesIO((tmp_path / "o" / index["shards"][0]["url"]).read_bytes())
    with tarfile.open(fileobj=member) as tar:
        assert all(i.mtime == 0 for i in tar)


def test_preprocess_format_webdataset_writes_shards_of_the_store(sample_tree, tmp_path):
    from openmind_prep.cli.preprocess import preprocess_command

    store = tmp_path / "store"
    result = CliRunner().invoke(preprocess_command, [str(sample_tree), "--out", str(store), "--format",
                                                     "zarr,webdataset", "--workers", "1", "--threads-only"])
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "store-wds" / "index.json").read_text())
    ok = [r for r in read_manifest(store).to_pylist() if r["status"] == "ok"]
    assert index["samples"] == len(ok) > 0
    samples = {k: v for s in index["shards"] for k, v in _read_tar(tmp_path / "store-wds" / s["url"]).items()}
    for row in ok:
        key = row["zarr_path"].rsplit("/", 1)[0]
        decoded = decode_array(samples[key]["image.zshard"])[...]
        np.testing.assert_array_equal(decoded, Store(store).array(row["zarr_path"])[...])
        assert "sha256:" + hashlib.sha256(decoded.tobytes()).hexdigest() == row["checksum"]


def test_progress_bar_names_the_shard_files(store, tmp_path, capsys):
    """The bar says what it writes ("writing shard-*.tar ... shard/s"), not "shards shard:"."""
    root, _ = store
    write_shards(root, tmp_path / "wds", shard_size=300_000, progress=True)
    err = capsys.readouterr().err
    assert "writing shard-*.tar:" in err and "shards shard" not in err
