"""The embedded default: a small OpenMind-layout tree of REAL MRI shipped inside PyPI packages.

Sources (installed with this project): nilearn's MNI152 2009 template (T1, grey/white matter
maps), nibabel's test data (``anatomical.nii``, ``example4d.nii.gz``) and dipy's
(``aniso_vox.nii.gz``). Variants are derived from them — other spacings (one anisotropic enough
to take nnU-Net's separate-z path), another orientation, other dtypes, ``.nii`` and ``.nii.gz`` —
and written in the Hugging Face repo layout with its CSV, so every command runs on it exactly
as on OpenMind:

    DEST/openneuro_metadata.csv
    DEST/OpenMind/<dataset>/<subject>/[<session>/]anat/<image>.nii.gz
    DEST/OpenMind/.../<image stem>__Data/{deface_mask,fb_mask}.nii.gz

``broken=True`` adds dataset ``ds999999`` with one deliberately bad case per failure mode
(truncated, not NIfTI, 4-D, all-zero, NaN, missing file, missing mask, mask of another shape).
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from openmind_prep.core.atomic import writing
from openmind_prep.sources.metadata import IMAGES_DIR, METADATA_CSV
from openmind_prep.core.paths import strip_nifti_suffix

CSV_COLUMNS = (
    "image_path", "modality", "unique_id", "image_quality_score", "anon_mask_path", "anat_mask_path",
    "derived_from", "age", "sex", "handedness", "race", "weight", "bmi", "health_status",
    "manufacturer", "model_name", "magnetic_field_strength", "repetition_time", "echo_time",
    "phase_encoding_direction", "is_brain_extract",
)
BROKEN_DATASET = "ds999999"


def source_files() -> dict[str, Path]:
    """Locate the real MRI files inside the installed nilearn / nibabel / dipy packages."""
    import dipy
    import nibabel
    import nilearn

    nl = Path(nilearn.__file__).parent / "datasets" / "data"
    nb = Path(nibabel.__file__).parent / "tests" / "data"
    dp = Path(dipy.__file__).parent / "data" / "files"
    files = {
        "mni_t1": nl / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "mni_gm": nl / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
        "mni_wm": nl / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
        "anatomical": nb / "anatomical.nii",
        "example4d": nb / "example4d.nii.gz",
        "aniso_vox": dp / "aniso_vox.nii.gz",
    }
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"sample MRI not found (reinstall nilearn/nibabel/dipy): {missing}")
    return files


@dataclass
class _Case:
    path: str
    modality: str
    iqs: float | None
    image: bytes | None  # None: listed in the CSV but absent on disk
    masks: dict[str, bytes | None] = field(default_factory=dict)  # "deface_mask"/"fb_mask"
    derived_from: str = ""


def _nifti_bytes(data: np.ndarray, affine: np.ndarray, gz: bool, dtype=None) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data, dtype=dtype or data.dtype), affine)
    img.header.set_xyzt_units("mm", "sec")
    raw = img.to_bytes()
    return gzip.compress(raw, mtime=0) if gz else raw  # mtime=0: byte-identical on every build


def _zoom(data: np.ndarray, affine: np.ndarray, spacing: tuple[float, float, float], order: int = 1):
    """Resample (for making variants only) to a new voxel spacing; returns data, affine."""
    from scipy.ndimage import zoom

    old = np.sqrt((affine[:3, :3] ** 2).sum(0))
    factors = old / np.asarray(spacing)
    out = zoom(data.astype(np.float32), factors, order=order, mode="nearest", grid_mode=True)
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] / old * np.asarray(spacing)
    return out, new_affine


def _masks(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fb (anatomy) mask from the tissue maps; deface mask = 1 except a lower-front block (the face)."""
    fb = ((gm.astype(np.float32) + wm.astype(np.float32)) > 40).astype(np.uint8)
    deface = np.ones(t1.shape, np.uint8)
    x, y, z = t1.shape
    deface[:, int(0.72 * y):, : int(0.38 * z)] = 0
    return deface, fb


