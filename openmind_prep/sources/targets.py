"""Image-level targets (a class or a number per image) for fine-tuning: ``--labels FILE --target COLUMN``.

Two places hold them, both read into ``{store key: value}`` for a store's ``ok`` rows:

- a CSV (:func:`read_targets`) with the target column and one column naming the image: ``key`` (the
  store key, e.g. ``ds1/sub-1/anat/sub-1_T1w``) or ``image_path`` (the source's image path as in the
  manifest, e.g. ``ds1/sub-1/anat/sub-1_T1w.nii.gz``; a store key there is accepted too);
- the manifest itself (:func:`manifest_targets`): one of its columns (``modality``, ``dataset``, …)
  or a column the source carried for the image (OpenMind's ``age``, ``sex``, … in ``metadata``).

An empty value means "no target for this image" and leaves the image out; so do CSV rows naming images
the store does not have (a CSV for more images than were preprocessed). Every problem is a
:class:`TargetError`: one line naming the file (and line) or the store column.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Iterable, Mapping

from openmind_prep.sources.metadata import MetadataError, _decode
from openmind_prep.store.schema import row_key

#: The columns that may name the image in a targets CSV, in the order they are looked for.
KEY_COLUMNS = ("key", "image_path")


class TargetError(ValueError):
    """Targets that cannot be read; the message is one line naming the file and line, or the column."""


def _ids(rows: Iterable[Mapping]) -> dict[str, str]:
    """Store key and image path of every row → its store key."""
    ids: dict[str, str] = {}
    for row in rows:
        key = row_key(row)
        ids[row["image_path"]] = key
        ids[key] = key
    return ids


def read_targets(path: str | Path, column: str, rows: Iterable[Mapping]) -> dict[str, str]:
    """``{store key: value}`` of ``column`` in the CSV at ``path`` for the images of ``rows`` (manifest rows).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "y.csv"
    >>> _ = p.write_text("image_path,grade\\nds1/a.nii.gz,high\\nds1/b.nii.gz,\\nds9/c.nii.gz,low\\n")
    >>> read_targets(p, "grade", [{"image_path": "ds1/a.nii.gz", "zarr_path": "ds1/a/image"}])
    {'ds1/a': 'high'}
    >>> read_targets(p, "age", [])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    openmind_prep.sources.targets.TargetError: .../y.csv: no column 'age' (columns: image_path, grade)
    """
    path = Path(path)
    try:
        text = _decode(path.read_bytes(), path)
    except OSError as e:
        raise TargetError(f"{path}: cannot read: {e.strerror or e}") from None
    except MetadataError as e:
        raise TargetError(str(e)) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name for name in (reader.fieldnames or []) if name is not None]
    id_column = next((name for name in KEY_COLUMNS if name in header), None)
    if id_column is None:
        raise TargetError(f"{path}: no column naming the image ({' or '.join(KEY_COLUMNS)}; columns: "
                          f"{', '.join(header) or 'none'})")
    if column not in header:
        raise TargetError(f"{path}: no column {column!r} (columns: {', '.join(header)})")
    ids, seen, targets = _ids(rows), {}, {}
    try:
        for row in reader:
            name = (row.get(id_column) or "").strip()
            key = ids.get(name)
            if key is None:
                continue  # an image this store does not have
            if key in seen:
                raise TargetError(f"{path}: line {reader.line_num}: {name!r} names the same image as line {seen[key]}")
            seen[key] = reader.line_num
            value = (row.get(column) or "").strip()
            if value:
                targets[key] = value
    except csv.Error as e:
        raise TargetError(f"{path}: line {reader.line_num}: {e}") from None
    return targets


def manifest_targets(rows: Iterable[Mapping], column: str, *, where: str = "the manifest") -> dict[str, str]:
    """``{store key: value}`` of a manifest column, or of a column the source carried for the image
    (the manifest's ``metadata``: OpenMind's ``age``, ``sex``, …); ``where`` names the store in errors.

    >>> manifest_targets([{"image_path": "a.nii.gz", "zarr_path": "a/image", "modality": "T1w",
    ...                    "metadata": '{"age": "31", "sex": ""}'}], "age")
    {'a': '31'}
    """
    targets, known = {}, False
    columns: set[str] = set()
    for row in rows:
        extra = json.loads(row["metadata"]) if row.get("metadata") else {}
        columns.update(k for k in row if k != "metadata")
        columns.update(extra)
        if column in row and column != "metadata":
            value, known = row[column], True
        elif column in extra:
            value, known = extra[column], True
        else:
            continue
        value = "" if value is None else str(value).strip()
        if value:
            targets[row_key(row)] = value
    if not known:
        raise TargetError(f"{where}: no column {column!r} in the manifest or the source's metadata "
                          f"(columns: {', '.join(sorted(columns)) or 'none: no ok images'})")
    return targets


def load_targets(store, column: str, labels: str | Path | None = None) -> dict[str, str]:
    """``--labels FILE --target COLUMN`` on a store: :func:`read_targets` when ``labels`` is given, else
    :func:`manifest_targets`, over the store's ``ok`` rows; :class:`TargetError` when no image has one."""
    from openmind_prep.store.store import as_store

    store = as_store(store)
    rows = store.ok_rows()
    if labels is not None:
        targets = read_targets(labels, column, rows)
        where = f"{labels}"
    else:
        where = f"{store.root}"
        targets = manifest_targets(rows, column, where=where)
    if not targets:
        raise TargetError(f"{where}: no image of the store {store.root} has a {column!r} value")
    return targets


def as_numbers(targets: Mapping[str, str], where: str = "targets") -> dict[str, float]:
    """Regression targets as floats; a value that is not a finite number is a :class:`TargetError`.

    >>> as_numbers({"a": "31", "b": "4.5"})
    {'a': 31.0, 'b': 4.5}
    """
    out = {}
    for key, value in targets.items():
        try:
            out[key] = float(value)
        except ValueError:
            raise TargetError(f"{where}: {key}: {value[:40]!r} is not a number") from None
        if not math.isfinite(out[key]):
            raise TargetError(f"{where}: {key}: {value[:40]!r} is not a finite number")
    return out


def as_classes(targets: Mapping[str, str]) -> tuple[dict[str, int], list[str]]:
    """Classification targets as class indices (classes sorted; numbers numerically) and the class names.

    >>> as_classes({"a": "M", "b": "F", "c": "M"})
    ({'a': 1, 'b': 0, 'c': 1}, ['F', 'M'])
    """
    def order(value: str):
        try:
            return (0, float(value), value)
        except ValueError:
            return (1, 0.0, value)

    classes = sorted(set(targets.values()), key=order)
    index = {name: i for i, name in enumerate(classes)}
    return {key: index[value] for key, value in targets.items()}, classes
