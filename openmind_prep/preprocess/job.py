"""``openmind-prep preprocess``: onemmiso preprocessing of a source's images into the Zarr store, on Dask.

The images come from a :class:`~openmind_prep.sources.base.Source` (an OpenMind tree, a plain folder,
a ``pretrain_data.json``, an nnU-Net raw dataset); a bare path given where a source is expected is
the OpenMind tree at that path (:func:`~openmind_prep.sources.openmind.as_source`).

Work is submitted as BATCHES of images (one Dask task per batch, a bounded number in flight):
114k one-image tasks would stall the scheduler. Each batch preprocesses its images one by one,
writes each image group atomically (:meth:`openmind_prep.store.store.Store.write_case`) and finally its
manifest fragment (:meth:`~openmind_prep.store.store.Store.record`). A bad image gets a ``failed`` row
with the reason and the batch goes on.
A batch whose task dies (e.g. a worker killed for memory) is split into one-image tasks, so
only the image that kills a worker is marked failed. Re-running skips every image that has an
``ok`` row whose arrays exist: a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from openmind_prep.core.atomic import disk_full  # also the CLI's
from openmind_prep.core.dask_cluster import DEFAULT_BATCH_SIZE, ClusterConfig
from openmind_prep.store.manifest import FAILED, OK, empty_row
from openmind_prep.sources.base import Source, select
from openmind_prep.sources.openmind import as_source
from openmind_prep.sources.metadata import ImageRecord
from openmind_prep.core.paths import source_path
from openmind_prep.sources.selection import Selection
from openmind_prep.store.schema import LABEL
from openmind_prep.store.store import CODEC, IMAGE, Store, StoreError, as_store, image_key


@dataclass(frozen=True)
class PreprocessOptions:
    """Per-image settings: stored dtype, inner chunk edge, blosc level (of ``store.CODEC``), input size cap
    (``max_bytes``; None: the Dask worker's memory limit / 8, see :func:`worker_max_bytes`).

    >>> PreprocessOptions().dtype
    'float16'
    """

    dtype: str = "float16"
    chunks: int = 64
    clevel: int = CODEC["clevel"]
    max_bytes: int | None = None


#: A worker's per-image budget is its memory limit / this (an image's peak is ~6x its float32 size).
IMAGE_MEMORY_FRACTION = 8


def worker_max_bytes(fraction: int = IMAGE_MEMORY_FRACTION) -> int | None:
    """The per-image budget on the current Dask worker: its memory limit / ``fraction`` (an image's
    peak is ~6x its float32 size), checked against the decoded input and the 1 mm output before
    they are allocated. ``None`` outside a worker or when the worker has no limit.

    >>> worker_max_bytes() is None  # not inside a Dask worker
    True
    """
    from openmind_prep.core.dask_cluster import in_process_memory_limit

    limit = in_process_memory_limit()  # the one in-process worker's (no Dask loaded for it)
    if limit is None and "distributed" in sys.modules:  # a Dask worker has imported distributed
        try:
            from distributed import get_worker

            limit = get_worker().memory_manager.memory_limit
        except (ImportError, ValueError, AttributeError):
            return None
    return int(limit) // fraction if limit else None


def record_row(record: ImageRecord, error: str = "") -> dict:
    """A manifest row for ``record`` with its metadata filled in: ``failed`` with ``error`` until the
    image is written (then the caller sets ``status`` and the array columns)."""
    row = empty_row(record.image_path)
    row.update(modality=record.modality, dataset=record.dataset, subject=record.subject,
               session=record.session, image_quality_score=record.image_quality_score, error=error,
               metadata=json.dumps(dict(record.extra), sort_keys=True) if record.extra else "")
    return row


def process_image(record: ImageRecord, source: Source | Path, store: Store | Path, options: PreprocessOptions) -> dict:
    """Preprocess one image of ``source`` into ``store``; returns its manifest row (``failed`` with
    the reason instead of raising)."""
    from openmind_prep.preprocess.onemmiso import preprocess_case
    from openmind_prep.core.paths import InputError

    start = time.perf_counter()
    row = record_row(record)
    images = as_source(source).root
    max_bytes = options.max_bytes if options.max_bytes is not None else worker_max_bytes()
    try:
        masks = {name: source_path(images, path) for name, path in record.mask_paths.items()}
        label = source_path(images, record.label_path) if record.label_path else None
        case = preprocess_case(source_path(images, record.image_path), masks=masks,
                               dtype=np.dtype(options.dtype), max_bytes=max_bytes, label=label)
        image = np.asarray(case.image)  # in options.dtype; float16 overflow refused by preprocess_case
        arrays = {IMAGE: image}
        arrays.update({name: np.asarray(m, dtype=np.uint8) for name, m in case.masks.items() if m is not None})
        if case.label is not None:
            arrays[LABEL] = case.label  # its own integer dtype
        props = case.props
        crop_bbox = [[int(a), int(b)] for a, b in case.crop_bbox]
        attributes = {
            "image_path": record.image_path, "modality": record.modality,
            "spacing": [float(s) for s in props.spacing], "origin": [float(o) for o in props.origin],
            "direction": np.asarray(props.direction, dtype=float).ravel().tolist(),
            "original_shape": [int(n) for n in props.shape], "crop_bbox": crop_bbox,
            "shape_before_crop": [int(n) for n in case.shape_before_crop],
            "target_spacing": [1.0, 1.0, 1.0], "preprocessing": "onemmiso",
        }
        stored = as_store(store).write_case(image_key(record.image_path), arrays, attributes,
                                            chunks=options.chunks, clevel=options.clevel)
        row.update(status=OK, shape=[int(n) for n in image.shape], spacing=attributes["spacing"],
                   crop_bbox=crop_bbox, origin=attributes["origin"], direction=attributes["direction"],
                   dtype=options.dtype, **stored.columns())
    except InputError as e:
        row.update(error=str(e))
    except StoreError as e:  # a key the store may not give (reserved, or another image's group)
        row.update(error=f"{images / record.image_path}: {e}")
    except Exception as e:  # noqa: BLE001 - any other error fails this image only
        if disk_full(e):
            raise  # not this image's fault: stop the run (half-written groups stay in STORE/_tmp)
        row.update(error=f"{images / record.image_path}: {type(e).__name__}: {' '.join(str(e).split())}")
    row["seconds"] = time.perf_counter() - start
    return row


def process_batch(records: Sequence[ImageRecord], source: Source | Path, store: Store,
                  options: PreprocessOptions) -> list[dict]:
    """Preprocess a batch of images, then write its manifest fragment; returns the rows.

    This is the unit of work of a Dask task (also reused by the streaming ``run`` command).
    """
    rows = [process_image(record, source, store, options) for record in records]
    as_store(store).record(rows)
    return rows


def _batch_task(records: Sequence[ImageRecord], source: Source | Path, store: Store,
                options: PreprocessOptions) -> list[dict] | OSError:
    """:func:`process_batch` as a Dask task: a full disk comes back as the task's value (the caller raises
    it), so Dask prints no traceback dump of a failed task before the command's one line."""
    try:
        return process_batch(records, source, store, options)
    except OSError as e:
        if not disk_full(e):
            raise
        return OSError(e.errno, e.strerror, e.filename)


