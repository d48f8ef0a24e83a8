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


MARKER = re.compile(r"<!-- (tested|run|manual): (.*?) -->\n```(\w+)\n(.*?)```", re.S)
COMMANDS = ("bash", "sh", "python")


def doc_blocks(page: Path) -> list[tuple[str | None, str, str, str]]:
    """(marker kind or None, marker text, language, code) of every fenced block of ``page``."""
    text, out = page.read_text(), []
    marked = {m.start(3) - 3: m for m in MARKER.finditer(text)}  # the opening fence's offset
    for m in FENCE.finditer(text):
        hit = marked.get(m.start())
        out.append((hit.group(1), hit.group(2), m.group(1), m.group(2)) if hit else (None, "", m.group(1), m.group(2)))
    return out


def _pages() -> list[Path]:
    return [README, *sorted(p for p in DOCS.glob("*.md") if p.name != "reference.md")]


def _test_exists(ref: str) -> bool:
    import ast

    file, _, name = ref.strip().partition("::")
    path = ROOT / file
    if not path.is_file():
        return False
    return any(isinstance(n, ast.FunctionDef) and n.name == name for n in ast.walk(ast.parse(path.read_text())))


def test_every_command_in_the_docs_runs_or_names_its_test():
    """Each bash / python block of the README and docs/ is run by the tests: directly (``run:``), as
    part of the first hour (between the README's first-hour markers), or by the named tests
    (``tested: tests/x.py::name``, which must exist); ``manual:`` (with a reason) is for commands
    that need what CI lacks (the network)."""
    first_hour = README.read_text()
    first_hour = first_hour[first_hour.index("<!-- first-hour:start -->"):first_hour.index("<!-- first-hour:end -->")]
    unmarked, missing = [], []
    for page in _pages():
        for kind, note, lang, code in doc_blocks(page):
            if lang not in COMMANDS or (page == README and code in first_hour):
                continue
            if kind is None:
                unmarked.append(f"{page.name}: {code.splitlines()[0]}")
            elif kind == "tested":
                missing += [f"{page.name}: {ref}" for ref in note.split(",") if not _test_exists(ref)]
            elif kind == "manual":
                assert len(note.split()) >= 3, f"{page.name}: say why it is not run: {note!r}"
    assert not unmarked, "blocks neither run nor covered by a named test:\n" + "\n".join(unmarked)
    assert not missing, "named tests that do not exist:\n" + "\n".join(missing)


def _run_blocks(what: str) -> list[tuple[str, str]]:
    return [(page.name, code) for page in _pages() for kind, note, _, code in doc_blocks(page)
            if kind == "run" and note.strip() == what]


def test_docs_python_blocks_run():
    blocks = _run_blocks("python")
    assert blocks
    for name, code in blocks:
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{name}:\n{code}\n{done.stderr[-3000:]}"


def test_docs_store_blocks_run_on_a_store(train_store):
    blocks = _run_blocks("store")
    assert blocks
    for name, code in blocks:
        done = subprocess.run([sys.executable, "-c", code.replace('"STORE"', repr(str(train_store)))], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{name}:\n{code}\n{done.stderr[-3000:]}"


def test_docs_bash_blocks_run_offline(tmp_path):
    """``run: bash`` blocks, as written, in an empty folder with the network out of reach."""
    from test_readme import _env

    blocks = _run_blocks("bash")
    assert blocks
    for i, (name, code) in enumerate(blocks):
        work = tmp_path / f"block{i}"
        work.mkdir()
        done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + code], cwd=work, env=_env(), capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"{name}:\n{code}\n{(done.stdout + done.stderr)[-3000:]}"
