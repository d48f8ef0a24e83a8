"""Issue 23's data-integrity situations, each built at test time: a damaged image is never used silently
(D1), shards know their store (D2), a FIFO never blocks a reader (H2), a damaged manifest gives one line
(T1, T2, P10, P11), ``shard`` respects the store's run lock (P13) and removes what a killed writer left (P15).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from openmind_prep.cli import main
from openmind_prep.store.integrity import DamagedImage, store_digest
from openmind_prep.store.manifest import MANIFEST_FILE, OK, empty_row
from openmind_prep.store.store import Store, StoreError

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("ds/sub-1/anat/a", "ds/sub-2/anat/b", "ds/sub-3/anat/c")


def _volume(seed: int, shape=(70, 12, 10), dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def _build(root: Path, seed: int = 0, dtype=np.float32) -> Store:
    """Three images (two inner chunks along z each), the first with a foreground mask."""
    store = Store.create(root)
    rows = []
    for i, key in enumerate(KEYS):
        image = _volume(seed + i, dtype=dtype)
        arrays = {"image": image, **({"anat_mask": (image > 0).astype(np.uint8)} if i == 0 else {})}
        case = store.write_case(key, arrays, {}, chunks=64)
        rows.append({**empty_row(f"{key}.nii.gz"), "status": OK, "shape": list(image.shape), **case.columns()})
    store.record(rows)
    store.merge()
    return store


@pytest.fixture
def store(tmp_path) -> Store:
    return _build(tmp_path / "store")


def _shard_file(store: Store, key: str) -> Path:
    return store.root / key / "image" / "c" / "0" / "0" / "0"


def _damage(store: Store, key: str, how: str) -> None:
    shard = _shard_file(store, key)
    if how == "deleted chunk":  # the one shard file: every chunk of the image reads as zeros
        shard.unlink()
    elif how == "flipped byte":
        data = bytearray(shard.read_bytes())
        data[len(data) // 3] ^= 0x01
        shard.write_bytes(bytes(data))
    else:  # "doubled shape": zarr.json edited
        meta_path = store.root / key / "image" / "zarr.json"
        meta = json.loads(meta_path.read_text())
        meta["shape"][0] *= 2
        meta_path.write_text(json.dumps(meta))


DAMAGE = ["deleted chunk", "flipped byte", "doubled shape"]


def _lines(output: str, prefix: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(prefix)]


def _errors(output: str) -> list[str]:
    """Output lines less the progress bars (whose last update may share its line with what follows)."""
    bar = re.compile(r"^[^|]*\|[^|]*\| *\d+/\d+ \[[^\]]*\]")  # "desc: 100%|███| 3/3 [00:00<00:00, …]"
    lines = [bar.sub("", line) for line in output.replace("\r", "\n").splitlines()]
    return [line for line in lines if line.strip()]


@contextmanager
def _deadline(seconds: int):
    """Fail instead of hanging (a FIFO opened for reading blocks until a writer appears)."""
    def stop(*_):
        raise TimeoutError(f"still blocked after {seconds} s")
    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# -- D1: checksums guard every read path ----------------------------------------------------------

@pytest.mark.parametrize("how", DAMAGE)
def test_shard_leaves_a_damaged_image_out_names_it_and_packs_the_rest(store, tmp_path, how):
    from loaders import WebDatasetStream

    _damage(store, KEYS[1], how)
    out = tmp_path / "wds"
    result = CliRunner().invoke(main, ["shard", str(store.root), "--out", str(out)])
    assert result.exit_code == 1, result.output
    (damaged,) = _lines(result.output, "DAMAGED ")
    assert str(store.root / KEYS[1] / "image") in damaged and f"{KEYS[1]}.nii.gz" in damaged
    assert ("shape" if how == "doubled shape" else "checksum") in damaged
    assert _errors(result.output)[-1].startswith("Error: 1 damaged image(s) left out")
    index = json.loads((out / "index.json").read_text())
    assert index["samples"] == 2
    stream = WebDatasetStream(str(out), shuffle_buffer=0, rank=0, world_size=1, worker=0, num_workers=1, verify=True)
    got = {s["key"]: s["image"][0].numpy() for s in stream}
    assert set(got) == {KEYS[0], KEYS[2]}
    for i in (0, 2):
        np.testing.assert_array_equal(got[KEYS[i]], _volume(i))


@pytest.mark.parametrize("how", DAMAGE)
def test_zarr_dataset_refuses_a_damaged_image_the_first_time_it_reads_it(store, how):
    from loaders import ZarrVolumeDataset

    _damage(store, KEYS[1], how)
    ds = ZarrVolumeDataset(store.root)
    np.testing.assert_array_equal(ds[0]["image"][0].numpy(), _volume(0))
    with pytest.raises(DamagedImage, match=f"{KEYS[1]}.nii.gz") as err:
        ds[1, (slice(0, 8),) * 3]  # a region inside the first chunk: still the whole image is checked
    assert len(str(err.value).splitlines()) == 1
    assert isinstance(err.value, ValueError)  # what the trainer turns into one line


def test_the_checksum_is_checked_once_per_process_and_verify_false_skips_it(store, monkeypatch):
    from loaders import ZarrVolumeDataset
    from openmind_prep.store import integrity

    calls = []
    real = integrity.array_checksum
    monkeypatch.setattr(integrity, "array_checksum", lambda a: calls.append(a.shape) or real(a))
    ds = ZarrVolumeDataset(store.root, masks=False)
    for _ in range(3):
        for i in range(len(ds)):
            ds._open.clear()  # even when the open arrays are dropped from the cache
            ds[i, (slice(0, 5),) * 3]
    assert len(calls) == len(KEYS)
    assert ZarrVolumeDataset(store.root, verify=False)[0]["image"].shape == (1, 70, 12, 10)
    assert len(calls) == len(KEYS)
    _damage(store, KEYS[0], "deleted chunk")  # the opt-out reads what is there, zeros included
    assert not ZarrVolumeDataset(store.root, verify=False)[0]["image"].any()


def test_dataloader_workers_share_what_they_have_checked(store):
    """Spawned workers mark the dataset's shared flags: the parent sees every image checked."""
    import torch

    from loaders import ZarrVolumeDataset

    ds = ZarrVolumeDataset(store.root, masks=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="spawn")
    assert sorted(s["key"] for s in loader) == sorted(KEYS)
    assert ds._verified.tolist() == [True] * len(KEYS)


