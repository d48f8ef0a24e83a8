"""Bad inputs end in a ``failed`` row or one line naming the file and the reason (issue 13).

The adversarial inputs are built here, at test time, from the real-MRI sample tree: CSVs with a
BOM, a byte that is not UTF-8, a short image path, a non-numeric score; a directory, a FIFO
and a missing file in place of listed images; a disk that fills while ``shard`` writes. The last
test runs every command on a few bad inputs and asserts exit 1 (2 for usage) and no traceback.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from openmind_prep.cli import main
from openmind_prep.sources.metadata import METADATA_CSV, MetadataError, read_metadata

ROW2 = "ds000001/sub-01/anat/sub-01_T1w.nii.gz"
BOUND_S = 120


def _invoke(args: list[str]):
    """``CliRunner().invoke`` in a thread joined with a bound (a FIFO read would block for ever)."""
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", CliRunner().invoke(main, args)), daemon=True)
    thread.start()
    thread.join(BOUND_S)
    assert not thread.is_alive(), f"{args[0]} still running after {BOUND_S} s: it hangs"
    return out["r"]


def _one_line_error(result, code: int = 1) -> str:
    """The command ended with exit ``code`` through click (no traceback); returns its last line."""
    assert isinstance(result.exception, SystemExit) and result.exit_code == code, (
        f"exit {result.exit_code}, {result.exception!r}\n{result.output}")
    assert "Traceback" not in result.output
    return result.output.strip().splitlines()[-1]


@pytest.fixture
def src(sample_tree, tmp_path) -> Path:
    return Path(shutil.copytree(sample_tree, tmp_path / "src"))


def _edit_csv(root: Path, edit) -> Path:
    path = root / METADATA_CSV
    path.write_bytes(edit(path.read_bytes()))
    return path


# -- CSV encodings and rows -----------------------------------------------------------------------

def test_a_bom_is_accepted_everywhere_the_csv_is_read(src, tmp_path, monkeypatch):
    from hf_server import HubFixture
    from openmind_prep.sources.download import download
    from openmind_prep.sources.hub import HubRepo

    plain = read_metadata(src / METADATA_CSV)
    csv = _edit_csv(src, lambda b: b"\xef\xbb\xbf" + b)
    assert read_metadata(csv) == plain  # the first column is image_path, not '\ufeffimage_path'

    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    hub = HubFixture(src, lfs_threshold=1000)  # the repo's CSV carries the BOM
    try:
        raw = tmp_path / "raw"
        _, report = download(HubRepo("AnonRes/OpenMind", endpoint=hub.endpoint, token=False), raw, progress=False)
    finally:
        hub.close()
    assert not report.failed
    assert read_metadata(raw / METADATA_CSV) == plain  # RAW's CSV lists every downloaded image


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
def test_windows_and_old_mac_line_ends_read_like_unix_ones(src, newline):
    plain = read_metadata(src / METADATA_CSV)
    assert read_metadata(_edit_csv(src, lambda b: b.replace(b"\n", newline))) == plain


CSV_CASES = {  # name -> (edit of the CSV bytes, expected message after "<csv>: ")
    "bad byte": (lambda b: b.replace(b"ds000003_00001", b"ds000003_0\xff001"), "line 3: not UTF-8 (byte 0xff at column"),
    "latin-1 cell": (lambda b: b.replace(b"healthy", "h\u00e9althy".encode("latin-1"), 1),
                     "line 2: not UTF-8 (byte 0xe9 at column"),
    "short image path": (lambda b: b.replace(ROW2.encode(), b"ds000001/sub-01_T1w.nii.gz"),
                         "line 2: 'ds000001/sub-01_T1w.nii.gz': expected <dataset>/<subject>/.../<file>"),
    "score not a number": (lambda b: b.replace(b",1.2,", b",high,"), "line 2: image_quality_score 'high' is not a number"),
    "no image_path column": (lambda b: b.replace(b"image_path,", b"image,", 1),
                             "not an OpenMind metadata CSV (no 'image_path' column)"),
}


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_a_bad_csv_is_one_line_naming_the_file_and_line(src, tmp_path, case):
    edit, expected = CSV_CASES[case]
    csv = _edit_csv(src, edit)
    with pytest.raises(MetadataError) as info:
        read_metadata(csv)
    assert str(info.value) == f"{csv}: {expected}" or str(info.value).startswith(f"{csv}: {expected}")
    assert "\n" not in str(info.value)
    for args in (["preprocess", str(src), "--out", str(tmp_path / "s1"), "--threads-only", "--workers", "1"],
                 ["run", "--source", str(src), "--out", str(tmp_path / "s2"), "--threads-only", "--workers", "1"],
                 ["plan", "--metadata", str(csv)]):
        line = _one_line_error(CliRunner().invoke(main, args))
        assert line.startswith(f"Error: {csv}: {expected}"), (args[0], line)


# -- what stands in place of a listed file --------------------------------------------------------

def test_run_source_gives_a_directory_a_fifo_and_a_missing_file_failed_rows_as_preprocess_does(src, tmp_path):
    from openmind_prep.store.manifest import read_manifest

    fifo = src / "OpenMind/ds000001/sub-01/anat/sub-01_T1w__Data/fb_mask.nii.gz"
    fifo.unlink()
    os.mkfifo(fifo)  # a read would block for ever
    folder = src / "OpenMind/ds000003/sub-01/anat/sub-01_T1w.nii"
    folder.unlink()
    folder.mkdir()
    _edit_csv(src, lambda b: b + b"ds000009/sub-01/anat/sub-01_T1w.nii.gz,T1w,x,1.0,,,,,,,,,,,,,,,,,\n")

    expected = {
        "ds000001/sub-01/anat/sub-01_T1w.nii.gz": f"{fifo}: not a regular file",
        "ds000003/sub-01/anat/sub-01_T1w.nii": f"{folder}: not a regular file",
        "ds000009/sub-01/anat/sub-01_T1w.nii.gz": "not found",
    }
    stores = {}
    for command in ("run", "preprocess"):
        store = tmp_path / command
        args = (["run", "--source", str(src)] if command == "run" else ["preprocess", str(src)])
        result = _invoke(args + ["--out", str(store), "--threads-only", "--workers", "1"])
        _one_line_error(result)  # exit 1: some images failed
        stores[command] = {r["image_path"]: r for r in read_manifest(store).to_pylist()}
    for command, rows in stores.items():
        assert sorted(rows) == sorted([*expected, "ds000003/sub-02/anat/sub-02_T2w.nii.gz"]), command
        assert rows["ds000003/sub-02/anat/sub-02_T2w.nii.gz"]["status"] == "ok"
        for image, message in expected.items():
            assert rows[image]["status"] == "failed" and message in rows[image]["error"], (command, rows[image])
    assert "(a FIFO)" in stores["run"]["ds000001/sub-01/anat/sub-01_T1w.nii.gz"]["error"]
    assert "(a directory)" in stores["run"]["ds000003/sub-01/anat/sub-01_T1w.nii"]["error"]


# -- a full disk while sharding -------------------------------------------------------------------

def test_disk_full_during_shard_is_one_line_and_a_rerun_completes(tmp_path, monkeypatch):
    from _store_builder import build_store
    from openmind_prep.shards import writer as shards

    store, _ = build_store(tmp_path / "store")
    out = tmp_path / "wds"
    real, written = shards._HashingFile.write, []

    def full_after_1mb(self, data):  # what the kernel says when the disk fills mid-tar
        written.append(len(data))
        if sum(written) > 1 << 20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(shards._HashingFile, "write", full_after_1mb)
    line = _one_line_error(CliRunner().invoke(main, ["shard", str(store), "--out", str(out), "--shard-size", "2MB"]))
    assert line == (f"Error: {out}: disk full while writing shards (No space left on device); finished shards "
                    "are kept: free space and re-run the same command to resume")
    assert not [p for p in out.rglob("*.tmp")]  # no half-written tar left behind

    monkeypatch.setattr(shards._HashingFile, "write", real)
    result = CliRunner().invoke(main, ["shard", str(store), "--out", str(out), "--shard-size", "2MB"])
    assert result.exit_code == 0, result.output
    assert "index: 8 samples" in result.output


# -- every command, a few bad inputs --------------------------------------------------------------

def test_no_command_prints_a_traceback_on_bad_input(src, tmp_path):
    import socket

    empty = tmp_path / "empty"
    empty.mkdir()
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\x00\xff not json")
    bad = Path(shutil.copytree(src, tmp_path / "bad"))
    _edit_csv(bad, lambda b: b.replace(b"Siemens", b"Siem\xffns", 1))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    store = tmp_path / "store"
    damaged = tmp_path / "damaged"  # a store whose manifest is not parquet
    damaged.mkdir()
    (damaged / "manifest.parquet").write_bytes(b"PAR1 garbage")
    cases = [  # (args, exit code, text the output must contain)
        (["download", "--out", str(tmp_path / "r1"), "--lock", str(garbage)], 2, "garbage.json"),
        (["download", "--out", str(tmp_path / "r2"), "--deadline", "soon"], 2, "'soon' is not a duration"),
        (["download", "--out", str(tmp_path / "r3"), "--endpoint", dead, "--deadline", "1"], 1, "ConnectError"),
        (["download", "--out", str(tmp_path / "r4"), "--endpoint", dead, "--timeout", "0"], 2, "--timeout"),
        (["run", "--source", str(bad), "--out", str(store)], 1, "not UTF-8"),
        (["run", "--source", str(empty), "--out", str(store)], 1, f"{empty / METADATA_CSV}: cannot read"),
        (["run", "--out", str(store), "--lock", str(garbage)], 1, "garbage.json"),
        (["preprocess", str(empty), "--out", str(store)], 1, f"{empty / METADATA_CSV}: cannot read"),
        (["preprocess", str(bad), "--out", str(store)], 1, f"{bad / METADATA_CSV}: line 2: not UTF-8"),
        (["preprocess", str(tmp_path / "nowhere"), "--out", str(store)], 2, "does not exist"),
        (["plan", "--metadata", str(bad / METADATA_CSV)], 1, "not UTF-8"),
        (["plan", "--metadata", str(garbage)], 1, "garbage.json"),
        (["shard", str(src), "--out", str(tmp_path / "w"), "--shard-size", "huge"], 2, "--shard-size"),
        (["shard", str(damaged), "--out", str(tmp_path / "w")], 1, f"{damaged / 'manifest.parquet'}"),
        (["verify", str(damaged)], 1, f"{damaged / 'manifest.parquet'}"),
        (["plan", "--from-manifest", str(damaged)], 1, f"{damaged / 'manifest.parquet'}"),
        (["show", str(damaged), "x", "--out", str(tmp_path / "x.png")], 1, f"{damaged / 'manifest.parquet'}"),
        (["show", str(empty), "x", "--out", str(tmp_path / "x.png")], 2, "no stored image 'x'"),
        (["sample", str(garbage)], 2, "is a file"),
    ]
    for args, code, text in cases:
        result = CliRunner().invoke(main, args)
        line = _one_line_error(result, code)
        assert text in result.output, (args, result.output)
        assert line.startswith("Error:"), (args, line)

    # the real process: stderr has the one line and nothing else (no traceback, no warning spew)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-m", "openmind_prep.cli", "preprocess", str(bad), "--out", str(store)],
                          capture_output=True, text=True, env=env, timeout=BOUND_S)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    column = (bad / METADATA_CSV).read_bytes().splitlines()[1].index(0xFF) + 1
    assert proc.stderr.strip().splitlines() == [
        f"Error: {bad / METADATA_CSV}: line 2: not UTF-8 (byte 0xff at column {column}); save the CSV as UTF-8"]
