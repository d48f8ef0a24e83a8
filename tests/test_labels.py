"""Label maps into the store (issue 21 item 2): an nnU-Net raw dataset built from real MRI
(``openmind_prep/sources/embedded_tissue.py``) preprocesses into a store whose ``label`` arrays equal nnU-Net v2's own
preprocessing of the same files, re-typed below from nnunetv2 (``preprocessing/cropping/cropping.py``
``crop_to_nonzero``; ``preprocessing/resampling/default_resampling.py`` ``determine_do_sep_z_and_axis``,
``resample_data_or_seg`` with the plans' ``is_seg=True, order=1, order_z=0``; batchgenerators' (0.25.5)
``resize_segmentation``: the largest indicator wins, ties to the nearest neighbour). The real nnunetv2
2.8.1 agrees (``benchmarks/labels_nnunet.py``, numbers in ``benchmarks/NOTES.md``). The labels are
checksummed, verified, sharded and read back by both loaders.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import binary_fill_holes, map_coordinates
from skimage.transform import resize

from openmind_prep.sources.embedded_tissue import CASES, build_nnunet_raw
from openmind_prep.preprocess.job import PreprocessOptions, process_batch
from openmind_prep.preprocess.resample import resample_labels
from openmind_prep.reports.verify import verify_store
from openmind_prep.sources.nnunet import NnunetSource
from openmind_prep.store.manifest import OK
from openmind_prep.store.store import Store

# -- nnU-Net v2, re-typed (the independent reference) -----------------------------------------


def nn_resize_segmentation(segmentation, new_shape, order=3, margin=None):
    """batchgenerators (>= 0.25.5) ``resize_segmentation`` with ``seg_tiebreak='nearest'``: per voxel the
    label whose resized indicator is largest; a shared top score goes to the nearest neighbour's label if
    it is among the tied, else to the smallest tied label. ``margin`` (an array of ``new_shape``), when
    given, gets the gap between the best and the second-best score (0: an exact tie)."""
    tpe = segmentation.dtype
    if order == 0:
        return resize(segmentation.astype(float), new_shape, order, mode="edge", clip=True,
                      anti_aliasing=False).astype(tpe)
    labels = np.sort(np.unique(segmentation.ravel()))
    if len(labels) == 1:
        return np.full(new_shape, labels[0], dtype=tpe)
    nearest = resize(segmentation.astype(float), new_shape, 0, mode="edge", clip=True, anti_aliasing=False)
    scores = np.stack([resize((segmentation == c).astype(float), new_shape, order, mode="edge", clip=True,
                              anti_aliasing=False) for c in labels])
    best = scores.max(axis=0)
    winner = labels[np.argmax(scores, axis=0)]  # the first (smallest) label attaining the maximum
    nearest_index = np.searchsorted(labels, nearest)
    nearest_score = np.take_along_axis(scores, nearest_index[None], axis=0)[0]
    nearest_wins = (nearest_score == best) & (best > 0)
    if margin is not None:
        np.minimum(margin, best - np.sort(scores, axis=0)[-2], out=margin)
    return np.where(nearest_wins, nearest, winner).astype(tpe)


def nn_sep_z_and_axis(current_spacing, new_spacing, threshold=3):
    axis = None
    for spacing in (current_spacing, new_spacing):
        if np.max(spacing) / np.min(spacing) > threshold:
            axis = np.where(max(spacing) / np.array(spacing) == 1)[0]
            break
    if axis is None or len(axis) in (2, 3):
        return False, None
    return True, int(axis[0])


def nn_resample_seg(data, new_shape, current_spacing, new_spacing, order=1, order_z=0):
    """``resample_data_or_seg_to_shape(data, new_shape, ..., is_seg=True, order=1, order_z=0,
    force_separate_z=None)``; ``data`` is (c, z, y, x). Returns it and the tie margin of channel 0."""
    do_separate_z, axis = nn_sep_z_and_axis(current_spacing, new_spacing)
    shape, new_shape = np.array(data[0].shape), np.array(new_shape)
    out = np.zeros((data.shape[0], *new_shape), dtype=data.dtype)
    if not np.any(shape != new_shape):
        return data, np.full(shape, np.inf)
    data = data.astype(float)
    if not do_separate_z:
        margin = np.full(new_shape, np.inf)
        for c in range(data.shape[0]):
            out[c] = nn_resize_segmentation(data[c], new_shape, order, margin if c == 0 else None)
        return out, margin
    new_shape_2d = np.delete(new_shape, axis)
    for c in range(data.shape[0]):
        tmp = new_shape.copy()
        tmp[axis] = shape[axis]
        here, margin = np.zeros(tmp), np.full(tmp, np.inf)
        for i in range(shape[axis]):
            index = [slice(None)] * 3
            index[axis] = i
            index = tuple(index)
            here[index] = nn_resize_segmentation(data[c][index], new_shape_2d, order, margin[index])
        if shape[axis] != new_shape[axis]:
            grids = np.mgrid[:new_shape[0], :new_shape[1], :new_shape[2]].astype(float)
            coords = np.array([here.shape[d] / new_shape[d] * (grids[d] + 0.5) - 0.5 for d in range(3)])
            out[c] = map_coordinates(here, coords, order=order_z, mode="nearest")
            margin = map_coordinates(margin, coords, order=0, mode="nearest")
        else:
            out[c] = here
    return out, margin


def assert_equal_but_ties(ours, theirs, margin, tie=1e-9):
    """``ours == theirs`` except where the two best labels' scores differ by float64 rounding only (an exact
    tie in one summation order is a near tie in another; there either label is as right)."""
    differ = ours != theirs
    assert not (differ & (margin > tie)).any(), f"{int((differ & (margin > tie)).sum())} voxels differ off ties"
    assert differ.sum() <= max(2, 1e-3 * differ.size)
    return int(differ.sum())


def nn_preprocess_seg(image_file, label_file):
    """nnU-Net v2's DefaultPreprocessor on one case (SimpleITKIO read, crop_to_nonzero with -1 outside
    the nonzero mask, resampling to 1 mm), then the training loader's -1 -> 0."""
    image, seg = sitk.ReadImage(str(image_file)), sitk.ReadImage(str(label_file))
    data = sitk.GetArrayFromImage(image)[None].astype(np.float32)
    seg = sitk.GetArrayFromImage(seg)[None].astype(np.int16)
    spacing = list(image.GetSpacing())[::-1]
    nonzero = binary_fill_holes(data[0] != 0)
    where = np.where(nonzero)
    bbox = [[int(w.min()), int(w.max()) + 1] for w in where]
    slicer = tuple(slice(a, b) for a, b in bbox)
    seg = seg[(slice(None), *slicer)]
    seg[(seg == 0) & (~nonzero[slicer][None])] = -1
    new_shape = [int(round(s / 1.0 * n)) for s, n in zip(spacing, seg.shape[1:])]
    out, margin = nn_resample_seg(seg, new_shape, spacing, [1.0, 1.0, 1.0])
    out = out[0]
    out[out < 0] = 0
    return out, bbox, margin


