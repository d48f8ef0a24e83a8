"""The store against hostile and unlucky inputs (issue 13): its namespace, its run lock, and paths
read from its manifest. Every adversarial input is built here, at test time, from the real-MRI
sample tree (:func:`openmind_prep.sources.embedded.build_sample_tree`) or from small real arrays.

Contract: an image whose key the store may not give (a reserved name, or a key equal to, inside or
above another image's) gets a ``failed`` row and no other image's array is ever lost; one run
writes a store at a time; a manifest path leading out of the store is refused by ``verify``, the
Zarr dataset and ``shard``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openmind_prep.cli import main
from openmind_prep.store.manifest import FAILED, MANIFEST_FILE, OK, empty_row, read_manifest
from openmind_prep.sources.metadata import IMAGES_DIR, METADATA_CSV
from openmind_prep.sources.embedded import build_sample_tree
from openmind_prep.store.store import LOCK_FILE, TMP_DIR, Store, StoreError, array_checksum
from openmind_prep.reports.verify import verify_store

FAST = ["--workers", "1", "--threads-only"]
CLI = [sys.executable, "-c", "from openmind_prep.cli import main; main()"]
T1 = "ds000003/sub-01/anat/sub-01_T1w.nii"      # two real images without masks
T2 = "ds000003/sub-02/anat/sub-02_T2w.nii.gz"


def _add_image(src: Path, image_path: str, copy_of: str) -> None:
    """Place a copy of ``copy_of`` at ``image_path`` and list it in the CSV (same row, new path)."""
    dest = src / IMAGES_DIR / image_path
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / IMAGES_DIR / copy_of, dest)
    csv = src / METADATA_CSV
    lines = csv.read_text().splitlines()
    row = next(line for line in lines if line.startswith(copy_of + ","))
    csv.write_text("\n".join(lines + [row.replace(copy_of + ",", image_path + ",", 1)]) + "\n")


def _rows(store: Path) -> dict[str, dict]:
    return {r["image_path"]: r for r in read_manifest(store).to_pylist()}


def _preprocess(src: Path, store: Path, *extra: str):
    return CliRunner().invoke(main, ["preprocess", str(src), "--out", str(store), *FAST, *extra])


def _reference(src: Path, image_path: str) -> np.ndarray:
    from openmind_prep.preprocess.onemmiso import preprocess_case

    return preprocess_case(src / IMAGES_DIR / image_path, masks={}, dtype=np.float16).image


# -- the namespace -------------------------------------------------------------------------------

@pytest.mark.parametrize("folder", [TMP_DIR, MANIFEST_FILE, "_manifest", "zarr.json"])
def test_a_dataset_folder_with_a_reserved_name_is_a_failed_row_and_nothing_is_lost(tmp_path, folder):
    """``_tmp`` was deleted at the end of the run (its row stayed ``ok``); ``manifest.parquet`` made
    every merge crash from then on."""
    src = build_sample_tree(tmp_path / "src", small=True)
    hostile = f"{folder}/sub-01/anat/sub-01_T1w.nii"
    _add_image(src, hostile, T1)
    store = tmp_path / "store"
    result = _preprocess(src, store)
    assert result.exit_code == 1, result.output
    rows = _rows(store)
    assert rows[hostile]["status"] == FAILED and rows[hostile]["zarr_path"] == ""
    assert str(src / IMAGES_DIR / hostile) in rows[hostile]["error"] and "keeps for itself" in rows[hostile]["error"]
    assert [p for p, r in rows.items() if r["status"] == OK] == sorted(set(rows) - {hostile})  # the other 3
    assert (store / MANIFEST_FILE).is_file() and json.loads((store / "zarr.json").read_text())["node_type"] == "group"
    np.testing.assert_array_equal(Store(store).array(rows[T1]["zarr_path"])[...], _reference(src, T1))
    assert CliRunner().invoke(main, ["verify", str(store)]).exit_code == 0
    again = _preprocess(src, store)  # every later run works: the store is intact
    assert again.exit_code == 1 and "(3 already done)" in again.output, again.output


def test_x_beside_x_slash_image_keeps_the_first_and_fails_the_second(tmp_path):
    """``a/image.nii.gz`` then ``a.nii`` in one run: the group ``a`` would hold (and replace) the group
    ``a/image``; the first image in CSV order keeps its key, the second is a failed row."""
    src = build_sample_tree(tmp_path / "src", small=True)
    inner, outer = "ds000003/sub-01/anat/a/image.nii.gz", "ds000003/sub-01/anat/a.nii"
    _add_image(src, inner, T2)
    _add_image(src, outer, T1)
    store = tmp_path / "store"
    assert _preprocess(src, store).exit_code == 1
    rows = _rows(store)
    assert rows[inner]["status"] == OK and rows[outer]["status"] == FAILED
    assert "would hold the group of" in rows[outer]["error"] and outer in rows[outer]["error"]
    np.testing.assert_array_equal(Store(store).array(rows[inner]["zarr_path"])[...], _reference(src, T2))
    assert verify_store(store) == []


def test_an_image_inside_an_ok_image_s_group_is_refused_on_a_later_run(tmp_path):
    """``a.nii`` stored first; a later CSV adds ``a/image.nii.gz``, whose group would replace the array
    ``a/image``: refused, and ``a``'s array is untouched."""
    src = build_sample_tree(tmp_path / "src", small=True)
    outer, inner = "ds000003/sub-01/anat/a.nii", "ds000003/sub-01/anat/a/image.nii.gz"
    _add_image(src, outer, T1)
    store = tmp_path / "store"
    assert _preprocess(src, store).exit_code == 0
    before = os.stat(store / _rows(store)[outer]["zarr_path"] / "zarr.json").st_ino
    _add_image(src, inner, T2)
    assert _preprocess(src, store).exit_code == 1
    rows = _rows(store)
    assert rows[outer]["status"] == OK and rows[inner]["status"] == FAILED
    assert "lies inside the group of" in rows[inner]["error"]
    assert os.stat(store / rows[outer]["zarr_path"] / "zarr.json").st_ino == before
    np.testing.assert_array_equal(Store(store).array(rows[outer]["zarr_path"])[...], _reference(src, T1))
    assert verify_store(store) == []


