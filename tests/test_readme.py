"""The README's "Your first hour" walk-through, run as written: its fenced blocks, in order, in a
temporary folder outside the clone, with the network out of reach (``HF_ENDPOINT`` and the proxies
point at a closed port: the walk-through serves its own repo folder). ``bash`` blocks run
with ``set -euo pipefail``; a ``python`` block whose first line is ``# NAME.py`` is saved as NAME.py
(the text says to). Then the TorchIO and MONAI examples of docs/loaders.md run against the store it made."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
LOADERS_DOC = README.parent / "docs" / "loaders.md"
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)


def first_hour_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block between the first-hour markers, in order."""
    start, end = text.index("<!-- first-hour:start -->"), text.index("<!-- first-hour:end -->")
    return FENCE.findall(text[start:end])


def section_blocks(text: str, heading: str, language: str) -> list[str]:
    """The ``language`` blocks of the README section titled ``heading``."""
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return [code for lang, code in FENCE.findall(text[start:end]) if lang == language]


def _closed_port() -> str:
    """A local URL nothing listens on: any request to it is refused at once."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _env() -> dict:
    env = dict(os.environ)
    nowhere = _closed_port()
    env.update(HF_ENDPOINT=nowhere, HTTP_PROXY=nowhere, HTTPS_PROXY=nowhere, ALL_PROXY=nowhere,
               NO_PROXY="127.0.0.1,localhost", HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               MPLBACKEND="Agg", PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    root = str(README.parent)  # the clone itself is not on the path: only what `pip install` gives
    env["PYTHONPATH"] = os.pathsep.join(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root)
    if os.environ.get("PYTHONPATH", "").split(os.pathsep)[:1] == [root]:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]  # a worktree checkout under test: keep its code first
    return env


@pytest.mark.slow
def test_first_hour_runs_as_written(tmp_path):
    text = README.read_text()
    blocks = first_hour_blocks(text)
    assert [lang for lang, _ in blocks] == ["bash", "bash", "python", "bash", "bash", "bash"]
    work = tmp_path / "first-hour"
    work.mkdir()
    outputs = []
    env = _env()
    for lang, code in blocks:
        if lang == "python":
            name = code.splitlines()[0].removeprefix("# ").strip()
            assert name.endswith(".py"), "a python block starts with '# NAME.py'"
            (work / name).write_text(code)
            continue
        done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + code], cwd=work, env=env,
                              capture_output=True, text=True, timeout=900)
        outputs.append(done.stdout + done.stderr)
        assert done.returncode == 0, f"block failed:\n{code}\n--- output ---\n{outputs[-1][-4000:]}"

    # 1. two T1w images, pinned in a pinned list; plan read it
    assert json.loads((work / "t1w.pin.json").read_text())["n_images"] == 2
    assert "local/hub@" in outputs[0]  # served from the folder, no network
    assert "exact, from the pinned list" in outputs[0] and "next:      openmind-prep run" in outputs[0]
    # 2. both preprocessed, sharded, one rendered
    import pyarrow.parquet as pq

    rows = pq.read_table(work / "store" / "manifest.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert json.loads((work / "shards" / "index.json").read_text())["samples"] == 2
    assert (work / "volume.png").stat().st_size > 10_000
    # 3. the script printed its views and wrote the picture
    assert "views (4, 1, 48, 48, 48)" in outputs[2] and (work / "views.png").stat().st_size > 10_000
    # 4. trained to step 6 once: each step logged once, whether or not the SIGINT came mid-run
    log = [json.loads(line) for line in (work / "run" / "log.jsonl").read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in log if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 6
    if "SIGINT at step" in outputs[3]:  # the usual case; on a fast machine the run may finish first
        stopped = int(outputs[3].split("SIGINT at step ")[1].split(":")[0])
        assert f"resumed from run/checkpoint.pt at step {stopped}" in outputs[3]
        # marked in loss.png; step 5 reopens the finished run at step 6 (recorded, not drawn)
        assert json.loads((work / "run" / "resumes.json").read_text()) == sorted({stopped, 6})
    # 5. exported
    assert (work / "run" / "backbone.pth").is_file() and "backbone.pth" in outputs[4]
    import torch

    exported = torch.load(work / "run" / "backbone.pth", weights_only=True, map_location="cpu")
    assert "network_weights" in exported

    # The TorchIO and MONAI examples, on the store just made (STORE -> store, nothing else changed).
    for code in section_blocks(LOADERS_DOC.read_text(), "MONAI and TorchIO", "python"):
        done = subprocess.run([sys.executable, "-c", code.replace('"STORE"', '"store"')], cwd=work, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"example failed:\n{code}\n{done.stdout}{done.stderr[-4000:]}"
        assert "(2, 1, 64, 64, 64)" in done.stdout, done.stdout  # a real batch, the thin volume padded