# -- the dataset and its store ---------------------------------------------------------------


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """(the nnU-Net raw source, its records, the store they were preprocessed into, the rows)."""
    root = tmp_path_factory.mktemp("nnraw")
    source = NnunetSource(build_nnunet_raw(root))
    records = source.records()
    store = Store.create(root / "store")
    rows = process_batch(records, source, store, PreprocessOptions())
    store.merge()
    return source, records, store, rows


def test_labelled_cases_preprocess_into_the_store_with_labels(labelled):
    source, records, store, rows = labelled
    assert [r.label_path for r in records] == [f"labelsTr/{case}.nii.gz" for case in sorted(CASES)]
    assert [r["status"] for r in rows] == [OK] * len(CASES), [r["error"] for r in rows]
    for record, row in zip(records, rows):
        label = store.array(row["label_zarr_path"])
        assert row["label_zarr_path"] == row["zarr_path"].rsplit("/", 1)[0] + "/label"
        assert label.shape == tuple(row["shape"]) == store.array(row["zarr_path"]).shape
        assert label.dtype == (np.int16 if record.subject == "mni_flip" else np.uint8)
        assert row["label_checksum"].startswith("sha256:")
        present = set(np.unique(label[...]).tolist())
        assert present == {0, 1, 300 if record.subject == "mni_flip" else 2}
    assert verify_store(store) == []


@pytest.mark.parametrize("case", list(CASES))
def test_the_stored_labels_equal_nnunets_preprocessing(labelled, case):
    source, records, store, rows = labelled
    row = next(r for r in rows if f"/{case}_0000" in r["image_path"])
    record = next(r for r in records if r.subject == case)
    expected, bbox, margin = nn_preprocess_seg(source.root / record.image_path, source.root / record.label_path)
    assert row["crop_bbox"] == bbox
    stored = store.array(row["label_zarr_path"])[...]
    assert stored.shape == expected.shape
    assert_equal_but_ties(stored, expected.astype(stored.dtype), margin)


