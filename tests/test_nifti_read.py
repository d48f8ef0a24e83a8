"""The one-pass NIfTI reader reads exactly what SimpleITK reads, or refuses with a reason.

Reference: SimpleITK's own ``ReadImage`` (array cast to float32, spacing ``abs(spacing[::-1])``,
origin, direction), the reader nnssl uses. Inputs are real MRI (nibabel's ``anatomical.nii``, the
embedded trees) and hostile headers built from them at test time. Issue 13's cases: ``vox_offset``
below 352 (SimpleITK reads from byte 348: the old checker validated from 352 and the image was
stored shifted), a gap before the voxels that must be streamed rather than buffered, a gap beyond
the byte budget refused before it is decompressed, and a ``vox_offset`` SimpleITK cannot address.
"""

from __future__ import annotations

import gzip
import math
import struct
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openmind_prep.preprocess.onemmiso import read_image, read_mask
from openmind_prep.core.paths import InputError
from openmind_prep.preprocess.job import PreprocessOptions, process_image
from openmind_prep.sources.metadata import IMAGES_DIR, record_from_row

ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
MIB = 2**20


def _sitk_read(path: Path):
    """The reference: SimpleITK's full read, as the pre-change code and nnssl do it."""
    image = sitk.ReadImage(str(path))
    data = sitk.GetArrayFromImage(image)
    if data.ndim == 4 and data.shape[0] == 1:
        data = data[0]
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), float).reshape(dim, dim)[:3, :3].ravel()
    return (data, tuple(abs(s) for s in image.GetSpacing()[:3][::-1]), image.GetOrigin()[:3], direction)


def _assert_same_as_sitk(path: Path) -> None:
    data, props = read_image(path)
    ref, spacing, origin, direction = _sitk_read(path)
    np.testing.assert_array_equal(data, ref.astype(np.float32))
    assert data.dtype == np.float32
    assert props.spacing == spacing and props.origin == origin
    np.testing.assert_array_equal(props.direction, direction)


def _anatomical() -> np.ndarray:
    return np.asarray(nib.load(ANATOMICAL).dataobj)  # 33 x 41 x 25 int16, real MRI


def _nifti(data: np.ndarray, *, dtype=None, vox_offset: float | None = None, pad: int = 0,
           scale: tuple[float, float] | None = None, big_endian: bool = False, four_d: bool = False) -> bytes:
    """NIfTI-1 bytes of ``data``; ``pad`` extra bytes (an extension-sized gap) before the voxels,
    ``vox_offset`` written as given (the voxels stay at ``352 + pad``)."""
    dtype = np.dtype(dtype or data.dtype)
    img = nib.Nifti1Image(data.astype(dtype)[..., None] if four_d else data.astype(dtype),
                          np.diag([2.0, 2.5, 3.0, 1.0]), dtype=dtype)
    hdr = img.header
    if big_endian:
        hdr = hdr.as_byteswapped(">")
    hdr["vox_offset"] = 352 + pad if vox_offset is None else vox_offset
    if scale is not None:
        hdr["scl_slope"], hdr["scl_inter"] = scale
    body = np.asarray(img.dataobj).astype(hdr.get_data_dtype()).tobytes(order="F")
    return hdr.binaryblock + b"\0" * (4 + pad) + body


def _write(path: Path, raw: bytes, gz: bool) -> Path:
    path.write_bytes(gzip.compress(raw, compresslevel=1, mtime=0) if gz else raw)
    return path


@pytest.mark.parametrize("tree", ["full_tree", "broken_tree"])
def test_every_corpus_file_reads_as_simpleitk_reads_it(tree, request):
    root = request.getfixturevalue(tree) / IMAGES_DIR
    checked = 0
    for path in sorted(p for p in root.rglob("*.nii*") if p.is_file()):
        try:
            if "mask" in path.name:
                mask = read_mask(path)
                np.testing.assert_array_equal(mask, sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
            else:
                _assert_same_as_sitk(path)
            checked += 1
        except InputError:
            assert tree == "broken_tree", path
    assert checked >= 5


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(["uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "float32",
                              "float64"]),
       scale=st.sampled_from([None, (0.0, 0.0), (2.0, 0.0), (0.3, 7.1), (1.0, 5.0), (1e-3, -2.5),
                              (math.nan, 3.0), (2.0, math.inf), (-1.5, 0.25)]),
       pad=st.sampled_from([0, 16, 1000]), big_endian=st.booleans(), four_d=st.booleans(), gz=st.booleans(),
       vox_offset=st.sampled_from([None, None, None, 352.9, "pad+0.5"]))
