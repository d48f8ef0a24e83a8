"""Our export through stock nnU-Net v2 (PyPI ``nnunetv2``) on a tiny raw dataset, a few CPU iterations.

Two interpreters: this project's (builds the raw dataset from the MNI152 template shipped with nilearn,
exports a tiny network, runs ``python -m trainers.to_nnunet``) and a separate benchmark venv with
``nnunetv2`` (fingerprint, preprocess with our plans, a few training steps from our weights through
nnU-Net's own trainer and ``load_pretrained_weights``: ``benchmarks/nnunet_steps.py``; ``--epochs 1``
adds the full ``nnUNetv2_train -pretrained_weights`` command)::

    python benchmarks/nnunet_route.py --work /tmp/nnroute --nnunet-venv /tmp/benchvenv

What ran and what happened is recorded in ``benchmarks/NOTES.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATASET_ID, DATASET = 990, "Dataset990_MNITissueTiny"


def build_raw(root: Path) -> Path:
    """``root/Dataset990_MNITissueTiny``: six 2 mm subjects of the MNI152 T1 (as stored, mirrored, intensities
    inverted, noisy, dimmed, anisotropic 2 × 2 × 3 mm; nnU-Net's 5 folds need 5) with background / CSF-ish /
    grey / white labels from its tissue maps."""
    import nibabel as nib

    from openmind_prep.sources.embedded import _zoom, source_files

    src = source_files()
    mni = nib.load(src["mni_t1"])
    t1 = np.asarray(mni.dataobj, dtype=np.float32)
    gm, wm = (np.asarray(nib.load(src[k]).dataobj, dtype=np.float32) for k in ("mni_gm", "mni_wm"))
    t1, aff = _zoom(t1, mni.affine, (2.0, 2.0, 2.0))
    gm, wm = (_zoom(g, mni.affine, (2.0, 2.0, 2.0))[0] for g in (gm, wm))
    labels = np.where(t1 > 5, 1, 0).astype(np.uint8)
    labels[(gm > 0.3 * gm.max()) & (gm >= wm)] = 2
    labels[(wm > 0.3 * wm.max()) & (wm > gm)] = 3
    folder = root / DATASET
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    cases = {"mni": (t1, labels, aff), "mni_mirrored": (t1[::-1].copy(), labels[::-1].copy(), aff),
             "mni_remapped": (np.where(t1 > 0, 300 - t1, 0), labels, aff)}
    aniso, aff3 = _zoom(t1, aff, (2.0, 2.0, 3.0))
    noise = np.random.default_rng(0).normal(0, 5, t1.shape).astype(np.float32)
    cases["mni_noisy"] = (np.where(t1 > 0, t1 + noise, 0), labels, aff)
    cases["mni_dim"] = (0.5 * t1, labels, aff)
    cases["mni_aniso"] = (aniso, _zoom(labels, aff, (2.0, 2.0, 3.0), order=0)[0].astype(np.uint8), aff3)
    for case, (image, lab, a) in cases.items():
        nib.save(nib.Nifti1Image(image.astype(np.float32), a), folder / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(lab.astype(np.uint8), a), folder / "labelsTr" / f"{case}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1"}, "labels": {"background": 0, "csf": 1, "grey": 2, "white": 3},
        "numTraining": len(cases), "file_ending": ".nii.gz"}, indent=1))
    return folder


def run(cmd: list[str], env: dict, log: Path) -> float:
    """Run ``cmd``, appending its output to ``log``; returns seconds; raises on failure."""
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--work", type=Path, required=True, help="Folder for the raw / preprocessed / results trees.")
    p.add_argument("--nnunet-venv", type=Path, required=True, help="A venv with nnunetv2 installed.")
    p.add_argument("--steps", type=int, default=5, help="Training steps through benchmarks/nnunet_steps.py.")
    p.add_argument("--epochs", type=int, default=0, help="Also run nnUNetv2_train with nnUNetTrainer_1epoch (1) "
                                                           "or _5epochs (5); 0: skip (250 iterations per epoch).")
    a = p.parse_args()
    import torch

    from trainers.export import save_nnssl_checkpoint
    from trainers.networks import tiny

    work = a.work.resolve()
    raw, pre, res = work / "raw", work / "preprocessed", work / "results"
    for f in (raw, pre, res):
        f.mkdir(parents=True, exist_ok=True)
    folder = build_raw(raw)
    torch.manual_seed(0)
    export = save_nnssl_checkpoint(work / "export" / "export.pth", tiny(), "tiny", (32, 32, 32), {"arch": "tiny"})
    log = work / "log.txt"
    log.write_text("")
    times = {"to_nnunet": run([sys.executable, "-m", "trainers.to_nnunet", str(export), "--dataset", str(folder),
                               "--out", str(work / "to_nnunet")], dict(os.environ), log)}
    bin_ = a.nnunet_venv / "bin"
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(res),
           "nnUNet_n_proc_DA": "0", "nnUNet_compile": "false", "PYTHONPATH": ""}
    plans = json.loads((work / "to_nnunet" / "plans.json").read_text())["plans_name"]
    times["fingerprint"] = run([str(bin_ / "nnUNetv2_extract_fingerprint"), "-d", str(DATASET_ID), "-np", "1"], env, log)
    (pre / DATASET).mkdir(parents=True, exist_ok=True)
    (pre / DATASET / f"{plans}.json").write_text((work / "to_nnunet" / "plans.json").read_text())
    (pre / DATASET / "dataset.json").write_text((folder / "dataset.json").read_text())
    times["preprocess"] = run([str(bin_ / "nnUNetv2_preprocess"), "-d", str(DATASET_ID), "-plans_name", plans,
                               "-c", "3d_fullres", "-np", "1"], env, log)
    steps = Path(__file__).with_name("nnunet_steps.py")
    times["steps"] = run([str(bin_ / "python"), str(steps), str(DATASET_ID), plans,
                          str(work / "to_nnunet" / "pretrained_weights.pth"), str(a.steps)], env, log)
    if a.epochs:
        times["train"] = run([str(bin_ / "nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0", "-p", plans,
                              "-tr", f"nnUNetTrainer_{a.epochs}epoch" + ("s" if a.epochs > 1 else ""), "-device", "cpu",
                              "-pretrained_weights", str(work / "to_nnunet" / "pretrained_weights.pth")], env, log)
    print(json.dumps({k: round(v, 1) for k, v in times.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
