"""Sources (issue 20 item 3): a plain folder of NIfTI files, nnssl's ``pretrain_data.json`` and an
nnU-Net raw dataset go through ``preprocess`` / ``run`` / ``plan`` like the OpenMind tree.

The inputs are the embedded real MRI (nilearn's MNI152 with its masks, nibabel's
``anatomical.nii``, dipy's ``aniso_vox``) re-laid out at test time; the reference is the same
files preprocessed from the OpenMind tree (``train_store``): every stored array must have the same
checksum. The commands are the ones ``docs/sources.md`` shows, run as written (plus a one-thread
cluster), so the page cannot rot.
"""

from __future__ import annotations

import gzip
import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from openmind_prep.cli import main
from openmind_prep.store.manifest import read_manifest
from openmind_prep.store.store import Store
from openmind_prep.sources.metadata import read_metadata

DOC = Path(__file__).resolve().parents[1] / "docs" / "sources.md"
T1 = "ds000001/sub-01/anat/sub-01_T1w.nii.gz"  # MNI T1 with a defacing and a foreground mask
NII = "ds000003/sub-01/anat/sub-01_T1w.nii"    # nibabel's anatomical.nii
T2 = "ds000003/sub-02/anat/sub-02_T2w.nii.gz"  # dipy's aniso_vox
FB_MASK = "ds000001/sub-01/anat/sub-01_T1w__Data/fb_mask.nii.gz"
FAST = ["--threads-only", "--workers", "1"]


def doc_commands() -> list[str]:
    """Every ``openmind-prep`` line of the page's bash blocks, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.startswith("openmind-prep ")]


def _copy(src: Path, dest: Path, gz: bool | None = None) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    if gz and not src.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    dest.write_bytes(data)


def write_pretrain_json(openmind_root: Path, out: Path, nnssl_raw: Path) -> None:
    """``pretrain_data.json`` as nnssl's ``Dataset001_OpenMind._create_pretrain_json`` writes it
    (re-typed: absolute paths under ``$nnssl_raw`` made relative to it, session ``ses-DEFAULT`` when
    the path has none, each dataset's first IQS per (modality, derived_from) in ``dataset_info``)."""
    datasets: dict = {}
    iqs: dict = {}
    for r in read_metadata(openmind_root / "openneuro_metadata.csv"):
        parts = r.image_path.split("/")
        session = parts[2] if parts[2].startswith("ses-") else "ses-DEFAULT"

        def rel(p: str):
            return str(openmind_root / "OpenMind" / p).replace(str(nnssl_raw), "$nnssl_raw") if p else None

        ds = datasets.setdefault(parts[0], {"dataset_index": parts[0], "name": None, "dataset_info": {},
                                            "subjects": {}})
        subject = ds["subjects"].setdefault(parts[1], {"subject_id": parts[1], "sessions": {},
                                                       "subject_info": {"age": 30}})
        subject["sessions"].setdefault(session, {"session_id": session, "session_info": None, "images": []})[
            "images"].append({"name": parts[-1], "image_path": rel(r.image_path), "modality": r.modality,
                              "image_info": {"manufacturer": "Siemens"},
                              "associated_masks": {"anonymization_mask": rel(r.anon_mask_path),
                                                   "anatomy_mask": rel(r.anat_mask_path)}})
        iqs.setdefault((r.unique_id[:8], r.modality, None), r.image_quality_score)
    for (dataset_id, modality, derived), score in iqs.items():
        datasets[dataset_id]["dataset_info"].setdefault("image_quality_score", []).append(
            {"modality": modality, "derived_from": derived, "image_quality_score": score})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"collection_index": 1, "collection_name": "Dataset001_OpenMind",
                               "datasets": datasets}, indent=4, sort_keys=True))


