"""Builds a small store of REAL MRI (nilearn MNI152, nibabel anatomical, dipy aniso) with the real writer.

Used by tests/test_shards.py and tests/test_loaders.py: eight z-scored volumes (variants by flips,
crops and downsampling), two with both masks, float16 and float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from openmind_prep.store import manifest
from openmind_prep.sources.embedded import source_files
from openmind_prep.store.store import Store


def _zscore(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    return (a - a.mean()) / max(float(a.std()), 1e-8)


def real_volumes() -> dict[str, np.ndarray]:
    """name → z-scored zyx float32 volume, all from real MRI files."""
    import nibabel as nib

    files = source_files()
    mni = _zscore(np.asarray(nib.load(files["mni_t1"]).dataobj).T)  # (189, 233, 197) zyx
    anat = _zscore(np.asarray(nib.load(files["anatomical"]).dataobj).T)
    aniso = _zscore(np.asarray(nib.load(files["aniso_vox"]).dataobj).T)
    return {
        "mni_half": mni[::2, ::2, ::2],          # (95, 117, 99): 2 chunks per axis
        "mni_third": mni[::3, ::3, ::3],
        "mni_crop": mni[40:120, 60:160, 50:130],
        "mni_flip": mni[::-3, ::3, ::-3],
        "anat": anat,
        "anat_flip": anat[:, ::-1],
        "aniso": aniso,
        "aniso_t": np.ascontiguousarray(aniso.transpose(2, 1, 0)),
    }


def build_store(dest: Path) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    """Write the volumes into a store with manifest; returns (store, key → arrays written)."""
    store = Store.create(Path(dest)).root
    written, rows = {}, []
    for i, (name, vol) in enumerate(real_volumes().items()):
        key = f"ds00{i % 2}/sub-{i:02d}/anat/sub-{i:02d}_{name}_T1w"
        arrays = {"image": vol.astype(np.float16 if i % 3 else np.float32)}
        if i < 2:
            arrays["anat_mask"] = (vol > 0.5).astype(np.uint8)
            arrays["anon_mask"] = (vol < -0.5).astype(np.uint8)
        case = Store(store).write_case(key, arrays, {"image_path": key + ".nii.gz"})
        written[key] = arrays
        rows.append({**manifest.empty_row(key + ".nii.gz"), "status": manifest.OK,
                     "zarr_path": f"{key}/image",
                     "anon_mask_zarr_path": f"{key}/anon_mask" if i < 2 else "",
                     "anat_mask_zarr_path": f"{key}/anat_mask" if i < 2 else "",
                     "shape": list(vol.shape), "checksum": case.checksums["image"],
                     "anon_mask_checksum": case.checksums.get("anon_mask", ""),
                     "anat_mask_checksum": case.checksums.get("anat_mask", ""),
                     "dtype": str(arrays["image"].dtype), "bytes": case.nbytes, "modality": "T1w"})
    rows.append({**manifest.empty_row("ds009/sub-99/anat/sub-99_T1w.nii.gz"), "error": "truncated"})
    manifest.write_fragment(store, rows)
    manifest.merge_manifest(store)
    return store, written


def build_store_and_shards(root: Path) -> tuple[Path, dict[str, dict[str, np.ndarray]], Path]:
    """:func:`build_store` in ``root/store`` plus its WebDataset shards (several, small) in ``root/wds``."""
    from openmind_prep.shards.writer import merge_index, write_shards

    store, written = build_store(root / "store")
    write_shards(store, root / "wds", shard_size=250_000, progress=False)
    merge_index(root / "wds")
    return store, written, root / "wds"