def test_write_case_refuses_keys_that_are_not_the_store_s_to_give(tmp_path):
    """Direct writers too: reserved names and nesting into / over another image's group."""
    store = Store.create(tmp_path / "s")
    store.write_case("ds/a", {"image": np.ones((2, 3, 4), np.float32)}, {})
    for key in ("_tmp/x", "manifest.parquet/x", "ds/zarr.json/x", "ds/a/image", "ds/a/b", "ds", "a/../b"):
        with pytest.raises(StoreError, match="refused"):
            store.write_case(key, {"image": np.zeros((2, 2, 2), np.float32)}, {})
    assert store.array("ds/a/image")[...].sum() == 24


# -- one run per store ---------------------------------------------------------------------------

def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None and time.monotonic() < deadline, what
        time.sleep(0.01)


def test_two_preprocess_runs_on_one_store_one_refuses_the_other_completes(tmp_path):
    src = build_sample_tree(tmp_path / "src", small=True)
    store = tmp_path / "store"
    cmd = [*CLI, "preprocess", str(src), "--out", str(store), *FAST, "--batch-size", "1"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lock = store / LOCK_FILE

    def held() -> bool:
        try:
            return json.loads(lock.read_text()).get("pid") == first.pid
        except (OSError, ValueError):
            return False

    _wait_for(held, first, "the first run never took the lock")
    os.kill(first.pid, signal.SIGSTOP)  # the first run holds the store, mid-run, as long as we like
    try:
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, _ = first.communicate(timeout=300)
    assert second.returncode == 1, second.stdout + second.stderr
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and re.fullmatch(
        rf"Error: {re.escape(str(lock))}: another run is using this store \(pid {first.pid} on host "
        rf"{re.escape(socket.gethostname())} since [0-9-]+ [0-9:]+\); wait for it to finish or stop it",
        lines[0]), lines
    assert first.returncode == 0 and "3 selected: 3 ok" in out, out
    assert not lock.exists()  # released
    verify = CliRunner().invoke(main, ["verify", str(store)])
    assert verify.exit_code == 0 and "verified 3 images: 0 problem" in verify.output


def test_run_refuses_a_store_another_run_holds_and_writes_nothing(tmp_path):
    src = build_sample_tree(tmp_path / "src", small=True)
    store = Store.create(tmp_path / "store")
    with store.lock("held by this test") as holder:
        result = CliRunner().invoke(main, ["run", "--source", str(src), "--out", str(store.root), *FAST])
    assert result.exit_code == 1
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    assert line.startswith(f"Error: {store.root / LOCK_FILE}: another run is using this store (pid {holder['pid']}")
    assert not store.has_manifest() and not (store.root / LOCK_FILE).exists()
    assert CliRunner().invoke(main, ["run", "--source", str(src), "--out", str(store.root), *FAST]).exit_code == 0


def test_a_lock_left_by_a_dead_run_is_taken_over(tmp_path, caplog):
    src = build_sample_tree(tmp_path / "src", small=True)
    store = Store.create(tmp_path / "store")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names no running process now
    (store.root / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0}))
    result = _preprocess(src, store.root)
    assert result.exit_code == 0, result.output
    assert any("taking over the lock" in r.getMessage() and str(dead.pid) in r.getMessage() for r in caplog.records)
    assert not (store.root / LOCK_FILE).exists()


