"""Our label maps against the real nnU-Net v2 (issue 21 item 2), in two steps and two venvs:

    python benchmarks/labels_nnunet.py ours OUT                 # this project's venv
    /tmp/labvenv/bin/python benchmarks/labels_nnunet.py nnunet OUT   # a venv with `pip install nnunetv2`

``ours`` builds the test suite's nnU-Net raw dataset of real MRI (``openmind_prep/sources/embedded_tissue.py``: MNI152 with
grey/white labels at 1, 1.5, 2 mm, reoriented, anisotropic along z and x) plus random blocky label
maps (uint8, int16 with -1 and 300, int32), preprocesses / resamples them with our code and saves
everything in ``OUT/ours.npz``. ``nnunet`` reads the same files with nnU-Net's own
``SimpleITKIO``, runs ``crop_to_nonzero`` and ``resample_data_or_seg_to_shape(..., is_seg=True,
order=1, order_z=0, force_separate_z=None)`` (the plans' segmentation resampling), maps -1 to 0 as its
training loader does, and prints, per case, the voxels that differ and how many of them lie at an
exact tie (the two best label indicators within 1e-9, where float64 summation order decides).
Nothing of nnunetv2 is imported by the project or its tests (it pulls its own torch).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

RANDOM = [((1.0, 1.0, 1.0), (5, 7, 6)), ((2.0, 1.0, 1.0), (9, 7, 6)), ((0.5, 0.5, 2.5), (3, 3, 14)),
          ((5.0, 1.0, 1.2), (16, 9, 8)), ((1.5, 1.5, 1.5), (15, 12, 9))]
LABEL_SETS = ((np.uint8, [0, 1, 2, 7]), (np.int16, [-1, 0, 3, 300]), (np.int32, [0, 5, 70000]))


def random_maps():
    """(name, label map, spacing, new shape) for each random case (the same in both venvs)."""
    for spacing, new_shape in RANDOM:
        rng = np.random.default_rng(sum(new_shape))
        for dtype, labels in LABEL_SETS:
            blobs = rng.choice(labels, size=(4, 4, 3))
            seg = np.kron(blobs, np.ones((3, 2, 2), int))[:10, :7, :5].astype(dtype)
            yield f"random {np.dtype(dtype).name} {spacing}->{new_shape}", seg, spacing, new_shape


def ours(out: Path) -> None:
    from openmind_prep.preprocess.onemmiso import preprocess_case
    from openmind_prep.preprocess.resample import resample_labels
    from openmind_prep.sources.embedded_tissue import CASES, build_nnunet_raw

    folder = build_nnunet_raw(out / "raw")
    saved, cases = {}, {}
    for case in CASES:
        image, label = folder / "imagesTr" / f"{case}_0000.nii.gz", folder / "labelsTr" / f"{case}.nii.gz"
        start = time.perf_counter()
        result = preprocess_case(image, label=label, dtype=np.float32)
        cases[case] = {"image": str(image), "label": str(label), "seconds": time.perf_counter() - start,
                       "bbox": [list(b) for b in result.crop_bbox]}
        saved[case] = result.label
    for name, seg, spacing, new_shape in random_maps():
        saved[name] = resample_labels(seg, new_shape, spacing, (1.0, 1.0, 1.0))
    np.savez_compressed(out / "ours.npz", **saved)
    (out / "cases.json").write_text(json.dumps(cases, indent=1))
    print(f"wrote {out / 'ours.npz'} ({len(saved)} label maps); now run the nnunet step in its venv")


def _tie_margin(seg, new_shape, axis):
    """Per output voxel, the gap between the best and the second-best label indicator (skimage order 1, as
    nnU-Net): ~0 where two labels tie and float64 summation order decides."""
    from scipy.ndimage import map_coordinates
    from skimage.transform import resize

    def gap(volume, shape):
        labels = np.unique(volume)
        if len(labels) < 2:
            return np.full(shape, np.inf)
        scores = np.sort([resize((volume == c).astype(float), shape, 1, mode="edge", clip=True,
                                 anti_aliasing=False) for c in labels], axis=0)
        return scores[-1] - scores[-2]

    seg = np.asarray(seg, dtype=float)
    if axis is None:
        return gap(seg, new_shape)
    mid = list(new_shape)
    mid[axis] = seg.shape[axis]
    margin = np.empty(mid)
    plane = [n for d, n in enumerate(new_shape) if d != axis]
    for i in range(seg.shape[axis]):
        index = tuple(i if d == axis else slice(None) for d in range(3))
        margin[index] = gap(seg[index], plane)
    grids = np.mgrid[tuple(slice(0, n) for n in new_shape)].astype(float)
    coords = np.array([margin.shape[d] / new_shape[d] * (grids[d] + 0.5) - 0.5 for d in range(3)])
    return map_coordinates(margin, coords, order=0, mode="nearest")


def nnunet(out: Path) -> None:
    import nnunetv2
    from importlib.metadata import version
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
    from nnunetv2.preprocessing.resampling.default_resampling import (compute_new_shape,
                                                                      determine_do_sep_z_and_axis,
                                                                      resample_data_or_seg_to_shape)

    ours_maps = np.load(out / "ours.npz")
    cases = json.loads((out / "cases.json").read_text())
    print(f"nnunetv2 {version('nnunetv2')} ({Path(nnunetv2.__file__).parent})")
    rows = []

    def compare(name, mine, theirs, seg, spacing, new_shape):
        _, axis = determine_do_sep_z_and_axis(None, spacing, [1.0, 1.0, 1.0])
        differ = mine != theirs
        ties = int((differ & (_tie_margin(seg, new_shape, axis) <= 1e-9)).sum()) if differ.any() else 0
        rows.append((name, str(mine.dtype), str(tuple(int(n) for n in new_shape)), int(differ.sum()), ties,
                     differ.size))

    io = SimpleITKIO()
    for case, info in cases.items():
        data, props = io.read_images([info["image"]])
        seg, _ = io.read_seg(info["label"])
        spacing = props["spacing"]
        data, seg, bbox = crop_to_nonzero(data.astype(np.float32), seg.astype(np.int16))
        assert [list(b) for b in bbox] == info["bbox"], (case, bbox, info["bbox"])
        new_shape = compute_new_shape(data.shape[1:], spacing, [1.0, 1.0, 1.0])
        theirs = resample_data_or_seg_to_shape(seg, new_shape, spacing, [1.0, 1.0, 1.0], is_seg=True, order=1,
                                               order_z=0, force_separate_z=None)[0]
        theirs[theirs < 0] = 0
        mine = ours_maps[case]
        compare(f"{case} (spacing {tuple(round(float(s), 2) for s in spacing)})", mine, theirs.astype(mine.dtype),
                seg[0], spacing, new_shape)
    for name, seg, spacing, new_shape in random_maps():
        theirs = resample_data_or_seg_to_shape(seg[None], new_shape, spacing, [1.0, 1.0, 1.0], is_seg=True, order=1,
                                               order_z=0, force_separate_z=None)[0]
        compare(name, ours_maps[name], theirs, seg, spacing, new_shape)
    print("| case | dtype | stored shape | voxels that differ | of them at exact ties | voxels |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")
    off_ties = sum(r[3] - r[4] for r in rows)
    print(f"differences off ties: {off_ties}")
    sys.exit(1 if off_ties else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("ours", "nnunet"))
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    (ours if args.step == "ours" else nnunet)(args.out)


if __name__ == "__main__":
    main()
