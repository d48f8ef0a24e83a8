"""Metadata parsing and selections: files, CLI overrides, named selections."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from openmind_prep.sources.metadata import read_metadata, record_from_row
from openmind_prep.cli.options import selection_options
from openmind_prep.sources.selection import Selection, load_selection, selection_from_options

SELECTIONS = Path(__file__).resolve().parents[1] / "openmind_prep" / "sources" / "selections"


def _records():
    rows = [
        ("ds000001/sub-01/ses-a/anat/sub-01_ses-a_T1w.nii.gz", "T1w", "1.2", ""),
        ("ds000001/sub-02/anat/sub-02_T2w.nii", "T2w", "2.6", ""),
        ("ds000002/sub-01/anat/sub-01_FLAIR.nii.gz", "FLAIR", "", ""),
        ("ds000003/sub-01/dwi/sub-01_dwi__Data/sub-01_FA.nii.gz", "FA", "1.0", "ds000003/sub-01/dwi/x.nii.gz"),
    ]
    return [record_from_row({"image_path": p, "modality": m, "image_quality_score": q, "derived_from": d})
            for p, m, q, d in rows]


def test_metadata_reads_sample_csv_and_keeps_masks_unswapped(sample_tree):
    records = read_metadata(sample_tree / "openneuro_metadata.csv")
    assert [r.dataset for r in records] == ["ds000001", "ds000003", "ds000003"]
    mni = records[0]
    assert mni.anon_mask_path.endswith("__Data/deface_mask.nii.gz")
    assert mni.anat_mask_path.endswith("__Data/fb_mask.nii.gz")
    assert records[1].mask_paths == {}  # empty CSV cells mean "no mask"
    for r in records:
        for f in r.files():
            assert (sample_tree / "OpenMind" / f).is_file(), f


def test_metadata_rejects_csv_without_image_path(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="x.csv"):
        read_metadata(p)


def test_selection_filters_and_limit():
    recs = _records()
    assert [r.modality for r in Selection(modalities=("T1w", "T2w", "FLAIR")).apply(recs)] == ["T1w", "T2w", "FLAIR"]
    # unscored FLAIR is dropped once an IQS bound is asked for
    assert [r.modality for r in Selection(max_iqs=2.5).apply(recs)] == ["T1w", "FA"]
    assert [r.modality for r in Selection(include_derived=False).apply(recs)] == ["T1w", "T2w", "FLAIR"]
    assert [r.dataset for r in Selection(exclude_datasets=("ds000001",)).apply(recs)] == ["ds000002", "ds000003"]
    assert len(Selection(limit=2).apply(recs)) == 2


def test_every_named_selection_loads_and_unknown_keys_fail(tmp_path):
    names = sorted(p.stem for p in SELECTIONS.glob("*.toml"))
    assert {"all", "iqs-2.5", "t1w-t2w-flair-iqs2.5"} <= set(names)
    for p in SELECTIONS.glob("*.toml"):
        assert load_selection(p).name == p.stem
    assert load_selection(SELECTIONS / "t1w-t2w-flair-iqs2.5.toml").max_iqs == 2.5
    bad = tmp_path / "bad.toml"
    bad.write_text('modality = ["T1w"]\n')  # typo: the key is "modalities"
    with pytest.raises(ValueError, match="bad.toml.*unknown selection keys"):
        load_selection(bad)


def test_cli_options_override_file_fields():
    sel = selection_from_options(SELECTIONS / "t1w-t2w-flair-iqs2.5.toml", modality=("T1w",), limit=3)
    assert (sel.modalities, sel.max_iqs, sel.limit) == (("T1w",), 2.5, 3)
    assert sel.fingerprint() != selection_from_options(SELECTIONS / "t1w-t2w-flair-iqs2.5.toml").fingerprint()


def test_selection_options_decorator_keeps_command_options():
    @click.command()
    @click.option("--out")
    @selection_options
    @click.option("--workers", type=int, default=1)
    def cmd(out, workers, selection):
        click.echo(f"{out} {workers} {selection.modalities} {selection.max_iqs}")

    res = CliRunner().invoke(cmd, ["--out", "o", "--workers", "3", "--modality", "T1w", "--max-iqs", "2"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == "o 3 ('T1w',) 2.0"
    res = CliRunner().invoke(cmd, ["--select", "/nonexistent.toml"])
    assert res.exit_code != 0


def test_select_by_name_or_path_from_any_folder(tmp_path, monkeypatch):
    """``--select t1w-iqs2.5`` finds the shipped file from any folder; a path still wins; a miss
    names the close names and exits 2 without a traceback."""
    @click.command()
    @selection_options
    def cmd(selection):
        click.echo(f"{selection.name} {selection.modalities} {selection.max_iqs}")

    monkeypatch.chdir(tmp_path)  # outside the clone
    res = CliRunner().invoke(cmd, ["--select", "t1w-iqs2.5"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == "t1w-iqs2.5 ('T1w',) 2.5"
    assert CliRunner().invoke(cmd, ["--select", "t1w-iqs2.5.toml"]).output == res.output
    # a local file of the same name is a path, and paths win over names
    (tmp_path / "t1w-iqs2.5.toml").write_text('name = "mine"\nmodalities = ["FLAIR"]\n')
    assert CliRunner().invoke(cmd, ["--select", "t1w-iqs2.5.toml"]).output.strip() == "mine ('FLAIR',) None"
    assert CliRunner().invoke(cmd, ["--select", "t1w-iqs2.5"]).output.strip() == "t1w-iqs2.5 ('T1w',) 2.5"
    res = CliRunner().invoke(cmd, ["--select", "t1w-iqs"])
    assert res.exit_code == 2
    assert "did you mean t1w-iqs2.5" in res.output and "names: all," in res.output
    res = CliRunner().invoke(cmd, ["--select", "sub/missing.toml"])  # a path-like miss is not a name
    assert res.exit_code == 2 and "'sub/missing.toml' is neither a file nor a named selection" in res.output
