"""``openmind-prep plan``: what preprocessing the selection will cost on N workers.

The model is deliberately simple (docs/data.md, "Plan", explains it):

- every volume costs ``seconds_per_mvoxel × (cropped input voxels + 1 mm output voxels) / 1e6``
  (or a flat ``--seconds-per-volume``); the coefficient is measured — by running the real
  per-image path (:func:`openmind_prep.preprocess.job.process_image`) on the embedded sample, or
  from the ``seconds`` column of an existing store's manifest;
- stored bytes = ``stored_bytes_per_voxel × output voxels`` (measured the same way);
- peak memory of a worker = its base footprint + ``peak_bytes_per_voxel × (input + output
  voxels)`` of the largest volume it gets (one image at a time per worker);
- wall time = a FIFO simulation of the batches (``--batch-size`` images per Dask task, in CSV
  order) on N single-threaded workers, plus a fixed overhead per task;
- raw disk = network = the compressed NIfTI bytes of images and masks (+ the metadata CSV), exact
  with ``--pin`` (the pinned list holds every file's size); the download time is the largest of the
  Hub's request quota, the bandwidth and the per-request round trips over the download workers
  (:mod:`openmind_prep.sources.transfers`).

Volume sizes come from the metadata. The real CSV has no shapes, so each modality gets a typical
shape/spacing (:data:`MODALITIES`); without a CSV, :func:`synthesise_metadata` draws the real row
count (114,570) from that table with per-axis jitter — an assumption, printed as such.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from openmind_prep.sources.transfers import REQUEST_SECONDS, RESOLVE_QUOTA_PER_5MIN, Transfer
from openmind_prep.sources.metadata import ImageRecord, record_from_row
from openmind_prep.preprocess.job import IMAGE_MEMORY_FRACTION

if TYPE_CHECKING:
    from openmind_prep.sources.base import Source

OPENMIND_ROWS = 114_570
OPENMIND_SUBJECTS = 34_191
OPENMIND_DATASETS = 800
METADATA_CSV_BYTES = 39_000_000
CROP_FRACTION = 0.85          # cropped / full input voxels (nonzero box), assumed
MASK_DISK_BYTES_PER_VOXEL = 0.03  # a gzipped binary mask
TASK_OVERHEAD_S = 0.05        # scheduler round trip + manifest fragment per Dask task
WORKER_BASE_BYTES = 300 * 2**20  # measured: python + numpy/SimpleITK/zarr/distributed imports ≈ 190 MB
#: Defaults when nothing is calibrated (measured on the embedded sample, 2-core CPU; see docs/data.md).
DEFAULT_PEAK_BYTES_PER_VOXEL = 24.0
DEFAULT_STORED_BYTES_PER_VOXEL = 0.9

#: Assumed OpenMind mix: modality → (share, typical shape xyz, spacing mm, gzipped bytes/voxel,
#: P(defacing mask), P(anatomy mask)). The names are the real CSV's ``modality`` values (as a user
#: of the real CSV reported them: FLASH, PET, UNIT1_denoised, minIP and sbref occur; AD, MTR, PDT2
#: and RD do not); the shares are NOT measured (the CSV is not reachable here) and shapes/spacings
#: are typical BIDS acquisitions. ``--metadata`` with the real CSV replaces the mix by the real rows.
#: Nearly every image has both masks: a full pull is ~340k files (resolve requests) for 114,570 images.
MODALITIES: dict[str, tuple[float, tuple[int, int, int], tuple[float, float, float], float, float, float]] = {
    "T1w": (0.40, (176, 256, 256), (1.0, 1.0, 1.0), 0.8, 0.985, 0.985),
    "T2w": (0.11, (256, 256, 176), (0.94, 0.94, 1.0), 0.8, 0.985, 0.985),
    "FLAIR": (0.07, (256, 256, 48), (0.9, 0.9, 3.6), 0.9, 0.985, 0.985),
    "inplaneT2": (0.02, (256, 256, 36), (0.86, 0.86, 4.0), 0.9, 0.985, 0.985),
    "inplaneT1": (0.01, (256, 256, 36), (0.86, 0.86, 4.0), 0.9, 0.985, 0.985),
    "PDw": (0.02, (256, 256, 60), (0.9, 0.9, 3.0), 0.9, 0.985, 0.985),
    "T2starw": (0.02, (256, 256, 60), (0.9, 0.9, 2.5), 0.9, 0.985, 0.985),
    "angio": (0.01, (384, 512, 120), (0.45, 0.45, 0.6), 0.7, 0.985, 0.985),
    "MP2RAGE": (0.02, (176, 240, 256), (1.0, 1.0, 1.0), 1.2, 0.985, 0.985),
    "UNIT1": (0.02, (176, 240, 256), (1.0, 1.0, 1.0), 1.2, 0.985, 0.985),
    "UNIT1_denoised": (0.01, (176, 240, 256), (1.0, 1.0, 1.0), 1.2, 0.985, 0.985),
    "FLASH": (0.005, (256, 256, 88), (1.0, 1.0, 2.0), 1.0, 0.985, 0.985),
    "PET": (0.005, (128, 128, 63), (2.0, 2.0, 2.4), 1.5, 0.985, 0.985),
    "minIP": (0.005, (256, 256, 72), (0.9, 0.9, 2.0), 1.0, 0.985, 0.985),
    "sbref": (0.01, (104, 104, 72), (2.0, 2.0, 2.0), 1.2, 0.985, 0.985),
    "T1map": (0.01, (176, 240, 256), (1.0, 1.0, 1.0), 1.5, 0.985, 0.985),
    "T2map": (0.01, (128, 128, 40), (1.7, 1.7, 3.0), 1.5, 0.985, 0.985),
    "T2starmap": (0.005, (128, 128, 40), (1.7, 1.7, 3.0), 1.5, 0.985, 0.985),
    "SWI": (0.01, (256, 256, 72), (0.9, 0.9, 2.0), 1.0, 0.985, 0.985),
    "DWI": (0.05, (96, 96, 60), (2.5, 2.5, 2.5), 1.2, 0.985, 0.985),
    "FA": (0.06, (96, 96, 60), (2.5, 2.5, 2.5), 2.0, 0.985, 0.985),
    "MD": (0.06, (96, 96, 60), (2.5, 2.5, 2.5), 2.0, 0.985, 0.985),
    "ADC": (0.02, (96, 96, 60), (2.5, 2.5, 2.5), 2.0, 0.985, 0.985),
    "TRACE": (0.02, (96, 96, 60), (2.5, 2.5, 2.5), 2.0, 0.985, 0.985),
}
_DERIVED = {"FA", "MD", "ADC", "TRACE"}


def synthesise_metadata(n: int = OPENMIND_ROWS, rng: np.random.Generator | None = None) -> list[ImageRecord]:
    """Stand-in metadata with OpenMind's row count and the assumed :data:`MODALITIES` mix.

    Each record carries ``synthetic_shape`` / ``synthetic_spacing`` / ``synthetic_file_bytes``
    in ``extra``; IQS follows a gamma law with mean ≈ 2 (lower is better).

    >>> recs = synthesise_metadata(1000, np.random.default_rng(0))
    >>> len(recs), len({r.image_path for r in recs}), sum(r.modality == "T1w" for r in recs) > 300
    (1000, 1000, True)
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    names = list(MODALITIES)
    shares = np.array([MODALITIES[m][0] for m in names])
    picks = rng.choice(len(names), size=n, p=shares / shares.sum())
    jitter = rng.uniform(0.85, 1.15, size=(n, 3))
    iqs = 0.8 + rng.gamma(2.0, 0.6, size=n)
    masks = rng.random((n, 2))
    records = []
    for i in range(n):
        name = names[picks[i]]
        _, shape, spacing, disk_bpv, p_anon, p_anat = MODALITIES[name]
        shape = tuple(max(1, round(s * j)) for s, j in zip(shape, jitter[i]))
        dataset = f"ds{i * OPENMIND_DATASETS // n:06d}"
        sub = f"sub-{i * OPENMIND_SUBJECTS // n:05d}"
        stem = f"{dataset}/{sub}/anat/{sub}_run-{i:06d}_{name}"
        voxels = math.prod(shape)
        mask_bytes = int(voxels * MASK_DISK_BYTES_PER_VOXEL)
        has_anon, has_anat = masks[i, 0] < p_anon, masks[i, 1] < p_anat
        row = {"image_path": f"{stem}.nii.gz", "modality": name, "unique_id": f"{dataset}_{i:06d}",
               "image_quality_score": f"{iqs[i]:.2f}",
               "anon_mask_path": f"{stem}__Data/deface_mask.nii.gz" if has_anon else "",
               "anat_mask_path": f"{stem}__Data/fb_mask.nii.gz" if has_anat else "",
               "derived_from": f"{stem}_dwi.nii.gz" if name in _DERIVED else "",
               "synthetic_shape": "x".join(map(str, shape)),
               "synthetic_spacing": "x".join(f"{s:g}" for s in spacing),
               "synthetic_file_bytes": str(int(voxels * disk_bpv) + mask_bytes * (has_anon + has_anat))}
        records.append(record_from_row(row))
    return records


