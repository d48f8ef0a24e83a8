"""End to end, ``.nii.gz`` on disk → stored array, one core each: ours vs the nnssl-equal peer.

Run in the benchmark venv (nnunetv2, blosc2) with this tree on the path:

    PYTHONPATH=. .venv-bench/bin/python benchmarks/preprocess_e2e.py [--rounds 2] [--copies 8]

Volumes: the embedded default (``openmind_prep.sources.embedded``: real MRI from nilearn / nibabel / dipy,
six images, three with defacing + foreground masks, one taking nnU-Net's separate-z path).

1. Per image, in this process, interleaved ours / peer, CPU seconds (``time.process_time``, every
   thread; one thread is allowed everywhere: torch, SimpleITK, blosc, blosc2, BLAS):
   * ours: ``openmind_prep.preprocess.job.process_image`` — check + read, crop, z-score, resample,
     masks, float16 Zarr write with checksums (exactly what a Dask task runs per image);
   * peer: SimpleITK ``ReadImage`` of the image and its masks, nnU-Net v2's ``crop_to_nonzero``,
     ``ZScoreNormalization``, ``compute_new_shape`` and ``resample_data_or_seg_to_shape`` (order 3 /
     order_z 0 for the image, ``is_seg`` order 1 for the masks), then nnssl's save: float32
     ``(1, z, y, x)`` blosc2 ZSTD level 8 with the (block, chunk) rule of nnssl's
     ``comp_blosc2_params`` for patch 160 (``benchmarks/loading.py``), masks as uint8, a pickle of
     properties. Reported: CPU-s per volume, the ratio, max |ours − peer| of the image (stored
     float16, and our float32 path), mask voxels that differ, bytes.
2. Through the CLI: ``openmind-prep preprocess SRC --workers 1`` on ``--copies`` × 6 volumes
   (``openmind_prep.sources.embedded.replicate_tree``) vs the peer loop over the same volumes in a fresh
   Python process; wall seconds all in (interpreter start, imports, cluster start), and the CPU
   seconds of each child tree; then a no-op re-run of the same ``preprocess`` command.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import pickle  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from loading import PATCH, nnssl_blocks_chunks  # noqa: E402


def _setup_threads() -> None:
    import blosc2
    import torch

    from openmind_prep.core.dask_cluster import set_sitk_threads

    torch.set_num_threads(1)
    set_sitk_threads(1)
    blosc2.set_nthreads(1)


def peer_case(image: Path, masks: dict[str, Path], out: Path) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """SimpleITK + nnU-Net v2 functions + nnssl's blosc2 save; returns (image, masks, bytes written)."""
    import blosc2
    import SimpleITK as sitk
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import ZScoreNormalization
    from nnunetv2.preprocessing.resampling.default_resampling import (compute_new_shape,
                                                                      resample_data_or_seg_to_shape)
    from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice

    itk = sitk.ReadImage(str(image))
    data = sitk.GetArrayFromImage(itk).astype(np.float32)
    data = data[None] if data.ndim == 3 else data[:1]
    spacing = [abs(s) for s in itk.GetSpacing()[:3][::-1]]
    segs = {name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))).astype(np.uint8)[None] for name, p in masks.items()}
    shape_before = data.shape[1:]
    data, _, bbox = crop_to_nonzero(data)
    data[0] = ZScoreNormalization(use_mask_for_norm=False, intensityproperties={}).run(data[0])
    new_shape = compute_new_shape(data.shape[1:], spacing, [1.0, 1.0, 1.0])
    data = resample_data_or_seg_to_shape(data, new_shape, spacing, [1.0, 1.0, 1.0], is_seg=False, order=3,
                                         order_z=0, force_separate_z=None)
    slicer = (slice(None), *bounding_box_to_slice(bbox))
    segs = {name: resample_data_or_seg_to_shape(np.ascontiguousarray(s[slicer]), new_shape, spacing,
                                                [1.0, 1.0, 1.0], is_seg=True, order=1, order_z=0,
                                                force_separate_z=None).astype(np.uint8)
            for name, s in segs.items()}
    nbytes = 0
    for name, array in {"data": np.ascontiguousarray(data, dtype=np.float32), **segs}.items():
        blocks, chunks = nnssl_blocks_chunks(array.shape, (PATCH,) * 3, array.itemsize)
        path = out.with_name(f"{out.name}_{name}.b2nd")
        blosc2.asarray(np.ascontiguousarray(array), urlpath=str(path), chunks=chunks, blocks=blocks, mode="w",
                       cparams={"codec": blosc2.Codec.ZSTD, "clevel": 8})
        nbytes += path.stat().st_size
    props = {"spacing": spacing, "shape_before_cropping": shape_before, "bbox_used_for_cropping": bbox,
             "sitk_stuff": {"origin": itk.GetOrigin(), "direction": itk.GetDirection()}}
    with open(out.with_name(out.name + ".pkl"), "wb") as f:
        pickle.dump(props, f)
    nbytes += out.with_name(out.name + ".pkl").stat().st_size
    return data[0], {name: s[0] for name, s in segs.items()}, nbytes