@pytest.mark.parametrize("spacing, new_shape", [((1.0, 1.0, 1.0), (5, 7, 6)), ((2.0, 1.0, 1.0), (9, 7, 6)),
                                               ((0.5, 0.5, 2.5), (3, 3, 14)), ((5.0, 1.0, 1.2), (16, 9, 8)),
                                               ((1.5, 1.5, 1.5), (15, 12, 9))])
def test_label_resampling_equals_nnunets_on_random_label_maps(spacing, new_shape):
    """Many labels (negative, 0, large), every separate-z case, up- and down-sampling."""
    rng = np.random.default_rng(sum(new_shape))
    for dtype, labels in ((np.uint8, [0, 1, 2, 7]), (np.int16, [-1, 0, 3, 300]), (np.int32, [0, 5, 70000])):
        blobs = rng.choice(labels, size=(4, 4, 3))
        seg = np.kron(blobs, np.ones((3, 2, 2), int))[:10, :7, :5].astype(dtype)  # blocky: real boundaries
        ours = resample_labels(seg, new_shape, spacing, (1.0, 1.0, 1.0))
        theirs, margin = nn_resample_seg(seg[None], new_shape, spacing, [1.0, 1.0, 1.0])
        assert ours.dtype == seg.dtype
        assert_equal_but_ties(ours, theirs[0], margin)


def test_a_label_map_that_does_not_fit_its_image_fails_its_row(labelled, tmp_path):
    import nibabel as nib

    source, records, _, _ = labelled
    record = next(r for r in records if r.subject == "mni_15mm")
    label = nib.load(source.root / record.label_path)
    bad = {"spacing": nib.Nifti1Image(np.asarray(label.dataobj), np.diag([2.0, 2.0, 2.0, 1.0])),
           "shape": nib.Nifti1Image(np.asarray(label.dataobj)[:-1], label.affine),
           "fraction": nib.Nifti1Image(np.asarray(label.dataobj).astype(np.float32) * 0.5, label.affine)}
    out = []
    for name, img in bad.items():
        path = source.root / f"bad_{name}.nii.gz"
        nib.save(img, path)
        out.append(dataclasses.replace(record, label_path=path.name))
    rows = process_batch(out, source, Store.create(tmp_path / "s"), PreprocessOptions())
    errors = [r["error"] for r in rows]
    assert [r["status"] for r in rows] == ["failed"] * 3
    assert errors[0].startswith(f"{source.root / 'bad_spacing.nii.gz'}: label map spacing")
    assert errors[1].startswith(f"{source.root / 'bad_shape.nii.gz'}: label map shape")
    assert errors[2].startswith(f"{source.root / 'bad_fraction.nii.gz'}: label values must be integer")
    assert all("\n" not in e for e in errors)


def test_labels_reach_the_shards_and_both_loaders(labelled, tmp_path):
    from loaders.webdataset_stream import WebDatasetStream
    from loaders.zarr_dataset import ZarrVolumeDataset
    from openmind_prep.shards.writer import merge_index, write_shards

    _, _, store, rows = labelled
    write_shards(store.root, tmp_path / "wds", progress=False)
    merge_index(tmp_path / "wds")
    zarr_ds = ZarrVolumeDataset(store)
    by_key = {s["key"]: s for s in WebDatasetStream(str(tmp_path / "wds"), shuffle_buffer=0, rank=0, world_size=1,
                                                      worker=0, num_workers=1)}
    assert sorted(by_key) == sorted(zarr_ds.keys)
    for i, key in enumerate(zarr_ds.keys):
        region = (slice(3, 20), slice(5, 40), slice(0, 30))
        ours = zarr_ds[i, region]
        whole = store.array(zarr_ds.rows[i]["label_zarr_path"])[...]
        np.testing.assert_array_equal(ours["label"][0].numpy(), whole[region])
        np.testing.assert_array_equal(by_key[key]["label"][0].numpy(), whole)
        assert ours["label"].shape == ours["image"].shape
    assert ZarrVolumeDataset(store, labels=False)[0]["label"] is None