def build_inputs(sample_tree: Path, work: Path) -> None:
    """``scans/`` (nested, BIDS and not, a mask, one unreadable file, a text file), an nnssl raw
    folder with its ``pretrain_data.json``, and ``Dataset002_Toy/`` (nnU-Net raw)."""
    om = sample_tree / "OpenMind"
    scans = work / "scans"
    _copy(om / T1, scans / "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz")
    _copy(om / FB_MASK, scans / "sub-01/ses-1/anat/sub-01_ses-1_T1w_mask.nii.gz")
    _copy(om / NII, scans / "old_study/brain.nii")
    _copy(om / T2, scans / "deep/a/b/scan2.nii.gz")
    (scans / "deep/broken.nii.gz").write_bytes(b"this is not a NIfTI file")
    (scans / "README.txt").write_text("not an image")

    raw = work / "nnssl_raw"
    shutil.copytree(sample_tree, raw / "OpenMindDownload")
    write_pretrain_json(raw / "OpenMindDownload", raw / "Dataset745_OpenMind" / "pretrain_data.json", raw)

    toy = work / "Dataset002_Toy"
    _copy(om / T1, toy / "imagesTr/case01_0000.nii.gz")
    _copy(om / T1, toy / "imagesTr/case01_0001.nii.gz")  # a case's channels (and its label map) share one grid
    _copy(om / FB_MASK, toy / "labelsTr/case01.nii.gz")
    _copy(om / NII, toy / "imagesTs/case02_0000.nii.gz", gz=True)
    (toy / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1", "1": "T2"}, "labels": {
        "background": 0, "brain": 1}, "numTraining": 1, "file_ending": ".nii.gz"}))


@pytest.fixture(scope="module")
def ran(sample_tree, tmp_path_factory) -> tuple[Path, dict[str, tuple[int, str]]]:
    """The page's commands run in a folder holding the inputs: ``{command: (exit code, output)}``."""
    work = tmp_path_factory.mktemp("sources")
    build_inputs(sample_tree, work)
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("nnssl_raw", str(work / "nnssl_raw"))
        for command in doc_commands():
            args = shlex.split(command)[1:]
            args += FAST if args[0] in ("preprocess", "run") else []
            result = CliRunner().invoke(main, args)
            results[command] = (result.exit_code, result.output)
    return work, results


def _result(ran, *words: str) -> tuple[int, list[str]]:
    """The exit code and output lines of the one page command containing all ``words``."""
    (command,) = [c for c in ran[1] if all(w in c.split() for w in words)]
    code, output = ran[1][command]
    return code, output.splitlines()


def _rows(store: Path) -> dict[str, dict]:
    return {r["image_path"]: r for r in read_manifest(store).to_pylist()}


def _verify(store: Path) -> None:
    result = CliRunner().invoke(main, ["verify", str(store)])
    assert result.exit_code == 0 and "0 problem(s)" in result.output, result.output


def test_the_page_shows_each_kind_and_its_commands_ran(ran):
    commands = " ".join(ran[1])
    for words in ("preprocess scans", "pretrain_data.json", "preprocess Dataset002_Toy", "--source-kind folder",
                  "plan --source", "run --source"):
        assert words in commands, words
    assert len(ran[1]) == len(doc_commands()) >= 7


def test_a_folder_of_nifti_files_gives_one_ok_row_per_readable_image_and_a_failed_row_for_the_other(
        ran, train_store):
    work = ran[0]
    code, lines = _result(ran, "preprocess", "scans", "--mask-pattern")
    assert code == 1, lines  # one image failed
    assert lines[0] == "source: folder scans (4 images)"
    assert lines[1] == "--max-iqs: no image of this folder source has an image_quality_score; not applied"
    rows = _rows(work / "scans.zarr")
    assert sorted(rows) == ["deep/a/b/scan2.nii.gz", "deep/broken.nii.gz", "old_study/brain.nii",
                            "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"]  # the mask is no image, the txt ignored
    broken = rows.pop("deep/broken.nii.gz")
    assert broken["status"] == "failed" and broken["error"].startswith("scans/deep/broken.nii.gz: ")
    assert all(r["status"] == "ok" for r in rows.values())
    t1 = rows["sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"]
    assert (t1["modality"], t1["subject"], t1["session"], t1["dataset"]) == ("T1w", "sub-01", "ses-1", "")
    assert rows["old_study/brain.nii"]["modality"] == "unknown" and rows["old_study/brain.nii"]["subject"] == ""
    # the same bytes as the OpenMind tree's images, and the mask found by the pattern
    ref = _rows(train_store)
    assert t1["anat_mask_checksum"] == ref[T1]["anat_mask_checksum"] != "" and t1["anon_mask_checksum"] == ""
    assert rows["old_study/brain.nii"]["checksum"] == ref[NII]["checksum"]
    assert rows["deep/a/b/scan2.nii.gz"]["checksum"] == ref[T2]["checksum"]
    _verify(work / "scans.zarr")
    assert Store(work / "scans.zarr").sources() == [
        {"kind": "folder", "root": str(work / "scans"), "path": str(work / "scans")}]


