"""Throughput of ``openmind-prep preprocess`` through Dask: seconds per volume on 1 and N workers.

The embedded default (real MRI, see ``openmind_prep.sources.embedded``) is replicated ``--copies`` times
into a source tree (hard links, new dataset ids), then preprocessed three ways into fresh stores:

* serial: ``process_batch`` over all images in this process (no Dask; the floor for one core),
* Dask, 1 worker and Dask, ``--workers`` workers (processes, one thread each, batches of
  ``--batch-size``), timed end to end (cluster start-up included) and without start-up.

All stores must end with the same checksums. Run with the main venv:

    .venv/bin/python benchmarks/preprocess_dask.py [--copies 3] [--workers 2] [--batch-size 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from openmind_prep.core.dask_cluster import ClusterConfig, dask_client
from openmind_prep.store.manifest import merge_manifest
from openmind_prep.sources.metadata import METADATA_CSV, read_metadata
from openmind_prep.core.dask_cluster import set_sitk_threads
from openmind_prep.preprocess.job import PreprocessOptions, process_batch, run_preprocess
from openmind_prep.sources.embedded import build_sample_tree, replicate_tree


def checksums(store: Path) -> dict[str, str]:
    return {r["image_path"]: r["checksum"] for r in merge_manifest(store).to_pylist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--dtype", default="float16")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    try:
        run(tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(tmp: Path, args: argparse.Namespace) -> None:
    src = replicate_tree(build_sample_tree(tmp / "base"), tmp / "src", args.copies, link=True)
    records = read_metadata(src / METADATA_CSV)
    options = PreprocessOptions(dtype=args.dtype)
    n = len(records)
    print(f"{n} volumes ({args.copies} copies of the embedded default), dtype {args.dtype}, "
          f"{os.cpu_count()} cores")

    set_sitk_threads(1)
    torch.set_num_threads(1)  # as in a Dask worker (OMP_NUM_THREADS=1): same floats, same checksums
    start = time.perf_counter()
    rows = process_batch(records, src, tmp / "serial", options)
    serial = time.perf_counter() - start
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"]
    print(f"serial (no Dask, 1 core):         {serial:7.2f} s  {serial / n:6.3f} s/volume "
          f"(inside process_image: {sum(r['seconds'] for r in rows) / n:6.3f} s/volume)")
    reference = checksums(tmp / "serial")

    for workers in sorted({1, args.workers}):
        store = tmp / f"dask{workers}"
        start = time.perf_counter()
        with dask_client(ClusterConfig(workers=workers)) as client:
            ready = time.perf_counter()
            rows = run_preprocess(records, src, store, client, options, batch_size=args.batch_size,
                                  progress=False)
            done = time.perf_counter()
        total = done - start
        assert checksums(store) == reference, f"dask{workers}: checksums differ from the serial run"
        print(f"Dask {workers} worker(s), batch {args.batch_size}: {total:7.2f} s  {total / n:6.3f} s/volume "
              f"(without {ready - start:.1f} s start-up: {(done - ready) / n:6.3f} s/volume, "
              f"speed-up vs serial {serial / (done - ready):.2f}x; inside process_image: "
              f"{sum(r['seconds'] for r in rows) / n:6.3f} s/volume)")


if __name__ == "__main__":
    main()