@dataclass(frozen=True)
class Volumes:
    """Per-volume sizes as parallel arrays: full input voxels, 1 mm output voxels, file bytes, files
    (the image + its masks; each is one hub request)."""

    in_voxels: np.ndarray
    out_voxels: np.ndarray
    file_bytes: np.ndarray
    files: np.ndarray | None = None

    @property
    def n_files(self) -> int:
        """Files to fetch (one per volume when not recorded)."""
        return int(self.files.sum()) if self.files is not None else len(self.in_voxels)

    @property
    def work_voxels(self) -> np.ndarray:
        """What the cost scales with: cropped input voxels + output voxels."""
        return CROP_FRACTION * self.in_voxels + self.out_voxels


def volumes_from_records(records: Sequence[ImageRecord], file_bytes: Sequence[float] | None = None,
                         files: Sequence[int] | None = None) -> Volumes:
    """Sizes of each record: its ``synthetic_*`` columns, else its modality's typical volume;
    ``file_bytes`` / ``files`` (e.g. exact, from a pinned list) replace the estimated bytes and counts.

    >>> from openmind_prep.sources.metadata import record_from_row
    >>> v = volumes_from_records([record_from_row({"image_path": "d/s/a.nii.gz", "modality": "FLAIR"})])
    >>> int(v.in_voxels[0]), int(v.out_voxels[0])
    (3145728, 7797001)
    """
    n = len(records)
    in_vox, out_vox, nbytes = np.zeros(n), np.zeros(n), np.zeros(n)
    counts = np.array([1 + len(r.mask_paths) for r in records], dtype=float) if files is None else np.asarray(files, float)
    for i, r in enumerate(records):
        _, shape, spacing, disk_bpv, p_anon, p_anat = MODALITIES.get(r.modality, MODALITIES["T1w"])
        extra = dict(r.extra)
        if "synthetic_shape" in extra:
            shape = tuple(int(s) for s in extra["synthetic_shape"].split("x"))
            spacing = tuple(float(s) for s in extra["synthetic_spacing"].split("x"))
        in_vox[i] = math.prod(shape)
        out_vox[i] = CROP_FRACTION * math.prod(s * p for s, p in zip(shape, spacing))
        if "synthetic_file_bytes" in extra:
            nbytes[i] = float(extra["synthetic_file_bytes"])
        else:
            nbytes[i] = in_vox[i] * (disk_bpv + MASK_DISK_BYTES_PER_VOXEL * len(r.mask_paths))
    if file_bytes is not None:
        nbytes = np.asarray(file_bytes, dtype=float)
    return Volumes(in_vox, out_vox, nbytes, counts)


