"""Loaders that forgive: the store's dtypes straight into the sampler, small stores streamed by
several DataLoader workers with the default shard size, regions larger than the volume."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from _store_builder import build_store
from loaders import OverlapViewSampler, WebDatasetStream, ZarrVolumeDataset, collate_volumes
from openmind_prep.shards.writer import auto_shard_size, merge_index, write_shards


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, dict]:
    return build_store(tmp_path_factory.mktemp("forgive") / "store")


@pytest.mark.parametrize("spatial", [0.0, 1.0], ids=["crops", "zoom+rotation"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.uint8])
def test_sampler_takes_store_dtypes_and_equals_the_float32_route(dtype, spatial):
    """float16 / bfloat16 / uint8 volumes give float32 views equal, bit for bit, to those of the
    same volumes converted to float32 first (what callers had to do by hand)."""
    g = torch.Generator().manual_seed(1)
    vols = [(torch.rand(1, 30, 34, 28, generator=g) * 200).to(dtype) for _ in range(2)]
    sampler = OverlapViewSampler((16, 16, 16), p_rotate=spatial, p_scale=spatial)
    got = sampler(vols, generator=torch.Generator().manual_seed(7))
    ref = sampler([v.float() for v in vols], generator=torch.Generator().manual_seed(7))
    assert got.views.dtype == torch.float32
    assert torch.equal(got.views, ref.views) and torch.equal(got.boxes, ref.boxes)
    assert torch.equal(sampler.apply(vols, got.geometry, got.intensity), got.views)  # replay, too


def test_sampler_takes_a_dataloader_batch_of_the_float16_store(store):
    """A DataLoader batch of the real store (float16 and float32 volumes, collated as lists) goes
    into the sampler unchanged."""
    root, written = store
    ds = ZarrVolumeDataset(root, masks=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_volumes)
    batch = next(iter(loader))
    assert {v.dtype for v in batch["image"]} == {torch.float16, torch.float32}
    pair = OverlapViewSampler((24, 24, 24))(batch["image"], generator=torch.Generator().manual_seed(0))
    assert pair.views.shape == (6, 1, 24, 24, 24) and pair.views.dtype == torch.float32
    assert torch.isfinite(pair.views).all()


def test_sampler_refuses_non_volumes_with_the_reason():
    with pytest.raises(ValueError, match=r"volume 0 must be a real \[C, Z, Y, X\] tensor, got torch.bool"):
        OverlapViewSampler((8, 8, 8))([torch.zeros(1, 9, 9, 9, dtype=torch.bool)])
    with pytest.raises(ValueError, match=r"\[B, C, Z, Y, X\]"):
        OverlapViewSampler((8, 8, 8))(torch.zeros(9, 9, 9))


def test_default_shard_size_lets_a_small_store_stream_with_several_workers(store, tmp_path):
    """The default (auto) shard size gives one shard per image below 16 images, so a DataLoader with
    2 workers streams each image exactly once; a 1 GB size gives 1 shard and is refused."""
    root, written = store
    shards = write_shards(root, tmp_path / "wds", progress=False)
    merge_index(tmp_path / "wds")
    assert len(shards) == len(written) == 8
    stream = WebDatasetStream(str(tmp_path / "wds" / "index.json"), seed=0, rank=0, world_size=1,
                              shuffle_buffer=2, masks=False)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    assert Counter(s["key"] for s in loader) == Counter(list(written))

    one = write_shards(root, tmp_path / "one", shard_size=10**9, progress=False)
    merge_index(tmp_path / "one")
    assert len(one) == 1
    stream = WebDatasetStream(str(tmp_path / "one" / "index.json"), rank=0, world_size=1, worker=0, num_workers=2)
    with pytest.raises(ValueError, match="1 shards cannot feed 1 nodes x 2 workers"):
        next(iter(stream))


def test_auto_shard_size_against_its_formula():
    rng = np.random.default_rng(0)
    for n in (1, 5, 16, 17, 300):
        sizes = [int(s) for s in rng.integers(10**5, 10**7, size=n)]
        # re-typed: up to 16 samples one per shard (size 1), else total / 16 rounded up, never above 1 GB
        assert auto_shard_size(sizes) == (1 if n <= 16 else max(1, min(10**9, -(-sum(sizes) // 16))))
    assert auto_shard_size([3 * 10**8] * 1000) == 10**9


def test_region_larger_than_the_volume_is_clipped_and_says_so(store):
    """``ds[i, region]`` with a region beyond the volume returns the part inside it (docs/loaders.md:
    'Regions larger than the volume'); ``meta`` names the region read and the volume's shape."""
    root, written = store
    ds = ZarrVolumeDataset(root, masks=False)
    shape = ds.shape(0)
    big = tuple(slice(-10, n + 30) for n in shape)
    sample = ds[0, big]
    assert tuple(sample["image"].shape[1:]) == shape
    assert sample["meta"]["region"] == [[0, n] for n in shape] and sample["meta"]["volume_shape"] == list(shape)
    np.testing.assert_array_equal(sample["image"][0].numpy(), written[ds.keys[0]]["image"])
