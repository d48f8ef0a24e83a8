"""WebDataset tar shards written from a preprocessed store (or by the preprocess jobs).

Layout of ``OUT``::

    OUT/<prefix>-000000.tar ...   shards (POSIX tar, PAX headers, mtime 0: byte-identical re-runs)
    OUT/_index/<prefix>.json      one fragment per writer (a whole-store run or one preprocess batch)
    OUT/index.json, index.parquet merged index: per shard url, samples, bytes, sha256 (+ keys in json)

One sample per image; its tar members share the image key (``.`` and ``%`` percent-encoded so
WebDataset's "extension starts at the first dot" rule holds, always relative:
:func:`openmind_prep.shards.zshard.tar_key`), written by ``webdataset.TarWriter`` in its order
(extensions sorted)::

    <key>.anat_mask.zshard   only when the image has a foreground mask
    <key>.anon_mask.zshard   only when the image has a defacing mask
    <key>.image.zshard       the image array (encoding: :mod:`openmind_prep.shards.zshard`)
    <key>.label.zshard       only when the image has a label map
    <key>.json               its manifest row (``checksum`` = sha256 of the decoded image bytes)

Every file is written to a temporary name and renamed; a shard is skipped on a re-run when the
fragment lists it with the same keys and the same image checksums and the file on disk has the
recorded size. One writer per ``OUT`` at a time (``OUT/_lock``, :mod:`openmind_prep.core.runlock`);
it first removes the temporary files a killed writer left there.

Shards know their store. Each image is checked against its manifest row before it is packed
(:mod:`openmind_prep.store.integrity`: path, shape, checksum); a damaged image is left out and
reported. Each shard records its images' checksums (``checksums``, one ``{array: checksum}`` per key)
and the index the digest of all of them (``store``: equal to
:func:`openmind_prep.store.integrity.store_digest` of the store when the shards hold exactly its
``ok`` images as they are now). A shard of this prefix whose images changed is written again; shards
of other prefixes in ``OUT`` that hold images the store no longer has (as they are) are refused,
or removed with ``replace=True`` (``shard --replace``), never listed as fresh.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from openmind_prep.core.atomic import remove_temps, write_json, write_parquet, writing
from openmind_prep.core.runlock import LockHeld, run_lock
from openmind_prep.store.integrity import DamagedImage, checksums, content_digest, open_image, check_checksums, \
    store_digest
from openmind_prep.store.schema import ARRAY_COLUMNS, row_key
from openmind_prep.store.store import Store, StoreError, as_store
from openmind_prep.shards.zshard import EXTENSION, encode_array, tar_key

INDEX_DIR = "_index"
INDEX_JSON, INDEX_PARQUET = "index.json", "index.parquet"
LOCK_FILE = "_lock"
_TAR_OVERHEAD = 3 * 512  # header + PAX header + padding, per member (upper estimate)


@dataclass(frozen=True)
class ShardInfo:
    """One written shard: file name (relative to OUT), keys in order, bytes and sha256 of the file, and
    per key the checksums of its arrays (``{"image": "sha256:…", …}``, as in the manifest)."""

    url: str
    keys: tuple[str, ...]
    bytes: int
    sha256: str
    checksums: tuple[dict, ...] = ()

    @property
    def samples(self) -> int:
        return len(self.keys)


def _sample(store: Store, row: dict) -> dict[str, bytes | str]:
    """One image as a WebDataset sample dict (``__key__`` + one member per extension), after checking
    it against its manifest row (:class:`~openmind_prep.store.integrity.DamagedImage` if it differs)."""
    arrays = open_image(store, row)  # confined to the store, no FIFO, the image's own paths and shape
    check_checksums(store, row, arrays)
    sample: dict[str, bytes | str] = {"__key__": tar_key(row_key(row))}
    for name in arrays:
        sample[f"{name}.{EXTENSION}"] = encode_array(store.path(row[ARRAY_COLUMNS[name]]))
    sample["json"] = json.dumps(row, sort_keys=True, default=str).encode()
    return sample


def _estimate(store: Store, row: dict) -> int:
    total = 2048
    for column in ARRAY_COLUMNS.values():
        if row.get(column):
            files = [p for p in store.path(row[column]).rglob("*") if p.is_file()]
            total += sum(p.stat().st_size + 64 for p in files) + _TAR_OVERHEAD
    return total


#: ``shard_size=None`` ("auto"): at least this many shards when there are as many samples (so
#: 2 nodes x 8 DataLoader workers each get a shard), none above :data:`MAX_SHARD_BYTES`.
MIN_SHARDS = 16
MAX_SHARD_BYTES = 10**9


def auto_shard_size(sizes: Sequence[int], min_shards: int = MIN_SHARDS, cap: int = MAX_SHARD_BYTES) -> int:
    """The target shard size for ``shard_size="auto"``: ``total / min_shards`` bytes, at most ``cap``.

    A small store then still gives ``min(min_shards, samples)`` shards (one sample each when it has
    fewer), so several DataLoader workers can stream it; a large one gets shards of ``cap`` bytes.

    >>> len(group_shards([100] * 6, auto_shard_size([100] * 6)))        # 6 small samples: 6 shards
    6
    >>> len(group_shards([100] * 64, auto_shard_size([100] * 64)))      # 64: 16 shards of 4
    16
    >>> len(group_shards([10, 10, 900], auto_shard_size([10, 10, 900])))  # uneven, few: one each
    3
    >>> auto_shard_size([4 * 10**8] * 1000)                            # large stores: 1 GB shards
    1000000000
    """
    if len(sizes) <= min_shards:  # one sample per shard (total / min_shards packs two small ones
        return 1                    # together when the sizes differ a lot)
    return max(1, min(cap, -(-sum(sizes) // max(1, min_shards))))


def group_shards(sizes: Sequence[int], shard_size: int) -> list[range]:
    """Greedy, order-keeping split of samples (by estimated size) into shards of ≤ shard_size.

    A sample larger than shard_size gets a shard of its own.

    >>> group_shards([4, 4, 4, 9, 1], 8)
    [range(0, 2), range(2, 3), range(3, 4), range(4, 5)]
    """
    groups, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > shard_size:
            groups.append(range(start, i))
            start, total = i, 0
        total += size
    if start < len(sizes):
        groups.append(range(start, len(sizes)))
    return groups


class _HashingFile(io.RawIOBase):
    def __init__(self, f):
        self.f, self.hash, self.size = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.f.write(data)


def _write_tar(path: Path, samples: Iterable[dict]) -> tuple[int, str]:
    """Write samples with ``webdataset.TarWriter`` (PAX, mtime 0, fixed owner: reproducible bytes)."""
    import webdataset as wds

    with writing(path, fsync=True) as tmp, open(tmp, "wb") as raw:
        hashing = _HashingFile(raw)
        with wds.TarWriter(hashing, encoder=False, user="", group="", mode=0o444, mtime=0,
                           format="PAX_FORMAT", compress=False) as tar:
            for sample in samples:
                tar.write(sample)
    return hashing.size, hashing.hash.hexdigest()


def read_fragment(out: Path, prefix: str) -> list[ShardInfo]:
    """Shards a writer with this prefix has finished (empty list if none)."""
    path = Path(out) / INDEX_DIR / f"{prefix}.json"
    if not path.exists():
        return []
    return [ShardInfo(s["url"], tuple(s["keys"]), s["bytes"], s["sha256"],
                      tuple(dict(c) for c in s.get("checksums") or ()))
            for s in json.loads(path.read_text())["shards"]]


def stale_fragments(out: Path, current: dict[str, dict], prefix: str) -> dict[str, str]:
    """``fragment name → why`` for the other writers' fragments in ``out`` that hold an image not in
    ``current`` (``key → {array: checksum}``, the store's ``ok`` images now) or in another version, or
    that record no checksums (written before shards knew their store)."""
    stale = {}
    for frag in sorted((Path(out) / INDEX_DIR).glob("*.json")):
        if frag.stem == prefix:
            continue
        for shard in read_fragment(out, frag.stem):
            if len(shard.checksums) != len(shard.keys):
                stale[frag.stem] = f"{shard.url} records no image checksums (written by an older version)"
                break
            changed = next((k for k, c in zip(shard.keys, shard.checksums) if current.get(k) != c), None)
            if changed is not None:
                what = "not in the store" if changed not in current else "changed in the store since"
                stale[frag.stem] = f"{shard.url} holds {changed!r}, {what}"
                break
    return stale


def _remove_writer(out: Path, prefix: str) -> None:
    """Remove a writer's shards and fragment (``shard --replace``)."""
    for shard in read_fragment(out, prefix):
        (Path(out) / shard.url).unlink(missing_ok=True)
    (Path(out) / INDEX_DIR / f"{prefix}.json").unlink(missing_ok=True)


@contextmanager
def _holding(out: Path) -> Iterator[None]:
    """``OUT``'s writer lock; :class:`~openmind_prep.store.store.StoreError` (one line) when another holds it."""
    try:
        with run_lock(out / LOCK_FILE, "shard", what="shard folder"):
            yield
    except LockHeld as e:
        raise StoreError(str(e)) from None


def write_shards(
    store: Path, out: Path, *, shard_size: int | None = None, keys: Sequence[str] | None = None,
    rows: Sequence[dict] | None = None, prefix: str = "shard", progress: bool = True, replace: bool = False,
    damaged: list[str] | None = None,
) -> list[ShardInfo]:
    """Write the store's ``ok`` images (or only ``keys``, group keys) as tar shards; resumable.

    ``rows`` (manifest rows, e.g. one preprocess batch's) replaces reading the manifest for what to
    pack; give each batch its own ``prefix`` (:func:`batch_prefix`). ``shard_size`` None:
    :func:`auto_shard_size` (at least 16 shards when there are 16 samples, at most 1 GB each). Returns
    this prefix's shards. Call :func:`merge_index` afterwards (the ``shard`` and ``preprocess`` commands
    do). A manifest path that leads out of the store, or to a FIFO or device, raises
    :class:`~openmind_prep.store.store.StoreError` before anything is written. Other writers' shards
    of images the store no longer has as they were: :class:`~openmind_prep.store.store.StoreError`
    naming ``--replace``, or removed with ``replace``. A damaged image is left out and its one-line
    reason appended to ``damaged``; without that list, :class:`~openmind_prep.store.integrity.DamagedImage`
    is raised once the rest is written.

    >>> import tempfile, numpy as np
    >>> from openmind_prep.store import manifest
    >>> s = Store.create(Path(tempfile.mkdtemp()) / "s").root
    >>> c = Store(s).write_case("ds1/a", {"image": np.ones((4, 4, 4), np.float16)}, {})
    >>> _ = manifest.write_fragment(s, [{**manifest.empty_row("ds1/a.nii.gz"), "status": "ok", **c.columns()}])
    >>> [i.samples for i in write_shards(s, s.parent / "wds", progress=False)]
    [1]
    """
    from tqdm import tqdm

    from openmind_prep.store.integrity import usable_rows
    from openmind_prep.store.manifest import OK

    store, out = as_store(store), Path(out)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
        raise ValueError(f"shard prefix {prefix!r}: use letters, digits, '_', '-', '.' only")
    (out / INDEX_DIR).mkdir(parents=True, exist_ok=True)
    every, problems = usable_rows(Store.open(store.root).ok_rows())
    if rows is None:  # a preprocess batch passes its own rows
        rows = every
    else:
        rows, more = usable_rows(r for r in rows if r["status"] == OK)
        problems = sorted(set(problems) | set(more))
    if keys is not None:
        wanted = set(keys)
        rows = [r for r in rows if row_key(r) in wanted]
    with _holding(out):
        remove_temps(out)  # what a killed writer left: no writer can be writing here now
        remove_temps(out / INDEX_DIR)
        current = {row_key(r): checksums(r) for r in every}
        stale = stale_fragments(out, current, prefix)
        if stale and not replace:
            name, why = next(iter(stale.items()))
            more = f" (and {len(stale) - 1} more writers)" if len(stale) > 1 else ""
            raise StoreError(f"{out / INDEX_DIR / name}.json: shards of another store or of images changed since "
                             f"({why}){more}; pass --replace to remove them, or choose another --out")
        for name in stale:
            _remove_writer(out, name)
        shards = _write_planned(store, out, rows, shard_size, prefix, progress, problems, tqdm)
    if damaged is not None:
        damaged.extend(problems)
    elif problems:
        raise DamagedImage(f"{len(problems)} damaged image(s) left out of the shards in {out}; the first: "
                           f"{problems[0]}")
    return shards


def _write_planned(store: Store, out: Path, rows: list[dict], shard_size: int | None, prefix: str,
                   progress: bool, problems: list[str], tqdm) -> list[ShardInfo]:
    """Plan and write this prefix's shards (under ``OUT``'s lock); damaged images go to ``problems``."""
    sizes = [_estimate(store, r) for r in rows]
    groups = group_shards(sizes, shard_size if shard_size is not None else auto_shard_size(sizes))
    done = {s.url: s for s in read_fragment(out, prefix)}
    digest = store_digest(rows)
    shards: list[ShardInfo] = []

    def save() -> None:
        write_json(out / INDEX_DIR / f"{prefix}.json", {"store": digest, "shards": [asdict(s) for s in shards]},
                   indent=1)

    bar_label = f"writing {prefix}-*.tar"  # the bar counts shards; its label names the files
    for i, part in enumerate(tqdm(groups, desc=bar_label, unit="shard", disable=not progress)):
        url = f"{prefix}-{i:06d}.tar"
        part_keys = tuple(row_key(rows[j]) for j in part)
        part_sums = tuple(checksums(rows[j]) for j in part)
        old = done.get(url)
        if old and old.keys == part_keys and old.checksums == part_sums and (out / url).is_file() \
                and (out / url).stat().st_size == old.bytes:
            shards.append(old)
            continue
        packed: list[dict] = []

        def samples(part=part, packed=packed):
            for j in part:
                try:
                    sample = _sample(store, rows[j])
                except DamagedImage as e:  # left out and reported; the rest is packed
                    problems.append(str(e))
                    continue
                packed.append(rows[j])
                yield sample

        size, digest_tar = _write_tar(out / url, samples())
        if not packed:  # every image of it damaged: no empty shard
            (out / url).unlink()
            continue
        shards.append(ShardInfo(url, tuple(row_key(r) for r in packed), size, digest_tar,
                                tuple(checksums(r) for r in packed)))
        save()
    save()
    current = {s.url for s in shards}
    for stale in out.glob(f"{prefix}-*.tar"):  # shards of an older, longer grouping
        if re.fullmatch(rf"{re.escape(prefix)}-\d{{6}}\.tar", stale.name) and stale.name not in current:
            stale.unlink()
    return shards


def batch_prefix(rows: Sequence[dict]) -> str:
    """A stable shard prefix for one preprocess batch (same images → same prefix → resumable).

    >>> batch_prefix([{"image_path": "a.nii.gz"}]) == batch_prefix([{"image_path": "a.nii.gz"}])
    True
    """
    digest = hashlib.sha1("\n".join(sorted(r["image_path"] for r in rows)).encode()).hexdigest()
    return f"batch-{digest[:12]}"


def merge_index(out: Path) -> dict:
    """Merge all fragments into ``index.json`` and ``index.parquet`` (atomic); returns the index. Its
    ``store`` is the digest of every sample's checksums (None if a fragment records none): equal to
    :func:`openmind_prep.store.integrity.store_digest` of a store whose ``ok`` images it holds exactly."""
    import pyarrow as pa

    out = Path(out)
    shards = [s for frag in sorted((out / INDEX_DIR).glob("*.json"))
              for s in read_fragment(out, frag.stem)]
    known = all(len(s.checksums) == len(s.keys) for s in shards)
    store = content_digest((k, c) for s in shards for k, c in zip(s.keys, s.checksums)) if known else None
    index = {"format": "openmind-prep-webdataset/1", "encoding": EXTENSION, "store": store,
             "samples": sum(s.samples for s in shards), "bytes": sum(s.bytes for s in shards),
             "shards": [{**asdict(s), "keys": list(s.keys), "checksums": list(s.checksums), "samples": s.samples}
                        for s in shards]}
    table = pa.Table.from_pylist([{"url": s.url, "samples": s.samples, "bytes": s.bytes, "sha256": s.sha256}
                                  for s in shards],
                                 schema=pa.schema([("url", pa.string()), ("samples", pa.int64()),
                                                   ("bytes", pa.int64()), ("sha256", pa.string())]))
    write_parquet(table, out / INDEX_PARQUET)
    write_json(out / INDEX_JSON, index, indent=1)
    return index


def parse_size(text: str) -> int | None:
    """``"1GB"`` → 10**9, ``"512MiB"`` → 536870912, ``"1000"`` → 1000, ``"auto"`` → None
    (:func:`auto_shard_size`).

    >>> parse_size("1GB"), parse_size("512MiB"), parse_size("2.5kB"), parse_size("auto")
    (1000000000, 536870912, 2500, None)
    """
    if text.strip().lower() == "auto":
        return None
    match = re.fullmatch(r"\s*([0-9.]+)\s*([kKMGT]i?)?B?\s*", text)
    if not match:
        raise ValueError(f"{text!r}: expected a size like 1GB, 500MB, 512MiB, or auto")
    unit = (match.group(2) or "").upper().replace("I", "i")
    base = 1024 if unit.endswith("i") else 1000
    power = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit.rstrip("i")]
    return int(float(match.group(1)) * base**power)
