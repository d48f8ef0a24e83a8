"""``openmind-prep verify STORE``: re-read every stored array and re-check its checksum."""

from __future__ import annotations

from openmind_prep.store.integrity import read_verified
from openmind_prep.store.store import Store, StoreError, as_store


def verify_store(store, *, progress: bool = False) -> list[str]:
    """Problems found in ``store`` (a :class:`~openmind_prep.store.store.Store` or its path), one line per
    damaged image: empty when every ``ok`` row passes :mod:`openmind_prep.store.integrity`'s checks (paths
    in the store and the image's own, regular files, shapes as in the manifest, checksums).
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
        try:
            read_verified(store, row)
        except StoreError as e:
            problems.append(str(e) if row["image_path"] in str(e) else f"{e} (manifest row {row['image_path']})")
    return problems