def test_a_lock_of_another_host_is_refused_naming_it(tmp_path):
    src = build_sample_tree(tmp_path / "src", small=True)
    store = Store.create(tmp_path / "store")
    (store.root / LOCK_FILE).write_text(json.dumps({"pid": 4242, "host": "node-17.cluster", "started": 0}))
    result = _preprocess(src, store.root)
    assert result.exit_code == 1
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    assert line.startswith(f"Error: {store.root / LOCK_FILE}: held by a run on another host (pid 4242 on host "
                           "node-17.cluster") and "delete" in line
    assert not store.has_manifest()  # nothing was written


# -- paths from the manifest stay inside the store ----------------------------------------------

@pytest.fixture
def escape(tmp_path, request):
    """A store with one honest image and one ``ok`` row whose path leads to an array OUTSIDE the
    store (with that array's true checksum, so following it would verify)."""
    rng = np.random.default_rng(0)
    outside = Store.create(tmp_path / "outside")
    secret = rng.normal(size=(6, 7, 8)).astype(np.float32)
    outside.write_case("ds/x", {"image": secret}, {})
    store = Store.create(tmp_path / "store")
    honest = store.write_case("ds/a", {"image": rng.normal(size=(5, 5, 5)).astype(np.float32)}, {})
    kind = request.param
    if kind == "dotdot":
        path = "../outside/ds/x/image"
    elif kind == "absolute":
        path = str(outside.root / "ds/x/image")
    elif kind == "symlinked group":
        (store.root / "ds/evil").symlink_to(outside.root / "ds/x", target_is_directory=True)
        path = "ds/evil/image"
    else:  # a symlinked shard file inside a real array folder
        store.write_case("ds/evil", {"image": np.ones_like(secret)}, {})
        (shard,) = [p for p in (store.root / "ds/evil/image/c").rglob("*") if p.is_file()]
        shard.unlink()
        shard.symlink_to(next(p for p in (outside.root / "ds/x/image/c").rglob("*") if p.is_file()))
        path = "ds/evil/image"
    store.record([{**empty_row("ds/a.nii.gz"), "status": OK, "shape": [5, 5, 5], **honest.columns()},
                  {**empty_row("ds/evil.nii.gz"), "status": OK, "zarr_path": path, "shape": list(secret.shape),
                   "checksum": array_checksum(secret)}])
    store.merge()
    return store, path, secret