def pending(records: Iterable[ImageRecord], store: Store | Path) -> list[ImageRecord]:
    """The records that still need work (:meth:`~openmind_prep.store.store.Store.pending`)."""
    return as_store(store).pending(records)


def prepare(records: Sequence[ImageRecord], source: Source | Path, store: Store) -> tuple[list[dict], list[ImageRecord]]:
    """Before a run (holding the store's lock): create the store, drop leftovers of killed writers,
    write ``failed`` rows for the records the store's namespace refuses (a reserved name, or a key
    another image has: :meth:`~openmind_prep.store.store.Store.claim`); returns those rows and the records
    still to do. One call over the whole selection, so clashes between images processed in
    different rounds (``run``) are caught too."""
    store = Store.create(as_store(store).root)
    store.clear_tmp()
    rows = store.rows()
    refused = store.claim((r.image_path for r in records), rows)
    images = as_source(source).root
    clashes = [record_row(r, f"{images / r.image_path}: {refused[r.image_path]}; refused")
               for r in records if r.image_path in refused]
    if clashes:
        store.record(clashes)
    return clashes, [r for r in store.pending(records, rows) if r.image_path not in refused]


def run_preprocess(records: Sequence[ImageRecord], source: Source | Path, store: Store | Path, client,
                   options: PreprocessOptions, *, batch_size: int = DEFAULT_BATCH_SIZE,
                   max_in_flight: int | None = None, on_batch: Callable[[list[dict]], None] | None = None,
                   progress: bool = True) -> list[dict]:
    """Preprocess the pending ``records`` on a ``distributed.Client``; returns this run's rows.

    :func:`prepare`, then :func:`process_records`. The manifest is NOT merged here (see
    :func:`preprocess`), nor the store locked.
    """
    clashes, todo = prepare(records, source, as_store(store))
    return clashes + process_records(todo, source, as_store(store), client, options, batch_size=batch_size,
                                     max_in_flight=max_in_flight, on_batch=on_batch, progress=progress)


