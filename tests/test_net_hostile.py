"""Hostile and dead endpoints, round three (issue 23 H1, T5, P14, P16-P18, P22, P24, dead endpoints, RAW
byte for byte, the download summary): each ends in one line naming the endpoint, URL or file, in
seconds, and the batch's other files are still fetched. Faults come from tests/hf_server.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from openmind_prep.cli import main
from openmind_prep.core.runlock import run_lock
from openmind_prep.sources import retry
from openmind_prep.sources.download import download
from openmind_prep.sources.hub import STATE_DIR, DownloadError, HubRepo
from openmind_prep.sources.metadata import METADATA_CSV, read_metadata
from openmind_prep.sources.pinned import repo_paths
from test_net_faults import T1, _bounded, _dead_port, _repo

pytestmark = pytest.mark.usefixtures("hub_env")


def _files(sample_tree: Path) -> list[str]:
    return [p for r in read_metadata(sample_tree / METADATA_CSV) for p in repo_paths(r)]


def _invoke(args: list[str], **kwargs):
    result = _bounded(CliRunner().invoke, main, args, **kwargs)
    assert "Traceback" not in result.output and isinstance(result.exception, (SystemExit, type(None))), (
        result.output, result.exception)
    return result


def test_a_slow_drip_ends_at_the_deadline_and_the_batchs_other_files_are_fetched(hub, sample_tree, tmp_path):  # H1
    hub.faults.drip[T1], hub.faults.drip_s = -1, 0.2  # 5 B/s for ever: never a read timeout
    raw = tmp_path / "raw"
    t0 = time.monotonic()
    result = _invoke(["download", "--endpoint", hub.endpoint, "--out", str(raw), "--timeout", "1",
                      "--deadline", "6s"])
    assert time.monotonic() - t0 < 11, "the drip outlived the deadline"
    assert result.exit_code == 1
    failed = [line for line in result.output.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and T1 in failed[0] and "--deadline" in failed[0], result.output
    assert f"{T1}: stalled: " in result.output and "after the other files of its batch" in result.output
    for p in _files(sample_tree):  # every other file of the batch was requested and is in RAW
        if p != T1:
            assert (raw / p).read_bytes() == (sample_tree / p).read_bytes()


@pytest.mark.parametrize("retry_after", ["100000", "Fri, 31 Dec 9999 23:59:59 GMT", "1e400"])
def test_a_wait_beyond_the_cap_is_not_slept(hub, tmp_path, retry_after):  # P18, T5
    hub.faults.rate_limit, hub.faults.retry_after = 1, retry_after
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"AnonRes/OpenMind@main: giving up: the server asks to wait .* over "
                                            r"the 900 s this waits; try again later"):
        _bounded(download, _repo(hub.endpoint), tmp_path / "raw", progress=False)
    assert time.monotonic() - t0 < 5


def test_a_refused_endpoint_is_one_line_naming_it_and_hf_endpoint(tmp_path, monkeypatch):
    endpoint = f"http://127.0.0.1:{_dead_port()}"
    retry.ANSWERED.clear()  # nothing has answered in this process yet: a first request
    monkeypatch.setattr(retry, "UNREACHED_BUDGET_S", 2.5)  # the default (25 s) scaled down
    t0 = time.monotonic()
    result = _invoke(["download", "--out", str(tmp_path / "raw")], env={"HF_ENDPOINT": endpoint})
    assert time.monotonic() - t0 < 6 and result.exit_code == 1
    assert result.output.splitlines()[-1].startswith(
        f"Error: AnonRes/OpenMind@main: cannot reach the hub at {endpoint} (ConnectError: ")
    assert result.output.splitlines()[-1].endswith(f"check --endpoint / HF_ENDPOINT (HF_ENDPOINT={endpoint}) "
                                                   "and the network")


def test_a_name_that_does_not_resolve_is_one_line(tmp_path, monkeypatch):  # DNS failure, without a network
    import socket

    def no_such_name(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    retry.ANSWERED.clear()
    monkeypatch.setattr(retry, "UNREACHED_BUDGET_S", 2.5)
    result = _invoke(["download", "--endpoint", "http://hub.invalid", "--out", str(tmp_path / "raw")])
    assert result.exit_code == 1 and result.output.splitlines()[-1].startswith(
        "Error: AnonRes/OpenMind@main: cannot reach the hub at http://hub.invalid (ConnectError: "), result.output
    assert "Name or service not known" in result.output.splitlines()[-1]


def test_a_silent_endpoint_gives_up_within_the_first_contact_budget(hub, tmp_path, monkeypatch):
    hub.faults.hang["info"] = -1  # accepts, never answers
    retry.ANSWERED.clear()
    monkeypatch.setattr(retry, "UNREACHED_BUDGET_S", 1.5)
    with pytest.raises(DownloadError, match=f"cannot reach the hub at {hub.endpoint} .*ReadTimeout"):
        _bounded(download, _repo(hub.endpoint, retries=8, read_s=0.5), tmp_path / "raw", progress=False)
    assert 2 <= len(hub.hits("info", status=0)) <= 3  # not 9 tries
    # the defaults: huggingface_hub's 10 s read timeout; the last try starts within 25 s: under 3 min in all
    assert HubRepo("r/x").read_timeout_s == 10 and retry.UNREACHED_BUDGET_S + 10 < 180


def test_a_redirect_to_a_file_url_is_permanent_and_named(hub, sample_tree, tmp_path):  # P16
    hub.faults.redirect[T1] = "file:///etc/passwd"
    _, report = _bounded(download, _repo(hub.endpoint), tmp_path / "raw", progress=False)
    assert [p for p, _ in report.failed] == [T1]
    assert "a redirect to file://" in report.failed[0][1] and "/etc/passwd that is not HTTP" in report.failed[0][1]
    assert len([h for h in hub.hits("resolve") if h.path == T1]) == 1  # not retried
    assert sorted(report.transferred) == sorted(p for p in _files(sample_tree) if p != T1)


@pytest.mark.parametrize("kind, url", [("info", "/api/datasets/AnonRes/OpenMind/revision/main"),
                                       ("paths-info", "/api/datasets/AnonRes/OpenMind/paths-info/")])
def test_an_html_answer_from_the_api_names_the_url(hub, tmp_path, kind, url):  # P17
    hub.faults.html[kind] = 1
    result = _invoke(["download", "--endpoint", hub.endpoint, "--out", str(tmp_path / "raw")])
    line = result.output.splitlines()[-1]
    assert result.exit_code == 1 and f"{hub.endpoint}{url}" in line, result.output
    assert "the hub's answer is not what its API returns" in line and len(hub.hits(kind)) == 1


def test_a_pinned_entry_with_a_wrong_size_fails_once_naming_the_file(hub, tmp_path):  # P22
    pinned = tmp_path / "pinned.json"
    _invoke(["download", "--endpoint", hub.endpoint, "--out", str(tmp_path / "a"), "--write-pin", str(pinned),
             "--pin-only"])
    data = json.loads(pinned.read_text())
    entry = next(f for f in data["files"] if f["path"] == T1)
    real, entry["size"] = entry["size"], entry["size"] + 10
    pinned.write_text(json.dumps(data))
    hub.clear_log()
    result = _invoke(["download", "--endpoint", hub.endpoint, "--out", str(tmp_path / "b"), "--pin", str(pinned)])
    assert result.exit_code == 1
    assert (f"FAILED {T1}: the server's file is {real} bytes, the file list says {real + 10}; re-resolve"
            in result.output), result.output
    assert len([h for h in hub.hits("cdn") if h.path == T1]) == 1  # one GET, no retry
    assert "retry" not in result.output


def test_a_pinned_list_with_files_not_a_list_is_one_line(tmp_path):  # P24
    pinned = tmp_path / "pinned.json"
    pinned.write_text(json.dumps({"format": "openmind-prep-lock/1", "repo": "a/b", "revision": "main",
                                  "commit": "abc", "images": [], "files": "nope"}))
    result = _invoke(["download", "--out", str(tmp_path / "raw"), "--pin", str(pinned)])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (f"Error: Invalid value for --pin: {pinned}: not a valid pinned list: "
                                              "'files' must be a list of objects, not 'nope'")


def test_a_second_download_into_one_raw_folder_names_the_holder(hub, tmp_path):  # P14
    raw = tmp_path / "raw"
    (raw / STATE_DIR).mkdir(parents=True)
    with run_lock(raw / STATE_DIR / "download.lock", "the first download", what="RAW folder") as holder:
        result = _invoke(["download", "--endpoint", hub.endpoint, "--out", str(raw)])
    assert result.exit_code == 1 and not hub.log
    assert result.output.splitlines()[-1].startswith(f"Error: {raw / STATE_DIR / 'download.lock'}: another run is "
                                                     f"using this RAW folder (pid {holder['pid']} on host ")


def test_raw_is_the_hub_byte_for_byte_and_the_summary_counts_every_file(hub, sample_tree, tmp_path):
    hub.blobs.pop(T1)  # listed in the CSV, missing from the repo
    raw = tmp_path / "raw"
    result = _invoke(["download", "--endpoint", hub.endpoint, "--out", str(raw)])
    n = len(_files(sample_tree)) + 1  # and the CSV
    summary = next(line for line in result.output.splitlines() if "already verified" in line)
    assert f"{n} files; {n - 1} downloaded" in summary and "0 already verified, 1 failed" in summary, summary
    assert (raw / METADATA_CSV).read_bytes() == (sample_tree / METADATA_CSV).read_bytes()
    again = _invoke(["download", "--endpoint", hub.endpoint, "--out", str(raw)])
    assert f"{n} files; 0 downloaded (0.0 MB), {n - 1} already verified, 1 failed" in again.output


def test_the_documented_answers(tmp_path, monkeypatch):
    """docs/faults.md "Network and inputs": every command gives the exit code and line written under it."""
    import re
    import shlex

    section = (Path(__file__).resolve().parents[1] / "docs" / "faults.md").read_text()
    section = section.split("## Network and inputs")[1].split("\n## ")[0]
    lines = [line for block in re.findall(r"```bash\n(.*?)```", section, re.S) for line in block.splitlines()]
    assert len(lines) == 8
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(retry, "UNREACHED_BUDGET_S", 2.5)  # the default 25 s, scaled down
    dead = f"http://127.0.0.1:{_dead_port()}"  # port 9 in the docs: nothing listens there either
    for command, answer in zip(lines[::2], lines[1::2]):
        code, said = re.fullmatch(r"# exit (\d): (.*)", answer).groups()
        words = shlex.split(command.replace("http://127.0.0.1:9", dead))
        env = dict(w.split("=", 1) for w in words if "=" in w and w.split("=")[0].isupper())
        argv = words[len(env) + 1:]
        assert words[len(env)] == "openmind-prep"
        retry.ANSWERED.clear()
        result = _invoke(argv, env=env)
        said = said.replace("http://127.0.0.1:9", dead).split("…")[0]
        assert result.exit_code == int(code) and result.output.splitlines()[-1].startswith(said), (
            command, result.output)