def test_hostile_headers_read_as_simpleitk_reads_them(tmp_path_factory, dtype, scale, pad, big_endian, four_d,
                                                      gz, vox_offset):
    data = _anatomical()[::2, ::2, ::2]
    offset = 352.0 + pad + 0.5 if vox_offset == "pad+0.5" else vox_offset
    if offset == 352.9 and pad:
        offset = None
    raw = _nifti(data, dtype=dtype, vox_offset=offset, pad=pad, scale=scale, big_endian=big_endian,
                 four_d=four_d)
    path = _write(tmp_path_factory.mktemp("h") / ("x.nii.gz" if gz else "x.nii"), raw, gz)
    _assert_same_as_sitk(path)  # every one of these is a valid file: it must read, and equal SimpleITK


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("vox_offset", [0.0, 100.0, 348.0, 350.0, -5.0])
def test_vox_offset_inside_the_header_is_refused_not_stored_shifted(tmp_path, gz, vox_offset):
    # the voxels really start at 352; SimpleITK reads from byte max(vox_offset, 348): shifted
    path = _write(tmp_path / ("x.nii.gz" if gz else "x.nii"), _nifti(_anatomical(), vox_offset=vox_offset), gz)
    shifted = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert not np.array_equal(shifted, _anatomical().T)  # what would have been stored
    with pytest.raises(InputError, match="vox_offset") as info:
        read_image(path)
    assert info.value.path == path


def _gz_zeros(n_mib: int) -> bytes:
    """``n_mib`` MiB of zeros as concatenated gzip members (a valid multi-member stream, ~1 KB each)."""
    return gzip.compress(b"\0" * MIB, compresslevel=9, mtime=0) * n_mib


def _gapped(path: Path, gap_mib: int, vox_offset: float | None = None) -> Path:
    """A real MRI whose voxels start ``gap_mib`` MiB after the header (``vox_offset`` says so)."""
    data = _anatomical()
    head = _nifti(data, vox_offset=vox_offset if vox_offset is not None else 352 + gap_mib * MIB)
    header, body = head[:352], head[352:]
    path.write_bytes(gzip.compress(header, mtime=0) + _gz_zeros(gap_mib) + gzip.compress(body, mtime=0))
    return path


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_gap_before_the_voxels_is_streamed_not_buffered(tmp_path):
    path = _gapped(tmp_path / "gap.nii.gz", 96)  # a 100 KB file whose voxels start at byte 96 MiB + 352
    assert path.stat().st_size < MIB
    peak = _peak(lambda: read_image(path))
    assert peak < 16 * MIB, f"peak {peak / MIB:.0f} MiB: the gap was buffered"
    _assert_same_as_sitk(path)


def test_a_gap_beyond_the_byte_budget_is_refused_before_decompressing(tmp_path):
    path = _gapped(tmp_path / "bomb.nii.gz", 200)
    with pytest.raises(InputError, match="above the limit of 67,108,864 bytes") as info:
        read_image(path, max_bytes=64 * MIB)
    assert "vox_offset" in info.value.reason
    # through the worker path: a failed row naming the file, no worker killed
    image_path = "ds1/sub-1/anat/sub-1_T1w.nii.gz"
    (tmp_path / IMAGES_DIR / image_path).parent.mkdir(parents=True)
    path.rename(tmp_path / IMAGES_DIR / image_path)
    peak = {}

    def run():
        peak["row"] = process_image(record_from_row({"image_path": image_path}), tmp_path, tmp_path / "store",
                                    PreprocessOptions(max_bytes=64 * MIB))
    assert _peak(run) < 16 * MIB
    assert peak["row"]["status"] == "failed" and "sub-1_T1w.nii.gz" in peak["row"]["error"]


def test_vox_offset_simpleitk_cannot_address_is_refused(tmp_path):
    # 8^3 header saying vox_offset 4e9 in a small file of zeros: SimpleITK wraps it to byte 348
    raw = _nifti(np.ones((8, 8, 8), np.int16), vox_offset=4e9)
    path = tmp_path / "far.nii.gz"
    path.write_bytes(gzip.compress(raw[:352], mtime=0) + _gz_zeros(3))
    with pytest.raises(InputError, match="invalid vox_offset 4000000000"):
        read_image(path)


def test_nifti2_is_refused_with_its_reason(tmp_path):
    img = nib.Nifti2Image(_anatomical(), np.eye(4))
    path = tmp_path / "n2.nii"
    img.to_filename(path)
    with pytest.raises(RuntimeError):
        sitk.ReadImage(str(path))  # SimpleITK cannot read NIfTI-2: nnssl would fail on it too
    with pytest.raises(InputError, match="NIfTI-2"):
        read_image(path)


def test_a_corrupted_gzip_trailer_is_refused(tmp_path):
    raw = bytearray(gzip.compress(_nifti(_anatomical()), mtime=0))
    struct.pack_into("<I", raw, len(raw) - 8, struct.unpack_from("<I", raw, len(raw) - 8)[0] ^ 1)  # CRC32
    path = tmp_path / "crc.nii.gz"
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="corrupt gzip"):
        read_image(path)