def _cases(small: bool) -> list[_Case]:
    import nibabel as nib

    src = source_files()
    mni = nib.load(src["mni_t1"])
    t1, aff = np.asarray(mni.dataobj), mni.affine
    gm, wm = np.asarray(nib.load(src["mni_gm"]).dataobj), np.asarray(nib.load(src["mni_wm"]).dataobj)
    anat = nib.load(src["anatomical"])
    aniso = nib.load(src["aniso_vox"])
    ex4d = nib.load(src["example4d"])
    cases: list[_Case] = []

    def add_mni(path: str, modality: str, iqs: float, spacing, dtype, gz=True, flip_xy=False, scale=1.0):
        data, affine = (t1.astype(np.float32), aff) if spacing is None else _zoom(t1, aff, spacing)
        tissue = [g if spacing is None else _zoom(g, aff, spacing)[0] for g in (gm, wm)]
        data = data * scale
        deface, fb = _masks(data, *tissue)
        if flip_xy:  # store in another voxel order (x, y reversed); the affine keeps world coordinates
            data, deface, fb = (a[::-1, ::-1].copy() for a in (data, deface, fb))
            nx, ny = data.shape[:2]
            affine = affine @ np.array([[-1, 0, 0, nx - 1], [0, -1, 0, ny - 1], [0, 0, 1, 0], [0, 0, 0, 1.0]])
        data = np.rint(data) if np.issubdtype(np.dtype(dtype), np.integer) else data
        cases.append(_Case(path, modality, iqs, _nifti_bytes(data, affine, gz, dtype), {
            "deface_mask": _nifti_bytes(deface, affine, True, np.uint8),
            "fb_mask": _nifti_bytes(fb, affine, True, np.uint8)}))

    if small:
        add_mni("ds000001/sub-01/anat/sub-01_T1w.nii.gz", "T1w", 1.2, (3.0, 3.0, 3.0), np.uint8)
    else:
        add_mni("ds000001/sub-01/anat/sub-01_T1w.nii.gz", "T1w", 1.2, None, np.uint8)
        add_mni("ds000001/sub-02/ses-01/anat/sub-02_ses-01_T2w.nii.gz", "T2w", 2.1, (1.25, 1.25, 1.25),
                np.int16, flip_xy=True, scale=8.0)
        add_mni("ds000002/sub-01/anat/sub-01_FLAIR.nii.gz", "FLAIR", 2.8, (0.9, 0.9, 3.6), np.float32)
    cases.append(_Case("ds000003/sub-01/anat/sub-01_T1w.nii", "T1w", 1.4,
                       _nifti_bytes(np.asarray(anat.dataobj), anat.affine, False)))
    cases.append(_Case("ds000003/sub-02/anat/sub-02_T2w.nii.gz", "T2w", 3.2,
                       _nifti_bytes(np.asarray(aniso.dataobj), aniso.affine, True)))
    if not small:
        cases.append(_Case("ds000004/sub-01/ses-01/anat/sub-01_ses-01_inplaneT2.nii.gz", "inplaneT2", 2.4,
                           _nifti_bytes(np.asarray(ex4d.dataobj)[..., 0], ex4d.affine, True)))
    return cases


