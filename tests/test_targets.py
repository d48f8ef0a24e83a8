"""Image-level targets (``--labels FILE --target COLUMN``): from a CSV keyed by store key or image path,
or from the columns the source carried into the manifest (OpenMind's ``age``, ``sex``), with one-line
errors naming the file and line."""

from __future__ import annotations

import csv

import pytest

from openmind_prep.sources.metadata import METADATA_CSV
from openmind_prep.sources.targets import TargetError, as_classes, as_numbers, load_targets
from openmind_prep.store.schema import row_key
from openmind_prep.store.store import Store


@pytest.fixture(scope="module")
def openmind(train_store, sample_tree):
    """The store preprocessed from the embedded OpenMind sample, its ok rows and the CSV's rows."""
    with open(sample_tree / METADATA_CSV, newline="") as f:
        csv_rows = list(csv.DictReader(f))
    return Store(train_store), Store(train_store).ok_rows(), csv_rows


def test_openmind_metadata_columns_are_targets(openmind):
    store, rows, csv_rows = openmind
    by_path = {r["image_path"]: r for r in csv_rows}
    expected_age = {row_key(r): float(by_path[r["image_path"]]["age"]) for r in rows}
    assert as_numbers(load_targets(store, "age")) == expected_age  # every image of the sample has an age
    sexes, classes = as_classes(load_targets(store, "sex"))
    assert classes == sorted({by_path[r["image_path"]]["sex"] for r in rows})
    assert {k: classes[v] for k, v in sexes.items()} == {row_key(r): by_path[r["image_path"]]["sex"] for r in rows}
    assert load_targets(store, "modality") == {row_key(r): r["modality"] for r in rows}  # a manifest column


def test_a_csv_keyed_by_image_path_or_store_key(openmind, tmp_path):
    store, rows, _ = openmind
    first, second, third = rows[:3]
    path = tmp_path / "y.csv"
    path.write_text("image_path,grade\n"
                    f"{first['image_path']},high\n"   # the source's image path
                    f"{row_key(second)},low\n"         # a store key in the same column
                    f"{row_key(third)},\n"             # no value: no target
                    "ds999/sub-1/x.nii.gz,low\n")     # an image the store does not have
    assert load_targets(store, "grade", path) == {row_key(first): "high", row_key(second): "low"}
    keyed = tmp_path / "k.csv"
    keyed.write_text("\ufeffkey,score\n" + "".join(f"{row_key(r)},{i}.5\n" for i, r in enumerate(rows)))
    assert as_numbers(load_targets(store, "score", keyed)) == {row_key(r): i + 0.5 for i, r in enumerate(rows)}


def test_bad_targets_are_one_line_naming_file_and_line(openmind, tmp_path):
    store, rows, _ = openmind
    key = row_key(rows[0])
    cases = {
        "missing.csv": (None, f"{tmp_path / 'missing.csv'}: cannot read: No such file or directory"),
        "nokey.csv": ("subject,age\ns1,3\n", f"{tmp_path / 'nokey.csv'}: no column naming the image (key or "
                                             "image_path; columns: subject, age)"),
        "nocol.csv": ("key,age\n", f"{tmp_path / 'nocol.csv'}: no column 'grade' (columns: key, age)"),
        "twice.csv": (f"key,grade\n{key},a\n{rows[0]['image_path']},b\n",
                      f"{tmp_path / 'twice.csv'}: line 3: {rows[0]['image_path']!r} names the same image as line 2"),
        "latin1.csv": (b"key,grade\nx,caf\xe9\n", f"{tmp_path / 'latin1.csv'}: line 2: not UTF-8"),
        "none.csv": ("key,grade\nds9/x,a\n", f"{tmp_path / 'none.csv'}: no image of the store {store.root} has a "
                                            "'grade' value"),
    }
    for name, (content, message) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(TargetError) as err:
            load_targets(store, "grade", tmp_path / name)
        assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)
    with pytest.raises(TargetError, match=f"^{store.root}: no column 'grade' in the manifest or the source's "
                                          "metadata \\(columns: .*age.*\\)$"):
        load_targets(store, "grade")
    with pytest.raises(TargetError, match=f"^targets: {key}: 'old' is not a number$"):
        as_numbers({key: "old"})
    with pytest.raises(TargetError, match=f"^targets: {key}: 'nan' is not a finite number$"):
        as_numbers({key: "nan"})
