"""Unlucky networks and repos (issue 13): hangs, dead ports, the Hub's RateLimit headers, a total
deadline, files the CSV lists but the repo lacks, and bytes changed in place.

Every test talks to the local fixture (tests/hf_server.py) with timeouts of seconds and runs the
download in a thread joined with a bound, so a regression that hangs fails instead of stalling.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from openmind_prep.cli import main
from openmind_prep.sources.download import download
from openmind_prep.sources.hub import STATE_DIR, DownloadError, HubRepo, RetryPolicy
from openmind_prep.sources.pinned import PinnedList, downloaded_records, repo_paths
from openmind_prep.sources.metadata import METADATA_CSV, read_metadata

T1 = "OpenMind/ds000001/sub-01/anat/sub-01_T1w.nii.gz"
T1_IMAGE = "ds000001/sub-01/anat/sub-01_T1w.nii.gz"
BOUND_S = 60  # a hung download fails the test after this, instead of hanging the suite


pytestmark = pytest.mark.usefixtures("hub_env")  # hub_env and hub: tests/conftest.py


def _repo(endpoint: str, *, retries: int = 5, read_s: float = 10.0, deadline_s: float | None = None) -> HubRepo:
    policy = RetryPolicy(retries=retries, base_s=0.05, max_s=0.2,
                         deadline=None if deadline_s is None else time.time() + deadline_s)
    return HubRepo("AnonRes/OpenMind", endpoint=endpoint, token=False, policy=policy,
                   connect_timeout_s=2.0, read_timeout_s=read_s)


def _bounded(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a thread; fails the test if it is still running after BOUND_S."""
    out: dict = {}

    def target() -> None:
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
            out["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(BOUND_S)
    assert not thread.is_alive(), f"{fn.__name__} still running after {BOUND_S} s: it hangs"
    if "error" in out:
        raise out["error"]
    return out["value"]


def _dead_port() -> int:
    """A local port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _all_files(sample_tree: Path) -> list[str]:
    return [p for r in read_metadata(sample_tree / METADATA_CSV) for p in repo_paths(r)]


# -- hangs and dead ports -------------------------------------------------------------------------

def test_an_endpoint_that_never_answers_times_out_with_visible_retries(hub, tmp_path, capsys):
    hub.faults.hang["info"] = -1  # accepts the connection, reads the request, never answers
    with pytest.raises(DownloadError, match="giving up after 3 attempts.*ReadTimeout"):
        _bounded(download, _repo(hub.endpoint, retries=2, read_s=0.5), tmp_path / "raw", progress=False)
    err = capsys.readouterr().err
    assert "AnonRes/OpenMind@main: retry 1/2 in 0.05 s: ReadTimeout" in err
    assert "retry 2/2 in 0.1 s: ReadTimeout" in err
    assert len(hub.hits("info", status=0)) == 3  # the first try and two retries, each answered by nothing


def test_a_transfer_that_stalls_is_retried_and_completes(hub, sample_tree, tmp_path, capsys):
    hub.faults.hang["cdn"] = 2  # the first two object requests hang; the third is answered
    raw = tmp_path / "raw"
    pin, report = _bounded(download, _repo(hub.endpoint, read_s=0.5), raw, workers=1, progress=False)
    assert not report.failed and sorted(report.transferred) == sorted(_all_files(sample_tree))
    for f in pin.data_files:
        assert (raw / f.path).read_bytes() == (sample_tree / f.path).read_bytes()
    err = capsys.readouterr().err.splitlines()  # one file, hung twice: two visible retries
    assert [line.split(": ReadTimeout")[0] for line in err] == [f"{T1}: retry 1/5 in 0.05 s",
                                                                 f"{T1}: retry 2/5 in 0.1 s"]


def test_a_dead_port_retries_visibly_and_the_deadline_ends_it_through_the_cli(tmp_path):
    endpoint = f"http://127.0.0.1:{_dead_port()}"
    runner = CliRunner()
    result = _bounded(runner.invoke, main, ["download", "--endpoint", endpoint, "--out", str(tmp_path / "raw"),
                                            "--deadline", "3.5"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.output.splitlines()
    # backoff 1 s, 2 s; the 4 s wait would pass the deadline: one line, naming the request and why
    assert "AnonRes/OpenMind@main: retry 1/8 in 1 s: ConnectError" in lines[0]
    assert "AnonRes/OpenMind@main: retry 2/8 in 2 s: ConnectError" in lines[1]
    assert lines[-1].startswith("Error: AnonRes/OpenMind@main: giving up: retry 3 would wait 4 s, past the "
                                "--deadline") and "ConnectError" in lines[-1]
    assert "Traceback" not in result.output


# -- rate limits ----------------------------------------------------------------------------------

def test_the_hubs_ratelimit_headers_are_honoured_without_retry_after(hub, sample_tree, tmp_path, capsys):
    hub.faults.rate_limit, hub.faults.ratelimit_reset = 2, 1  # 429 + RateLimit: "api";r=0;t=1
    _, report = _bounded(download, _repo(hub.endpoint), tmp_path / "raw", progress=False)
    assert not report.failed
    limited = hub.hits(status=429)
    assert len(limited) == 2
    after = [h for h in hub.log if h.time > limited[-1].time]
    assert after and after[0].time - limited[-1].time >= 0.95  # waited the window, not the 0.05 s backoff
    assert "retry 1/5 in 1 s: HTTP 429 rate limited (the server asks to wait 1 s)" in capsys.readouterr().err


def test_a_used_up_window_is_waited_out_before_the_next_request_not_after_a_429(hub, tmp_path, capsys):
    from openmind_prep.sources.retry import RATE_WINDOWS

    hub.faults.used_up["info"] = 1  # the repo info answer (200) says: no "api" request left for 1 s
    _, report = _bounded(download, _repo(hub.endpoint), tmp_path / "raw", progress=False)
    assert not report.failed and not hub.hits(status=429)  # the window was respected: no 429 earned
    info = hub.hits("info")[0]
    api_after = [h for h in hub.log if h.kind == "paths-info" and h.time > info.time]
    assert api_after and api_after[0].time - info.time >= 0.95
    assert "the hub's 'api' rate limit is used up; waiting 1 s" in capsys.readouterr().err
    assert RATE_WINDOWS.wait_s("api") == 0.0


# -- the deadline ---------------------------------------------------------------------------------

def test_the_deadline_stops_hung_transfers_and_fails_each_file_naming_it(hub, sample_tree, tmp_path):
    hub.faults.hang["cdn"] = -1
    raw = tmp_path / "raw"
    pin, report = _bounded(download, _repo(hub.endpoint, read_s=0.3, retries=100, deadline_s=2.0), raw,
                            workers=2, progress=False)
    lfs = [f.path for f in pin.data_files if f.sha256]  # served by the (hung) CDN
    failed = dict(report.failed)
    assert set(lfs) <= set(failed) and set(failed) | set(report.transferred) == {f.path for f in pin.data_files}
    for path, why in failed.items():  # hung ones and the ones not started before the deadline
        assert why.startswith(f"{path}: ") and "--deadline" in why
        assert not (raw / path).exists()  # never a partial file at a final path
    for path in report.transferred:  # plain git files answered before the deadline are whole
        assert (raw / path).read_bytes() == (sample_tree / path).read_bytes()


# -- a full disk while downloading ----------------------------------------------------------------

@pytest.mark.parametrize("command", ["download", "run"])
def test_disk_full_while_downloading_stops_with_one_line_and_a_rerun_completes(hub, sample_tree, tmp_path,
                                                                               monkeypatch, command):
    """ENOSPC from the third transfer on (as ``write`` raises it: no file name): the command stops with one
    line naming the file, instead of failing every remaining file one by one; a re-run completes."""
    import errno

    import openmind_prep.sources.hub as hub_module
    from openmind_prep.store.manifest import read_manifest

    real, calls = hub_module._stream_once, []

    def full_after_two(*args, **kwargs):
        calls.append(args[2].path)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    out = tmp_path / "out"
    cmd = [command, "--endpoint", hub.endpoint, "--out", str(out), "--download-workers", "1"]
    cmd += ["--threads-only", "--workers", "1"] if command == "run" else []
    monkeypatch.setattr(hub_module, "_stream_once", full_after_two)
    result = _bounded(CliRunner().invoke, main, cmd)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    where = f"{out}.raw" if command == "run" else out  # run's RAW work folder beside the store
    assert lines[-1].startswith(f"Error: {where}/") and lines[-1].endswith(
        ": disk full (No space left on device); free space and re-run the same command to resume"), lines
    assert lines[-1].split(": disk full")[0].removeprefix(f"Error: {where}/") == calls[2]  # names the file
    assert len(calls) == 3  # stopped at the first full write, nothing after it tried

    monkeypatch.setattr(hub_module, "_stream_once", real)
    again = _bounded(CliRunner().invoke, main, cmd)
    assert again.exit_code == 0, again.output
    if command == "download":
        kept = [c for c in calls[:2] if c in _all_files(sample_tree)]  # the first call may be the CSV (counted apart: + 1)
        assert f"{len(kept) + 1} already verified, 0 failed" in again.output
        for p in _all_files(sample_tree):
            assert (out / p).read_bytes() == (sample_tree / p).read_bytes()
    else:
        assert sorted(r["status"] for r in read_manifest(out).to_pylist()) == ["ok", "ok", "ok"]


def test_disk_full_while_copying_a_local_source_stops_with_one_line(sample_tree, tmp_path, monkeypatch):
    """``run --source``: the same stop when the copy into the work folder meets a full disk."""
    import errno
    import shutil

    real, calls = shutil.copyfile, []

    def full_after_two(src, dst, *args, **kwargs):
        calls.append(src)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *args, **kwargs)

    out = tmp_path / "out"
    monkeypatch.setattr(shutil, "copyfile", full_after_two)
    result = CliRunner().invoke(main, ["run", "--source", str(sample_tree), "--out", str(out), "--threads-only",
                                       "--workers", "1"])
    line = result.output.strip().splitlines()[-1]
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert line.startswith(f"Error: {out}.raw/") and line.endswith(": disk full (No space left on device); free "
                                                                   "space and re-run the same command to resume")
    assert len(calls) == 3


# -- files the CSV lists but the repo lacks ------------------------------------------------------

def test_a_file_missing_from_the_repo_fails_alone_and_is_kept_in_the_lock(hub, sample_tree, tmp_path):
    hub.blobs.pop(T1)
    raw, pin_path = tmp_path / "raw", tmp_path / "lock.json"
    pin, report = _bounded(download, _repo(hub.endpoint), raw, write_pin=pin_path, progress=False)
    assert pin.missing == (T1,) and PinnedList.read(pin_path).missing == (T1,)
    assert [p for p, _ in report.failed] == [T1]
    assert report.failed[0][1] == f"{T1}: listed in {METADATA_CSV} but not in AnonRes/OpenMind@0123456789ab"
    others = [p for p in _all_files(sample_tree) if p != T1]
    assert sorted(report.transferred) == sorted(others)  # every other file was fetched
    for p in others:
        assert (raw / p).read_bytes() == (sample_tree / p).read_bytes()
    listed = [r.image_path for r in downloaded_records(raw)]
    assert T1_IMAGE not in listed and len(listed) == 2
    assert (raw / METADATA_CSV).read_bytes() == (sample_tree / METADATA_CSV).read_bytes()  # RAW is the Hub

    # replaying the pinned list: the same failure, no request for the missing file
    hub.clear_log()
    _, again = _bounded(download, _repo(hub.endpoint), tmp_path / "raw2", pin=PinnedList.read(pin_path),
                        progress=False)
    assert [p for p, _ in again.failed] == [T1] and not [h for h in hub.log if h.path == T1]

    result = CliRunner().invoke(main, ["download", "--endpoint", hub.endpoint, "--out", str(tmp_path / "raw3")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"FAILED {T1}: listed in {METADATA_CSV} but not in" in result.output
    assert ", 1 failed" in result.output


def test_run_gives_a_missing_file_a_failed_row_and_processes_the_rest(hub, tmp_path):
    from openmind_prep.store.manifest import read_manifest

    hub.blobs.pop(T1)
    store = tmp_path / "s"
    result = _bounded(CliRunner().invoke, main, ["run", "--endpoint", hub.endpoint, "--out", str(store),
                                                 "--threads-only", "--workers", "1"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    rows = {r["image_path"]: r for r in read_manifest(store).to_pylist()}
    assert sorted(r["status"] for r in rows.values()) == ["failed", "ok", "ok"]
    assert rows[T1_IMAGE]["status"] == "failed" and "not in AnonRes/OpenMind@" in rows[T1_IMAGE]["error"]
    assert T1 in rows[T1_IMAGE]["error"]


def test_run_lock_whose_files_do_not_cover_its_images_is_a_one_line_error(hub, tmp_path):
    import json

    pin_path = tmp_path / "lock.json"
    download(_repo(hub.endpoint), tmp_path / "a", write_pin=pin_path, pin_only=True, progress=False)
    pin = json.loads(pin_path.read_text())
    for f in pin["files"]:  # a hand-edited pinned list: the image's file now points out of RAW
        if f["path"] == T1:
            f["path"] = "OpenMind/../../../outside.nii.gz"
    pin_path.write_text(json.dumps(pin))
    result = CliRunner().invoke(main, ["run", "--endpoint", hub.endpoint, "--out", str(tmp_path / "s"),
                                       "--pin", str(pin_path), "--threads-only", "--workers", "1"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        f"Error: {pin_path}: the pinned list names image {T1_IMAGE} but not its file {T1} (neither in 'files' "
        "nor in 'missing'); re-resolve the pinned list")
    assert not (tmp_path / "outside.nii.gz").exists()


# -- bytes changed in place -----------------------------------------------------------------------

def test_verify_all_rehashes_a_file_changed_in_place_with_size_and_mtime_kept(hub, sample_tree, tmp_path):
    raw = tmp_path / "raw"
    args = ["download", "--endpoint", hub.endpoint, "--out", str(raw)]
    assert CliRunner().invoke(main, args).exit_code == 0
    target = raw / T1
    st = target.stat()
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x55
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # the damage keeps size and mtime
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns

    hub.clear_log()
    trusted = CliRunner().invoke(main, args)  # the documented trade-off: the record is trusted
    assert trusted.exit_code == 0 and "0 downloaded" in trusted.output and not hub.hits("cdn")
    assert target.read_bytes() != (sample_tree / T1).read_bytes()

    checked = CliRunner().invoke(main, args + ["--verify-all"])
    assert checked.exit_code == 0, checked.output
    assert "1 downloaded" in checked.output and [h.path for h in hub.hits("cdn")] == [T1]
    assert target.read_bytes() == (sample_tree / T1).read_bytes()
    assert not list((raw / STATE_DIR / "partial").glob("*"))


def test_a_file_gone_since_the_lock_fails_in_one_line_and_is_not_retried(hub, sample_tree, tmp_path, capsys):
    pin, _ = download(_repo(hub.endpoint), tmp_path / "a", pin_only=True, progress=False)
    mask = "OpenMind/ds000001/sub-01/anat/sub-01_T1w__Data/deface_mask.nii.gz"  # a plain git file here
    hub.blobs.pop(mask)
    hub.by_sha.pop(hub.blobs.pop(T1).sha256)  # the CDN object is gone too
    hub.clear_log()
    _, report = _bounded(download, _repo(hub.endpoint), tmp_path / "b", pin=pin, progress=False)
    assert dict(report.failed) == {T1: f"{T1}: HTTP 404 RemoteEntryNotFoundError",
                                   mask: f"{mask}: HTTP 404 RemoteEntryNotFoundError"}
    assert len([h for h in hub.log if h.path in (T1, mask)]) == 2  # a 404 is final: one request each
    assert "retry" not in capsys.readouterr().err
    assert len(report.transferred) == len(pin.data_files) - 2