def test_show_refuses_a_damaged_image(store, tmp_path):
    out = tmp_path / "x.png"
    assert CliRunner().invoke(main, ["show", str(store.root), KEYS[0], "--out", str(out)]).exit_code == 0
    out.unlink()
    _damage(store, KEYS[0], "deleted chunk")
    result = CliRunner().invoke(main, ["show", str(store.root), KEYS[0], "--out", str(out)])
    assert result.exit_code == 1 and not out.exists()
    (line,) = _errors(result.output)
    assert line.startswith(f"Error: {store.root / KEYS[0] / 'image'}: checksum")


def test_training_on_a_damaged_image_stops_with_one_line_naming_it(train_store, tmp_path, capsys):
    from _procs import TINY
    from trainers import cva

    damaged = Store(tmp_path / "store")
    shutil.copytree(train_store, damaged.root)
    first = damaged.ok_rows()[0]
    for shard in (damaged.root / first["zarr_path"] / "c").rglob("*"):
        if shard.is_file():
            shard.unlink()  # before: trained on an all-zero volume, exit 0
    with pytest.raises(SystemExit) as exit_:
        cva.main(["--store", str(damaged.root), "--out", str(tmp_path / "run"), *TINY, "--steps", "2",
                  "--batch-size", str(len(damaged.ok_rows()))])
    err = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines()
           if line.strip() and not line.startswith("cva:")]
    assert exit_.value.code == 1 and len(err) == 1, err
    assert err[0].startswith("trainers.cva: error: cannot read the data of step 1: ")
    assert first["image_path"] in err[0] and "checksum" in err[0]


# -- D2: shards know their store -------------------------------------------------------------------

