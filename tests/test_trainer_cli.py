"""The trainer's command line (trainers.cli_args): one line per error without the usage dump, "did you mean"
for flags, config names and TOML keys, no abbreviations, defaults in --help, nothing written before the inputs
check out."""

from __future__ import annotations

import pytest

from trainers import cva


def _usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        cva.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err, err  # one line, no usage dump
    return err.strip()


@pytest.mark.parametrize("argv, said", [
    (["--config", "tiny-cpu"], "tiny-cpu: no such config file or shipped config (did you mean 'tiny_cpu'?)"),
    (["--config", "tiny_cpu", "--step", "6"], "unrecognized arguments: --step 6 (did you mean '--steps'?)"),
    (["--config", "tiny_cpu", "--arch", "tiny-net", "--dry-run"], "unknown architecture 'tiny-net' (did you mean 'tiny'?)"),
    (["--consistency", "ccva"], "argument --consistency: invalid choice: 'ccva'"),
    (["--config", "tiny_cpu"], "--out and exactly one of --store / --shards are required"),
])
def test_usage_errors_are_one_line_with_a_close_match(capsys, argv, said):
    assert said in _usage_error(capsys, argv)


def test_a_misspelt_toml_key_names_the_file_and_the_close_key(capsys, tmp_path):
    cfg = tmp_path / "mine.toml"
    cfg.write_text("warmup_step = 3\n")
    err = _usage_error(capsys, ["--config", str(cfg), "--dry-run"])
    assert f"{cfg}: unknown setting(s) ['warmup_step'] (did you mean 'warmup_steps'?)" in err


def test_no_abbreviation_is_taken_for_a_flag(capsys):
    """argparse would read --ste as --steps; here every flag is spelt out."""
    assert "unrecognized arguments: --ste 6" in _usage_error(capsys, ["--ste", "6", "--dry-run"])


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        cva.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Smallest shared fraction of the patch volume. (default: 0.4)" in text
    assert "(default: 1000)" in text and "(default: reference)" in text


@pytest.mark.parametrize("bad", ["store", "init"])
def test_nothing_is_written_before_the_store_and_init_check_out(capsys, tmp_path, train_store, bad):
    out = tmp_path / "run"
    argv = ["--out", str(out), "--config", "tiny_cpu", "--patch-size", "24", "--steps", "1"]
    argv += ["--store", str(tmp_path / "nope")] if bad == "store" else [
        "--store", str(train_store), "--init-from", str(tmp_path / "nope.pth")]
    with pytest.raises(SystemExit) as exit_:
        cva.main(argv)
    assert exit_.value.code == 1
    assert capsys.readouterr().err.startswith("trainers.cva: error: ")
    assert not out.exists()  # no config.json, no lock, no folder
