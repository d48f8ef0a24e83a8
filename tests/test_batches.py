"""The trainers' one batch source (loaders/batches.py) over a store of real MRI and over its shards."""

from __future__ import annotations

from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from _store_builder import build_store_and_shards
from loaders.batches import batch_source

REGION = [24, 32, 40]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, dict, Path]:
    return build_store_and_shards(tmp_path_factory.mktemp("batches"))


def _take(source, n: int) -> list[dict]:
    return list(islice(iter(source), n))


def _same(a: list[dict], b: list[dict]) -> bool:
    return all(x["key"] == y["key"] and [m["region"] for m in x["meta"]] == [m["region"] for m in y["meta"]]
               and all(torch.equal(p, q) for p, q in zip(x["image"], y["image"])) for x, y in zip(a, b))


def test_store_batches_are_regions_of_the_stored_volumes(data):
    store, written, _ = data
    for batch in _take(batch_source(store=store, batch_size=3, region_size=REGION, seed=1), 4):
        assert len(batch["image"]) == 3 and batch["anat_mask"] == [None] * 3  # masks are not read for training
        for key, image, meta in zip(batch["key"], batch["image"], batch["meta"]):
            volume = written[key]["image"]
            (z0, z1), (y0, y1), (x0, x1) = meta["region"]
            assert [z1 - z0, y1 - y0, x1 - x0] == [min(r, n) for r, n in zip(REGION, volume.shape)]
            np.testing.assert_array_equal(image[0].numpy(), volume[z0:z1, y0:y1, x0:x1])


def test_first_batch_holds_whole_volumes_and_leaves_the_position(data):
    store, written, _ = data
    source = batch_source(store=store, batch_size=3, region_size=REGION, seed=1)
    batch = source.first_batch(3)
    assert source.position == 0 and len(batch["key"]) == 3
    for key, image in zip(batch["key"], batch["image"]):
        np.testing.assert_array_equal(image[0].numpy(), written[key]["image"])


def test_store_source_resumed_at_a_position_replays_the_straight_batches(data):
    store, _, _ = data
    straight = batch_source(store=store, batch_size=3, region_size=REGION, seed=2)
    batches = _take(straight, 7)  # 8 images: crosses two epoch boundaries
    assert straight.state_dict() == {"position": 7}
    resumed = batch_source(store=store, batch_size=3, region_size=REGION, seed=2)
    resumed.load_state_dict({"position": 4})
    assert _same(batches[4:7], _take(resumed, 3))
    with_worker = batch_source(store=store, batch_size=3, region_size=REGION, seed=2, num_workers=1)
    with_worker.load_state_dict({"position": 4})
    assert _same(batches[4:6], _take(with_worker, 2))  # DataLoader workers do not change the data
    other_seed = _take(batch_source(store=store, batch_size=3, region_size=REGION, seed=3), 3)
    assert not _same(batches[:3], other_seed)


def test_store_source_reads_every_image_once_per_epoch_across_ranks(data):
    store, written, _ = data
    seen: Counter = Counter()
    for rank in range(2):
        source = batch_source(store=store, batch_size=2, region_size=REGION, seed=5, rank=rank, world=2)
        assert source.steps_per_epoch == 2 and source.volumes == 8  # 8 images / 2 ranks / batch 2
        seen.update(k for b in _take(source, source.steps_per_epoch) for k in b["key"])
    assert seen == Counter(list(written))  # each key once


def test_shard_source_is_seeded_by_its_position(data):
    _, written, wds = data
    a = batch_source(shards=str(wds), batch_size=2, region_size=REGION, seed=0)
    b = batch_source(shards=str(wds), batch_size=2, region_size=REGION, seed=0)
    b.load_state_dict({"position": 0})
    first = _take(a, 3)
    assert _same(first, _take(b, 3)) and a.volumes == len(written)
    later = batch_source(shards=str(wds), batch_size=2, region_size=REGION, seed=0)
    later.load_state_dict({"position": 5})  # a resumed stream: a fresh seeded epoch, not a replay
    assert not _same(first, _take(later, 3))
    assert all(k in written for batch in first for k in batch["key"])


def test_bad_sources_raise_one_line_naming_the_path(data, tmp_path):
    from openmind_prep.store.manifest import merge_manifest
    from openmind_prep.store.store import Store

    store, _, _ = data
    empty = Store.create(tmp_path / "empty").root
    merge_manifest(empty)
    cases = [(dict(store=empty), f"{empty}: no 'ok' images to train on"),
             (dict(store=tmp_path / "none"), f"{tmp_path / 'none'}: not a preprocessed store"),
             (dict(store=store, world=9, rank=0), f"{store}: 8 images cannot feed 9 processes"),
             (dict(shards=str(tmp_path / "none")), f"{tmp_path / 'none'}: cannot read the shard index"),
             (dict(store=store, shards="x"), "give exactly one of store / shards")]
    for kwargs, message in cases:
        with pytest.raises(ValueError) as err:
            batch_source(batch_size=2, region_size=REGION, **kwargs)
        assert str(err.value).startswith(message) and "\n" not in str(err.value)
