"""onemmiso parity on real MRI (nilearn MNI, nibabel, dipy) and derived variants against the plain
reference in tests/reference_onemmiso.py; every bad input gives an InputError naming the file."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import dipy.data
import nibabel as nib
import nilearn
import numpy as np
import pytest
import scipy.ndimage as ndi
from skimage.transform import resize

import reference_onemmiso as ref
from openmind_prep.preprocess.onemmiso import new_shape_for, preprocess_case, read_image, read_mask
from openmind_prep.core.paths import InputError
from openmind_prep.preprocess.resample import nearest_indices, resample_image, separate_z_axis

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
DIPY_DATA = Path(dipy.data.__file__).parent / "files"
MNI = Path(nilearn.__file__).parent / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def _oblique(spacing) -> np.ndarray:
    """An LPS-flipped, rotated (oblique, orthonormal) affine with the given voxel sizes."""
    a, b = np.deg2rad(12.0), np.deg2rad(-7.0)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1, -1, 1]) @ rz @ rx @ np.diag(spacing)
    affine[:3, 3] = (90, 120, -60)
    return affine


@pytest.fixture(scope="module")
def mni_small() -> np.ndarray:
    return np.asanyarray(nib.load(MNI).dataobj)[::2, ::2, ::2].astype(np.float32)  # 99 x 117 x 95


def _write(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.fixture(scope="module")
def variants(tmp_path_factory, mni_small) -> dict[str, Path]:
    """Real volumes and variants written with nibabel, named by what they exercise."""
    d = tmp_path_factory.mktemp("variants")
    mni = mni_small
    s0 = np.asanyarray(nib.load(DIPY_DATA / "S0_10slices.nii.gz").dataobj)[40:72, 44:76]  # 32x32x10x1 uint16
    return {
        "aniso_int16_niigz": _write(d / "aniso.nii.gz", np.round(mni).astype(np.int16), np.diag([0.9, 0.9, 1.3, 1])),
        "oblique_lps_float32_nii": _write(d / "oblique.nii", mni, _oblique((1.1, 0.8, 1.2))),
        "uint8_down_niigz": _write(d / "u8.nii.gz", np.round(mni / mni.max() * 255).astype(np.uint8),
                                   np.diag([2.3, 2.1, 2.2, 1])),
        "separate_z_s0_4d": _write(d / "s0.nii.gz", s0, np.diag([2.0, 2.0, 53.14132, 1])),
        "nibabel_anatomical_bigendian": NIBABEL_DATA / "anatomical.nii",
        "dipy_aniso_vox": DIPY_DATA / "aniso_vox.nii.gz",
    }


@pytest.mark.parametrize("name", ["aniso_int16_niigz", "oblique_lps_float32_nii", "uint8_down_niigz",
                                  "separate_z_s0_4d", "nibabel_anatomical_bigendian", "dipy_aniso_vox"])
def test_matches_reference(variants, name):
    path = variants[name]
    expected, bbox, _, _ = ref.onemmiso(path)
    case = preprocess_case(path, {}, dtype=np.float32)
    assert case.image.dtype == np.float32
    assert case.image.shape == expected.shape == case.new_shape
    assert [list(p) for p in case.crop_bbox] == bbox
    assert np.abs(case.image - expected).max() <= 1e-3
    half = preprocess_case(path, {}, dtype=np.float16)
    assert half.image.dtype == np.float16
    assert np.abs(half.image.astype(np.float32) - expected).max() <= 1e-2


def test_separate_z_variant_takes_the_separate_z_path(variants):
    _, props = read_image(variants["separate_z_s0_4d"])
    assert props.shape == (10, 32, 32)  # the 4-D header with one volume reads as 3-D
    assert separate_z_axis(props.spacing, (1.0, 1.0, 1.0)) == 0
    assert separate_z_axis((1.3, 0.9, 0.9), (1.0, 1.0, 1.0)) is None
    assert separate_z_axis((4.0, 4.0, 1.0), (1.0, 1.0, 1.0)) is None  # two low-res axes: joint resize


def test_resample_matches_skimage_up_and_down(mni_small):
    block = mni_small[20:60, 30:75, 25:58] / 50.0
    for new_shape in [(40, 45, 33), (61, 30, 47), (13, 90, 33)]:
        expected = resize(block.astype(float), new_shape, order=3, mode="edge", anti_aliasing=False)
        got = resample_image(block, new_shape, (1.2, 1.2, 1.2), (1.0, 1.0, 1.0))
        assert got.shape == new_shape
        assert np.abs(got - expected).max() <= 1e-4
    assert resample_image(block, block.shape, (2.0, 1, 1), (1, 1, 1)) is block


@pytest.mark.parametrize("n_in,n_out", [(10, 531), (10, 7), (53, 106), (7, 20), (30, 29)])
def test_nearest_indices_match_map_coordinates(n_in, n_out):
    coords = (n_in / n_out) * (np.arange(n_out) + 0.5) - 0.5
    expected = ndi.map_coordinates(np.arange(n_in, dtype=float), [coords], order=0, mode="nearest")
    assert nearest_indices(n_in, n_out).tolist() == expected.astype(int).tolist()


def test_half_to_even_rounding(tmp_path, mni_small):
    assert new_shape_for((103, 101, 10), (1.5, 1.5, 1.0)) == (154, 152, 10)
    vol = mni_small[:, :103, :77] + 1.0  # nonzero everywhere: the crop keeps the whole volume
    path = _write(tmp_path / "ties.nii.gz", vol, np.diag([1.0, 1.5, 1.5, 1]))  # nibabel (i, j, k)
    case = preprocess_case(path, {}, dtype=np.float32)
    assert case.crop_bbox.shape == (77, 103, 99)  # array order (k, j, i)
    assert case.image.shape == (116, 154, 99)  # 115.5 -> 116 and 154.5 -> 154: half to even


def test_masks_keep_their_names_and_match_reference(tmp_path, mni_small):
    affine = np.diag([0.9, 1.1, 1.3, 1])
    image = _write(tmp_path / "img.nii.gz", mni_small, affine)
    data_dir = tmp_path / "img__Data"
    data_dir.mkdir()
    deface = _write(data_dir / "deface_mask.nii.gz", (mni_small > 20).astype(np.uint8), affine)
    fb = _write(data_dir / "fb_mask.nii.gz", (mni_small > 60).astype(np.float32), affine)
    case = preprocess_case(image, {"anon_mask": deface, "anat_mask": fb, }, dtype=np.float32)
    _, _, (want_anon, want_anat), (m_anon, m_anat) = ref.onemmiso(image, [deface, fb])
    for name, want, margin in (("anon_mask", want_anon, m_anon), ("anat_mask", want_anat, m_anat)):
        got = case.masks[name]
        assert got.dtype == np.uint8 and got.shape == case.image.shape
        differ = got != want
        assert np.all(margin[differ] < 1e-9), f"{name}: mismatches away from exact 0.5 ties"
        assert differ.mean() < 1e-3
    assert case.masks["anon_mask"].sum() > case.masks["anat_mask"].sum()  # deface mask is the larger one
    assert preprocess_case(image, {"anon_mask": None}).masks == {}


def test_mask_of_another_shape_is_rejected(tmp_path, mni_small):
    image = _write(tmp_path / "img.nii.gz", mni_small, np.eye(4))
    mask = _write(tmp_path / "fb_mask.nii.gz", (mni_small[:-1] > 20).astype(np.uint8), np.eye(4))
    with pytest.raises(InputError, match="fb_mask.nii.gz: mask shape"):
        preprocess_case(image, {"anat_mask": mask})
    with pytest.raises(InputError, match="missing_mask.nii.gz: file not found"):
        preprocess_case(image, {"anat_mask": tmp_path / "missing_mask.nii.gz"})
    bad = _write(tmp_path / "half.nii.gz", (mni_small > 20) * 0.5, np.eye(4))
    with pytest.raises(InputError, match="integer labels"):
        read_mask(bad)


def _patch(path: Path, offset: int, fmt: str, value) -> Path:
    raw = bytearray(path.read_bytes())
    raw[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(raw))
    return path


def _bad_inputs(d: Path, mni: np.ndarray) -> dict[str, tuple[Path, str]]:
    small = mni[::3, ::3, ::3]
    good_gz = _write(d / "good.nii.gz", small, np.eye(4))
    good = _write(d / "good.nii", small, np.eye(4))
    cut_gz = d / "cut.nii.gz"
    cut_gz.write_bytes(good_gz.read_bytes()[: good_gz.stat().st_size // 2])
    short = d / "short.nii.gz"  # a complete gzip stream holding too few voxel bytes
    short.write_bytes(gzip.compress(gzip.decompress(good_gz.read_bytes())[:-1000]))
    cut = d / "cut.nii"
    cut.write_bytes(good.read_bytes()[:-333])
    nan, inf = small.copy(), small.copy()
    nan[5, 5, 5] = np.nan
    inf[6, 6, 6] = -np.inf
    text = d / "notes.nii.gz"
    text.write_text("this is not an image\n" * 40)
    zero_dim = _patch(_write(d / "zerodim.nii", small, np.eye(4)), 42, "<h", 0)  # dim[1]
    neg = _patch(_write(d / "negspacing.nii", small, np.eye(4)), 84, "<f", -1.0)  # pixdim[2]
    zero_sp = _patch(_write(d / "zerospacing.nii", small, np.eye(4)), 80, "<f", 0.0)  # pixdim[1]
    nan_sp = _patch(_write(d / "nanspacing.nii", small, np.eye(4)), 88, "<f", float("nan"))
    return {
        "missing": (d / "absent.nii.gz", "file not found"),
        "not_nifti": (text, "not a NIfTI file"),
        "truncated_gz": (cut_gz, "truncated"),
        "short_gz": (short, "truncated"),
        "truncated_nii": (cut, "truncated"),
        "nan": (_write(d / "nan.nii.gz", nan, np.eye(4)), "NaN/inf"),
        "inf": (_write(d / "inf.nii", inf, np.eye(4)), "NaN/inf"),
        "four_d": (NIBABEL_DATA / "example4d.nii.gz", "2 volumes"),
        "zero_dim": (zero_dim, "zero-size dimension"),
        "negative_spacing": (neg, "invalid voxel spacing"),
        "zero_spacing": (zero_sp, "invalid voxel spacing"),
        "nan_spacing": (nan_sp, "invalid voxel spacing"),
        "all_zero": (_write(d / "zeros.nii.gz", np.zeros((20, 20, 20), np.int16), np.eye(4)), "all-zero"),
    }


def test_bad_inputs_raise_input_error_naming_the_file(tmp_path, mni_small):
    cases = _bad_inputs(tmp_path, mni_small)
    for name, (path, reason) in cases.items():
        with pytest.raises(InputError) as info:
            preprocess_case(path, {})
        assert info.value.path == path, name
        assert str(info.value).startswith(f"{path}: "), name
        assert reason in info.value.reason, f"{name}: {info.value.reason}"


def test_max_bytes_refuses_before_reading(tmp_path, mni_small):
    path = _write(tmp_path / "img.nii.gz", mni_small, np.eye(4))
    voxels = int(np.prod(mni_small.shape))
    with pytest.raises(InputError, match=f"{voxels * 4:,} bytes"):
        read_image(path, max_bytes=voxels * 4 - 1)
    data, _ = read_image(path, max_bytes=voxels * 4)
    assert data.shape == mni_small.shape[::-1]
    assert os.path.getsize(path) < voxels * 4


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("n_in,n_out", [(1, 5), (2, 9), (7, 20), (30, 29), (155, 274), (256, 176), (10, 531)])
def test_axis_matrix_columns_are_scipys_1d_zoom_of_unit_vectors(n_in, n_out, order):
    from openmind_prep.preprocess.resample import axis_matrix

    m = axis_matrix(n_in, n_out, order)
    for j in range(n_in):  # the definition: column j = the resized unit vector e_j (skimage's call)
        unit = np.zeros(n_in)
        unit[j] = 1.0
        col = ndi.zoom(unit, n_out / n_in, order=order, mode="nearest", grid_mode=True)
        np.testing.assert_allclose(m[:, j], col, rtol=0, atol=1e-12)