@dataclass(frozen=True)
class CostModel:
    """Measured per-volume costs; ``seconds_per_volume`` (flat) overrides the per-voxel rate.

    >>> CostModel(seconds_per_mvoxel=0.1).seconds(np.array([1e7]))
    array([1.])
    """

    seconds_per_mvoxel: float = 0.0
    seconds_per_volume: float | None = None
    stored_bytes_per_voxel: float = DEFAULT_STORED_BYTES_PER_VOXEL
    peak_bytes_per_voxel: float = DEFAULT_PEAK_BYTES_PER_VOXEL
    source: str = "defaults"

    def describe(self) -> str:
        """The rates in one line (as printed by ``openmind-prep plan``)."""
        time = (f"{self.seconds_per_volume} s per volume" if self.seconds_per_volume is not None else
                f"{self.seconds_per_mvoxel:.3f} s per million voxels (cropped input + 1 mm output)")
        return (f"{time}; {self.stored_bytes_per_voxel:.2f} stored bytes per output voxel; peak "
                f"{self.peak_bytes_per_voxel:.1f} bytes per voxel (input + output) + "
                f"{WORKER_BASE_BYTES / 2**20:.0f} MiB per worker")

    def seconds(self, work_voxels: np.ndarray) -> np.ndarray:
        """Estimated seconds for volumes of these work voxel counts."""
        if self.seconds_per_volume is not None:
            return np.full(len(work_voxels), float(self.seconds_per_volume))
        return self.seconds_per_mvoxel * np.asarray(work_voxels, dtype=float) / 1e6


