"""Zarr map-style dataset, WebDataset stream stages, collation; on a store of real MRI."""

from __future__ import annotations

import json
import random
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from _store_builder import build_store_and_shards
from loaders.collate import collate_volumes, to_device
from loaders.webdataset_stream import CorruptShardError, WebDatasetStream, split_by_node, split_by_worker
from loaders.zarr_dataset import RegionSampler, ZarrVolumeDataset


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, dict, Path]:
    return build_store_and_shards(tmp_path_factory.mktemp("loaders"))


def _keys_2x2(make) -> Counter:
    seen: Counter = Counter()
    for rank in range(2):
        for worker in range(2):
            seen.update(s["key"] for s in make(rank, worker))
    return seen


def test_stream_every_sample_once_per_epoch_2_nodes_x_2_workers(data):
    store, written, wds = data
    for epoch in (0, 1):
        def make(rank, worker):
            stream = WebDatasetStream(str(wds / "index.json"), seed=3, rank=rank, world_size=2, worker=worker,
                                      num_workers=2, shuffle_buffer=3)
            stream.set_epoch(epoch)
            return stream
        seen = _keys_2x2(make)
        assert seen == Counter(list(written)), f"epoch {epoch}: {seen}"


def test_stream_samples_equal_store_and_are_deterministic(data):
    store, written, wds = data
    first = list(WebDatasetStream(str(wds), seed=5, rank=0, world_size=1, shuffle_buffer=4))
    again = list(WebDatasetStream(str(wds), seed=5, rank=0, world_size=1, shuffle_buffer=4))
    other = WebDatasetStream(str(wds), seed=5, rank=0, world_size=1, shuffle_buffer=4)
    other.set_epoch(1)
    assert [s["key"] for s in first] == [s["key"] for s in again]
    assert [s["key"] for s in first] != [s["key"] for s in other]
    for s in first:
        np.testing.assert_array_equal(s["image"][0].numpy(), written[s["key"]]["image"])
        for mask in ("anon_mask", "anat_mask"):
            if mask in written[s["key"]]:
                np.testing.assert_array_equal(s[mask][0].numpy(), written[s["key"]][mask])
            else:
                assert s[mask] is None


def test_stream_reads_shards_through_an_fsspec_url(data):
    """Shards on a non-local fsspec filesystem (``memory://``, standing in for ``s3://`` / ``hf://``):
    the index's relative shard names resolve against its URL, and samples equal the store."""
    import fsspec

    store, written, wds = data
    fs = fsspec.filesystem("memory")
    for f in wds.iterdir():
        if f.is_file():
            fs.pipe(f"/omp-test/{f.name}", f.read_bytes())
    try:
        got = {s["key"]: s for s in WebDatasetStream("memory://omp-test/index.json", seed=1, rank=0, world_size=1,
                                                      verify=True)}
    finally:
        fs.rm("/omp-test", recursive=True)
    assert sorted(got) == sorted(written)
    for key, sample in got.items():
        np.testing.assert_array_equal(sample["image"][0].numpy(), written[key]["image"])


def test_stream_regions_are_slices_of_the_volume(data):
    store, written, wds = data
    for s in WebDatasetStream(str(wds), region_size=40, seed=1, rank=0, world_size=1):
        region = tuple(slice(a, b) for a, b in s["meta"]["region"])
        full = written[s["key"]]["image"]
        assert s["image"].shape[1:] == tuple(min(40, n) for n in full.shape)
        np.testing.assert_array_equal(s["image"][0].numpy(), full[region])


def test_stream_without_masks_leaves_them_undecoded(data, monkeypatch):
    import openmind_prep.store.region_read as rr

    _, written, wds = data
    decoded: list[str] = []
    real = rr._decompress
    monkeypatch.setattr(rr, "_decompress", lambda d, dest, what: (decoded.append(what), real(d, dest, what)))
    samples = list(WebDatasetStream(str(wds), seed=1, rank=0, world_size=1, masks=False))
    assert {s["key"] for s in samples} == set(written)
    assert all(s["anon_mask"] is None and s["anat_mask"] is None for s in samples)
    assert decoded and not any("mask" in d for d in decoded)
    for s in samples:
        np.testing.assert_array_equal(s["image"][0].numpy(), written[s["key"]]["image"])


def test_stage_split_partitions_a_list():
    urls = [f"s{i}" for i in range(11)]
    parts = [list(split_by_worker(split_by_node(urls, r, 3), w, 2)) for r in range(3) for w in range(2)]
    assert sorted(u for p in parts for u in p) == sorted(urls)
    shuffled = list(wds.shuffle(7, rng=random.Random(1))(iter(range(50))))
    assert sorted(shuffled) == list(range(50)) and shuffled != list(range(50))