def test_shards_of_an_earlier_preprocessing_are_rewritten_never_reported_fresh(tmp_path):
    from loaders import WebDatasetStream
    from openmind_prep.shards.writer import read_fragment

    out = tmp_path / "wds"
    first = _build(tmp_path / "store", dtype=np.float16)
    assert CliRunner().invoke(main, ["shard", str(first.root), "--out", str(out)]).exit_code == 0
    before = {s.url: s.sha256 for s in read_fragment(out, "shard")}
    first_digest = store_digest(first.ok_rows())
    shutil.rmtree(first.root)
    again = _build(tmp_path / "store", dtype=np.float32)  # re-preprocessed as float32: same keys, new arrays
    result = CliRunner().invoke(main, ["shard", str(again.root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    after = {s.url: s.sha256 for s in read_fragment(out, "shard")}
    assert set(after) == set(before) and all(after[u] != before[u] for u in after)
    index = json.loads((out / "index.json").read_text())
    assert index["store"] == store_digest(again.ok_rows()) != first_digest
    stream = WebDatasetStream(str(out), shuffle_buffer=0, rank=0, world_size=1, worker=0, num_workers=1, verify=True)
    got = {s["key"]: s["image"] for s in stream}
    assert sorted(got) == sorted(KEYS) and {str(v.dtype) for v in got.values()} == {"torch.float32"}
    np.testing.assert_array_equal(got[KEYS[2]][0].numpy(), _volume(2))


def test_shards_of_another_store_in_out_are_refused_naming_the_option_then_replaced(tmp_path):
    out = tmp_path / "wds"
    other = _build(tmp_path / "other", seed=10)
    assert CliRunner().invoke(main, ["shard", str(other.root), "--out", str(out), "--prefix", "old"]).exit_code == 0
    store = _build(tmp_path / "store")
    result = CliRunner().invoke(main, ["shard", str(store.root), "--out", str(out)])
    assert result.exit_code == 1
    (line,) = _errors(result.output)
    assert line.startswith(f"Error: {out / '_index' / 'old.json'}: shards of another store") and "--replace" in line
    assert not list(out.glob("shard-*.tar"))  # refused before anything was written
    result = CliRunner().invoke(main, ["shard", str(store.root), "--out", str(out), "--replace"])
    assert result.exit_code == 0, result.output
    index = json.loads((out / "index.json").read_text())
    assert index["samples"] == 3 and not list(out.glob("old-*")) and index["store"] == store_digest(store.ok_rows())


def test_the_stream_with_verify_checks_every_sample_against_the_index(store, tmp_path, monkeypatch):
    """A shard written from a damaged image with the manifest's checksums (as ``shard`` did before):
    its sha256 matches the index, its sample does not."""
    from loaders import CorruptShardError, WebDatasetStream
    from openmind_prep.shards import writer

    _damage(store, KEYS[1], "deleted chunk")
    monkeypatch.setattr(writer, "check_checksums", lambda *a: None)  # the old writer: no check
    writer.write_shards(store.root, tmp_path / "wds", progress=False)
    writer.merge_index(tmp_path / "wds")

    def stream(verify: bool):
        return WebDatasetStream(str(tmp_path / "wds"), shuffle_buffer=0, rank=0, world_size=1, worker=0,
                                num_workers=1, verify=verify)

    assert {s["key"] for s in stream(False)} == set(KEYS)  # without verify: the zero volume is yielded
    with pytest.raises(CorruptShardError, match=KEYS[1]) as err:
        list(stream(True))
    assert "checksum" in str(err.value) and "!= index" in str(err.value)


# -- H2: a FIFO never blocks a reader ----------------------------------------------------------------

@pytest.fixture
def fifo_store(store) -> Store:
    shard = _shard_file(store, KEYS[1])
    shard.unlink()
    os.mkfifo(shard)
    return store


def test_verify_refuses_a_fifo_without_opening_it(fifo_store):
    proc = subprocess.run([sys.executable, "-m", "openmind_prep", "verify", str(fifo_store.root)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1  # before: stuck at 0/3
    (line,) = _lines(proc.stderr.replace("\r", "\n"), "DAMAGED ")
    assert line.startswith(f"DAMAGED {_shard_file(fifo_store, KEYS[1])}: not a regular file (a FIFO); refused")


def test_the_zarr_dataset_and_shard_refuse_a_fifo(fifo_store, tmp_path):
    from loaders import ZarrVolumeDataset
    from openmind_prep.store.region_read import open_array

    with _deadline(60):
        ds = ZarrVolumeDataset(fifo_store.root)
        with pytest.raises(StoreError, match="not a regular file \\(a FIFO\\); refused"):
            ds[1]
        with pytest.raises(ValueError, match="a FIFO"):  # the reader itself never blocks on one either
            open_array(fifo_store.root / KEYS[1] / "image")[...]
        result = CliRunner().invoke(main, ["shard", str(fifo_store.root), "--out", str(tmp_path / "wds")])
    assert result.exit_code == 1
    (line,) = _errors(result.output)
    assert "a FIFO" in line and not list((tmp_path / "wds").glob("*.tar"))


def test_a_fifo_in_place_of_a_source_image_is_a_failed_row(sample_tree, tmp_path):
    from openmind_prep.preprocess.job import PreprocessOptions, process_image
    from openmind_prep.sources.metadata import IMAGES_DIR, METADATA_CSV, read_metadata

    src = tmp_path / "src"
    shutil.copytree(sample_tree, src)
    record = read_metadata(src / METADATA_CSV)[0]
    path = src / IMAGES_DIR / record.image_path
    path.unlink()
    os.mkfifo(path)
    with _deadline(60):
        row = process_image(record, src, Store.create(tmp_path / "store"), PreprocessOptions())
    assert row["status"] == "failed" and row["error"] == f"{path}: not a regular file"


# -- T1, T2, P10, P11: a damaged manifest ----------------------------------------------------------

@pytest.mark.parametrize("column", ["checksum", "zarr_path"])
def test_a_manifest_without_a_needed_column_is_one_line_everywhere(store, tmp_path, column):
    from loaders import ZarrVolumeDataset

    path = store.root / MANIFEST_FILE
    pq.write_table(pq.read_table(path).drop_columns([column]), path)
    for command in (["verify", str(store.root)], ["shard", str(store.root), "--out", str(tmp_path / "wds")]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1, command
        (line,) = _errors(result.output)
        assert line == f"Error: {path}: lacks the manifest column(s) {column}; not a manifest openmind-prep wrote " \
                       "(damaged or edited)"
    with pytest.raises(ValueError, match=f"lacks the manifest column\\(s\\) {column}"):
        ZarrVolumeDataset(store.root)


@pytest.mark.parametrize("value", [None, ""])
def test_an_ok_row_without_its_zarr_path_is_one_line_everywhere(store, tmp_path, value):
    from loaders import ZarrVolumeDataset

    rows = store.ok_rows()
    rows[1]["zarr_path"] = value
    store.record(rows)
    store.merge()
    result = CliRunner().invoke(main, ["verify", str(store.root)])
    assert result.exit_code == 1
    (line,) = _lines(result.output, "DAMAGED ")
    assert f"'ok' row {KEYS[1]}.nii.gz: no zarr_path ({value!r})" in line
    result = CliRunner().invoke(main, ["shard", str(store.root), "--out", str(tmp_path / "wds")])
    assert result.exit_code == 1 and len(_lines(result.output, "DAMAGED ")) == 1
    assert json.loads((tmp_path / "wds" / "index.json").read_text())["samples"] == 2
    with pytest.raises(DamagedImage, match=f"no zarr_path \\({value!r}\\)") as err:
        ZarrVolumeDataset(store.root)  # before: KeyError: 'image' (P10) / AttributeError on None (T2)
    assert len(str(err.value).splitlines()) == 1


def test_verify_finds_zarr_paths_and_checksums_swapped_between_two_rows(tmp_path):
    store = Store.create(tmp_path / "store")
    rows = []
    for i, key in enumerate(KEYS[:2]):  # same shape: only the key tells the swap
        case = store.write_case(key, {"image": _volume(i)}, {})
        rows.append({**empty_row(f"{key}.nii.gz"), "status": OK, "shape": [70, 12, 10], **case.columns()})
    for column in ("zarr_path", "checksum"):
        rows[0][column], rows[1][column] = rows[1][column], rows[0][column]
    store.record(rows)
    store.merge()
    result = CliRunner().invoke(main, ["verify", str(store.root)])
    assert result.exit_code == 1  # before: "0 problem(s)"
    damaged = _lines(result.output, "DAMAGED ")
    assert len(damaged) == 2 and all("rows swapped or edited" in line for line in damaged)
    assert f"is '{KEYS[1]}/image', not this image's {KEYS[0]}/image" in damaged[0]


# -- P13, P15: the run lock and a killed writer's leftovers ---------------------------------------

def test_shard_refuses_a_store_whose_run_lock_is_held(store, tmp_path):
    out = tmp_path / "wds"
    with store.lock("preprocess"):
        result = CliRunner().invoke(main, ["shard", str(store.root), "--out", str(out)])
    assert result.exit_code == 1  # before: packed what was there, exit 0
    (line,) = _errors(result.output)
    assert line.startswith(f"Error: {store.root / '_lock'}: another run is using this store (pid {os.getpid()}")
    assert not out.exists() or not list(out.glob("*.tar"))
    assert CliRunner().invoke(main, ["shard", str(store.root), "--out", str(out)]).exit_code == 0


def test_a_killed_shard_writer_s_temporary_files_are_removed_by_the_next_run(store, tmp_path):
    from openmind_prep.core.atomic import _temp

    out = tmp_path / "wds"
    code = ("import os, sys\nfrom openmind_prep.core import atomic\nreal = atomic._fsync\n"
            "def killed(path):\n    real(path)\n    os.kill(os.getpid(), 9)\n"
            "atomic._fsync = killed\nfrom openmind_prep.cli import main\n"
            f"main(['shard', {str(store.root)!r}, '--out', {str(out)!r}])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    left = sorted(p.name for p in out.rglob("*.tmp"))
    assert left and all(name.startswith(".shard-000000.tar.") for name in left)  # SIGKILL mid-write
    stale_json = _temp(out / "_index" / "shard.json")  # and one of a write of the index, for good measure
    stale_json.write_text("{")
    result = CliRunner().invoke(main, ["shard", str(store.root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not list(out.rglob("*.tmp")) and len(list(out.glob("shard-*.tar"))) == 3


# -- docs/faults.md, run as written ------------------------------------------------------------------

def test_the_documented_answers(tmp_path, monkeypatch):
    """docs/faults.md "Data integrity": every command gives the exit code and the line written under it."""
    import shlex

    section = (ROOT / "docs" / "faults.md").read_text().split("## Data integrity")[1].split("\n## ")[0]
    lines = [line for block in re.findall(r"```bash\n(.*?)```", section, re.S) for line in block.splitlines()]
    assert len(lines) == 10
    monkeypatch.chdir(tmp_path)
    _damage(_build(tmp_path / "STORE"), KEYS[1], "flipped byte")
    _build(tmp_path / "OTHER", seed=10)
    for command, answer in zip(lines[::2], lines[1::2]):
        code, said = re.fullmatch(r"# exit (\d): (.*)", answer).groups()
        words = shlex.split(command)
        assert words[0] == "openmind-prep"
        result = CliRunner().invoke(main, words[1:])
        last = _errors(result.output)[-1]
        assert result.exit_code == int(code) and last.startswith(said), (command, result.output)


def test_a_fifo_in_place_of_a_source_listing_is_refused_without_reading_it(tmp_path):
    """The OpenMind CSV, an nnU-Net dataset.json, an nnssl pretrain_data.json: one line each, no hang."""
    from openmind_prep.core.paths import InputError
    from openmind_prep.sources.metadata import METADATA_CSV, MetadataError, read_metadata
    from openmind_prep.sources.nnunet import DATASET_JSON, read_dataset_json

    os.mkfifo(tmp_path / METADATA_CSV)
    os.mkfifo(tmp_path / DATASET_JSON)
    with _deadline(30):
        with pytest.raises(MetadataError, match="not a regular file \\(a FIFO\\); refused"):
            read_metadata(tmp_path / METADATA_CSV)
        with pytest.raises(InputError, match="not a regular file \\(a FIFO\\); refused"):
            read_dataset_json(tmp_path)
        result = CliRunner().invoke(main, ["plan", "--metadata", str(tmp_path / METADATA_CSV)])
    assert result.exit_code == 1 and _errors(result.output)[-1] == \
        f"Error: {tmp_path / METADATA_CSV}: not a regular file (a FIFO); refused"
