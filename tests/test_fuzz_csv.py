"""Fuzzed metadata CSV bytes (issue 13): hostile or damaged CSVs never crash a reader.

Contract: :func:`openmind_prep.sources.metadata.read_metadata` returns records whose image paths have at
least ``<dataset>/<subject>/<file>``, or raises :class:`MetadataError` with one line that starts
with the CSV's path; ``downloaded_records`` (what ``preprocess`` reads from a download's RAW) keeps
exactly the rows whose files exist. Mutations start from the real sample CSV: byte flips, inserted bytes (invalid UTF-8,
NUL, quotes, separators, newlines, a BOM), truncations and odd cells. ``max_examples`` bounds the
run to seconds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openmind_prep.sources.hub import STATE_DIR
from openmind_prep.sources.pinned import downloaded_records
from openmind_prep.sources.metadata import IMAGES_DIR, METADATA_CSV, MetadataError, read_metadata
from openmind_prep.core.paths import source_path

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
NASTY = [b"\xff", b"\xc3", b"\xe9", b"\x00", b'"', b",", b"\n", b"\r", b"\xef\xbb\xbf", b"/", b"..", b"nan",
         b"\xf0\x9f\xa7\xa0", b"a" * 300]


def _csv_bytes(sample_tree: Path) -> bytes:
    return (sample_tree / METADATA_CSV).read_bytes()


edits = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
        st.tuples(st.just("insert"), st.integers(0, 10**6), st.sampled_from(NASTY)),
        st.tuples(st.just("cut"), st.integers(0, 10**6), st.none()),
    ),
    min_size=1, max_size=4,
)


def _apply(data: bytes, ops) -> bytes:
    for op, at, arg in ops:
        i = at % (len(data) + 1)
        if op == "flip" and data:
            i = min(i, len(data) - 1)
            data = data[:i] + bytes([data[i] ^ arg]) + data[i + 1:]
        elif op == "insert":
            data = data[:i] + arg + data[i:]
        elif op == "cut":
            data = data[:i]
    return data


def _check(path: Path) -> list:
    try:
        records = read_metadata(path)
    except MetadataError as e:
        message = str(e)
        assert message.startswith(f"{path}: ") and "\n" not in message.strip(), message
        return []
    for r in records:
        parts = r.image_path.replace("\\", "/").split("/")
        assert len(parts) >= 3 and r.image_path == r.image_path.strip()
    return records


@FUZZ
@given(ops=edits)
def test_fuzzed_csv_bytes_read_or_fail_naming_the_file(sample_tree, ops):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / METADATA_CSV
        path.write_bytes(_apply(_csv_bytes(sample_tree), ops))
        _check(path)


@FUZZ
@given(ops=edits, bom=st.booleans())
def test_a_download_folder_gives_exactly_the_rows_whose_files_exist(sample_tree, ops, bom):
    with tempfile.TemporaryDirectory() as d:
        raw = Path(d)
        (raw / STATE_DIR).mkdir()
        (raw / STATE_DIR / "verified.jsonl").write_text("")  # a folder written by download
        full = raw / METADATA_CSV
        full.write_bytes((b"\xef\xbb\xbf" if bom else b"") + _apply(_csv_bytes(sample_tree), ops))
        records = _check(full)
        if not records:
            return
        present = records[::2]  # every other image is "downloaded": its files exist under RAW/OpenMind
        for r in present:
            for rel in r.files():
                try:
                    target = source_path(raw / IMAGES_DIR, rel)  # never outside the temp folder
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(b"x")
                except (OSError, ValueError):  # a fuzzed path the file system refuses
                    return
        listed = downloaded_records(raw)
        wanted = [r for r in records if all((raw / IMAGES_DIR / p).is_file() for p in r.files())]
        assert [r.image_path for r in listed] == [r.image_path for r in wanted]
