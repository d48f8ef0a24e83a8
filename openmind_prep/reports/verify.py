"""``openmind-prep verify STORE``: re-read every stored array and re-check its checksum."""

from __future__ import annotations

from openmind_prep.store.schema import ARRAY_COLUMNS, CHECKSUM_COLUMNS, IMAGE
from openmind_prep.store.store import Store, StoreError, array_checksum, as_store


def verify_store(store, *, progress: bool = False) -> list[str]:
    """Problems found in ``store`` (a :class:`~openmind_prep.store.store.Store` or its path): empty when
    every ``ok`` row's arrays lie inside the store and decode to their checksums.
    :class:`~openmind_prep.store.store.StoreError` when it has no manifest to verify against.

    >>> import tempfile
    >>> from pathlib import Path
    >>> s = Store.create(Path(tempfile.mkdtemp()) / "s")
    >>> _ = s.merge()  # an empty manifest: a store of no images
    >>> verify_store(s)
    []
    """
    from tqdm.auto import tqdm

    store = Store.open(as_store(store).root)
    problems = []
    for row in tqdm(store.ok_rows(), unit="img", desc="verify", disable=not progress):
        for name, column in ARRAY_COLUMNS.items():
            zarr_path, expected = row[column], row[CHECKSUM_COLUMNS[name]]
            if name != IMAGE and not zarr_path:
                continue
            try:
                folder = store.path(zarr_path)
            except StoreError as e:
                problems.append(f"{e} (manifest row {row['image_path']})")
                continue
            if not (folder / "zarr.json").is_file():
                problems.append(f"{folder}: missing (manifest row {row['image_path']} is ok)")
                continue
            try:
                actual = array_checksum(store.array(zarr_path)[...])
            except Exception as e:  # noqa: BLE001 - undecodable data is damage too
                problems.append(f"{folder}: cannot be decoded ({type(e).__name__}: {e})")
                continue
            if actual != expected:
                problems.append(f"{folder}: checksum {actual} != manifest {expected}")
    return problems
