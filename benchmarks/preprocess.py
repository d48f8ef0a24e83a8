"""Per-volume onemmiso: ours vs nnU-Net v2 on the same real volumes, one core each.

Run in the benchmark venv (nnunetv2, blosc2, zarr installed there):

    .venv-bench/bin/python benchmarks/preprocess.py [--out DIR] [--repeat 3]

For each volume (real MRI from nilearn / dipy / nibabel, some written at spacings that need
resampling, one thick-slice variant taking nnU-Net's separate-z path) it times
  ours:    openmind_prep.preprocess.onemmiso.preprocess_array (crop + z-score + resample; torch, 1 thread),
           cold (resampling matrices not cached yet) and warm (best of --repeat),
  nnU-Net: crop_to_nonzero + ZScoreNormalization + resample_data_or_seg_to_shape (order 3,
           order_z 0, force_separate_z None: the nnssl onemmiso plan),
and prints the times, the speed ratio, the max abs output difference, and the stored bytes:
ours (Zarr v3, float16, blosc zstd + byte shuffle, one shard) vs nnssl's float32 blosc2 zstd level 8.
Reading the file (SimpleITK, the same for both) is not timed.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SITE = Path(nib.__file__).resolve().parents[1]


def _find(*candidates: Path) -> Path:
    for c in candidates:
        if c.exists():
            return c
    raise FileNotFoundError(f"none of {candidates} exists")


def _data_files() -> dict[str, Path]:
    """Real MRI shipped in nilearn / dipy / nibabel (bench venv or the main venv)."""
    main_site = next((REPO / ".venv" / "lib").glob("python3*/site-packages"), SITE)
    roots = [SITE, main_site]
    return {
        "mni": _find(*(r / "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz" for r in roots)),
        "s0": _find(*(r / "dipy/data/files/S0_10slices.nii.gz" for r in roots)),
        "aniso": _find(*(r / "dipy/data/files/aniso_vox.nii.gz" for r in roots)),
    }


def build_volumes(out: Path) -> dict[str, Path]:
    """Write the benchmark volumes (real data, spacings chosen to need resampling)."""
    files = _data_files()
    mni = np.asanyarray(nib.load(files["mni"]).dataobj).astype(np.float32)
    s0 = np.asanyarray(nib.load(files["s0"]).dataobj)
    vols = {
        # crop (155, 181, 145) zyx -> 176 x 240 x 256 at 1 mm
        "mni_176x240x256": (mni, np.diag([256 / 145, 240 / 181, 176 / 155, 1])),
        "mni_0.9x0.9x1.3": (mni, np.diag([0.9, 0.9, 1.3, 1])),
        "mni_thick_.9x.9x5_sepz": (mni[:, :, ::5], np.diag([0.9, 0.9, 5.0, 1])),
        "dipy_S0_2x2x53_sepz": (s0, np.diag([2.0, 2.0, 53.14132, 1])),  # its own affine is not orthonormal
    }
    paths = {name: out / f"{name}.nii.gz" for name in vols}
    for name, (data, affine) in vols.items():
        nib.save(nib.Nifti1Image(data, affine), paths[name])
    paths["dipy_aniso_vox_4x4x5"] = files["aniso"]
    return paths


def run_nnunet(data: np.ndarray, spacing) -> np.ndarray:
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import ZScoreNormalization
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape, resample_data_or_seg_to_shape

    cropped, _, _ = crop_to_nonzero(data[None].copy())
    norm = ZScoreNormalization(use_mask_for_norm=False, intensityproperties={})
    cropped[0] = norm.run(cropped[0])
    new_shape = compute_new_shape(cropped.shape[1:], spacing, [1.0, 1.0, 1.0])
    return resample_data_or_seg_to_shape(cropped, new_shape, spacing, [1.0, 1.0, 1.0], is_seg=False,
                                         order=3, order_z=0, force_separate_z=None)[0]


def reference_bytes(array: np.ndarray) -> int:
    import blosc2

    stored = blosc2.asarray(np.ascontiguousarray(array, dtype=np.float32),
                            cparams={"codec": blosc2.Codec.ZSTD, "clevel": 8})
    return int(stored.schunk.cbytes)


def our_bytes(array: np.ndarray, store_dir: Path, key: str) -> int:
    from openmind_prep.store.store import Store

    store = Store.create(store_dir).root
    return Store(store).write_case(key, {"image": array.astype(np.float16)}, {}).nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the volumes (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=3, help="warm repetitions of ours (best is reported)")
    args = parser.parse_args()

    from openmind_prep.preprocess import resample
    from openmind_prep.preprocess.onemmiso import preprocess_array, read_image

    torch.set_num_threads(1)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    out.mkdir(parents=True, exist_ok=True)
    volumes = build_volumes(out)
    print(f"torch {torch.__version__}, 1 thread; CPU: {os.cpu_count()} cores visible\n")
    header = (f"{'volume':<24} {'in (zyx)':>15} {'out (zyx)':>15} {'nnU-Net s':>9} {'ours cold':>9} "
              f"{'ours warm':>9} {'speed-up':>8} {'max|diff|':>9} {'ours B':>10} {'ref B':>10}")
    print(header)
    print("-" * len(header))
    totals = np.zeros(3)
    for name, path in volumes.items():
        data, props = read_image(path)
        t0 = time.perf_counter()
        expected = run_nnunet(data, props.spacing)
        t_ref = time.perf_counter() - t0
        resample.axis_matrix.cache_clear()
        resample._blocks.cache_clear()
        t0 = time.perf_counter()
        ours, _ = preprocess_array(data, props.spacing)
        t_cold = time.perf_counter() - t0
        warm = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            ours, _ = preprocess_array(data, props.spacing)
            warm.append(time.perf_counter() - t0)
        t_warm = min(warm)
        assert ours.shape == expected.shape, (ours.shape, expected.shape)
        diff = float(np.abs(ours - expected).max())
        b_ours = our_bytes(ours, out / "store", name)
        b_ref = reference_bytes(expected)
        totals += (t_ref, t_cold, t_warm)
        print(f"{name:<24} {'x'.join(map(str, data.shape)):>15} {'x'.join(map(str, ours.shape)):>15} "
              f"{t_ref:9.3f} {t_cold:9.3f} {t_warm:9.3f} {t_ref / t_warm:7.1f}x {diff:9.2e} "
              f"{b_ours:10,} {b_ref:10,}")
    print("-" * len(header))
    print(f"{'total':<56} {totals[0]:9.3f} {totals[1]:9.3f} {totals[2]:9.3f} {totals[0] / totals[2]:7.1f}x "
          f"(cold {totals[0] / totals[1]:.1f}x)")


if __name__ == "__main__":
    main()
