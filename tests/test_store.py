"""The Zarr store, the manifest and `verify`, on real MRI arrays (nibabel / nilearn test data)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from openmind_prep.store import store as st
from openmind_prep.store.store import Store
from openmind_prep.store import zarr_write
from openmind_prep.store.manifest import (MANIFEST_DIR, MANIFEST_FILE, OK, empty_row, merge_manifest,
                                    read_manifest, write_fragment)
from openmind_prep.cli.verify import verify_command
from openmind_prep.reports.verify import verify_store

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


@pytest.fixture(scope="module")
def mri() -> np.ndarray:
    """nibabel's anatomical.nii (a real T1 volume), z-scored, in zyx order, float32."""
    data = np.asarray(nib.load(NIBABEL_DATA / "anatomical.nii").dataobj, dtype=np.float32).T
    return (data - data.mean()) / data.std()


def _shard_files(folder: Path) -> list[Path]:
    return [p for p in (folder / "c").rglob("*") if p.is_file()]


def _write(store: Path, key: str, mri: np.ndarray, dtype=np.float32, chunks: int = 16):
    mask = (mri > 0).astype(np.uint8)
    return Store(store).write_case(key, {"image": mri.astype(dtype), "anat_mask": mask},
                         {"spacing": (1.0, 2.0, 3.0), "modality": "T1w"}, chunks=chunks)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_round_trip_one_shard_file_per_array(tmp_path, mri, dtype):
    store = Store.create(tmp_path / "s").root
    out = _write(store, "ds1/sub-1/anat/sub-1_T1w", mri, dtype)
    image = zarr.open_group(str(store), mode="r")["ds1/sub-1/anat/sub-1_T1w/image"]
    assert image.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(image[...], mri.astype(dtype))  # lossless
    expected = "sha256:" + hashlib.sha256(mri.astype(dtype).tobytes()).hexdigest()
    assert out.checksums["image"] == expected == image.attrs["checksum"]
    assert image.attrs["spacing"] == [1.0, 2.0, 3.0] and image.attrs["modality"] == "T1w"
    # many inner chunks (16³ over a 25×41×33 volume), yet a single file per array
    assert image.shards == tuple(-(-n // 16) * 16 for n in mri.shape) and image.chunks == (16, 16, 16)
    for name in ("image", "anat_mask"):
        assert len(_shard_files(store / "ds1/sub-1/anat/sub-1_T1w" / name)) == 1
    codecs = json.loads((store / out.zarr_paths["image"] / "zarr.json").read_text())["codecs"]
    inner = codecs[0]["configuration"]["codecs"]
    assert codecs[0]["name"] == "sharding_indexed"
    assert {"name": "blosc"}.items() <= inner[-1].items()
    assert inner[-1]["configuration"]["cname"] == st.CODEC["cname"] == "lz4hc"
    assert inner[-1]["configuration"]["shuffle"] == "shuffle" and inner[-1]["configuration"]["clevel"] == 2
    mask_codecs = json.loads((store / out.key / "anat_mask" / "zarr.json").read_text())["codecs"]
    mask_blosc = mask_codecs[0]["configuration"]["codecs"][-1]["configuration"]  # masks: zstd-1 + bit shuffle
    assert (mask_blosc["cname"], mask_blosc["clevel"], mask_blosc["shuffle"]) == ("zstd", 1, "bitshuffle")
    assert st.CODEC["dense"] == {"cname": "zstd", "clevel": 1, "above": 0.65}
    assert st.MASK_CODEC == {"cname": "zstd", "clevel": 1, "shuffle": "bitshuffle"}
    assert out.nbytes == sum(f.stat().st_size for f in (store / out.key).rglob("*") if f.is_file())
    # parent groups are real v3 groups, so the hierarchy can be walked from the root
    assert Store(store).group()["ds1"]["sub-1"]["anat"]["sub-1_T1w"]["anat_mask"].dtype == np.uint8


def test_failed_write_leaves_nothing_at_the_final_key(tmp_path, mri, monkeypatch):
    store = Store.create(tmp_path / "s").root
    calls = []

    def die_on_second_array(data, *args):
        calls.append(data.shape)
        if len(calls) == 2:  # the image is written, the mask write dies midway
            raise KeyboardInterrupt("killed")
        return original(data, *args)

    original = zarr_write.encode_shard
    monkeypatch.setattr(zarr_write, "encode_shard", die_on_second_array)
    with pytest.raises(KeyboardInterrupt):
        _write(store, "ds1/sub-1/a", mri)
    monkeypatch.setattr(zarr_write, "encode_shard", original)
    assert not (store / "ds1/sub-1/a").exists()
    assert not Store(store).has("ds1/sub-1/a/image")
    assert any((store / st.TMP_DIR).iterdir())  # the debris stays out of sight ...
    Store(store).clear_tmp()
    assert not any((store / st.TMP_DIR).iterdir())  # ... until the next run clears it


def test_rewrite_replaces_the_old_group(tmp_path, mri):
    store = Store.create(tmp_path / "s").root
    _write(store, "ds1/sub-1/a", mri)
    out = Store(store).write_case("ds1/sub-1/a", {"image": mri[:5].astype(np.float16)}, {})
    assert Store(store).array("ds1/sub-1/a/image").shape == mri[:5].shape
    assert not (store / "ds1/sub-1/a/anat_mask").exists()  # nothing left over from the old group
    assert out.zarr_paths == {"image": "ds1/sub-1/a/image"}


def test_manifest_newest_row_wins_and_merge_is_repeatable(tmp_path):
    store = Store.create(tmp_path / "s").root
    write_fragment(store, [{**empty_row("a.nii.gz"), "error": "bad"}, {**empty_row("b.nii.gz"), "status": OK}])
    write_fragment(store, [{**empty_row("a.nii.gz"), "status": OK, "shape": [1, 2, 3]}])
    merged = merge_manifest(store).to_pylist()
    assert [(r["image_path"], r["status"]) for r in merged] == [("a.nii.gz", OK), ("b.nii.gz", OK)]
    assert merged[0]["shape"] == [1, 2, 3]
    assert not list((store / MANIFEST_DIR).glob("*.parquet"))
    # a merge killed before deleting its fragments: merging again changes nothing
    write_fragment(store, merged)
    assert merge_manifest(store).to_pylist() == merged == read_manifest(store).to_pylist()
    # later fragments show up in read_manifest before any merge
    write_fragment(store, [{**empty_row("a.nii.gz"), "error": "broken again"}])
    assert read_manifest(store).to_pylist()[0]["error"] == "broken again"
    assert (store / MANIFEST_FILE).exists()


def _store_with_manifest(tmp_path: Path, mri: np.ndarray) -> Path:
    store = Store.create(tmp_path / "s").root
    out = _write(store, "ds1/sub-1/a", mri, np.float16)
    write_fragment(store, [{**empty_row("ds1/sub-1/a.nii.gz"), "status": OK, "zarr_path": out.zarr_paths["image"],
                            "checksum": out.checksums["image"], "anat_mask_zarr_path": out.zarr_paths["anat_mask"],
                            "anat_mask_checksum": out.checksums["anat_mask"]}])
    merge_manifest(store)
    return store


@pytest.mark.parametrize("array", ["image", "anat_mask"])
def test_verify_detects_a_flipped_byte(tmp_path, mri, array):
    store = _store_with_manifest(tmp_path, mri)
    result = CliRunner().invoke(verify_command, [str(store)])
    assert result.exit_code == 0, result.output
    assert "verified 1 images: 0 problem" in result.output
    (shard,) = _shard_files(store / "ds1/sub-1/a" / array)
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 3] ^= 0x10  # inside the compressed chunk data
    shard.write_bytes(bytes(raw))
    result = CliRunner().invoke(verify_command, [str(store)])
    assert result.exit_code == 1
    assert f"ds1/sub-1/a/{array}" in result.output and "DAMAGED" in result.output


def test_verify_reports_a_missing_array(tmp_path, mri):
    store = _store_with_manifest(tmp_path, mri)
    os.remove(store / "ds1/sub-1/a/image/zarr.json")
    (problem,) = verify_store(store)
    assert "ds1/sub-1/a/image" in problem and "missing" in problem
