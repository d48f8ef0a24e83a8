"""Loaders: streaming readers of the preprocessed store and the overlapping-view sampler."""

from loaders.sampler import OverlapViewSampler, ViewPair

__all__ = ["OverlapViewSampler", "ViewPair"]
