"""Downloads with the real huggingface_hub client against a local hub fixture (tests/hf_server.py).

Every injected fault must end in a verified file or a clear error naming the file, never a wrong
file at a final path; a re-run must not transfer what is already verified.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from hf_server import COMMIT, Faults, HubFixture
from openmind_prep.cli import main
from openmind_prep.sources.download import download
from openmind_prep.sources.hub import STATE_DIR, DownloadError, HubRepo, RetryPolicy
from openmind_prep.sources.pinned import PinnedList, downloaded_records, repo_paths
from openmind_prep.sources.metadata import METADATA_CSV, read_metadata
from openmind_prep.sources.selection import Selection

T1 = "OpenMind/ds000001/sub-01/anat/sub-01_T1w.nii.gz"
FAST = RetryPolicy(retries=5, base_s=0.05, max_s=0.2)


pytestmark = pytest.mark.usefixtures("hub_env")  # hub_env and hub: tests/conftest.py


def _repo(hub: HubFixture) -> HubRepo:
    return HubRepo("AnonRes/OpenMind", endpoint=hub.endpoint, token=False, policy=FAST)


def _final_files(raw: Path) -> dict[str, bytes]:
    return {p.relative_to(raw).as_posix(): p.read_bytes()
            for p in raw.rglob("*") if p.is_file() and STATE_DIR not in p.parts}


def _assert_mirror(raw: Path, src: Path, paths) -> None:
    """Every listed file in RAW is byte-identical to the source tree (independent check)."""
    for p in paths:
        assert hashlib.sha256((raw / p).read_bytes()).digest() == hashlib.sha256((src / p).read_bytes()).digest(), p


def test_download_mirrors_the_repo_and_rerun_transfers_nothing(hub, sample_tree, tmp_path):
    raw = tmp_path / "raw"
    pin, report = download(_repo(hub), raw, progress=False)
    expected = [p for r in read_metadata(sample_tree / METADATA_CSV) for p in repo_paths(r)]
    assert pin.commit == COMMIT and sorted(report.transferred) == sorted(expected)
    _assert_mirror(raw, sample_tree, expected)
    # every image selected: the written CSV equals the repo's CSV, row for row
    assert read_metadata(raw / METADATA_CSV) == read_metadata(sample_tree / METADATA_CSV)
    assert not list((raw / STATE_DIR / "partial").glob("*"))

    hub.clear_log()
    _, again = download(_repo(hub), raw, progress=False)
    assert again.transferred == () and sorted(again.skipped) == sorted(expected)
    assert hub.hits("resolve") == [] and hub.hits("cdn") == []  # nothing downloaded twice


def test_rerun_rehashes_a_touched_file_and_replaces_a_tampered_one(hub, sample_tree, tmp_path):
    raw = tmp_path / "raw"
    download(_repo(hub), raw, progress=False)
    (raw / T1).write_bytes((raw / T1).read_bytes())  # same bytes, new mtime: re-hash, no transfer
    tampered = "OpenMind/ds000003/sub-02/anat/sub-02_T2w.nii.gz"
    data = bytearray((raw / tampered).read_bytes())
    data[100] ^= 1
    (raw / tampered).write_bytes(bytes(data))  # same size, wrong bytes
    hub.clear_log()
    _, report = download(_repo(hub), raw, progress=False)
    assert report.transferred == (tampered,)
    _assert_mirror(raw, sample_tree, [T1, tampered])


def test_selection_downloads_only_selected_images_with_their_masks(hub, sample_tree, tmp_path):
    raw = tmp_path / "raw"
    pin, report = download(_repo(hub), raw, selection=Selection(modalities=("T1w",), max_iqs=1.3),
                            progress=False)
    assert pin.images == ("ds000001/sub-01/anat/sub-01_T1w.nii.gz",)
    assert sorted(_final_files(raw)) == sorted([METADATA_CSV, T1,
                                                "OpenMind/ds000001/sub-01/anat/sub-01_T1w__Data/deface_mask.nii.gz",
                                                "OpenMind/ds000001/sub-01/anat/sub-01_T1w__Data/fb_mask.nii.gz"])
    assert [r.image_path for r in downloaded_records(raw)] == list(pin.images)
    assert (raw / METADATA_CSV).read_bytes() == (sample_tree / METADATA_CSV).read_bytes()  # the Hub's, whole


def test_rate_limit_bursts_are_waited_out_honouring_retry_after(hub, sample_tree, tmp_path):
    hub.faults.rate_limit, hub.faults.retry_after = 2, 1
    raw = tmp_path / "raw"
    _, report = download(_repo(hub), raw, progress=False)
    assert not report.failed
    limited = hub.hits(status=429)
    assert len(limited) == 2
    after = [h for h in hub.log if h.time > limited[-1].time]
    assert after and after[0].time - limited[-1].time >= 0.95  # waited Retry-After, not the 0.05 s backoff
    _assert_mirror(raw, sample_tree, [T1])


def test_random_server_errors_end_in_verified_files(hub, sample_tree, tmp_path):
    hub.faults = Faults(error_rate=0.3, seed=7)
    raw = tmp_path / "raw"
    pin, report = download(_repo(hub), raw, workers=2, progress=False)
    assert hub.hits(status=500), "the fault never fired: the test proves nothing"
    assert not report.failed
    _assert_mirror(raw, sample_tree, [f.path for f in pin.data_files])


def test_cut_transfer_is_completed(hub, sample_tree, tmp_path):
    hub.faults.cut[T1] = 1
    raw = tmp_path / "raw"
    _, report = download(_repo(hub), raw, progress=False)
    assert T1 in report.transferred and len(hub.hits("cdn")) >= 1
    _assert_mirror(raw, sample_tree, [T1])


def test_partial_file_from_a_killed_run_is_resumed_with_range(hub, sample_tree, tmp_path):
    raw = tmp_path / "raw"
    download(_repo(hub), raw, pin=None, progress=False, pin_only=True)
    part = raw / STATE_DIR / "partial" / (hashlib.sha1(T1.encode()).hexdigest()[:24] + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    half = (sample_tree / T1).read_bytes()[:30000]
    part.write_bytes(half)  # what a kill mid-transfer leaves behind
    hub.clear_log()
    download(_repo(hub), raw, progress=False)
    ranges = [h.range for h in hub.hits("cdn") if h.path == T1]
    assert ranges == ["bytes=30000-"]
    _assert_mirror(raw, sample_tree, [T1])
    assert not part.exists()


def test_resume_against_a_server_ignoring_range_restarts_cleanly(hub, sample_tree, tmp_path):
    raw = tmp_path / "raw"
    download(_repo(hub), raw, progress=False, pin_only=True)
    part = raw / STATE_DIR / "partial" / (hashlib.sha1(T1.encode()).hexdigest()[:24] + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes((sample_tree / T1).read_bytes()[:30000])
    hub.faults.ignore_range = True  # 200 + full body: appending it would double the first 30 kB
    hub.clear_log()
    _, report = download(_repo(hub), raw, progress=False)
    assert [h.status for h in hub.hits("cdn") if h.path == T1] == [200] and not report.failed
    _assert_mirror(raw, sample_tree, [T1])


def test_corruption_once_is_refetched(hub, sample_tree, tmp_path):
    hub.faults.corrupt[T1] = 1
    raw = tmp_path / "raw"
    _, report = download(_repo(hub), raw, progress=False)
    assert T1 in report.transferred and len([h for h in hub.hits("cdn") if h.path == T1]) == 2
    _assert_mirror(raw, sample_tree, [T1])


def test_persistent_corruption_is_an_error_naming_the_file_and_leaves_nothing(hub, sample_tree, tmp_path):
    hub.faults.corrupt[T1] = -1
    raw = tmp_path / "raw"
    _, report = download(_repo(hub), raw, progress=False)
    assert [p for p, _ in report.failed] == [T1]
    assert T1 in report.failed[0][1] and "checksum mismatch" in report.failed[0][1]
    assert not (raw / T1).exists()  # never a wrong file at a final path
    assert not list((raw / STATE_DIR / "partial").glob("*"))
    # the image is incomplete, so it is not listed for preprocessing; the others are
    listed = [r.image_path for r in downloaded_records(raw)]
    assert "ds000001/sub-01/anat/sub-01_T1w.nii.gz" not in listed and len(listed) == 2


def test_corrupt_plain_git_file_is_detected_by_blob_id(hub, tmp_path):
    mask = "OpenMind/ds000001/sub-01/anat/sub-01_T1w__Data/deface_mask.nii.gz"  # not LFS here
    hub.faults.corrupt[mask] = -1
    _, report = download(_repo(hub), tmp_path / "raw", progress=False)
    assert [p for p, _ in report.failed] == [mask] and "git blob" in report.failed[0][1]


def test_metadata_csv_failure_is_an_error_naming_it(hub, tmp_path):
    hub.faults.corrupt[METADATA_CSV] = -1
    with pytest.raises(DownloadError, match=METADATA_CSV):
        download(_repo(hub), tmp_path / "raw", progress=False)


def test_unknown_revision_and_missing_file_are_clear_errors(hub, sample_tree, tmp_path):
    with pytest.raises(DownloadError, match="AnonRes/OpenMind@nope: http://.*/api/datasets/AnonRes/OpenMind/"
                                            "revision/nope: HTTP 404 RevisionNotFoundError"):
        download(HubRepo("AnonRes/OpenMind", "nope", hub.endpoint, False, FAST), tmp_path / "a", progress=False)
    # a CSV row whose image is not in the repo: that file fails, naming it (tests/test_net_faults.py)
    hub.blobs.pop(T1)
    _, report = download(_repo(hub), tmp_path / "b", progress=False)
    assert [p for p, _ in report.failed] == [T1] and "but not in AnonRes/OpenMind" in report.failed[0][1]


def test_lock_round_trip_and_replay_through_cli_and_hf_endpoint(hub, sample_tree, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)  # read by --endpoint at call time
    pin_path = tmp_path / "locks" / "t1w.json"
    runner = CliRunner()
    res = runner.invoke(main, ["download", "--out", str(tmp_path / "a"), "--modality", "T1w",
                               "--write-pin", str(pin_path), "--pin-only"])
    assert res.exit_code == 0, res.output
    pin = PinnedList.read(pin_path)
    assert pin.commit == COMMIT and pin.selection["modalities"] == ["T1w"]
    assert len(pin.images) == 2 and not (tmp_path / "a" / "OpenMind").exists()
    for f in pin.files:  # sizes and hashes are the real ones
        data = (sample_tree / f.path).read_bytes()
        assert f.size == len(data)
        assert f.sha256 is None or f.sha256 == hashlib.sha256(data).hexdigest()

    res = runner.invoke(main, ["download", "--out", str(tmp_path / "b"), "--pin", str(pin_path)])
    assert res.exit_code == 0, res.output
    assert sorted(_final_files(tmp_path / "b")) == sorted([METADATA_CSV] + [f.path for f in pin.data_files])
    res = runner.invoke(main, ["download", "--out", str(tmp_path / "c"), "--pin", str(pin_path),
                               "--modality", "T2w"])
    assert res.exit_code != 0 and "--pin" in res.output

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads(pin_path.read_text()), "format": "other"}))
    res = runner.invoke(main, ["download", "--out", str(tmp_path / "d"), "--pin", str(bad)])
    assert res.exit_code != 0 and "bad.json" in res.output


def test_lock_replay_of_a_changed_file_fails_instead_of_taking_new_bytes(hub, sample_tree, tmp_path):
    pin, _ = download(_repo(hub), tmp_path / "a", progress=False, pin_only=True)
    changed = tmp_path / "changed"
    shutil.copytree(sample_tree, changed)
    data = bytearray((changed / T1).read_bytes())
    data[-5] ^= 0xFF
    (changed / T1).write_bytes(bytes(data))
    other = HubFixture(changed, lfs_threshold=1000)  # the "hub" now serves other bytes for T1
    try:
        _, report = download(_repo(other), tmp_path / "b", pin=pin, progress=False)
    finally:
        other.close()
    assert [p for p, _ in report.failed] == [T1] and not (tmp_path / "b" / T1).exists()


def test_fixture_tree_listing_paginates_like_the_hub(hub, sample_tree):
    from huggingface_hub import HfApi

    listed = [e.path for e in HfApi(endpoint=hub.endpoint, token=False).list_repo_tree(
        "AnonRes/OpenMind", repo_type="dataset", recursive=True) if hasattr(e, "blob_id")]
    assert sorted(listed) == sorted(p.relative_to(sample_tree).as_posix()
                                    for p in sample_tree.rglob("*") if p.is_file())
    assert len(hub.hits("tree")) > 1  # more than one page was followed


def test_digests_match_sha256sum_and_git_hash_object(sample_tree):
    import subprocess

    from openmind_prep.sources.hub import file_digests

    git = shutil.which("git")
    if git is None:
        pytest.skip("git not installed")
    for rel in (T1, METADATA_CSV):
        path = sample_tree / rel
        sha256, blob = file_digests(path)
        assert sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert blob == subprocess.run([git, "hash-object", str(path)], capture_output=True, text=True,
                                      check=True).stdout.strip()


def test_a_path_leaving_raw_is_a_per_file_failure_and_writes_nothing_outside(tmp_path):
    """A hostile CSV/lock path (``..``) must not make the downloader write outside RAW; the fetch is
    refused before any request (the endpoint here does not even exist)."""
    from openmind_prep.sources.download import download_files
    from openmind_prep.sources.hub import RemoteFile

    raw = tmp_path / "raw"
    evil = RemoteFile(path="OpenMind/../../escaped.nii.gz", size=10, sha256="0" * 64, blob_id=None)
    report = download_files(HubRepo("x/y", "main", "http://127.0.0.1:9"), "c" * 40, [evil], raw,
                            workers=1, progress=False)
    assert [p for p, _ in report.failed] == [evil.path]
    assert "leaves the source tree" in report.failed[0][1]
    assert not (tmp_path / "escaped.nii.gz").exists() and report.transferred == ()


def test_download_runs_on_an_existing_dask_cluster(hub, sample_tree, tmp_path):
    """``--scheduler``: the download tasks run in the cluster's worker processes (pickled there),
    which write into the shared RAW; the result is the same verified mirror, and a re-run skips it."""
    from distributed import LocalCluster

    raw = tmp_path / "raw"
    expected = [p for r in read_metadata(sample_tree / METADATA_CSV) for p in repo_paths(r)]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        args = ["download", "--endpoint", hub.endpoint, "--out", str(raw), "--scheduler",
                cluster.scheduler_address, "--download-workers", "2"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output + repr(result.exception)
        assert "fetch_batch" in cluster.scheduler.task_prefixes  # the work went through the cluster
        _assert_mirror(raw, sample_tree, expected)
        hub.clear_log()
        again = CliRunner().invoke(main, args)
        assert again.exit_code == 0 and f"{len(expected) + 1} already verified" in again.output, again.output
        assert hub.hits("resolve") == [] and hub.hits("cdn") == []


def test_retries_on_the_cluster_are_told_on_the_commands_stderr(hub, sample_tree, tmp_path):
    """``--scheduler``: a transfer cut short on a worker is retried there, and its retry line reaches the
    user's terminal (forwarded from the worker's log), not only the worker's own log."""
    from distributed import LocalCluster

    lfs = next(p for r in read_metadata(sample_tree / METADATA_CSV) for p in repo_paths(r) if p.endswith(".nii.gz"))
    hub.faults.cut[lfs] = 1  # the first GET sends half the body, then closes
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        result = CliRunner().invoke(main, ["download", "--endpoint", hub.endpoint, "--out", str(tmp_path / "raw"),
                                           "--scheduler", cluster.scheduler_address])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert hub.faults.cut[lfs] == 0  # the fault fired
    retries = [line for line in result.output.splitlines() if f"{lfs}: retry 1/" in line]  # after tqdm's clearing
    assert len(retries) == 1 and "peer closed connection" in retries[0], result.output