def _mask_paths(src: Path, record) -> dict[str, Path]:
    from openmind_prep.sources.metadata import IMAGES_DIR

    return {name: src / IMAGES_DIR / p for name, p in record.mask_paths.items() if p}


def peer_tree(src: Path, out: Path) -> None:
    """The peer over every image of a tree, sequentially (the CLI comparison's reference run)."""
    from openmind_prep.sources.metadata import IMAGES_DIR, METADATA_CSV, read_metadata

    _setup_threads()
    out.mkdir(parents=True, exist_ok=True)
    for i, record in enumerate(read_metadata(src / METADATA_CSV)):
        peer_case(src / IMAGES_DIR / record.image_path, _mask_paths(src, record), out / f"case{i:05d}")


def per_image(src: Path, work: Path, rounds: int) -> None:
    from openmind_prep.sources.metadata import IMAGES_DIR, METADATA_CSV, read_metadata
    from openmind_prep.preprocess.onemmiso import preprocess_case
    from openmind_prep.preprocess.job import PreprocessOptions, process_image
    from openmind_prep.store.store import Store

    _setup_threads()
    records = read_metadata(src / METADATA_CSV)
    (work / "peer").mkdir(exist_ok=True)
    from openmind_prep.store import store as store_module

    options = PreprocessOptions(clevel=store_module.CODEC["clevel"])  # --codec may have swapped it
    times = {r.image_path: ([], []) for r in records}
    for rnd in range(rounds + 1):  # round 0 warms imports and caches, not counted
        store = Store.create(work / f"store{rnd}").root  # a fresh store: no old group to replace
        for i, record in enumerate(records):
            t0 = time.process_time()
            row = process_image(record, src, store, options)
            t1 = time.process_time()
            ref, ref_masks, ref_bytes = peer_case(src / IMAGES_DIR / record.image_path, _mask_paths(src, record),
                                                  work / "peer" / f"case{i}")
            t2 = time.process_time()
            assert row["status"] == "ok", row["error"]
            if rnd:
                times[record.image_path][0].append(t1 - t0)
                times[record.image_path][1].append(t2 - t1)
    header = (f"{'volume':<44} {'out (zyx)':>13} {'ours CPU-s':>10} {'peer CPU-s':>10} {'ratio':>6} "
              f"{'max|d| f16':>10} {'f32':>8} {'mask≠':>6} {'ours B':>10} {'peer B':>10}")
    print(header + "\n" + "-" * len(header))
    tot = np.zeros(4)
    store = Store.create(work / "store_check").root
    for i, record in enumerate(records):
        ours_t, peer_t = (float(np.median(t)) for t in times[record.image_path])
        row = process_image(record, src, store, options)
        stored = Store(store).array(row["zarr_path"])[...]
        ref, ref_masks, ref_bytes = peer_case(src / IMAGES_DIR / record.image_path, _mask_paths(src, record),
                                              work / "peer" / f"case{i}")
        f32 = preprocess_case(src / IMAGES_DIR / record.image_path, dtype=np.float32).image
        mask_diff = sum(int((Store(store).array(row[f"{n}_zarr_path"])[...] != m).sum()) for n, m in ref_masks.items())
        tot += (ours_t, peer_t, row["bytes"], ref_bytes)
        name = record.image_path.split("/")[0] + "/…/" + Path(record.image_path).name
        print(f"{name[-44:]:<44} {'x'.join(map(str, stored.shape)):>13} {ours_t:10.3f} {peer_t:10.3f} "
              f"{peer_t / ours_t:5.1f}x {float(np.abs(stored.astype(np.float32) - ref).max()):10.2e} "
              f"{float(np.abs(f32 - ref).max()):8.1e} {mask_diff:6d} {row['bytes']:10,} {ref_bytes:10,}")
    n = len(records)
    print("-" * len(header))
    print(f"{'per volume (mean of medians)':<58} {tot[0] / n:10.3f} {tot[1] / n:10.3f} {tot[1] / tot[0]:5.1f}x "
          f"{'':>27} {tot[2] / n:10,.0f} {tot[3] / n:10,.0f}  bytes {tot[2] / tot[3]:.2f}x")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(cmd: list[str]) -> tuple[float, float]:
    cpu, t0 = _children_cpu(), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return wall, _children_cpu() - cpu


