"""Region reads per CPU-second and bytes per volume: our Zarr store and WebDataset shards vs nnssl's blosc2.

The same real volumes (the embedded default, preprocessed by ``openmind_prep.preprocess.job``) are
stored three ways:

* ours, Zarr: float16, 64³ chunks in one shard per array, as ``openmind_prep.store.store`` writes it
  (codec printed at the start); ``ZarrVolumeDataset`` re-opens the array for every read. It checks
  an image's checksum the first time it is read (the whole image decoded and hashed once,
  the region cut from that decode); three rows measure that: the default (``verify=True``, checks
  amortised over the run's reads as in training), ``verify=False`` (no checksum), and every read a
  first read (the worst case: a fresh process per read);
* ours, WebDataset: the same arrays inside tar shards (``zshard``); ``WebDatasetStream`` reads
  each sample from the tar and decodes only the region's chunks;
* reference (nnssl): the float32 store of the same preprocessing, written like nnssl's
  ``nnSSLDatasetBlosc2.save_case`` (shape ``(1, z, y, x)``, blosc2 ZSTD clevel 8, default filter,
  block/chunk sizes from nnssl's ``comp_blosc2_params`` rule for patch 160, re-implemented in
  :func:`nnssl_blocks_chunks`), read like its data loader: ``blosc2.open(..., dparams
  {"nthreads": 1}, mmap_mode="r")`` per sample, then the 257³ region (clipped to the volume).

Regions: the reference reads 257³ for one 160³ patch (nnssl's enlarged patch for rotation and
scaling). Our CVA trainer reads ``--region-scale`` (default 2) × patch = 320³ for a pair of 160³
views, so that is the headline row for both of our loaders; 160³ (one view) is shown too. Both
loaders read through ``openmind_prep.store.region_read``; a row reads the same store through the zarr
library for comparison. Every method decodes with one thread (blosc2 ``nthreads=1``; our reader
uses blosc's per-call context with one thread; zarr ``threading.max_workers=1``). Calls are
interleaved round-robin; rates are samples per CPU-second of the process (all threads), i.e. per
core. Run with the benchmark venv (blosc2 + zarr; see docs/benchmarks.md):

    PYTHONPATH=. .venv-bench/bin/python benchmarks/loading.py [--reads 60] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np

PATCH, REF_REGION = 160, 257
CVA_REGION = 2 * PATCH  # trainers/cva.py reads region_scale (default 2.0) x patch for a view pair


def nnssl_blocks_chunks(image_size: tuple[int, ...], patch: tuple[int, ...], itemsize: int,
                        l1: int = 32768, l3: int = 1441792, safety: float = 0.8) -> tuple[tuple, tuple]:
    """nnssl's blosc2 (block, chunk) rule: blocks start at 2^floor(log2(patch/2)) and halve the axis
    furthest above its patch share until they fit 80% of L1; chunks then grow by whole blocks along
    the axis least grown until they fill 80% of L3 (per core of an old Xeon: 32 KiB, 1.375 MiB)."""
    size, patch = np.array(image_size), np.array(patch)
    block = np.array([size[0], *[2 ** max(0, math.floor(math.log2(p / 2))) for p in patch]])
    while block.prod() * itemsize > l1 * safety and not (block == size).all():
        for axis in np.argsort(block[1:] / patch)[::-1] + 1:
            if block[axis] != 1 and block[axis] != size[axis]:
                break
        block[axis] = min(2 ** max(0, math.floor(math.log2(block[axis] - 1))), size[axis])
    chunk = block.copy()
    while chunk.prod() * itemsize < l3 * safety and not (chunk == size).all():
        for axis in np.argsort(chunk[1:] / block[1:]) + 1:
            if chunk[axis] != size[axis] and patch[axis - 1] != 1:
                break
        chunk[axis] = min(chunk[axis] + block[axis], size[axis])
    return tuple(int(b) for b in block), tuple(int(c) for c in chunk)


def build_stores(work: Path) -> tuple[Path, Path]:
    """Preprocess the embedded default twice (float16: ours, float32: the reference's values)."""
    from openmind_prep.store.manifest import merge_manifest
    from openmind_prep.sources.metadata import METADATA_CSV, read_metadata
    from openmind_prep.preprocess.job import PreprocessOptions, process_batch
    from openmind_prep.sources.embedded import build_sample_tree
    from openmind_prep.store.store import Store

    src = build_sample_tree(work / "src")
    records = read_metadata(src / METADATA_CSV)
    stores = []
    for dtype in ("float16", "float32"):
        store = Store.create(work / f"store_{dtype}").root
        process_batch(records, src, store, PreprocessOptions(dtype=dtype))
        merge_manifest(store)
        stores.append(store)
    return stores[0], stores[1]


def write_reference(store32: Path, rows: list[dict], out: Path) -> list[Path]:
    import blosc2

    from openmind_prep.store.store import Store

    blosc2.set_nthreads(1)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, row in enumerate(rows):
        data = np.ascontiguousarray(Store(store32).array(row["zarr_path"])[...][None], dtype=np.float32)
        blocks, chunks = nnssl_blocks_chunks(data.shape, (PATCH,) * 3, data.itemsize)
        path = out / f"case{i}.b2nd"
        blosc2.asarray(data, urlpath=str(path), chunks=chunks, blocks=blocks, mode="w",
                       cparams={"codec": blosc2.Codec.ZSTD, "clevel": 8})
        paths.append(path)
    return paths


def timed(methods: dict, n: int) -> dict[str, tuple[float, float]]:
    """(samples per CPU-second, samples per wall-second) of each method, calls interleaved round-robin
    (the machine's load drifts; interleaving gives every method the same share of it)."""
    import time

    cpu = dict.fromkeys(methods, 0.0)
    wall = dict.fromkeys(methods, 0.0)
    for fn in methods.values():
        fn(0)  # warm: imports, page cache
    for i in range(n):
        for name, fn in methods.items():
            w, c = time.perf_counter(), time.process_time()
            fn(i)
            cpu[name] += time.process_time() - c
            wall[name] += time.perf_counter() - w
    return {name: (n / cpu[name], n / wall[name]) for name in methods}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reads", type=int, default=60, help="Reads per method (more: steadier rates).")
    parser.add_argument("--work", type=Path, default=None,
                        help="Scratch folder (default: a temp dir); stores already built there are reused.")
    args = parser.parse_args()

    import blosc2
    import zarr

    from loaders import WebDatasetStream, ZarrVolumeDataset
    from openmind_prep.store.manifest import read_manifest
    from openmind_prep.shards.writer import merge_index, write_shards

    blosc2.set_nthreads(1)
    zarr.config.set({"threading.max_workers": 1})
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_loading_"))
    if (work / "store_float16" / "manifest.parquet").exists() and (work / "store_float32" / "manifest.parquet").exists():
        store16, store32 = work / "store_float16", work / "store_float32"
    else:
        store16, store32 = build_stores(work)
    rows = [r for r in read_manifest(store16).to_pylist() if r["status"] == "ok"]
    rows32 = {r["image_path"]: r for r in read_manifest(store32).to_pylist()}
    ref_paths = write_reference(store32, [rows32[r["image_path"]] for r in rows], work / "reference")
    write_shards(store16, work / "wds", shard_size=10**9, progress=False)
    index = merge_index(work / "wds")
    shapes = [tuple(r["shape"]) for r in rows]
    codec = json.loads((store16 / rows[0]["zarr_path"] / "zarr.json").read_text())["codecs"][0]["configuration"]
    blosc = codec["codecs"][-1]["configuration"]
    print(f"{len(rows)} real volumes (embedded default, onemmiso 1 mm): shapes {shapes}")
    print(f"ours: float16, {codec['chunk_shape']} chunks, blosc {blosc['cname']}-{blosc['clevel']} {blosc['shuffle']}, "
          "read with one blosc thread (ctx); reference: blosc2 nthreads=1 (set_nthreads + dparams)")
    print(f"regions: reference {REF_REGION}³ (nnssl's read for one {PATCH}³ patch); ours {CVA_REGION}³ = the CVA "
          f"trainer's read for a {PATCH}³ view pair (--region-scale 2), and {PATCH}³ (one view); all clipped to "
          "the volume")

    rng = np.random.default_rng(0)
    ds = ZarrVolumeDataset(store16, masks=False)  # verify=True: the default
    unverified = ZarrVolumeDataset(store16, masks=False, verify=False)
    fresh = ZarrVolumeDataset(store16, masks=False)  # its own instance: it forgets what it checked

    def region(shape, size):
        starts = [int(rng.integers(0, max(n - size, 0) + 1)) for n in shape]
        return tuple(slice(a, min(a + size, n)) for a, n in zip(starts, shape))

    def ours_zarr(size, dataset=ds, first_reads=False):
        def read(i):
            dataset._open.clear()  # cold: open the array per read, like the reference opens its file
            if first_reads:
                dataset._verified.zero_()  # as if never read: check the checksum again
            k = i % len(dataset)
            return dataset[k, region(dataset.shape(k), size)]
        return read

    def zarr_library(i):  # the same store read through the zarr library itself (for comparison)
        k = i % len(rows)
        arr = zarr.open_array(str(store16 / rows[k]["zarr_path"]), mode="r")
        return arr[region(arr.shape, CVA_REGION)]

    def reference(i):
        k = i % len(ref_paths)
        arr = blosc2.open(urlpath=str(ref_paths[k]), mode="r", dparams={"nthreads": 1}, mmap_mode="r")
        return arr[(slice(0, 1), *region(arr.shape[1:], REF_REGION))]

    def ours_wds(size):
        state = {"it": iter(())}

        def read(i):
            try:
                return next(state["it"])
            except StopIteration:  # next epoch: a new pass over the shards
                state["it"] = iter(WebDatasetStream(str(work / "wds"), region_size=size, shuffle_buffer=0,
                                                    rank=0, world_size=1, worker=0, num_workers=1, masks=False))
                return next(state["it"])
        return read

    ref_name = f"reference (blosc2 f32, {REF_REGION}³)"
    results = timed({ref_name: reference,
                     f"ours Zarr ({CVA_REGION}³ pair region)": ours_zarr(CVA_REGION),
                     f"ours Zarr ({CVA_REGION}³) verify=False": ours_zarr(CVA_REGION, unverified),
                     f"ours Zarr ({CVA_REGION}³) every read a first": ours_zarr(CVA_REGION, fresh, True),
                     f"ours WebDataset ({CVA_REGION}³ pair region)": ours_wds(CVA_REGION),
                     f"ours Zarr ({PATCH}³ one view)": ours_zarr(PATCH),
                     f"ours WebDataset ({PATCH}³ one view)": ours_wds(PATCH),
                     f"same store via zarr library ({CVA_REGION}³)": zarr_library}, args.reads)

    # output difference: the same regions through our reader, zarr itself and the reference
    diffs = []
    for k in range(len(ds)):
        reg = region(ds.shape(k), PATCH)
        ours = ds[k, reg]["image"][0].numpy()
        if not np.array_equal(ours, zarr.open_array(str(store16 / rows[k]["zarr_path"]), mode="r")[reg]):
            raise AssertionError(f"{rows[k]['zarr_path']}: our reader differs from zarr's on {reg}")
        ref = blosc2.open(urlpath=str(ref_paths[k]), mode="r")[(slice(0, 1), *reg)][0]
        diffs.append(float(np.abs(ours.astype(np.float32) - ref).max() / max(np.abs(ref).max(), 1e-8)))

    def folder_bytes(p: Path) -> int:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())

    ref_each = np.array([p.stat().st_size for p in ref_paths], float)
    zarr_each = np.array([folder_bytes(store16 / r["zarr_path"]) for r in rows], float)
    wds_bytes = index["bytes"] / index["samples"]  # whole tar incl. masks and json
    wds_image = zarr_each + 512  # the zshard member: the same files plus a small header
    ref_cpu = results[ref_name][0]
    print(f"\n{'method':44s} {'samples/CPU-s':>14s} {'samples/s':>10s} {'vs ref/core':>12s}")
    for name, (per_cpu, per_wall) in results.items():
        print(f"{name:44s} {per_cpu:14.1f} {per_wall:10.1f} {per_cpu / ref_cpu:11.2f}x")
    print(f"\nbytes per volume (image): reference {ref_each.mean() / 1e6:.2f} MB, ours Zarr {zarr_each.mean() / 1e6:.2f} MB "
          f"({zarr_each.mean() / ref_each.mean():.2f}x; per volume {(zarr_each / ref_each).min():.2f}-"
          f"{(zarr_each / ref_each).max():.2f}x), WebDataset image member ≈ {wds_image.mean() / 1e6:.2f} MB "
          f"({wds_image.mean() / ref_each.mean():.2f}x); whole WebDataset sample incl. masks + json "
          f"{wds_bytes / 1e6:.2f} MB")
    print(f"our reader == zarr's read on every region; max |ours f16 - reference f32| / max|reference|: {max(diffs):.2e}")
    print("targets: >= 2.5x the reference's reads per core, <= 0.5x its bytes")


if __name__ == "__main__":
    main()