def _broken_cases() -> list[_Case]:
    import nibabel as nib

    src = source_files()
    anat = nib.load(src["anatomical"])
    data, aff = np.asarray(anat.dataobj), anat.affine
    good = _nifti_bytes(data, aff, True)
    nan = data.astype(np.float32)
    nan[10, 10, 10] = np.nan
    p = f"{BROKEN_DATASET}/sub-%s/anat/sub-%s_T1w.nii.gz"
    ex4d = src["example4d"].read_bytes()
    return [
        _Case(p % ("truncgz", "truncgz"), "T1w", 1.0, good[: len(good) // 2]),
        _Case(p.replace(".nii.gz", ".nii") % ("truncnii", "truncnii"), "T1w", 1.0,
              _nifti_bytes(data, aff, False)[:-3000]),
        _Case(p % ("text", "text"), "T1w", 1.0, gzip.compress(b"this is not a NIfTI file\n" * 20, mtime=0)),
        _Case(p % ("fourd", "fourd"), "T1w", 1.0, ex4d),
        _Case(p % ("zeros", "zeros"), "T1w", 1.0, _nifti_bytes(np.zeros_like(data), aff, True)),
        _Case(p % ("nan", "nan"), "T1w", 1.0, _nifti_bytes(nan, aff, True)),
        _Case(p % ("missing", "missing"), "T1w", 1.0, None),
        _Case(p % ("nomask", "nomask"), "T1w", 1.0, good, {"fb_mask": None}),
        _Case(p % ("badmask", "badmask"), "T1w", 1.0, good,
              {"fb_mask": _nifti_bytes(np.ones((5, 6, 7), np.uint8), aff, True)}),
    ]


def build_sample_tree(dest: Path, *, small: bool = False, broken: bool = False) -> Path:
    """Write the embedded default into ``dest`` (created) in the OpenMind repo layout; returns ``dest``.

    >>> import tempfile, pathlib
    >>> root = build_sample_tree(pathlib.Path(tempfile.mkdtemp()), small=True)
    >>> from openmind_prep.sources.metadata import read_metadata
    >>> [r.modality for r in read_metadata(root / "openneuro_metadata.csv")]
    ['T1w', 'T1w', 'T2w']
    """
    dest = Path(dest)
    images = dest / IMAGES_DIR
    cases = _cases(small) + (_broken_cases() if broken else [])
    rows = []
    for i, case in enumerate(cases):
        mask_rel = {}
        for name, content in case.masks.items():
            rel = f"{strip_nifti_suffix(case.path)}__Data/{name}.nii.gz"
            mask_rel[name] = rel
            if content is not None:
                (images / rel).parent.mkdir(parents=True, exist_ok=True)
                (images / rel).write_bytes(content)
        if case.image is not None:
            (images / case.path).parent.mkdir(parents=True, exist_ok=True)
            (images / case.path).write_bytes(case.image)
        dataset = case.path.split("/")[0]
        rows.append({
            "image_path": case.path, "modality": case.modality, "unique_id": f"{dataset}_{i:05d}",
            "image_quality_score": "" if case.iqs is None else f"{case.iqs}",
            "anon_mask_path": mask_rel.get("deface_mask", ""), "anat_mask_path": mask_rel.get("fb_mask", ""),
            "derived_from": case.derived_from, "age": str(20 + 3 * i), "sex": "FM"[i % 2],
            "health_status": "healthy", "manufacturer": "Siemens", "magnetic_field_strength": "3",
            "is_brain_extract": "False",
        })
    _write_csv(dest / METADATA_CSV, CSV_COLUMNS, rows)  # last: a tree with a CSV is complete
    return dest


def _write_csv(path: Path, fields, rows) -> None:
    with writing(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)


def replicate_tree(src: Path, dest: Path, copies: int, *, link: bool = False) -> Path:
    """A larger tree: every image of ``src`` (with its masks) ``copies`` times under new dataset ids
    (``ds000001`` → ``ds100001``, ``ds200001``, ...), CSV rows included; files are copied, or
    hard-linked with ``link=True``. For scale tests and benchmarks.

    >>> import tempfile, pathlib
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> big = replicate_tree(build_sample_tree(tmp / "s", small=True), tmp / "big", 2)
    >>> from openmind_prep.sources.metadata import read_metadata
    >>> sorted({r.dataset for r in read_metadata(big / METADATA_CSV)})
    ['ds100001', 'ds100003', 'ds200001', 'ds200003']
    """
    import os
    import shutil

    src, dest = Path(src), Path(dest)
    with (src / METADATA_CSV).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    out = []
    for copy in range(copies):
        for row in rows:
            new = dict(row)
            for col in ("image_path", "anon_mask_path", "anat_mask_path"):
                if row[col]:
                    dataset, rest = row[col].split("/", 1)
                    new[col] = f"ds{copy + 1}{dataset[3:]}/{rest}"
                    target = dest / IMAGES_DIR / new[col]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    (os.link if link else shutil.copyfile)(src / IMAGES_DIR / row[col], target)
            new["unique_id"] = f"{new['image_path'].split('/')[0]}_{row['unique_id']}"
            out.append(new)
    _write_csv(dest / METADATA_CSV, fields, out)
    return dest
