"""``openmind-prep verify STORE``: re-read every stored array and re-check its checksum."""

from __future__ import annotations

from pathlib import Path


from openmind_prep.manifest import OK, read_manifest
from openmind_prep.store import MASK_NAMES, array_checksum, case_exists, image_array


def verify_store(store: Path, *, progress: bool = False) -> list[str]:
    """Problems found in ``store`` (empty when every ``ok`` row's arrays decode to their checksums).

    >>> import tempfile
    >>> from openmind_prep.store import create_store
    >>> verify_store(create_store(Path(tempfile.mkdtemp()) / "s"))
    []
    """
    from tqdm.auto import tqdm

    store = Path(store)
    problems = []
    rows = [r for r in read_manifest(store).to_pylist() if r["status"] == OK]
    for row in tqdm(rows, unit="img", desc="verify", disable=not progress):
        checks = [(row["zarr_path"], row["checksum"])]
        checks += [(row[f"{n}_zarr_path"], row[f"{n}_checksum"]) for n in MASK_NAMES if row[f"{n}_zarr_path"]]
        for zarr_path, expected in checks:
            if not case_exists(store, zarr_path):
                problems.append(f"{store / zarr_path}: missing (manifest row {row['image_path']} is ok)")
                continue
            try:
                actual = array_checksum(image_array(store, zarr_path)[...])
            except Exception as e:  # noqa: BLE001 - undecodable data is damage too
                problems.append(f"{store / zarr_path}: cannot be decoded ({type(e).__name__}: {e})")
                continue
            if actual != expected:
                problems.append(f"{store / zarr_path}: checksum {actual} != manifest {expected}")
    return problems
