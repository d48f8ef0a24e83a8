"""``openmind-prep run``: stream download → preprocess → write → delete raw, under a raw-bytes bound.

Raw OpenMind is several TB; most labs cannot hold it next to the preprocessed store. ``run``
keeps at most ``--max-raw-gb`` of image and mask bytes (complete or partial) in its work folder:

    downloader thread:  reserve the batch's bytes (blocks while over the bound) → fetch + verify
    main thread:        take every batch fetched so far → ``run_preprocess`` on the Dask client
                        (the same code as ``openmind-prep preprocess``) → delete their raw files
                        (unless ``--keep-raw``) → release their bytes → merge the manifest

so downloads of the next batches overlap preprocessing of the current ones. The bound is exact
because sizes are known before any byte is written (pinned list / paths-info). A file that cannot be
fetched gives its image a ``failed`` manifest row naming the file. Images already ``ok`` in the
store are skipped before anything is downloaded, so a killed run resumes. ``--source SRC`` runs
the same on a local source of any kind (:mod:`openmind_prep.sources.detect`): its files are copied
into the work folder with their layout, processed there, deleted.
"""

from __future__ import annotations

import queue
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence


from openmind_prep.sources.download import download_files
from openmind_prep.sources.hub import HubRepo, RemoteFile, VerifiedState
from openmind_prep.sources.base import Source, select
from openmind_prep.sources.openmind import as_source
from openmind_prep.sources.metadata import ImageRecord
from openmind_prep.core.dask_cluster import DEFAULT_BATCH_SIZE
from openmind_prep.sources.selection import Selection
from openmind_prep.store.store import Store, as_store


class RawBudgetError(ValueError):
    """One image (with its masks) is larger than the raw-bytes bound."""


@dataclass(frozen=True)
class Item:
    """One image with the files it needs (image first, then masks), repo-relative."""

    record: ImageRecord
    files: tuple[RemoteFile, ...]

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)