def cost_from_rows(rows: Sequence[dict], source: str, peak_bytes_per_voxel: float | None = None) -> CostModel:
    """Fit the per-voxel rates to ``ok`` manifest rows (their seconds, bytes, shape, crop_bbox).

    >>> row = {"status": "ok", "seconds": 2.0, "bytes": 5_000_000, "shape": [200, 200, 250],
    ...        "crop_bbox": [[0, 200], [0, 200], [0, 250]]}
    >>> cost = cost_from_rows([row], "x")
    >>> round(float(cost.seconds_per_mvoxel), 3), float(cost.stored_bytes_per_voxel)
    (0.1, 0.5)
    """
    ok = [r for r in rows if r["status"] == "ok" and r["shape"]]
    if not ok:
        raise ValueError(f"{source}: no ok rows to measure costs from")
    out = np.array([math.prod(r["shape"]) for r in ok], dtype=float)
    cropped = np.array([math.prod(b - a for a, b in r["crop_bbox"]) for r in ok], dtype=float)
    seconds = sum(float(r["seconds"]) for r in ok)
    return CostModel(
        seconds_per_mvoxel=seconds / (cropped + out).sum() * 1e6,
        stored_bytes_per_voxel=sum(float(r["bytes"]) for r in ok) / out.sum(),
        peak_bytes_per_voxel=peak_bytes_per_voxel or DEFAULT_PEAK_BYTES_PER_VOXEL,
        source=f"{source}: {len(ok)} volumes, {seconds:.1f} s",
    )


def calibrate(source: "Source | Path", work_dir: Path, dtype: str = "float16",
              progress: Callable[[int, int, str, float], None] | None = None) -> CostModel:
    """Run the real per-image path on every image of ``source`` (one thread, like a worker) into a
    scratch store under ``work_dir``; fit the costs to the rows. Peak memory is traced per image
    (numpy allocations) plus 4 bytes per input voxel for SimpleITK's untraced read buffer.
    ``progress(done, total, image_path, seconds)`` is called after each image."""
    import tracemalloc

    from openmind_prep.sources.openmind import as_source
    from openmind_prep.core.dask_cluster import set_sitk_threads
    from openmind_prep.preprocess.job import PreprocessOptions, process_image
    from openmind_prep.store.store import Store

    import nibabel as nib

    import torch

    set_sitk_threads(1)  # a worker is single-threaded: measure one thread (Dask sets OMP_NUM_THREADS=1)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    source = as_source(source)
    store = Store.create(Path(work_dir) / "calibration.zarr").root
    rows, peaks = [], []
    try:
        records = source.records()
        for done, record in enumerate(records, 1):
            t0 = time.perf_counter()
            tracemalloc.start()
            row = process_image(record, source, store, PreprocessOptions(dtype=dtype))
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            if progress is not None:
                progress(done, len(records), record.image_path, time.perf_counter() - t0)
            if row["status"] == "ok":
                in_voxels = math.prod(nib.load(source.root / record.image_path).shape[:3])
                peaks.append((peak + 4 * in_voxels) / (in_voxels + math.prod(row["shape"])))
                rows.append(row)
    finally:
        torch.set_num_threads(torch_threads)
    return cost_from_rows(rows, f"calibrated on {source.origin} ({dtype})", max(peaks, default=None))