def test_pretrain_data_json_as_nnssl_writes_it_gives_the_openmind_trees_store(ran, train_store, monkeypatch):
    import pickle

    from openmind_prep.sources.nnssl import NnsslSource

    work = ran[0]
    monkeypatch.setenv("nnssl_raw", str(work / "nnssl_raw"))
    source = NnsslSource(work / "nnssl_raw/Dataset745_OpenMind/pretrain_data.json")
    again = pickle.loads(pickle.dumps(source))  # as a Dask worker gets it: without the listing, read again
    assert again == source and again.records() == source.records() and len(source.records()) == 3
    code, lines = _result(ran, "preprocess", "nnssl_raw/Dataset745_OpenMind/pretrain_data.json")
    assert code == 0, lines
    assert lines[0] == "source: nnssl nnssl_raw/Dataset745_OpenMind/pretrain_data.json (3 images)"
    rows, ref = _rows(work / "nnssl.zarr"), _rows(train_store)
    assert sorted(rows) == sorted(ref)  # keys relative to the images' common folder: OpenMind's own
    for path, row in rows.items():
        for column in ("status", "checksum", "anon_mask_checksum", "anat_mask_checksum", "modality", "dataset",
                       "subject", "image_quality_score"):
            assert row[column] == ref[path][column], (path, column)
    assert rows[T2]["session"] == "ses-DEFAULT"  # nnssl's name for "no session"
    _verify(work / "nnssl.zarr")
    assert Store(work / "nnssl.zarr").sources()[0]["root"] == str(work / "nnssl_raw/OpenMindDownload/OpenMind")


def test_an_nnunet_raw_dataset_gives_one_record_per_channel_with_its_label(ran, train_store):
    from openmind_prep.sources.nnunet import NnunetSource

    work = ran[0]
    code, lines = _result(ran, "preprocess", "Dataset002_Toy", "toy.zarr")
    assert code == 0, lines
    assert lines[0] == "source: nnunet Dataset002_Toy (3 images)"
    records = {r.image_path: r for r in NnunetSource(work / "Dataset002_Toy").records()}
    assert {p: (r.modality, r.subject, r.label_path) for p, r in records.items()} == {
        "imagesTr/case01_0000.nii.gz": ("T1", "case01", "labelsTr/case01.nii.gz"),
        "imagesTr/case01_0001.nii.gz": ("T2", "case01", "labelsTr/case01.nii.gz"),
        "imagesTs/case02_0000.nii.gz": ("T1", "case02", "")}
    rows, ref = _rows(work / "toy.zarr"), _rows(train_store)
    assert sorted(rows) == sorted(records) and all(r["status"] == "ok" for r in rows.values())
    assert rows["imagesTr/case01_0001.nii.gz"]["checksum"] == ref[T1]["checksum"]
    label = Store(work / "toy.zarr").array(rows["imagesTr/case01_0000.nii.gz"]["label_zarr_path"])[...]
    assert sorted(np.unique(label).tolist()) == [0, 1]  # the fb mask as a label map, beside its image
    assert rows["imagesTs/case02_0000.nii.gz"]["label_zarr_path"] == ""
    assert rows["imagesTr/case01_0000.nii.gz"]["dataset"] == "Dataset002_Toy"
    _verify(work / "toy.zarr")