KINDS = ["dotdot", "absolute", "symlinked group", "symlinked shard"]


@pytest.mark.parametrize("escape", KINDS, indirect=True)
def test_verify_refuses_a_manifest_path_out_of_the_store(escape):
    store, path, _ = escape
    result = CliRunner().invoke(main, ["verify", str(store.root)])
    assert result.exit_code == 1, result.output
    (damaged,) = [line for line in result.output.splitlines() if line.startswith("DAMAGED")]
    assert ("leaves the store" in damaged or "resolves outside the store" in damaged) and "refused" in damaged


@pytest.mark.parametrize("escape", KINDS, indirect=True)
def test_the_zarr_dataset_refuses_a_manifest_path_out_of_the_store(escape):
    from loaders import ZarrVolumeDataset

    store, _, _ = escape
    ds = ZarrVolumeDataset(store.root)
    assert ds.keys[0] == "ds/a" and ds[0]["image"].shape == (1, 5, 5, 5)  # the honest image reads
    with pytest.raises(StoreError, match="refused"):
        ds[1]


@pytest.mark.parametrize("escape", KINDS, indirect=True)
def test_shard_refuses_a_manifest_path_out_of_the_store_and_packs_nothing_of_it(escape, tmp_path):
    store, _, secret = escape
    out = tmp_path / "wds"
    result = CliRunner().invoke(main, ["shard", str(store.root), "--out", str(out)])
    assert result.exit_code == 1
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    assert line.startswith("Error: ") and "refused" in line
    packed = b"".join(p.read_bytes() for p in out.rglob("*.tar")) if out.exists() else b""
    outside_shard = next(p for p in (store.root.parent / "outside/ds/x/image/c").rglob("*") if p.is_file())
    assert outside_shard.read_bytes() not in packed


def test_verify_without_a_manifest_is_an_error_naming_it(tmp_path):
    store = Store.create(tmp_path / "s")
    case = store.write_case("ds/a", {"image": np.ones((3, 3, 3), np.float32)}, {})
    store.record([{**empty_row("ds/a.nii.gz"), "status": OK, **case.columns()}])
    store.merge()
    assert CliRunner().invoke(main, ["verify", str(store.root)]).exit_code == 0
    (store.root / MANIFEST_FILE).unlink()
    result = CliRunner().invoke(main, ["verify", str(store.root)])
    assert result.exit_code == 1
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    assert line.startswith(f"Error: {store.root / MANIFEST_FILE}: missing")


# -- fuzz: any manifest path ---------------------------------------------------------------------

PARTS = ["ds", "a", "x", "image", "c", "..", ".", "", "link_out", "link_in", "outside", "store", "~", "%2E%2E"]


