"""Loaders: streaming readers of the preprocessed store and the overlapping-view sampler."""

from loaders.sampler import OverlapViewSampler, ViewPair
from loaders.collate import collate_volumes, to_device
from loaders.webdataset_stream import CorruptShardError, WebDatasetStream
from loaders.zarr_dataset import RegionSampler, ZarrVolumeDataset
from loaders.batches import BatchSource, batch_source

__all__ = ["OverlapViewSampler", "ViewPair", "collate_volumes", "to_device", "CorruptShardError", "WebDatasetStream",
           "RegionSampler", "ZarrVolumeDataset", "BatchSource", "batch_source"]