def batch_groups(items: Sequence[Item], batch_size: int, max_bytes: int) -> list[list[Item]]:
    """Greedy batches in order: at most ``batch_size`` images and ``max_bytes // 2`` bytes each
    (so one batch can download while another is processed); a bigger image goes alone.

    >>> its = [Item(None, (RemoteFile(str(i), n, None, ""),)) for i, n in enumerate([4, 4, 9, 1])]
    >>> [[i.files[0].path for i in b] for b in batch_groups(its, batch_size=8, max_bytes=16)]
    [['0', '1'], ['2'], ['3']]
    """
    too_big = [i for i in items if i.bytes > max_bytes]
    if too_big:
        i = too_big[0]
        raise RawBudgetError(f"{i.files[0].path} needs {i.bytes / 1e9:.3f} GB with its masks, more than "
                               f"--max-raw-gb {max_bytes / 1e9:g}")
    batches: list[list[Item]] = []
    current: list[Item] = []
    for item in items:
        if current and (len(current) == batch_size or sum(i.bytes for i in current) + item.bytes > max_bytes // 2):
            batches.append(current)
            current = []
        current.append(item)
    return batches + ([current] if current else [])


class ByteBudget:
    """Reserved raw bytes, bounded by ``limit``: ``acquire`` blocks until the bytes fit."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._cond = threading.Condition()

    def acquire(self, n: int, stop: threading.Event) -> bool:
        with self._cond:
            while self.used + n > self.limit and not stop.is_set():
                self._cond.wait(0.2)
            if stop.is_set():
                return False
            self.used += n
            return True

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


Fetch = Callable[[list[RemoteFile]], dict[str, str]]  # files → {path: error} for the failures


def hub_fetcher(repo: HubRepo, commit: str, work: Path, workers: int,
                missing: dict[str, str] | None = None) -> Fetch:
    """Fetch + verify from the hub (see :mod:`openmind_prep.sources.hub`); the files in ``missing`` (path →
    reason: listed in the CSV, absent from the repo) fail without a request."""
    state = VerifiedState(work)
    missing = missing or {}

    def fetch(files: list[RemoteFile]) -> dict[str, str]:
        present = [f for f in files if f.path not in missing]
        report = download_files(repo, commit, present, work, workers=workers, batch_size=1, progress=False,
                                state=state)
        return {**{f.path: missing[f.path] for f in files if f.path in missing}, **dict(report.failed)}

    return fetch


def local_fetcher(source: Path, work: Path, listed_in: str = "the source") -> Fetch:
    """Copy from a local folder into ``work`` with the same layout (temp file + rename, size
    checked); a path that leaves either folder, a missing file, or a directory/FIFO/device in place
    of a file is a per-file failure naming it (never a read that blocks on a FIFO). ``listed_in``
    names what listed the files (for a missing one)."""
    from openmind_prep.core.atomic import stop_if_disk_full, writing
    from openmind_prep.core.paths import source_path

    def fetch(files: list[RemoteFile]) -> dict[str, str]:
        failed = {}
        for f in files:
            try:
                src, dest = source_path(source, f.path), source_path(work, f.path)
            except ValueError as e:  # InputError: names the path and the reason
                failed[f.path] = str(e)
                continue
            problem = _not_a_file(src, listed_in)
            if problem:
                failed[f.path] = f"{src}: {problem}"
                continue
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                with writing(dest) as tmp:
                    shutil.copyfile(src, tmp)
                    if tmp.stat().st_size != f.size:
                        raise OSError(f"size changed while copying ({tmp.stat().st_size} != {f.size} bytes)")
            except OSError as e:
                stop_if_disk_full(e, dest)
                failed[f.path] = f"{source / f.path}: {e}"
        return failed

    return fetch


def _not_a_file(path: Path, listed_in: str = "the source") -> str:
    """Why ``path`` is not a regular file to copy ('' when it is).

    >>> _not_a_file(Path("/no/such/file.nii.gz"), "list.csv"), _not_a_file(Path("/"))
    ('listed in list.csv but not found', 'not a regular file (a directory)')
    """
    from openmind_prep.core.paths import not_a_regular_file

    try:
        return not_a_regular_file(path)
    except FileNotFoundError:
        return f"listed in {listed_in} but not found"
    except OSError as e:
        return f"cannot read it: {e.strerror or e}"


def _delete_raw(work: Path, item: Item) -> None:
    from openmind_prep.core.paths import source_path

    for f in item.files:
        try:
            path = source_path(work, f.path)
        except ValueError:  # never fetched (refused by the fetcher), so nothing to delete
            continue
        path.unlink(missing_ok=True)
        parent = path.parent
        while parent != work and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


def stream(items: Sequence[Item], fetch: Fetch, work: Path, store: Store | Path, client, options, *,
           max_raw_bytes: int, keep_raw: bool = False, batch_size: int = DEFAULT_BATCH_SIZE,
           on_fetched: Callable[[], None] | None = None, progress: bool = True,
           source: Source | None = None) -> list[dict]:
    """Fetch, preprocess and delete ``items`` batch by batch into ``store`` (whose run lock the
    caller holds); returns this run's manifest rows. ``source``: the fetched files as a source in
    ``work`` (:meth:`~openmind_prep.sources.base.Source.staged`; default the OpenMind layout there).

    ``on_fetched`` is called after each batch is fetched (tests sample the raw bytes there).
    """
    from tqdm.auto import tqdm

    from openmind_prep.preprocess.job import prepare, process_records, record_row

    work, store = Path(work), as_store(store)
    staged = source if source is not None else as_source(work)
    clashes, todo_records = prepare([i.record for i in items], staged, store)  # over all items, once
    todo_paths = {r.image_path for r in todo_records}
    todo = [i for i in items if i.record.image_path in todo_paths]
    budget = ByteBudget(max_raw_bytes if not keep_raw else 1 << 62)
    ready: queue.Queue = queue.Queue()
    stop = threading.Event()

    def downloader() -> None:
        try:
            for batch in batch_groups(todo, batch_size, budget.limit):
                if not budget.acquire(sum(i.bytes for i in batch), stop):
                    return
                failed = fetch([f for i in batch for f in i.files])
                if on_fetched is not None:
                    on_fetched()
                ready.put((batch, failed))
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            ready.put(e)
        finally:
            ready.put(None)

    thread = threading.Thread(target=downloader, name="openmind-prep-fetch", daemon=True)
    thread.start()
    rows: list[dict] = list(clashes)
    finished = False
    with tqdm(total=len(todo), unit="img", desc="run", disable=not progress) as bar:
        try:
            while not finished:
                got = [ready.get()]
                while not ready.empty():
                    got.append(ready.get())
                if any(isinstance(g, BaseException) for g in got):
                    raise next(g for g in got if isinstance(g, BaseException))
                finished = any(g is None for g in got)
                batches = [g for g in got if g is not None]
                if not batches:
                    continue
                fetched, lost = [], []
                for batch, failed in batches:
                    for item in batch:
                        errors = [failed[f.path] for f in item.files if f.path in failed]
                        (lost if errors else fetched).append((item, "; ".join(errors)))
                if lost:
                    lost_rows = [record_row(item.record, error) for item, error in lost]
                    store.record(lost_rows)
                    rows.extend(lost_rows)
                if fetched:
                    rows.extend(process_records([i.record for i, _ in fetched], staged, store, client, options,
                                                batch_size=batch_size, progress=False))
                for batch, _ in batches:
                    for item in batch:
                        if not keep_raw:
                            _delete_raw(work, item)
                    budget.release(sum(i.bytes for i in batch))
                bar.update(len(fetched) + len(lost))
        finally:
            stop.set()
            thread.join()
    return rows


def hub_items(repo: HubRepo, selection: Selection, work: Path, pin_file: Path | None,
              workers: int) -> tuple[list[Item], Fetch]:
    """Resolve (or read) the pinned list against the hub; the items to process and how to fetch them."""
    from openmind_prep.sources.pinned import PinnedList, group_files, missing_reason, open_pin, records_of

    pin = PinnedList.read(pin_file) if pin_file is not None else None
    repo, pin, full_csv = open_pin(repo, work, selection=selection, pin=pin, progress=True)
    try:
        items = [Item(r, tuple(files)) for r, files in group_files(pin, records_of(pin, full_csv))]
    except ValueError as e:
        raise ValueError(f"{pin_file or 'the resolved pinned list'}: {e}") from None
    missing = {p: missing_reason(pin, p) for p in pin.missing}
    return items, hub_fetcher(repo, pin.commit, work, workers, missing)


def source_items(source: Source | Path, selection: Selection, work: Path,
                 say: Callable[[str], None] | None = None) -> tuple[list[Item], Fetch]:
    """The selected images of a local source (``say``: its line, then the selection's notes, as in
    :func:`openmind_prep.preprocess.job.preprocess`) and how to copy them into ``work``. A listed
    file that is missing, or a directory or FIFO, counts 0 bytes here and fails in the fetch (a
    ``failed`` row naming it)."""
    source = as_source(source)
    listed = source.records()
    if say is not None:
        say(source.describe(len(listed)))
    items = []
    for r in select(source, selection, listed, say):
        paths = source.tree_paths(r)
        sizes = [(source.tree / p).stat().st_size if (source.tree / p).is_file() else 0  # no error, follows links
                 for p in paths]
        items.append(Item(r, tuple(RemoteFile(p, n, None, "") for p, n in zip(paths, sizes))))
    return items, local_fetcher(source.tree, work, source.listed_in)
