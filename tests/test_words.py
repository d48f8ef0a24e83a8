"""One word, one meaning (issue 20 item 2): the pinned file list is a "pinned list" (``--pin``,
``--write-pin``, ``--pin-only``; ``sources.pinned.PinnedList``), "lock" is only the run mutex. The old
flags keep working for one release with one line on stderr; files written before the rename read."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from openmind_prep.cli import main
from openmind_prep.sources.hub import RemoteFile
from openmind_prep.sources.pinned import OLD_PIN_FORMATS, PIN_FORMAT, PinnedList

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _pinned(tmp_path, fmt: str):
    pin = PinnedList("AnonRes/OpenMind", "main", COMMIT, {}, ("ds1/sub-1/anat/sub-1_T1w.nii.gz",),
                     (RemoteFile("openneuro_metadata.csv", 10, None, "ab"),
                      RemoteFile("OpenMind/ds1/sub-1/anat/sub-1_T1w.nii.gz", 1000, "cd" * 32, "ef")))
    path = tmp_path / "t1w.json"
    path.write_text(json.dumps({**pin.to_dict(), "format": fmt}))
    return pin, path


def test_a_pinned_list_of_the_old_format_reads_as_the_new_one(tmp_path):
    pin, path = _pinned(tmp_path, "openmind-prep-lock/1")
    assert OLD_PIN_FORMATS == ("openmind-prep-lock/1",) and PIN_FORMAT == "openmind-prep-pin/1"
    assert PinnedList.read(path) == pin and pin.to_dict()["format"] == PIN_FORMAT
    _, other = _pinned(tmp_path, "something-else/1")
    with pytest.raises(ValueError, match="not a valid pinned list: not an openmind-prep-pin/1 pinned list"):
        PinnedList.read(other)


@pytest.mark.parametrize("old,new", [("--lock", "--pin")])
def test_the_old_flag_works_with_one_deprecation_line(tmp_path, old, new):
    _, path = _pinned(tmp_path, "openmind-prep-lock/1")
    base = ["plan", "--seconds-per-volume", "1", "--workers", "1"]
    before = CliRunner().invoke(main, [*base, old, str(path)])
    after = CliRunner().invoke(main, [*base, new, str(path)])
    assert before.exit_code == after.exit_code == 0, before.output
    deprecation = f"{old} is deprecated: use {new} (the same option; {old} goes in the next release)"
    assert before.output.splitlines()[0] == deprecation and deprecation not in after.output
    assert before.output.splitlines()[1:] == after.output.splitlines()  # otherwise the same answer
    assert "exact, from the pinned list" in after.output and f"--pin {path}" in after.output


@pytest.mark.parametrize("command", ["download", "run", "plan"])
def test_help_says_pin_and_hides_the_old_flags(command):
    text = CliRunner().invoke(main, [command, "--help"]).output
    assert "--pin " in text and "--lock" not in text and "lock file" not in text
    if command == "download":
        assert "--write-pin" in text and "--pin-only" in text and "--write-lock" not in text