def process_records(todo: Sequence[ImageRecord], source: Source | Path, store: Store, client,
                    options: PreprocessOptions, *, batch_size: int = DEFAULT_BATCH_SIZE,
                    max_in_flight: int | None = None, on_batch: Callable[[list[dict]], None] | None = None,
                    progress: bool = True) -> list[dict]:
    """Process ``todo`` (already :func:`prepare`-d) in Dask tasks of ``batch_size`` images.

    At most ``max_in_flight`` batches (default: two per worker thread) are submitted at a time
    (:func:`~openmind_prep.core.dask_cluster.bounded_submit`), so the scheduler never holds more than a
    few tasks. ``on_batch`` is called with each finished batch's rows (in completion order).
    """
    from tqdm.auto import tqdm

    from openmind_prep.core.dask_cluster import bounded_submit, client_of

    if not todo:
        return []
    client = client_of(client)  # a cluster still starting in the background is waited for here
    store, source = as_store(store), as_source(source)
    queue = deque(todo[i:i + batch_size] for i in range(0, len(todo), batch_size))
    in_flight = max_in_flight or 2 * max(1, sum(client.nthreads().values()))
    rows: list[dict] = []
    with tqdm(total=len(todo), unit="img", desc="preprocess", disable=not progress) as bar:
        submit = lambda batch: client.submit(_batch_task, batch, source, store, options,  # noqa: E731
                                             pure=False)
        for batch, future in bounded_submit(submit, queue, in_flight):
            try:
                batch_rows = future.result()
                if isinstance(batch_rows, OSError):  # a full disk (_batch_task)
                    raise batch_rows
            except Exception as e:  # noqa: BLE001 - the task died, not one image
                if disk_full(e):
                    raise
                if len(batch) > 1:  # isolate the image that kills workers: next, one by one
                    queue.extendleft([record] for record in reversed(batch))
                    batch_rows = []
                else:
                    batch_rows = [record_row(batch[0], f"{source.root / batch[0].image_path}: "
                                                       f"worker died while processing it ({type(e).__name__}: "
                                                       f"{e}); out of memory?")]
                    store.record(batch_rows)
            rows.extend(batch_rows)
            bar.update(len(batch_rows))
            bar.set_postfix(failed=sum(r["status"] == FAILED for r in rows))
            if on_batch is not None and batch_rows:
                on_batch(batch_rows)
    store.clear_tmp()  # every task of this run has ended: what is left in _tmp was a killed writer's
    return rows


def preprocess(source: Source | Path, store: Store | Path, selection: Selection, cluster: ClusterConfig,
               options: PreprocessOptions, *, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True,
               say: Callable[[str], None] | None = None):
    """Select records from ``source``, then, holding the store's run lock, preprocess the pending
    ones and merge the manifest. :class:`~openmind_prep.store.store.StoreError` (one line) when
    another run holds the store. ``say`` gets the source's line (kind, path, image count) first,
    then one line per selection filter the source's images cannot answer
    (:func:`~openmind_prep.sources.base.select`). The store notes the source's kind and root.

    No cluster is started when nothing is pending (a re-run of a finished store takes ~1 s); else
    one line says what starts (:class:`openmind_prep.core.dask_cluster.BackgroundClient`).
    Returns ``(selected records, this run's rows, merged manifest table)``.
    """
    from openmind_prep.core.dask_cluster import BackgroundClient

    source = as_source(source)
    listed = source.records()  # a bad listing fails before the store is touched
    lines = [source.describe(len(listed))]
    records = select(source, selection, listed, lines.append)
    store = Store.create(as_store(store).root)
    with store.lock("preprocess"):  # the lines once the store is ours (a held lock is the only line)
        for line in lines if say is not None else ():
            say(line)
        store.note_source(source.kind, source.root, source.origin)
        clashes, todo = prepare(records, source, store)
        rows = list(clashes)
        if todo:
            with BackgroundClient(cluster) as client:
                rows += process_records(todo, source, store, client, options, batch_size=batch_size,
                                        progress=progress)
        return records, rows, store.merge()