def test_too_few_shards_raise_instead_of_idling(data):
    _, _, wds = data
    with pytest.raises(ValueError, match="shards cannot feed 16 nodes"):
        list(WebDatasetStream(str(wds), rank=0, world_size=16))


def test_resampled_mode_is_infinite_seeded_and_differs_by_worker(data):
    _, written, wds = data
    def keys(worker, seed=0):
        stream = WebDatasetStream(str(wds), resampled=True, seed=seed, rank=0, world_size=2, worker=worker,
                                  num_workers=2, samples_per_worker=20, shuffle_buffer=2)
        return [s["key"] for s in stream]
    a = keys(0)
    assert len(a) == 20 and set(a) <= set(written)  # more than one epoch's worth of samples
    assert a == keys(0) and a != keys(1) and a != keys(0, seed=1)


def _corrupt_copy(wds: Path, dest: Path, how: str) -> str:
    import shutil

    shutil.copytree(wds, dest)
    index = __import__("json").loads((dest / "index.json").read_text())
    victim = dest / index["shards"][1]["url"]
    raw = bytearray(victim.read_bytes())
    if how == "truncate":
        raw = raw[: len(raw) // 2 + 100]
    elif how == "header":
        raw[:512] = b"\xff" * 512
    else:  # flip one byte inside a member's data: only the sha256 check sees it
        raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    return victim.name


@pytest.mark.parametrize("how", ["truncate", "header", "flip"])
def test_corrupt_shard_raises_naming_it_or_is_skipped(data, tmp_path, how):
    _, written, wds = data
    name = _corrupt_copy(wds, tmp_path / "wds", how)
    verify = how == "flip"
    with pytest.raises(CorruptShardError, match=name):
        list(WebDatasetStream(str(tmp_path / "wds"), rank=0, world_size=1, verify=verify, shuffle_buffer=0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = [s["key"] for s in WebDatasetStream(str(tmp_path / "wds"), rank=0, world_size=1, verify=verify,
                                                  skip_corrupt=True, shuffle_buffer=0)]
    assert any(name in str(w.message) for w in caught)
    index = __import__("json").loads((tmp_path / "wds" / "index.json").read_text())
    others = {k for s in index["shards"] if s["url"] != name for k in s["keys"]}
    assert others <= set(got) and len(got) == len(set(got)) and set(got) <= set(written)
    assert len(got) < len(written)


def test_zarr_region_equals_slice_and_decodes_only_its_chunks(data, monkeypatch):
    import openmind_prep.store.region_read as rr

    store, written, _ = data
    decoded: list[str] = []
    real = rr._decompress
    monkeypatch.setattr(rr, "_decompress", lambda data, dest, what: (decoded.append(what), real(data, dest, what)))
    ds = ZarrVolumeDataset(store, masks=False)
    i = next(j for j, k in enumerate(ds.keys) if "mni_half" in k)
    full = written[ds.keys[i]]["image"]
    np.testing.assert_array_equal(ds[i]["image"][0].numpy(), full)
    assert len(decoded) == 8  # (95, 117, 99) in 64³ chunks: 2 x 2 x 2
    region = (slice(10, 60), slice(70, 117), slice(0, 99))  # z chunk 0, y chunk 1, x chunks 0-1
    decoded.clear()
    got = ds[i, region]["image"][0].numpy()
    np.testing.assert_array_equal(got, full[region])
    assert sorted(d.rsplit("chunk ", 1)[1] for d in decoded) == ["(0, 1, 0)", "(0, 1, 1)"]  # 2 of the 8


def test_zarr_dataset_validates_keys_and_index(data):
    store, written, _ = data
    ds = ZarrVolumeDataset(store)
    assert len(ds) == len(written) and set(ds.keys) == set(written)  # the failed row is left out
    with pytest.raises(KeyError, match="no 'ok' image"):
        ZarrVolumeDataset(store, keys=["nope"])
    with pytest.raises(IndexError):
        ds.read(len(ds))


def test_dataloaders_with_workers_and_pinned_memory(data):
    store, written, wds = data
    ds = ZarrVolumeDataset(store)
    ds[0]  # zarr threads now run in the parent: the forked workers must still work
    seen: Counter = Counter()
    for rank in range(2):  # two simulated nodes, each a DataLoader with 2 forked workers
        sampler = RegionSampler([ds.shape(i) for i in range(len(ds))], 48, seed=0, rank=rank, world_size=2)
        loader = torch.utils.data.DataLoader(ds, sampler=sampler, batch_size=2, num_workers=2, pin_memory=True,
                                             collate_fn=collate_volumes, multiprocessing_context="fork")
        for batch in loader:
            seen.update(batch["key"])
            for key, image, meta in zip(batch["key"], batch["image"], batch["meta"]):
                region = tuple(slice(a, b) for a, b in meta["region"])
                np.testing.assert_array_equal(image[0].numpy(), written[key]["image"][region])
            moved = to_device(batch, "cpu")
            assert all(t.dtype == torch.float32 and t.dim() == 4 for t in moved["image"])
    assert seen == Counter(list(written))
    stream = WebDatasetStream(str(wds), rank=0, world_size=1, region_size=32)
    loader = torch.utils.data.DataLoader(stream, batch_size=3, num_workers=2, pin_memory=True,
                                         collate_fn=collate_volumes, multiprocessing_context="fork")
    keys = [k for batch in loader for k in batch["key"]]
    assert Counter(keys) == Counter(list(written))


def _epoch(wds_dir: Path, seed: int, epoch: int, rank: int, world: int) -> list[tuple]:
    """One node's epoch through a DataLoader with 2 forked workers: (key, region, image bytes)."""
    stream = WebDatasetStream(str(wds_dir), seed=seed, rank=rank, world_size=world, region_size=40,
                              shuffle_buffer=3)
    stream.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2, multiprocessing_context="fork")
    return [(s["key"], str(s["meta"]["region"]), s["image"].numpy().tobytes()) for s in loader]


def test_seeded_epoch_is_exactly_once_across_nodes_x_workers_and_repeats_bitwise(data):
    """2 nodes x 2 DataLoader workers: every sample exactly once per epoch; the same seed and epoch
    give the same samples, regions and bytes in the same order; another epoch another order."""
    _, written, wds_dir = data
    runs = {}
    for epoch in (0, 1):
        runs[epoch] = [_epoch(wds_dir, 7, epoch, rank, 2) for rank in range(2)]
        assert Counter(k for node in runs[epoch] for k, _, _ in node) == Counter(list(written)), epoch
        for node in runs[epoch]:
            for key, region, image in node:  # each region is that slice of what was stored
                box = tuple(slice(a, b) for a, b in json.loads(region))
                assert image == np.ascontiguousarray(written[key]["image"][box]).tobytes()
    assert [_epoch(wds_dir, 7, 0, rank, 2) for rank in range(2)] == runs[0]  # bitwise repeat
    assert [[k for k, _, _ in n] for n in runs[0]] != [[k for k, _, _ in n] for n in runs[1]]


def test_plain_webdataset_with_our_decoder_yields_the_stored_arrays(data):
    from openmind_prep.shards.zshard import decode_zshard, untar_key

    _, written, wds_dir = data
    urls = sorted(str(p) for p in wds_dir.glob("*.tar"))
    dataset = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node).decode(decode_zshard)
    seen = set()
    for sample in dataset:
        key = untar_key(sample["__key__"])
        seen.add(key)
        assert isinstance(sample["image.zshard"], np.ndarray)
        np.testing.assert_array_equal(sample["image.zshard"], written[key]["image"])
        for mask in ("anon_mask", "anat_mask"):
            if mask in written[key]:
                np.testing.assert_array_equal(sample[f"{mask}.zshard"], written[key][mask])
        assert sample["json"]["zarr_path"] == f"{key}/image"  # wds decodes json itself
    assert seen == set(written)


def test_sample_count_differing_from_the_index_and_escaping_shard_names_are_refused(data, tmp_path):
    import shutil

    _, _, wds_dir = data
    shutil.copytree(wds_dir, tmp_path / "wds")
    index = json.loads((tmp_path / "wds" / "index.json").read_text())
    index["shards"][0]["samples"] += 1  # the tar holds one sample fewer than the index says
    (tmp_path / "wds" / "index.json").write_text(json.dumps(index))
    with pytest.raises(CorruptShardError, match=rf"{index['shards'][0]['url']}.*samples, index says"):
        list(WebDatasetStream(str(tmp_path / "wds"), rank=0, world_size=1, shuffle_buffer=0))
    index["shards"][0]["url"] = "../elsewhere.tar"
    (tmp_path / "wds" / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="not a relative path"):
        WebDatasetStream(str(tmp_path / "wds"))
