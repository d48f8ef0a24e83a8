"""Hostile inputs: fuzzed NIfTI headers and bytes, huge dims, odd paths, symlinks out of the tree.

Contract (issue 8): nothing crashes a worker or the run. Through the real per-image path
(:func:`openmind_prep.preprocess.job.process_image`) every input gives a manifest row: ``failed``
with a reason naming the file, or ``ok`` with a finite stored volume. ``max_examples`` is bounded
so the file runs in well under a minute.
"""

from __future__ import annotations

import gzip
import math
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from openmind_prep.store.manifest import FAILED, OK
from openmind_prep.sources.metadata import IMAGES_DIR, record_from_row
from openmind_prep.preprocess.onemmiso import read_image
from openmind_prep.core.paths import InputError
from openmind_prep.preprocess.job import PreprocessOptions, process_image
from openmind_prep.store.store import Store

LIMIT = 64 * 2**20  # per-image decoded-size limit given to the workers in these tests
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _anatomical() -> nib.Nifti1Image:
    return nib.load(Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii")


def _real_bytes(gz: bool) -> bytes:
    """A real MRI (nibabel's anatomical.nii, 33×41×25 int16 at 2 mm) as NIfTI bytes."""
    img = _anatomical()
    raw = nib.Nifti1Image(np.asarray(img.dataobj), img.affine).to_bytes()
    return gzip.compress(raw, mtime=0) if gz else raw


def _process(root: Path, image_path: str, options: PreprocessOptions | None = None) -> dict:
    """Run one image through the real per-image path into ``root/store``; check the row's contract."""
    record = record_from_row({"image_path": image_path, "modality": "T1w"})
    row = process_image(record, root, root / "store", options or PreprocessOptions(max_bytes=LIMIT))
    assert row["status"] in (OK, FAILED)
    if row["status"] == FAILED:
        assert row["error"].strip() and row["zarr_path"] == "" and row["checksum"] == ""
        assert Path(image_path).name in row["error"], row["error"]  # the reason names the file
    else:
        stored = Store(root / "store").array(row["zarr_path"])[...]
        assert stored.size > 0 and np.isfinite(stored).all()
        assert list(stored.shape) == row["shape"]
    return row


def _place(root: Path, image_path: str, content: bytes) -> None:
    path = root / IMAGES_DIR / image_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


_WEIRD_FLOATS = [0.0, -1.0, -2.5, 1e6, 1e-6, 1e-30, 1e30, math.nan, math.inf, -math.inf, 0.4, 7.0]


def _maybe(values, keep: int = 3) -> st.SearchStrategy:
    """Mostly keep the valid value (None), else one hostile value: most examples then break one
    or two fields and reach the deeper code (and some stay valid and must come out ``ok``)."""
    return st.integers(0, keep).flatmap(lambda k: st.none() if k < keep else st.sampled_from(values))


@FUZZ
@given(
    shape=st.tuples(st.integers(1, 20), st.integers(1, 20), st.integers(1, 20)),
    spacing=st.tuples(*[st.sampled_from([0.5, 1.0, 1.5, 2.5])] * 3),
    dtype=st.sampled_from(["uint8", "int16", "uint16", "int32", "float32", "float64", "int8", "uint64"]),
    dim=_maybe([[0, 0, 0, 0], [3, 0, 5, 5], [3, -4, 5, 5], [3, 20000, 20000, 20000], [4, None, None, None, 1],
                [4, None, None, None, 3], [5, None, None, None, 1, 2], [2, None, None], [-1], [8], [1, 7]]),
    pixdim=st.lists(_maybe(_WEIRD_FLOATS, keep=8), min_size=3, max_size=3),
    datatype=_maybe([0, 1, 32, 128, 1536, 1792, 2048, 2304, 9999, 16, 64]),
    vox_offset=_maybe([0.0, 348.0, 351.0, 353.0, 4096.0, 1e9, -5.0, math.nan]),
    scale=_maybe([(0.0, 0.0), (math.nan, 0.0), (1e30, 0.0), (-1.0, 5.0), (1.0, math.inf), (1e-30, 0.0)]),
    srow=_maybe([np.zeros((3, 4)), np.full((3, 4), math.nan), np.ones((3, 4)), np.eye(3, 4) * 1e30]),
    body=st.sampled_from(["exact", "exact", "exact", "short", "long", "none"]),
    gz=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fuzzed_headers_give_a_row_never_a_crash(shape, spacing, dtype, dim, pixdim, datatype, vox_offset, scale,
                                                 srow, body, gz, seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(1, 100, size=shape).astype(dtype)
    hdr = nib.Nifti1Image(data, np.diag([*spacing, 1.0]), dtype=data.dtype).header
    if dim is not None:  # None entries keep the real extent of that axis
        hdr["dim"] = [dim[0], *[shape[i] if d is None and i < 3 else (d if d is not None else 1)
                                for i, d in enumerate(dim[1:])], *[1] * (7 - len(dim[1:]))]
    zooms = hdr["pixdim"].copy()
    zooms[1:4] = [z if p is None else p for z, p in zip(zooms[1:4], pixdim)]
    hdr["pixdim"] = zooms
    for field, value in (("datatype", datatype), ("vox_offset", vox_offset)):
        if value is not None:
            hdr[field] = value
    if scale is not None:
        hdr["scl_slope"], hdr["scl_inter"] = scale
    if srow is not None:
        hdr["sform_code"] = 1
        hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = srow
    body_bytes = data.tobytes()
    body_bytes = {"exact": body_bytes, "short": body_bytes[: len(body_bytes) // 2],
                  "long": body_bytes + b"\1" * 999, "none": b""}[body]
    raw = hdr.binaryblock + b"\0" * 4 + body_bytes
    with tempfile.TemporaryDirectory() as tmp:
        name = "ds1/sub-1/anat/sub-1_T1w.nii" + (".gz" if gz else "")
        _place(Path(tmp), name, gzip.compress(raw, mtime=0) if gz else raw)
        row = _process(Path(tmp), name)
    event(row["status"] if row["status"] == OK else row["error"].split(": ", 1)[1][:40])
    if body in ("short", "none") and dim is None and datatype is None and vox_offset is None:
        assert row["status"] == FAILED  # missing voxel data is never zero-filled silently


@FUZZ
@given(gz=st.booleans(), where=st.sampled_from(["header", "body", "anywhere"]),
       flips=st.integers(1, 12), cut=st.one_of(st.none(), st.floats(0.0, 1.0)), seed=st.integers(0, 2**16))
def test_byte_flips_and_truncations_give_a_row_never_a_crash(gz, where, flips, cut, seed):
    raw = bytearray(_real_bytes(gz))
    rng = np.random.default_rng(seed)
    lo, hi = {"header": (0, 352), "body": (352, len(raw)), "anywhere": (0, len(raw))}[where]
    for pos in rng.integers(lo, min(hi, len(raw)), size=flips):
        raw[pos] ^= int(rng.integers(1, 256))
    if cut is not None:
        raw = raw[: int(cut * len(raw))]
    with tempfile.TemporaryDirectory() as tmp:
        name = "ds1/sub-1/anat/sub-1_T1w.nii" + (".gz" if gz else "")
        _place(Path(tmp), name, bytes(raw))
        row = _process(Path(tmp), name)
    event(row["status"] if row["status"] == OK else row["error"].split(": ", 1)[1][:40])
    if cut is not None and cut < 0.9 and not gz:
        assert row["status"] == FAILED  # a cut .nii lost voxel data: never silently zero-filled


def test_huge_dims_are_refused_with_an_estimate_before_reading(tmp_path):
    """A header claiming 20000³ int16 voxels in a tiny file: refused from the header alone."""
    img = nib.Nifti1Image(np.ones((2, 2, 2), np.int16), np.eye(4))
    hdr = img.header.copy()
    hdr["dim"] = [3, 20000, 20000, 20000, 1, 1, 1, 1]
    raw = hdr.binaryblock + b"\0" * 4 + b"\1" * 4096
    name = "ds1/sub-1/anat/sub-1_T1w.nii.gz"
    _place(tmp_path, name, gzip.compress(raw))
    row = _process(tmp_path, name)
    assert row["status"] == FAILED
    assert f"{20000**3 * 4:,} bytes" in row["error"] and f"{LIMIT:,}" in row["error"], row["error"]
    assert "truncated" not in row["error"]  # the refusal came before reading the (absent) data
    with pytest.raises(InputError, match="would need"):
        read_image(tmp_path / IMAGES_DIR / name, max_bytes=LIMIT)


def test_the_worker_memory_limit_bounds_every_image_by_default(tmp_path):
    """No --max-bytes given: a worker with a 512 MiB limit refuses what would not fit (limit / 8),
    from the header for huge dims and before resampling for absurd spacing."""
    from openmind_prep.core.dask_cluster import ClusterConfig, dask_client
    from openmind_prep.preprocess.job import run_preprocess

    hdr = nib.Nifti1Image(np.ones((2, 2, 2), np.int16), np.eye(4)).header
    hdr["dim"] = [3, 2000, 2000, 2000, 1, 1, 1, 1]
    data = np.asarray(_anatomical().dataobj)
    files = {"ds1/sub-1/anat/sub-1_T1w.nii": hdr.binaryblock + b"\0" * 4 + b"\1" * 4096,
             "ds1/sub-2/anat/sub-2_T1w.nii.gz": gzip.compress(nib.Nifti1Image(data, np.diag([1e6, 2, 2, 1])).to_bytes()),
             "ds1/sub-3/anat/sub-3_T1w.nii.gz": _real_bytes(True)}
    for path, content in files.items():
        _place(tmp_path, path, content)
    records = [record_from_row({"image_path": p, "modality": "T1w"}) for p in files]
    with dask_client(ClusterConfig(workers=1, processes=False, memory_limit="512MiB")) as client:
        rows = {r["image_path"]: r for r in run_preprocess(records, tmp_path, tmp_path / "store", client,
                                                           PreprocessOptions(), progress=False)}
    budget = f"above the limit of {512 * 2**20 // 8:,} bytes"
    huge, spaced, fine = (rows[p] for p in files)
    assert huge["status"] == FAILED and f"{2000**3 * 4:,} bytes" in huge["error"] and budget in huge["error"]
    assert spaced["status"] == FAILED and "resampled" in spaced["error"] and budget in spaced["error"]
    assert fine["status"] == OK, fine["error"]


@pytest.mark.parametrize("spacing", [(1e6, 1.0, 1.0), (60.0, 60.0, 60.0), (1e-6, 1.0, 1.0)])
def test_absurd_spacing_is_refused_or_processed_within_the_limit(tmp_path, spacing):
    """Spacing that is finite and positive but absurd: the 1 mm output must respect the limit too."""
    data = np.asarray(_anatomical().dataobj)
    img = nib.Nifti1Image(data, np.diag([*spacing, 1.0]))
    name = "ds1/sub-1/anat/sub-1_T1w.nii.gz"
    _place(tmp_path, name, gzip.compress(img.to_bytes(), mtime=0))
    row = _process(tmp_path, name)
    out_voxels = math.prod(round(s * n) for s, n in zip(spacing, data.shape))
    if out_voxels * 4 > LIMIT or out_voxels == 0:
        assert row["status"] == FAILED
    else:
        assert row["status"] == OK


_NAME_CHARS = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\\0")


@settings(max_examples=15, deadline=None, derandomize=True)
@given(parts=st.lists(st.text(_NAME_CHARS, min_size=1, max_size=60), min_size=1, max_size=6),
       stem=st.text(_NAME_CHARS, min_size=1, max_size=80))
def test_non_ascii_and_long_paths_are_processed(parts, stem):
    assume(all(p not in (".", "..") for p in parts))
    assume(all(len(p.encode()) <= 200 for p in [*parts, stem]))
    image_path = "/".join(["dsü", "sub-日本", *parts, f"{stem}_T1w.nii.gz"])
    with tempfile.TemporaryDirectory() as tmp:
        _place(Path(tmp), image_path, _real_bytes(True))
        row = _process(Path(tmp), image_path)
    assert row["status"] == OK, row["error"]


def test_very_long_names_fail_with_a_reason(tmp_path):
    image_path = "ds1/sub-1/anat/" + "é" * 200 + "_T1w.nii.gz"  # 400+ bytes: above NAME_MAX
    row = _process(tmp_path, image_path)
    assert row["status"] == FAILED


@pytest.mark.parametrize("kind", ["symlink_file", "symlink_dir", "dotdot", "absolute", "mask_symlink"])
def test_paths_escaping_the_source_tree_are_failed_rows(tmp_path, kind):
    root, outside = tmp_path / "src", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.nii.gz").write_bytes(_real_bytes(True))  # a valid image, just not ours
    images = root / IMAGES_DIR / "ds1" / "sub-1" / "anat"
    images.mkdir(parents=True)
    masks = {}
    if kind == "symlink_file":
        (images / "sub-1_T1w.nii.gz").symlink_to(outside / "secret.nii.gz")
        image_path = "ds1/sub-1/anat/sub-1_T1w.nii.gz"
    elif kind == "symlink_dir":
        (root / IMAGES_DIR / "ds2").mkdir()
        (root / IMAGES_DIR / "ds2" / "sub-1").symlink_to(outside, target_is_directory=True)
        image_path = "ds2/sub-1/secret.nii.gz"
    elif kind == "dotdot":
        image_path = "ds1/sub-1/../../../outside/secret.nii.gz"
    elif kind == "absolute":
        image_path = str(outside / "secret.nii.gz")
    else:
        (images / "sub-1_T1w.nii.gz").write_bytes(_real_bytes(True))
        image_path = "ds1/sub-1/anat/sub-1_T1w.nii.gz"
        (images / "fb_mask.nii.gz").symlink_to(outside / "secret.nii.gz")
        masks = {"anat_mask_path": "ds1/sub-1/anat/fb_mask.nii.gz"}
    record = record_from_row({"image_path": image_path, "modality": "T1w", **masks})
    row = process_image(record, root, tmp_path / "store", PreprocessOptions(max_bytes=LIMIT))
    assert row["status"] == FAILED and "source tree" in row["error"] and "refused" in row["error"], row["error"]
    assert not list((tmp_path / "store").glob("ds*"))  # nothing written for it


def test_a_run_with_every_hostile_kind_accounts_for_every_image(tmp_path):
    """One batch through Dask with hostile files mixed in: each image gets exactly one row."""
    from openmind_prep.core.dask_cluster import ClusterConfig, dask_client
    from openmind_prep.preprocess.job import run_preprocess

    hdr = nib.Nifti1Header()
    hdr["dim"] = [3, 20000, 20000, 20000, 1, 1, 1, 1]
    files = {
        "ds1/sub-1/anat/sub-1_T1w.nii.gz": _real_bytes(True),
        "ds1/sub-2/anat/sub-2_T1w.nii.gz": _real_bytes(True)[:5000],
        "ds1/sub-3/anat/sub-3_T1w.nii": hdr.binaryblock + b"\0" * 8,
        "ds1/sub-4/anat/sub-4_T1w.nii.gz": b"\x1f\x8b" + os.urandom(300),
        "ds1/sub-ü/anat/sub-ü_T1w.nii.gz": _real_bytes(True),
    }
    for path, content in files.items():
        _place(tmp_path, path, content)
    records = [record_from_row({"image_path": p, "modality": "T1w"}) for p in files]
    with dask_client(ClusterConfig(workers=1, processes=False)) as client:
        rows = run_preprocess(records, tmp_path, tmp_path / "store", client, PreprocessOptions(max_bytes=LIMIT),
                              batch_size=2, progress=False)
    status = {r["image_path"]: r["status"] for r in rows}
    assert sorted(status) == sorted(files) and len(rows) == len(files)
    assert [p for p, s in status.items() if s == OK] == ["ds1/sub-1/anat/sub-1_T1w.nii.gz",
                                                         "ds1/sub-ü/anat/sub-ü_T1w.nii.gz"]


def test_intensities_that_overflow_float32_statistics_fail_instead_of_storing_zeros(tmp_path):
    """scl_slope = 1e30 on int16 data: the variance overflows float32; nnssl would store all zeros."""
    data = np.asarray(_anatomical().dataobj).astype(np.int16)
    hdr = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]), dtype=np.int16).header
    hdr["scl_slope"], hdr["scl_inter"] = 1e30, 0.0
    hdr["vox_offset"] = 352  # where the voxels are (0 would make SimpleITK read them from byte 348)
    name = "ds1/sub-1/anat/sub-1_T1w.nii"
    _place(tmp_path, name, hdr.binaryblock + b"\0" * 4 + data.tobytes(order="F"))
    with np.errstate(over="ignore"):
        row = _process(tmp_path, name)
    assert row["status"] == FAILED and "too large for float32" in row["error"], row["error"]
