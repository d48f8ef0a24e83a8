"""The embedded labelled sample: a small nnU-Net raw dataset built from real MRI (the demo's downstream
stage fine-tunes on it; the tests of labelled data preprocess it).

``Dataset901_MNITissue/`` (nnU-Net v2's layout: ``dataset.json``, ``imagesTr/CASE_0000.nii.gz``,
``labelsTr/CASE.nii.gz``) from nilearn's MNI152 2009 template: a block of the upper head (scalp, air
above it, grey and white matter) with labels 1 = grey matter, 2 = white matter taken from the
template's tissue probability maps, as five subjects:

- ``mni_iso``: the template's 1 mm grid (no resampling, only the crop);
- ``mni_15mm``: resampled to 1.5 mm;
- ``mni_flip``: 2 mm, stored in another voxel order (x and y reversed) with white matter as label 300
  (an int16 label map);
- ``mni_aniso_z``: 1 × 1 × 4.5 mm (separate z along the stored z axis);
- ``mni_aniso_x``: 4.2 × 1.1 × 1 mm (separate z along the stored x axis).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DATASET = "Dataset901_MNITissue"
#: subject -> (spacing in mm (NIfTI x, y, z) or None for the template's own, flip x/y, white matter label)
CASES = {
    "mni_iso": (None, False, 2),
    "mni_15mm": ((1.5, 1.5, 1.5), False, 2),
    "mni_flip": ((2.0, 2.0, 2.0), True, 300),
    "mni_aniso_z": ((1.0, 1.0, 4.5), False, 2),
    "mni_aniso_x": ((4.2, 1.1, 1.0), False, 2),
}
#: the block of the template used (NIfTI voxel order x, y, z): upper head with air above it
BLOCK = (slice(40, 120), slice(60, 160), slice(120, 189))
#: The demo's (and the fine-tuning tests') smaller dataset: four subjects with labels 0, 1, 2 on a
#: 48 x 56 x 48 block of the upper head (fits a CPU fine-tune of a few seconds per fold).
DEMO_CASES = {k: CASES[k] for k in ("mni_iso", "mni_15mm", "mni_aniso_z", "mni_aniso_x")}
DEMO_BLOCK = (slice(56, 104), slice(80, 136), slice(130, 178))


def tissue_labels(gm: np.ndarray, wm: np.ndarray, wm_label: int = 2) -> np.ndarray:
    """0 = neither, 1 = grey matter, ``wm_label`` = white matter (the larger probability above 0.3)."""
    gm, wm = gm.astype(np.float32) / 255, wm.astype(np.float32) / 255
    labels = np.zeros(gm.shape, np.int16 if wm_label > 255 else np.uint8)
    labels[(gm > 0.3) & (gm >= wm)] = 1
    labels[(wm > 0.3) & (wm > gm)] = wm_label
    return labels


def build_nnunet_raw(root: Path, cases: dict = CASES, block: tuple[slice, slice, slice] = BLOCK) -> Path:
    """Write ``root/Dataset901_MNITissue`` (``cases`` of :data:`CASES`' form, ``block`` of the template in
    NIfTI voxel order) and return its folder."""
    import nibabel as nib

    from openmind_prep.sources.embedded import _zoom, source_files

    src = source_files()
    mni = nib.load(src["mni_t1"])
    t1 = np.asarray(mni.dataobj)[block].astype(np.float32)
    gm = np.asarray(nib.load(src["mni_gm"]).dataobj)[block]
    wm = np.asarray(nib.load(src["mni_wm"]).dataobj)[block]
    affine = mni.affine.copy()
    affine[:3, 3] = mni.affine[:3, :3] @ np.array([s.start for s in block]) + mni.affine[:3, 3]
    folder = Path(root) / DATASET
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for case, (spacing, flip, wm_label) in cases.items():
        if spacing is None:
            image, tissue, aff = t1, (gm, wm), affine
        else:
            image, aff = _zoom(t1, affine, spacing)
            tissue = tuple(np.clip(_zoom(g, affine, spacing)[0], 0, 255) for g in (gm, wm))
        labels = tissue_labels(*tissue, wm_label=wm_label)
        image = np.clip(np.rint(image), 0, 255).astype(np.int16)
        if flip:  # another voxel order; the affine keeps world coordinates
            image, labels = image[::-1, ::-1].copy(), labels[::-1, ::-1].copy()
            nx, ny = image.shape[:2]
            aff = aff @ np.array([[-1, 0, 0, nx - 1], [0, -1, 0, ny - 1], [0, 0, 1, 0], [0, 0, 0, 1.0]])
        nib.save(nib.Nifti1Image(image, aff), folder / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(labels, aff), folder / "labelsTr" / f"{case}.nii.gz")
    dataset = {"channel_names": {"0": "T1"}, "labels": {"background": 0, "grey_matter": 1, "white_matter": 2},
               "numTraining": len(cases), "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return folder

