"""Hostile CSVs, selections, plan flags and intensity scalings (issue 23 P1-P9, P23, T16): each is one line
naming the file and line (or the flag), exit 1 (2 for usage), never a silently wrong answer. Inputs built here."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from openmind_prep.cli import main
from openmind_prep.sources.metadata import METADATA_CSV, MetadataError, read_metadata
from openmind_prep.sources.selection import load_selection

HEADER = "image_path,modality,image_quality_score\n"
ROW = "ds1/sub-{i}/anat/sub-{i}_T1w.nii.gz,T1w,1.5\n"


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / METADATA_CSV
    path.write_text(text, encoding="utf-8", newline="")
    return path


def _message(path: Path) -> str:
    with pytest.raises(MetadataError) as info:
        read_metadata(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message[len(f"{path}: "):]


def test_a_repeated_row_is_used_once_with_a_warning_naming_both_lines(tmp_path, caplog):  # P2
    path = _csv(tmp_path, HEADER + ROW.format(i=1) + ROW.format(i=2) + ROW.format(i=1))
    with caplog.at_level(logging.WARNING, logger="openmind_prep"):
        records = read_metadata(path)
    assert [r.subject for r in records] == ["sub-1", "sub-2"]  # one record per image: counts match the manifest
    assert [m for m in caplog.messages if "line 4 repeats" in m and "of line 2" in m], caplog.messages


@pytest.mark.parametrize("text, expected", [
    (HEADER + "ds1/sub-1/anat/sub-1_T1w.nii.gz,T1\x00w,1.5\n", "line 2: a NUL byte in a field"),  # P3
    ("image_path,modality,image_path\n" + ROW.format(i=1), "line 1 (the header): column 'image_path' appears "
                                                           "twice"),  # P4
    (HEADER + ROW.format(i=1) + 'ds1/sub-2/anat/x.nii.gz,"T1w,1.5\n' + ROW.format(i=3) + ROW.format(i=4),
     "line 3: a quoted field opened on this line runs on to line 5; is a closing quote missing?"),  # P5
    (HEADER + ROW.format(i=1) + ROW.format(i=2) + "ds1/sub-3/anat/x.nii.gz," + "x" * 200_000 + ",1\n",
     "line 4: field larger than field limit"),  # P6
], ids=["P3-nul", "P4-header-twice", "P5-open-quote", "P6-oversized"])
def test_a_hostile_csv_is_refused_naming_the_line(tmp_path, text, expected):
    assert _message(_csv(tmp_path, text)).startswith(expected)


@pytest.mark.parametrize("toml, expected", [
    ("limit = -3", "limit = -3: expected a whole number >= 0"),  # P7
    ("max_iqs = nan", "max_iqs = nan: expected a finite number"),  # P8
    ('max_iqs = "high"', "max_iqs = 'high': expected a finite number"),  # P9
    ("limit = true", "limit = True: expected a whole number >= 0"),
    ('modalities = "T1w"', "modalities = 'T1w': expected a list of strings"),
])
def test_a_bad_selection_value_names_the_file_and_key(tmp_path, toml, expected):
    path = tmp_path / "sel.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ValueError) as info:
        load_selection(path)
    assert str(info.value) == f"{path}: {expected}"
    result = CliRunner().invoke(main, ["plan", "--select", str(path), "--seconds-per-volume", "1"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{path}: {expected}" in result.output.splitlines()[-1]


@pytest.mark.parametrize("args, flag", [
    (["plan", "--seconds-per-volume", "nan"], "--seconds-per-volume"),  # P23
    (["plan", "--seconds-per-volume", "1e308"], "--seconds-per-volume"),  # P23
    (["plan", "--seconds-per-volume", "1", "--memory-limit", "banana"], "--memory-limit"),  # T16
    (["plan", "--seconds-per-volume", "1", "--max-iqs", "nan"], "--max-iqs"),  # P8 as a flag
    (["preprocess", "{src}", "--out", "{store}", "--memory-limit", "banana"], "--memory-limit"),  # T16
])
def test_a_bad_number_or_size_flag_is_a_usage_error_before_any_work(sample_tree, tmp_path, args, flag):
    args = [a.format(src=sample_tree, store=tmp_path / "store") for a in args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.splitlines()[-1].startswith(f"Error: Invalid value for '{flag}'")
    assert not (tmp_path / "store").exists()


def test_plan_reports_a_hostile_csv_in_one_line(tmp_path):
    path = _csv(tmp_path, "image_path,modality,image_path\n" + ROW.format(i=1))
    result = CliRunner().invoke(main, ["plan", "--metadata", str(path), "--seconds-per-volume", "1"])
    assert result.exit_code == 1 and result.output.splitlines()[-1] == (
        f"Error: {path}: line 1 (the header): column 'image_path' appears twice")


def test_preprocess_counts_a_repeated_row_once(sample_tree, tmp_path):  # P2 end to end
    src = Path(shutil.copytree(sample_tree, tmp_path / "src"))
    lines = (src / METADATA_CSV).read_text().splitlines(keepends=True)
    (src / METADATA_CSV).write_text("".join([*lines[:2], lines[1]]))  # the header, row 2, row 2 again
    result = CliRunner().invoke(main, ["preprocess", str(src), "--out", str(tmp_path / "s"), "--threads-only",
                                       "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "1 selected: 1 ok" in result.output


@pytest.mark.parametrize("slope", [1e38, 1e18])  # beyond float32 / x² beyond float32
def test_an_overflowing_scaling_is_a_failed_image_without_numpy_warnings(tmp_path, slope):  # P1
    import warnings

    import nibabel as nib
    import numpy as np

    from openmind_prep.core.paths import InputError
    from openmind_prep.preprocess.onemmiso import preprocess_case

    img = nib.Nifti1Image((np.arange(1000).reshape(10, 10, 10) + 1).astype(np.int16), np.eye(4))
    img.header.set_slope_inter(slope, 0)
    path = tmp_path / "a.nii.gz"
    nib.save(img, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning would fail here
        with pytest.raises(InputError, match="intensities too large for float32 statistics .* scl_slope"):
            preprocess_case(path)


def test_disk_full_in_preprocess_is_one_line_without_dasks_traceback_dump(sample_tree, tmp_path):  # T4
    import subprocess
    import sys

    store = tmp_path / "store"
    script = ("import errno, os, sys\n"
              "import openmind_prep.store.zarr_write as zarr_write\n"
              "def full(path, *args, **kwargs):\n"
              "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))\n"
              "zarr_write._write_bytes = full\n"
              "from openmind_prep.cli import main\n"
              "main(sys.argv[1:])\n")
    done = subprocess.run([sys.executable, "-c", script, "preprocess", str(sample_tree), "--out", str(store),
                           "--workers", "1", "--threads-only"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"Error: disk full while writing {store}"), done.stderr
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
