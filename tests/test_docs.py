"""The README and docs/: the README stays short and points at files that exist, its test command
is exactly what CI runs, and the generated command reference is current."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)


def test_readme_is_short_and_its_links_exist():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    links = re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)\)", text)
    assert {"docs/data.md", "docs/loaders.md", "docs/training.md", "docs/faults.md", "docs/ladder.md",
            "docs/reference.md", "docs/benchmarks.md", "docs/style.md"} <= set(links)
    for link in links:
        assert (ROOT / link).is_file(), link


def test_docs_links_exist():
    for page in DOCS.glob("*.md"):
        for link in re.findall(r"\]\(([\w./-]+\.md)(?:#[\w-]*)?\)", page.read_text()):
            assert (page.parent / link).is_file(), f"{page.name} links {link}"


def test_readme_test_command_is_what_ci_runs():
    """The second of the two commands is, character for character, the command `.ci/run` calls."""
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    blocks = [code.strip() for lang, code in FENCE.findall(README.read_text()) if lang == "bash"]
    assert ci in blocks
    demo = [b for b in blocks if "openmind-prep demo" in b]
    assert demo and demo[0].startswith(ci.split(" && .venv/bin/python")[0])


def test_reference_is_current():
    """docs/reference.md equals what `python -m tools.docs_reference` writes from today's --help."""
    done = subprocess.run([sys.executable, "-m", "tools.docs_reference", "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