@pytest.fixture(scope="module")
def fuzz_stores(tmp_path_factory):
    """A store with one real array and two symlinks (one out, one in), and an outside array."""
    root = tmp_path_factory.mktemp("fuzz")
    outside = Store.create(root / "outside")
    secret = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    outside.write_case("ds/x", {"image": secret}, {})
    store = Store.create(root / "store")
    store.write_case("ds/a", {"image": -np.ones((3, 4, 5), np.float32)}, {})
    (store.root / "ds/link_out").symlink_to(outside.root / "ds/x", target_is_directory=True)
    (store.root / "ds/link_in").symlink_to(store.root / "ds/a", target_is_directory=True)
    return store, outside, secret


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from(PARTS), min_size=1, max_size=7), absolute=st.sampled_from([None, "root", "/"]))
def test_fuzzed_manifest_paths_never_read_outside_the_store(fuzz_stores, parts, absolute):
    """Whatever the path, verify never passes on the outside array's checksum, the dataset never
    returns its values, and :meth:`Store.path` returns only paths that resolve inside the store."""
    from loaders import ZarrVolumeDataset

    store, outside, secret = fuzz_stores
    path = "/".join(parts)
    if absolute == "root":
        path = f"{outside.root.parent}/{path}"
    elif absolute == "/":
        path = "/" + path
    for fragment in (store.root / "_manifest").glob("*.parquet"):
        fragment.unlink()
    store.record([{**empty_row("ds/f.nii.gz"), "status": OK, "zarr_path": path, "shape": [3, 4, 5],
                   "checksum": array_checksum(secret)}])
    store.merge()
    try:
        folder = store.path(path)
    except StoreError:
        folder = None
    if folder is not None:
        root = store.root.resolve()
        assert all(p.resolve().is_relative_to(root) for p in [folder, *folder.rglob("*")])
    assert verify_store(store) != []  # the only array that matches the checksum lies outside
    try:
        values = ZarrVolumeDataset(store.root)[0]["image"].numpy()
    except Exception:  # noqa: BLE001 - refused or unreadable: both fine, as long as nothing leaks
        return
    assert not np.array_equal(values[0], secret)


def test_without_flock_a_live_holder_of_this_host_still_refuses(tmp_path, monkeypatch):
    """Some network file systems refuse ``flock`` (ENOLCK): then the record decides, a live pid of
    this host holds the store and a dead one's lock is taken over."""
    import errno

    from openmind_prep.core import runlock

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(runlock.fcntl, "flock", no_flock)
    store = Store.create(tmp_path / "s")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (store.root / LOCK_FILE).write_text(json.dumps({"pid": live.pid, "host": socket.gethostname()}))
        with pytest.raises(StoreError, match=f"another run is using this store \\(pid {live.pid} "):
            with store.lock():
                pass
    finally:
        live.kill()
        live.wait()
    with store.lock() as me:  # the same record, its process gone: taken over
        assert json.loads((store.root / LOCK_FILE).read_text())["pid"] == me["pid"] == os.getpid()
    assert not (store.root / LOCK_FILE).exists()


@pytest.mark.parametrize("commit", ["abc/../../../../escaped", "../../escaped", "0123abc\\..\\x"])
def test_a_lock_whose_commit_would_leave_raw_is_refused_naming_it(tmp_path, commit):
    """A lock's commit names a file under RAW (``RAW/.openmind-prep/openneuro_metadata.<commit>.csv``):
    it must be a commit id. ``download --pin`` and ``run --pin`` refuse the pinned list before any request.
    (A lock's file paths are confined per file: tests/test_net_faults.py.)"""
    from openmind_prep.sources.hub import RemoteFile
    from openmind_prep.sources.pinned import PinnedList

    files = (RemoteFile(METADATA_CSV, 10, None, "b0"),
             RemoteFile(f"{IMAGES_DIR}/ds1/sub-1/anat/a.nii.gz", 5, "0" * 64, "b1"))
    good = PinnedList("AnonRes/OpenMind", "main", "0123456789abcdef0123456789abcdef01234567", {},
                ("ds1/sub-1/anat/a.nii.gz",), files).to_dict()
    assert PinnedList.from_dict(good).commit == good["commit"]  # the honest lock reads
    bad = {**good, "commit": commit}
    reason = "is not a commit id"
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=f"{path}: not a valid pinned list: .*{reason}"):
        PinnedList.read(path)
    raw = tmp_path / "raw"
    download = CliRunner().invoke(main, ["download", "--out", str(raw), "--pin", str(path),
                                         "--endpoint", "http://127.0.0.1:9"])
    assert download.exit_code == 2 and str(path) in download.output and reason in download.output
    run = CliRunner().invoke(main, ["run", "--out", str(tmp_path / "store"), "--pin", str(path),
                                    "--endpoint", "http://127.0.0.1:9", *FAST])
    assert run.exit_code == 1 and str(path) in run.output and reason in run.output
    assert not list(tmp_path.rglob("escaped*"))