def through_cli(base: Path, work: Path, copies: int) -> None:
    from openmind_prep.sources.embedded import replicate_tree
    from openmind_prep.sources.metadata import METADATA_CSV, read_metadata

    src = replicate_tree(base, work / "src_cli", copies, link=True)
    n = len(read_metadata(src / METADATA_CSV))
    cli = [sys.executable, "-c", "from openmind_prep.cli import main; main()", "preprocess", str(src),
           "--out", str(work / "store_cli"), "--workers", "1"]
    ours_wall, ours_cpu = _timed(cli)
    peer_wall, peer_cpu = _timed([sys.executable, __file__, "--peer-tree", str(src), "--peer-out",
                                  str(work / "peer_cli")])
    noop_wall, _ = _timed(cli)
    print(f"\nCLI, {n} volumes, one worker / one process, all in:")
    print(f"  ours  `openmind-prep preprocess --workers 1`: {ours_wall:6.1f} s wall ({ours_wall / n:.2f} s/volume), "
          f"{ours_cpu:6.1f} CPU-s")
    print(f"  peer  sequential loop in a fresh process:     {peer_wall:6.1f} s wall ({peer_wall / n:.2f} s/volume), "
          f"{peer_cpu:6.1f} CPU-s")
    print(f"  ratio {peer_wall / ours_wall:.1f}x wall, {peer_cpu / ours_cpu:.1f}x CPU")
    print(f"  no-op re-run of the same preprocess command: {noop_wall:.2f} s wall")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per image (after one warm-up)")
    parser.add_argument("--copies", type=int, default=8, help="copies of the 6 volumes for the CLI run (0: skip)")
    parser.add_argument("--cli-only", action="store_true", help="skip the per-image part (the CLI run only)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--codec", default=None, help="store codec for ours as CNAME-LEVEL, e.g. zstd-1 "
                        "(default: openmind_prep.store.store.CODEC; per-image part only)")
    parser.add_argument("--dense", default=None, help="second codec for poorly compressed image chunks as "
                        "CNAME-LEVEL-ABOVE, e.g. zstd-1-0.5, or none (default: openmind_prep.store.store.CODEC's)")
    parser.add_argument("--mask-codec", default=None, help="mask codec as CNAME-LEVEL-SHUFFLE, e.g. lz4hc-2-shuffle "
                        "(default: openmind_prep.store.store.MASK_CODEC)")
    parser.add_argument("--peer-tree", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--peer-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer_tree:
        return peer_tree(args.peer_tree, args.peer_out)

    import torch

    from openmind_prep.store import store
    from openmind_prep.sources.embedded import build_sample_tree

    if args.codec:  # the per-image part runs in this process, so the store codec can be swapped
        cname, level = args.codec.rsplit("-", 1)
        store.CODEC.update(cname=cname, clevel=int(level))  # in place: the writer holds the same dict
    if args.dense:
        cname, level, above = (args.dense + "--").split("-")[:3]
        store.CODEC.pop("dense", None)
        if args.dense != "none":
            store.CODEC["dense"] = {"cname": cname, "clevel": int(level), "above": float(above)}
    if args.mask_codec:
        from openmind_prep.store import case_writer
        cname, level, shuffle = args.mask_codec.split("-")
        case_writer.MASK_CODEC.update(cname=cname, clevel=int(level), shuffle=shuffle)

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    base = build_sample_tree(work / "src")
    print(f"torch {torch.__version__}, one thread everywhere; {os.cpu_count()} cores visible; work {work}; "
          f"store codec {store.CODEC}, masks {store.MASK_CODEC}\n")
    if not args.cli_only:
        per_image(base, work, args.rounds)
    if args.copies:
        through_cli(base, work, args.copies)


if __name__ == "__main__":
    main()
