"""Overlapping-view sampler: ours vs the CVA reference's CPU path, pairs per second, in one run.

The reference (Tenbatsu24/LatentCampus ``OverlapTransform``, train mode) takes a batch of
257^3 regions (the initial patch size of a 160^3 patch with +-30 deg rotation and scale 0.85) and
runs, on the CPU with batchgenerators: mirror; ``SpatialTransform`` (order 3, rotation p=0.2 with
its default angles, scale 0.7-1.4 p=0.2, centre crop to 257^3); low-res simulation; two
overlapping 160^3 numpy crops; then per-crop noise / blur / brightness / contrast / gamma. It is
re-built here from batchgenerators with the same arguments (nnssl itself is not installed).
Ours: ``OverlapViewSampler((160,) * 3)`` on the same regions with the same probabilities.

Run (benchmark venv, see README):
    PYTHONPATH=. .venv-bench/bin/python benchmarks/sampler.py                # CPU, ours vs reference
    PYTHONPATH=. .venv-bench/bin/python benchmarks/sampler.py --always-spatial  # p_rot = p_scale = 1
    PYTHONPATH=. python benchmarks/sampler.py --device cuda                   # ours on the GPU, ms/batch
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from loaders import OverlapViewSampler

REGION, PATCH = 257, 160


def load_regions(batch: int, path: Path | None) -> torch.Tensor:
    """``[batch, 1, 257, 257, 257]``: a real 1 mm T1 (MNI152), z-scored, padded with its background."""
    import nibabel

    if path is None:
        import glob

        hits = glob.glob(str(Path(__file__).resolve().parents[1] / ".venv/lib/python*/site-packages/nilearn/"
                             "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
        if not hits:
            raise SystemExit("MNI152 template not found: pass --volume PATH to any 3D NIfTI")
        path = Path(hits[0])
    v = torch.tensor(np.asarray(nibabel.load(str(path)).dataobj, dtype=np.float32))
    v = ((v - v.mean()) / v.std())[:REGION, :REGION, :REGION]
    pads = []
    for n in reversed(v.shape):
        pads += [(REGION - n) // 2, REGION - n - (REGION - n) // 2]
    v = F.pad(v, pads, value=float(v.min()))
    return torch.stack([torch.roll(v, shifts=(7 * i, -5 * i, 3 * i), dims=(0, 1, 2)) for i in range(batch)])[:, None]


def overlap_crops_reference(data: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The reference's crop step, re-written: overlap in [0.4, 0.8] split by Dirichlet weights on its
    log, int-truncated voxels, view 2 always displaced in +x+y+z, numpy crops, boxes kept untruncated."""
    b, c, *shape = data.shape
    crops = np.empty((2 * b, c, PATCH, PATCH, PATCH), dtype=data.dtype)
    boxes = np.empty((2 * b, 6), dtype=np.float32)
    for i in range(b):
        frac = np.exp(rng.dirichlet(np.ones(3)) * np.log(rng.uniform(0.4, 0.8)))
        s1, s2 = [], []
        for n, f in zip(shape, frac):
            o = int(PATCH * f)
            lo, hi = o // 2 + PATCH - o + 1, n - (PATCH - o) - o // 2 - 1
            centre = rng.integers(lo, hi + 1) if hi > lo else None
            s1.append(0 if centre is None else centre + o // 2 - PATCH)
            s2.append(0 if centre is None else centre - o // 2)
        crops[i] = data[i, :, s1[0]:s1[0] + PATCH, s1[1]:s1[1] + PATCH, s1[2]:s1[2] + PATCH]
        crops[b + i] = data[i, :, s2[0]:s2[0] + PATCH, s2[1]:s2[1] + PATCH, s2[2]:s2[2] + PATCH]
        boxes[i], boxes[b + i] = [*(1 - frac), 1, 1, 1], [0, 0, 0, *frac]
    return crops, boxes


def reference_pipeline(p_spatial: float):
    """The reference's train-mode transform, built from batchgenerators with its arguments."""
    from batchgenerators.transforms.abstract_transforms import Compose
    from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                             ContrastAugmentationTransform, GammaTransform)
    from batchgenerators.transforms.noise_transforms import (GaussianBlurTransform, GaussianNoiseTransform,
                                                             RicianNoiseTransform)
    from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
    from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

    spatial = Compose([
        MirrorTransform(axes=(0, 1, 2)),
        SpatialTransform((REGION,) * 3, patch_center_dist_from_border=None, do_elastic_deform=False,
                         do_rotation=True, p_rot_per_axis=1, do_scale=True, scale=(0.7, 1.4),
                         border_mode_data="constant", border_cval_data=0, order_data=3,
                         border_mode_seg="constant", border_cval_seg=-1, order_seg=1, random_crop=False,
                         p_el_per_sample=0, p_scale_per_sample=p_spatial, p_rot_per_sample=p_spatial,
                         independent_scale_for_each_axis=False),
        SimulateLowResolutionTransform(zoom_range=(0.5, 1), per_channel=True, p_per_channel=0.5,
                                       order_downsample=0, order_upsample=3, p_per_sample=0.1, ignore_axes=None),
    ])
    noise = [RicianNoiseTransform(noise_variance=(0, 0.1), p_per_sample=0.1), GaussianNoiseTransform(p_per_sample=0.1)]
    per_crop = Compose([
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
        ContrastAugmentationTransform(p_per_sample=0.15),
        GammaTransform((0.7, 1.5), True, True, retain_stats=True, p_per_sample=0.1),
        GammaTransform((0.7, 1.5), False, True, retain_stats=True, p_per_sample=0.3),
    ])

    def run(data: np.ndarray, rng: np.random.Generator):
        out = spatial(data=data.copy(), seg=None)["data"]
        crops, boxes = overlap_crops_reference(out, rng)
        crops = noise[int(rng.integers(2))](data=crops, seg=None)["data"]  # OneOf(Rician, Gaussian)
        crops = per_crop(data=crops, seg=None)["data"]
        return torch.from_numpy(crops).float(), torch.from_numpy(boxes)

    return run


def time_cpu(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    regions = load_regions(args.batch, args.volume)
    p = 1.0 if args.always_spatial else 0.2
    ours = OverlapViewSampler((PATCH,) * 3, p_scale=p, p_rotate=p)
    g = torch.Generator().manual_seed(0)
    ours(regions, generator=g)  # warm-up
    t_ours = []
    for _ in range(args.batches):
        t0 = time.perf_counter()
        ours(regions, generator=g)
        t_ours.append(time.perf_counter() - t0)
    ref, rng, data = reference_pipeline(p), np.random.default_rng(0), regions.numpy()
    t_ref = []
    for _ in range(args.ref_batches):
        t0 = time.perf_counter()
        ref(data, rng)
        t_ref.append(time.perf_counter() - t0)
    mo, mr = statistics.mean(t_ours), statistics.mean(t_ref)
    print(f"CPU, {torch.get_num_threads()} torch threads, B={args.batch}, patch {PATCH}^3 from {REGION}^3 regions, "
          f"p_rotate = p_scale = {p}")
    print(f"  ours:      {mo * 1e3:8.0f} ms/batch  {args.batch / mo:7.2f} pairs/s  ({args.batches} batches)")
    print(f"  reference: {mr * 1e3:8.0f} ms/batch  {args.batch / mr:7.2f} pairs/s  ({args.ref_batches} batches)")
    print(f"  speed-up:  {mr / mo:.1f}x")


def time_gpu(args: argparse.Namespace) -> None:
    dev = torch.device(args.device)
    regions = load_regions(args.batch, args.volume).to(dev)
    p = 1.0 if args.always_spatial else 0.2
    ours = OverlapViewSampler((PATCH,) * 3, p_scale=p, p_rotate=p)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        ours(regions, generator=g)
    torch.cuda.synchronize(dev)
    times = []
    for _ in range(args.batches):
        t0 = time.perf_counter()
        ours(regions, generator=g)
        torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    print(f"{torch.cuda.get_device_name(dev)}, B={args.batch} pairs, patch {PATCH}^3 from {REGION}^3 regions, "
          f"p_rotate = p_scale = {p}: median {statistics.median(times) * 1e3:.1f} ms/batch, "
          f"p90 {sorted(times)[int(0.9 * len(times))] * 1e3:.1f} ms ({args.batches} repeats)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu: ours vs reference; cuda: ours only, ms per batch")
    ap.add_argument("--batch", type=int, default=4, help="volumes per batch (pairs)")
    ap.add_argument("--batches", type=int, default=10, help="timed batches for ours (repeats on GPU: use 50)")
    ap.add_argument("--ref-batches", type=int, default=4, help="timed batches for the reference (slow)")
    ap.add_argument("--always-spatial", action="store_true",
                    help="rotate and zoom every sample (both sides) instead of p=0.2: the worst case")
    ap.add_argument("--volume", type=Path, default=None, help="3D NIfTI used as region (default: MNI152)")
    args = ap.parse_args()
    (time_cpu if args.device == "cpu" else time_gpu)(args)


if __name__ == "__main__":
    main()
