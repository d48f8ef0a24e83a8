"""Batching variable-shaped volumes for :class:`loaders.OverlapViewSampler`.

Volumes (or regions) differ in shape, so a batch keeps them as lists instead of stacking:
``collate_volumes`` is the DataLoader's ``collate_fn``; ``DataLoader(pin_memory=True)`` then pins
every tensor in those lists; ``to_device`` moves the batch with non-blocking copies and casts the
images to float32 on the device (the float16 store halves host memory and PCIe traffic), giving
the list of ``[C, z, y, x]`` tensors the sampler takes.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from openmind_prep.store.schema import ARRAYS as VOLUMES
from openmind_prep.store.schema import IMAGE

OPTIONAL = tuple(name for name in VOLUMES if name != IMAGE)


def collate_volumes(samples: Sequence[dict[str, Any]]) -> dict[str, list]:
    """List of sample dicts → dict of lists (``key``, ``image``, ``anon_mask``, ``anat_mask``, ``label``,
    ``meta``; an optional array a sample lacks is ``None`` in its list).

    >>> a = {"key": "a", "image": torch.zeros(1, 2, 3, 4), "anon_mask": None, "anat_mask": None, "meta": {}}
    >>> b = {**a, "key": "b", "image": torch.zeros(1, 5, 5, 5)}
    >>> batch = collate_volumes([a, b])
    >>> batch["key"], [tuple(t.shape) for t in batch["image"]]
    (['a', 'b'], [(1, 2, 3, 4), (1, 5, 5, 5)])
    """
    if not samples:
        raise ValueError("collate_volumes: empty batch")
    return {name: [s.get(name) if name in OPTIONAL else s[name] for s in samples]
            for name in ("key", *VOLUMES, "meta")}


def to_device(batch: dict[str, list], device: str | torch.device, *, dtype: torch.dtype = torch.float32,
              non_blocking: bool = True) -> dict[str, list]:
    """Move a collated batch to ``device``; images become ``dtype`` there, masks and labels keep theirs.

    Pin host memory first (``DataLoader(pin_memory=True)``) for truly asynchronous copies.

    >>> batch = collate_volumes([{"key": "a", "image": torch.ones(1, 2, 2, 2, dtype=torch.float16),
    ...                           "anon_mask": None, "anat_mask": None, "meta": {}}])
    >>> to_device(batch, "cpu")["image"][0].dtype
    torch.float32
    """
    device = torch.device(device)
    out: dict[str, list] = {k: v for k, v in batch.items() if k not in VOLUMES}
    for name in VOLUMES:
        if name not in batch:
            continue
        moved = []
        for t in batch[name]:
            if t is None:
                moved.append(None)
                continue
            t = t.to(device, non_blocking=non_blocking)
            moved.append(t.to(dtype) if name == "image" else t)
        out[name] = moved
    return out