@dataclass(frozen=True)
class Plan:
    """The estimate for one selection on ``workers`` workers (bytes, seconds)."""

    volumes: int
    workers: int
    batch_size: int
    tasks: int
    cpu_seconds: float
    wall_seconds: float
    mean_seconds: float
    max_seconds: float
    peak_worker_bytes: float
    p95_worker_bytes: float
    refused_by_limit: int
    over_memory_limit: int
    raw_bytes: float
    output_bytes: float
    download_bytes: float
    download_seconds: float
    cost_source: str
    cost_model: str
    files: int = 0
    download_bound: str = ""
    quota_seconds: float = 0.0
    bandwidth_seconds: float = 0.0
    concurrency_seconds: float = 0.0
    quota_per_5min: int = RESOLVE_QUOTA_PER_5MIN
    download_workers: int = 4


def makespan(task_seconds: Sequence[float], workers: int) -> float:
    """Finish time of tasks handed out in order to whichever of ``workers`` is free first.

    >>> makespan([3, 1, 1, 1], 2)
    3.0
    """
    free = [0.0] * workers
    for cost in task_seconds:
        heapq.heappush(free, heapq.heappop(free) + float(cost))
    return max(free)


def estimate(volumes: Volumes, cost: CostModel, workers: int, batch_size: int, *,
             bandwidth_mb_s: float = 100.0, memory_limit_bytes: float | None = None,
             quota_per_5min: int = RESOLVE_QUOTA_PER_5MIN, download_workers: int = 4,
             request_seconds: float = REQUEST_SECONDS, metadata_bytes: float = METADATA_CSV_BYTES) -> Plan:
    """Estimate wall time, memory, disk and network (see the module docstring for the model).

    >>> v = Volumes(np.full(10, 1e7), np.full(10, 1e7), np.full(10, 1e7))
    >>> p = estimate(v, CostModel(seconds_per_volume=2.0), workers=2, batch_size=5)
    >>> p.tasks, p.wall_seconds
    (2, 10.05)
    """
    n = len(volumes.in_voxels)
    seconds = cost.seconds(volumes.work_voxels)
    batches = [seconds[i:i + batch_size].sum() + TASK_OVERHEAD_S for i in range(0, n, batch_size)]
    peaks = WORKER_BASE_BYTES + cost.peak_bytes_per_voxel * (volumes.in_voxels + volumes.out_voxels)
    raw = float(volumes.file_bytes.sum())
    pull = Transfer(files=volumes.n_files + 1, nbytes=raw + metadata_bytes, bandwidth_mb_s=bandwidth_mb_s,
                    quota_per_5min=quota_per_5min, workers=download_workers, request_seconds=request_seconds)
    return Plan(
        volumes=n, workers=workers, batch_size=batch_size, tasks=len(batches),
        cpu_seconds=float(seconds.sum()), wall_seconds=makespan(batches, workers),
        mean_seconds=float(seconds.mean()) if n else 0.0, max_seconds=float(seconds.max(initial=0)),
        peak_worker_bytes=float(peaks.max(initial=0)),
        p95_worker_bytes=float(np.percentile(peaks, 95)) if n else 0.0,
        refused_by_limit=int((4 * np.maximum(volumes.in_voxels, volumes.out_voxels)
                              > memory_limit_bytes // IMAGE_MEMORY_FRACTION).sum()) if memory_limit_bytes else 0,
        over_memory_limit=int((peaks > memory_limit_bytes).sum()) if memory_limit_bytes else 0,
        raw_bytes=raw, output_bytes=float(cost.stored_bytes_per_voxel * volumes.out_voxels.sum()),
        download_bytes=raw + metadata_bytes,
        download_seconds=pull.seconds, cost_source=cost.source, cost_model=cost.describe(),
        files=pull.files, download_bound=pull.bound, quota_seconds=pull.quota_seconds,
        bandwidth_seconds=pull.bandwidth_seconds, concurrency_seconds=pull.concurrency_seconds,
        quota_per_5min=quota_per_5min, download_workers=download_workers,
    )


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return ""  # unreachable


def _duration(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.1f} min" if s >= 90 else f"{s:.1f} s"


def _count(n: int, noun: str) -> str:
    """``1 worker``, ``64 workers``.

    >>> _count(1, "worker"), _count(64, "download worker")
    ('1 worker', '64 download workers')
    """
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def end_to_end_seconds(plan: Plan) -> float:
    """What ``run`` takes end to end: it downloads while it preprocesses, so the larger of the network
    time (the request quota, bandwidth and round trips) and the compute wall time.

    >>> v = Volumes(np.full(10, 1e7), np.full(10, 1e7), np.full(10, 1e9))
    >>> fast = estimate(v, CostModel(seconds_per_volume=2.0), workers=2, batch_size=5)
    >>> end_to_end_seconds(fast) == fast.download_seconds > fast.wall_seconds   # 10 GB at 100 MB/s
    True
    >>> slow = estimate(v, CostModel(seconds_per_volume=200.0), workers=1, batch_size=5)
    >>> end_to_end_seconds(slow) == slow.wall_seconds > slow.download_seconds
    True
    """
    return max(plan.wall_seconds, plan.download_seconds)


def render(plan: Plan, metadata_note: str, memory_limit: str | None, *, raw_note: str = "estimated",
           max_raw_gb: int | None = None, next_command: str = "") -> str:
    """The human-readable report printed by ``openmind-prep plan``."""
    p = plan
    limit = (f"; with --memory-limit {memory_limit}: {p.refused_by_limit:,} volumes refused as failed rows "
             f"(float32 input or 1 mm output above limit/{IMAGE_MEMORY_FRACTION}), {p.over_memory_limit:,} whose "
             "estimated peak exceeds the limit" if memory_limit else "")
    return "\n".join([
        f"plan:      {p.volumes:,} volumes ({metadata_note}) on {_count(p.workers, 'worker')}",
        f"run:       {_duration(end_to_end_seconds(p))} end to end with `openmind-prep run` (it downloads while it "
        f"preprocesses: the larger of network {_duration(p.download_seconds)} and compute "
        f"{_duration(p.wall_seconds)}, below)",
        f"costs:     {p.cost_source}",
        f"model:     {p.cost_model}",
        f"batching:  {p.batch_size} images per Dask task -> {p.tasks:,} tasks, at most "
        f"{2 * p.workers} in flight (2 per worker); a failed task is retried image by image",
        f"compute:   {_duration(p.cpu_seconds)} CPU in total; {p.mean_seconds:.2f} s per volume on "
        f"average, {p.max_seconds:.1f} s for the largest",
        f"wall time: {_duration(p.wall_seconds)} on {_count(p.workers, 'worker')} "
        f"(ideal {_duration(p.cpu_seconds / max(p.workers, 1))}; FIFO batches, {TASK_OVERHEAD_S} s per task)",
        f"memory:    peak {_size(p.peak_worker_bytes)} per worker (largest volume), 95th percentile "
        f"{_size(p.p95_worker_bytes)}{limit}",
        f"disk:      raw {_size(p.raw_bytes)} (NIfTI images + masks, {raw_note}), output {_size(p.output_bytes)} (Zarr)",
        f"           download + preprocess keep both at once: {_size(p.raw_bytes + p.output_bytes)}"
        + (f"; run --max-raw-gb {max_raw_gb} deletes raw files once stored: output + {max_raw_gb} GB"
           if max_raw_gb is not None else ""),
        f"network:   {_size(p.download_bytes)} in {p.files:,} files (one hub request each): "
        f"{_duration(p.download_seconds)}, set by the {p.download_bound}",
        f"           quota: {p.quota_per_5min:,} requests per 5 min (--requests-per-5min) -> "
        f"{_duration(p.quota_seconds)}; bandwidth (--bandwidth) -> {_duration(p.bandwidth_seconds)}",
        f"           concurrency: {_count(p.download_workers, 'download worker')} (--download-workers) x "
        f"{REQUEST_SECONDS} s per request -> {_duration(p.concurrency_seconds)}",
    ] + ([f"next:      {next_command}"] if next_command else []))


def _parse_bytes(text: str) -> float:
    from dask.utils import parse_bytes

    return float(parse_bytes(text))
