"""Overlapping-view sampler: ours vs the CVA reference's CPU path, pairs per second, in one run.

The reference (Tenbatsu24/LatentCampus ``OverlapTransform``, train mode) takes a batch of
257^3 regions (the initial patch size of a 160^3 patch with +-30 deg rotation and scale 0.85) and
runs, on the CPU with batchgenerators: mirror; ``SpatialTransform`` (order 3, rotation p=0.2 with
its default angles, scale 0.7-1.4 p=0.2, centre crop to 257^3); low-res simulation; two
overlapping 160^3 numpy crops; then per-crop noise / blur / brightness / contrast / gamma. It is
re-built here from batchgenerators with the same arguments (nnssl itself is not installed).
Ours: ``OverlapViewSampler((160,) * 3)`` on the same regions with the same probabilities.
Same cores on both sides: ours with ``--threads`` torch threads, the reference in as many worker
processes (its numpy/scipy steps are single-threaded; nnssl runs it in worker processes).
Printed for p = 0, the default p = 0.2 (measured, and the reference's expectation from its p = 0
and p = 1 costs, because a few reference batches at p = 0.2 are dominated by luck) and p = 1.

Run (benchmark venv, see docs/benchmarks.md):
    PYTHONPATH=. .venv-bench/bin/python benchmarks/sampler.py               # CPU, 1 core each side
    PYTHONPATH=. .venv-bench/bin/python benchmarks/sampler.py --threads 2   # 2 threads vs 2 processes
    PYTHONPATH=. python benchmarks/sampler.py --device cuda [--always-spatial]  # ours on the GPU, ms/batch
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


_DATA: np.ndarray | None = None  # the regions, inherited by forked reference workers (not pickled)
_CALLS = [0]


def _init_worker() -> None:
    """Reference worker start-up (untimed): import batchgenerators and count the samples it
    resamples (rotated and/or scaled) with a counter around its ``interpolate_img`` (one call
    per channel; the wrapper costs nothing measurable next to an order-3 257^3 resampling)."""
    from batchgenerators.augmentations import spatial_transformations as st

    inner = st.interpolate_img

    def counted(*a, **k):
        _CALLS[0] += 1
        return inner(*a, **k)

    st.interpolate_img = counted
    reference_pipeline(0.0)


def _ref_worker(job: tuple[float, int]) -> tuple[float, int]:
    """One reference batch in a worker process: (seconds, samples resampled)."""
    from threadpoolctl import threadpool_limits

    p, seed = job
    data, _CALLS[0] = _DATA, 0
    np.random.seed(seed)  # batchgenerators draws from numpy's global RNG
    run, rng = reference_pipeline(p), np.random.default_rng(seed)
    with threadpool_limits(1):
        t0 = time.perf_counter()
        run(data, rng)
        return time.perf_counter() - t0, _CALLS[0] // data.shape[1]


def _interleaved(regions: torch.Tensor, p: float, n_ours: int, n_ref: int, procs: int, pool) -> dict:
    """Alternate reference batches (``procs`` at once, in worker processes) with runs of our
    batches, so both sides see the same load on a shared machine. ms per batch, branch counts."""
    ours, g = OverlapViewSampler((PATCH,) * 3, p_scale=p, p_rotate=p), torch.Generator().manual_seed(0)
    ours(regions, generator=g)  # warm-up
    t_ours, resampled, t_ref, spatial = 0.0, 0, 0.0, 0
    per_round = -(-n_ours // n_ref)
    for r in range(n_ref):
        for _ in range(per_round):
            t0 = time.perf_counter()
            pair = ours(regions, generator=g)
            t_ours += time.perf_counter() - t0
            resampled += sum(not pair.geometry.is_crop(i) for i in range(pair.views.shape[0]))
        t0 = time.perf_counter()
        res = pool.map(_ref_worker, [(p, 1000 * r + k) for k in range(procs)])
        wall = time.perf_counter() - t0
        t_ref += res[0][0] if procs == 1 else wall / procs  # procs batches finished in this wall time
        spatial += sum(x[1] for x in res)
    b = regions.shape[0]
    return dict(ours=1e3 * t_ours / (per_round * n_ref), views=f"{resampled}/{2 * b * per_round * n_ref}",
                ref=1e3 * t_ref / n_ref, samples=f"{spatial}/{b * procs * n_ref}")


def time_cpu(args: argparse.Namespace) -> None:
    """Ours vs the reference on the same cores, at p = 0, the default p and p = 1.

    The reference's cost per batch is linear in how many samples it resamples (each costs one
    order-3 ``map_coordinates`` over 257^3, whether rotated, scaled or both), and a sample is
    resampled with probability q = 1 - (1 - p)^2. Besides measuring it at p directly (few batches:
    the count of resampled samples varies a lot), we print its expectation T(0) + q (T(1) - T(0)).
    """
    import multiprocessing as mp

    from threadpoolctl import threadpool_info

    torch.set_num_threads(args.threads)
    regions = load_regions(args.batch, args.volume)
    b, p = args.batch, args.p
    pools = sorted({(i["internal_api"], i["num_threads"]) for i in threadpool_info()})
    print(f"CPU ({mp.cpu_count()} cores); ours: torch {torch.__version__}, torch.get_num_threads() = "
          f"{torch.get_num_threads()}; reference: numpy {np.__version__} + scipy (map_coordinates, gaussian_filter: "
          f"single-threaded C), native pools limited to 1 thread, in {args.threads} worker process(es) "
          f"(this process: {pools})")
    print(f"B={b} pairs, patch {PATCH}^3 from {REGION}^3 real-MRI regions (MNI152 T1, z-scored), same input both "
          f"sides, batches interleaved")
    settings = [("p=0 (crops only)", 0.0), (f"p={p} (default)", p), ("p=1 (always spatial)", 1.0)]
    if args.skip_direct:
        settings.pop(1)
    rows = {}
    global _DATA
    _DATA = regions.numpy()
    with mp.get_context("fork").Pool(args.threads, initializer=_init_worker) as pool:
        for label, pp in settings:
            n = args.batches if pp == p else max(2, args.batches // 4)
            rows[pp] = (label, _interleaved(regions, pp, n, args.ref_batches, args.threads, pool))
    q = 1 - (1 - p) ** 2
    expect = rows[0.0][1]["ref"] + q * (rows[1.0][1]["ref"] - rows[0.0][1]["ref"])
    print(f"{'setting':24s} {'ours ms/batch':>14s} {'views resampled':>16s} {'reference ms/batch':>19s} "
          f"{'samples resampled':>18s} {'speed-up':>9s}")
    for pp in sorted(rows):
        label, r = rows[pp]
        print(f"{label:24s} {r['ours']:14.0f} {r['views']:>16s} {r['ref']:19.0f} {r['samples']:>18s} "
              f"{r['ref'] / r['ours']:8.1f}x")
    ours_p = rows[p][1]["ours"] if p in rows else float("nan")
    print(f"{f'p={p} expectation':24s} {ours_p:14.0f} {'':>16s} {expect:19.0f} {f'q={q:.2f}':>18s} "
          f"{expect / ours_p:8.1f}x   <- reference T(0) + q (T(1) - T(0))")


def time_gpu(args: argparse.Namespace) -> None:
    dev = torch.device(args.device)
    regions = load_regions(args.batch, args.volume).to(dev)
    p = 1.0 if args.always_spatial else args.p
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
    ap.add_argument("--batches", type=int, default=16, help="timed batches for ours at p (repeats on GPU: use 50)")
    ap.add_argument("--ref-batches", type=int, default=2, help="timed reference batches per setting (slow)")
    ap.add_argument("--p", type=float, default=0.2, help="p_rotate = p_scale (the reference's value: 0.2)")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU: torch threads for ours = worker processes for the reference (same cores)")
    ap.add_argument("--skip-direct", action="store_true",
                    help="CPU: skip the direct reference run at p (print only the expectation)")
    ap.add_argument("--always-spatial", action="store_true", help="GPU: p=1 (rotate and zoom every sample)")
    ap.add_argument("--volume", type=Path, default=None, help="3D NIfTI used as region (default: MNI152)")
    args = ap.parse_args()
    (time_cpu if args.device == "cpu" else time_gpu)(args)


if __name__ == "__main__":
    main()
