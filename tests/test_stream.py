"""``openmind-prep run``: streaming download → preprocess → delete raw under a raw-bytes bound.

The reference is the two-step path: ``download`` into RAW, then the preprocess code on RAW. The
streamed store must have the same manifest rows (checksums of the decoded arrays included).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from openmind_prep.cli import main
from openmind_prep.sources.download import download
from openmind_prep.sources.hub import STATE_DIR, HubRepo, RetryPolicy
from openmind_prep.store.manifest import RUN_COLUMNS, merge_manifest, read_manifest
from openmind_prep.sources.metadata import METADATA_CSV, read_metadata
from openmind_prep.preprocess.job import PreprocessOptions, run_preprocess
from openmind_prep.sources.selection import Selection
from openmind_prep.preprocess.stream import hub_items, source_items, stream

T1 = "OpenMind/ds000001/sub-01/anat/sub-01_T1w.nii.gz"
BOUND = 100_000  # bytes: one image with its masks fits (max 87,823), two never do


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="module")
def client():
    from openmind_prep.core.dask_cluster import ClusterConfig, dask_client

    with dask_client(ClusterConfig(workers=1, processes=False)) as c:
        yield c


class RawMeter:
    """Samples the image + mask bytes (complete or partial) in a work folder; keeps the peak."""

    def __init__(self, work: Path) -> None:
        self.work, self.peak, self.samples = work, 0, 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        folders = [self.work / "OpenMind", self.work / STATE_DIR / "partial"]
        total = sum(p.stat().st_size for d in folders if d.exists() for p in d.rglob("*") if p.is_file())
        with self._lock:
            self.peak, self.samples = max(self.peak, total), self.samples + 1


def _rows(store: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in RUN_COLUMNS} for row in read_manifest(store).to_pylist()]


@pytest.fixture
def reference_store(hub, client, tmp_path) -> Path:
    """download (the real client, against the fixture) then preprocess RAW."""
    raw, store = tmp_path / "raw", tmp_path / "reference"
    download(HubRepo("AnonRes/OpenMind", endpoint=hub.endpoint, token=False), raw, progress=False)
    run_preprocess(read_metadata(raw / METADATA_CSV), raw, store, client, PreprocessOptions(), progress=False)
    merge_manifest(store)
    hub.clear_log()
    return store


def test_streamed_store_equals_download_then_preprocess_and_raw_stays_under_bound(
        hub, client, reference_store, tmp_path):
    work, store = tmp_path / "work", tmp_path / "streamed"
    meter = RawMeter(work)
    hub.on_request = meter  # server side: sampled at every request
    items, fetch = hub_items(HubRepo("AnonRes/OpenMind", endpoint=hub.endpoint, token=False), Selection(),
                             work, None, workers=2)
    rows = stream(items, fetch, work, store, client, PreprocessOptions(), max_raw_bytes=BOUND,
                  batch_size=8, on_fetched=meter, progress=False)
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert meter.samples > 5 and 68_002 <= meter.peak <= BOUND  # something was on disk, never too much
    assert _rows(store) == _rows(reference_store)
    assert not (work / "OpenMind").exists()  # raw deleted after processing

    hub.clear_log()  # a re-run finds everything done and downloads nothing
    items, fetch = hub_items(HubRepo("AnonRes/OpenMind", endpoint=hub.endpoint, token=False), Selection(),
                             work, None, workers=2)
    assert stream(items, fetch, work, store, client, PreprocessOptions(), max_raw_bytes=BOUND,
                  progress=False) == []
    assert hub.hits("cdn") == []


def test_without_a_bound_everything_is_on_disk_at_once(hub, client, tmp_path):
    """The meter can see a violation: the same run with a large bound holds all images at once."""
    work = tmp_path / "work"
    meter = RawMeter(work)
    items, fetch = hub_items(HubRepo("AnonRes/OpenMind", endpoint=hub.endpoint, token=False),
                             Selection(modalities=("T1w",)), work, None, workers=2)
    stream(items, fetch, work, tmp_path / "s", client, PreprocessOptions(), max_raw_bytes=10**9,
           batch_size=8, on_fetched=meter, progress=False)
    assert meter.peak == sum(i.bytes for i in items) > BOUND


def test_source_folder_streams_to_the_same_store(sample_tree, client, reference_store, tmp_path):
    work, store = tmp_path / "work", tmp_path / "from-source"
    meter = RawMeter(work)
    items, fetch = source_items(sample_tree, Selection(), work)
    stream(items, fetch, work, store, client, PreprocessOptions(), max_raw_bytes=BOUND,
           on_fetched=meter, progress=False)
    assert _rows(store) == _rows(reference_store) and meter.peak <= BOUND
    assert (sample_tree / T1).exists()  # the source is never touched


def test_failed_file_gives_a_failed_row_naming_it_and_the_rest_goes_on(hub, client, tmp_path):
    hub.faults.corrupt[T1] = -1
    work, store = tmp_path / "work", tmp_path / "s"
    items, fetch = hub_items(HubRepo("AnonRes/OpenMind", endpoint=hub.endpoint, token=False,
                                     policy=RetryPolicy(base_s=0.05)), Selection(), work, None, workers=1)
    stream(items, fetch, work, store, client, PreprocessOptions(), max_raw_bytes=BOUND, progress=False)
    rows = {r["image_path"]: r for r in read_manifest(store).to_pylist()}
    bad = rows["ds000001/sub-01/anat/sub-01_T1w.nii.gz"]
    assert bad["status"] == "failed" and T1 in bad["error"] and "checksum mismatch" in bad["error"]
    assert sorted(r["status"] for r in rows.values()) == ["failed", "ok", "ok"]
    assert not (work / T1).exists() and not (work / "OpenMind").exists()


def test_run_cli_through_hf_endpoint(hub, sample_tree, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    meter = RawMeter(tmp_path / "s.raw")
    hub.on_request = meter
    res = CliRunner().invoke(main, ["run", "--out", str(tmp_path / "s"), "--max-raw-gb", str(BOUND / 1e9),
                                    "--modality", "T1w", "--threads-only", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "2 selected: 2 ok" in res.output and meter.peak <= BOUND
    assert sorted(r["image_path"] for r in read_manifest(tmp_path / "s").to_pylist()) == [
        "ds000001/sub-01/anat/sub-01_T1w.nii.gz", "ds000003/sub-01/anat/sub-01_T1w.nii"]
    res = CliRunner().invoke(main, ["run", "--out", str(tmp_path / "t"), "--max-raw-gb", "0.00005",
                                    "--threads-only", "--workers", "1"])
    assert res.exit_code != 0 and "more than --max-raw-gb" in res.output


def test_run_refuses_a_store_key_clash_across_rounds(tmp_path):
    """``x.nii`` and ``x.nii.gz`` fetched in different rounds (batch size 1, a budget of about one
    image) must not both be ``ok`` on one group: the second is a failed row and the store verifies."""
    import gzip

    from openmind_prep.store.manifest import FAILED, OK
    from openmind_prep.sources.embedded import build_sample_tree
    from openmind_prep.reports.verify import verify_store

    src = build_sample_tree(tmp_path / "src", small=True)
    first = "ds000003/sub-01/anat/sub-01_T1w.nii"
    twin = first + ".gz"
    raw = (src / "OpenMind" / first).read_bytes()
    (src / "OpenMind" / twin).write_bytes(gzip.compress(raw[:-2000] + bytes(2000), mtime=0))  # other content
    csv = src / METADATA_CSV
    lines = csv.read_text().splitlines()
    lines.append(next(line for line in lines if line.startswith(first + ",")).replace(first + ",", twin + ",", 1))
    csv.write_text("\n".join(lines) + "\n")
    store = tmp_path / "store"
    res = CliRunner().invoke(main, ["run", "--source", str(src), "--out", str(store), "--batch-size", "1",
                                    "--max-raw-gb", str(2 * len(raw) / 1e9), "--workers", "1", "--threads-only"])
    assert res.exit_code == 1, res.output
    rows = {r["image_path"]: r for r in read_manifest(store).to_pylist()}
    assert rows[first]["status"] == OK and rows[twin]["status"] == FAILED
    assert "already used by" in rows[twin]["error"]
    assert verify_store(store) == []