def test_source_kind_names_the_kind_instead_of_detecting_it(ran):
    code, lines = _result(ran, "--source-kind", "folder")
    assert code == 0, lines
    assert lines[0] == "source: folder Dataset002_Toy (4 images)"  # the label map is one more image
    assert sorted(_rows(ran[0] / "toy-as-folder.zarr")) == [
        "imagesTr/case01_0000.nii.gz", "imagesTr/case01_0001.nii.gz", "imagesTs/case02_0000.nii.gz",
        "labelsTr/case01.nii.gz"]


def test_plan_and_run_read_the_same_source(ran):
    code, lines = _result(ran, "plan", "--source", "scans")
    assert code == 0, lines
    assert lines[0] == "source: folder scans (4 images)" and lines[1].startswith("plan:      4 volumes")
    code, lines = _result(ran, "run", "--source", "scans")
    assert code == 1, lines  # the unreadable file, as in preprocess
    assert lines[0] == "source: folder scans (4 images)"
    streamed = _rows(ran[0] / "scans-run.zarr")
    assert sorted(streamed) == sorted(_rows(ran[0] / "scans.zarr"))
    assert streamed["deep/broken.nii.gz"]["status"] == "failed"
    assert not any((ran[0] / "scans-run.zarr.raw").rglob("*.nii*"))  # raw copies deleted once stored


def test_detection_and_bad_sources_are_one_line(tmp_path, monkeypatch):
    from openmind_prep.core.paths import InputError
    from openmind_prep.sources.detect import detect_kind, open_source
    from openmind_prep.sources.nnssl import NnsslSource

    (tmp_path / "tree").mkdir()
    (tmp_path / "tree/openneuro_metadata.csv").write_text("image_path\n")
    (tmp_path / "tree/dataset.json").write_text("{}")  # the CSV decides first
    assert detect_kind(tmp_path / "tree") == "openmind"
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"collection_index": 1, "collection_name": "x", "datasets": {"d": {"subjects": {
        "s": {"sessions": {"x": {"images": [{"name": "a", "image_path": "$nowhere_var/a.nii.gz",
                                             "modality": "T1w"}]}}}}}}}))
    monkeypatch.delenv("nowhere_var", raising=False)
    with pytest.raises(InputError, match=r"p.json: '\$nowhere_var/a.nii.gz' starts with \$nowhere_var"):
        NnsslSource(bad)
    result = CliRunner().invoke(main, ["preprocess", str(bad), "--out", str(tmp_path / "s")])
    assert result.exit_code == 1 and "environment variable nowhere_var is not set" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(main, ["preprocess", str(tmp_path / "tree"), "--out", str(tmp_path / "s"),
                                       "--mask-pattern", "{stem}_mask.nii.gz"])
    assert result.exit_code == 2 and "--mask-pattern applies to folder sources" in result.output
    with pytest.raises(InputError, match="no .nii or .nii.gz file"):
        open_source(tmp_path / "tree", "folder")


def test_shard_and_the_loaders_take_a_folder_store_as_any_other(ran, tmp_path):
    from itertools import islice

    from loaders.batches import batch_source

    store, wds = ran[0] / "scans.zarr", tmp_path / "wds"
    result = CliRunner().invoke(main, ["shard", str(store), "--out", str(wds)])
    assert result.exit_code == 0, result.output
    ok = {r["zarr_path"].rsplit("/", 1)[0] for r in _rows(store).values() if r["status"] == "ok"}
    for source in (batch_source(store=store, batch_size=3, region_size=[16, 16, 16], seed=0),
                   batch_source(shards=str(wds), batch_size=3, region_size=[16, 16, 16], seed=0)):
        batches = list(islice(iter(source), 3))
        assert set().union(*(b["key"] for b in batches)) <= ok and len(batches) == 3
        assert all(tuple(i.shape[-3:]) == (16, 16, 16) for b in batches for i in b["image"])