def test_a_store_written_before_labels_still_opens(labelled, tmp_path):
    """A manifest without the label / metadata columns (older stores): rows read with them empty,
    verify passes, the loader gives ``label`` None, and the next merge writes the full schema."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from loaders.zarr_dataset import ZarrVolumeDataset
    from openmind_prep.store.manifest import MANIFEST_FILE, SCHEMA, write_fragment
    from openmind_prep.store.schema import empty_row

    _, _, store, _ = labelled
    old = tmp_path / "old"
    shutil.copytree(store.root, old)
    new_columns = ("label_zarr_path", "label_checksum", "metadata")
    table = pq.read_table(old / MANIFEST_FILE).drop_columns(list(new_columns))
    for row in table.to_pylist():
        shutil.rmtree(old / row["zarr_path"].rsplit("/", 1)[0] / "label")
    pq.write_table(table, old / MANIFEST_FILE)
    rows = Store.open(old).ok_rows()
    assert len(rows) == len(CASES) and all(r[c] == "" for r in rows for c in new_columns)
    assert verify_store(old) == []
    assert ZarrVolumeDataset(old)[0]["label"] is None
    write_fragment(old, [empty_row("another.nii.gz")])
    assert Store(old).merge().schema.equals(SCHEMA)
    assert pa.types.is_string(pq.read_schema(old / MANIFEST_FILE).field("label_zarr_path").type)


def test_the_labelled_data_commands_in_the_docs_run(tmp_path, monkeypatch, capsys):
    """docs/finetune.md "Labelled data": its commands on the dataset they name, then its Python."""
    import re
    import shlex
    from pathlib import Path

    from click.testing import CliRunner

    from openmind_prep.cli import main

    text = (Path(__file__).resolve().parents[1] / "docs" / "finetune.md").read_text()
    section = text.split("\n## Labelled data\n", 1)[1].split("\n## ", 1)[0]
    blocks = {lang: [] for lang in ("bash", "text", "python")}
    for lang, code in re.findall(r"```(\w+)\n(.*?)```", section, re.S):
        blocks[lang].append(code)
    build_nnunet_raw(tmp_path)
    monkeypatch.chdir(tmp_path)
    commands = [line for line in blocks["bash"][0].splitlines() if line.strip()]
    assert [shlex.split(c)[:2] for c in commands] == [["openmind-prep", w] for w in ("preprocess", "verify", "shard")]
    for command in commands:
        args = shlex.split(command)[1:]
        args += ["--workers", "1", "--threads-only"] if args[0] == "preprocess" else []
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, (command, result.output)
    (tmp_path / "grades.csv").write_text(blocks["text"][0])
    exec(compile(blocks["python"][0], "finetune.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2].startswith("imagesTr/mni_15mm_0000 (1, ") and printed[-2].endswith(") torch.uint8")
    assert printed[-1] == "{'imagesTr/mni_15mm_0000': 0, 'imagesTr/mni_flip_0000': 1, 'imagesTr/mni_iso_0000': 1} " \
                          "['high', 'low']"
    assert Store.open(tmp_path / "labelled.zarr").ok_rows()[0]["label_zarr_path"]
    assert (tmp_path / "labelled-wds" / "index.json").is_file()


def test_verify_names_a_damaged_label_map(labelled, tmp_path):
    import shutil

    _, _, store, rows = labelled
    copy = tmp_path / "copy"
    shutil.copytree(store.root, copy)
    row = rows[1]
    shard = next(p for p in (copy / row["label_zarr_path"]).rglob("*") if p.is_file() and p.name != "zarr.json")
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = verify_store(copy)
    assert len(problems) == 1 and problems[0].startswith(str(copy / row["label_zarr_path"])), problems


def test_the_adapters_hand_the_label_map_over_on_the_images_grid(labelled):
    pytest.importorskip("torchio")
    pytest.importorskip("monai")
    from loaders.adapters import to_monai, to_torchio
    from loaders.zarr_dataset import ZarrVolumeDataset

    _, _, store, _ = labelled
    sample = ZarrVolumeDataset(store)[2]
    subject, item = to_torchio(sample), to_monai(sample)
    assert type(subject["label"]).__name__ == "LabelMap"
    assert subject["label"].shape == subject["image"].shape
    np.testing.assert_array_equal(subject["label"].data.numpy(), sample["label"].permute(0, 3, 2, 1).numpy())
    np.testing.assert_array_equal(subject["label"].affine, subject["image"].affine)
    np.testing.assert_array_equal(item["label"].numpy(), sample["label"].permute(0, 3, 2, 1).numpy())
    np.testing.assert_array_equal(item["label"].affine.numpy(), item["image"].affine.numpy())
