"""MAE block masks: a random fraction of patch blocks hidden per view, as nnssl's MAE does.

nnssl (``create_blocky_mask``) divides the patch into blocks of 16 voxels per axis, hides
``int(ratio * n_blocks)`` blocks chosen at random (a random permutation) and upsamples the block
grid to the patch by repetition; 1 = visible, 0 = hidden. Here the same, batched, with the
randomness passed in, and patch sizes that are not multiples of the block size allowed (the last
block of an axis is cut short).
"""

from __future__ import annotations

import torch
from torch import Tensor

from openmind_prep.core.hugepages import empty


def block_mask(
    n: int,
    patch_size: tuple[int, int, int],
    ratio: float = 0.75,
    block_size: int = 16,
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> Tensor:
    """``[n, 1, *patch_size]`` bool mask, True = visible, False = hidden (to be reconstructed).

    Exactly ``int(ratio * n_blocks)`` blocks of the ``ceil(patch / block_size)`` grid are hidden
    in each mask. The draw happens on the CPU (from ``generator``), the upsampling on ``device``.

    >>> m = block_mask(2, (32, 32, 48), 0.75, 16, generator=torch.Generator().manual_seed(0))
    >>> tuple(m.shape), (~m).float().mean().item()
    ((2, 1, 32, 32, 48), 0.75)
    """
    if not 0 <= ratio <= 1:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    grid = [-(-p // block_size) for p in patch_size]
    cells = grid[0] * grid[1] * grid[2]
    hidden = int(ratio * cells)
    order = torch.rand(n, cells, generator=generator).argsort(dim=1)  # a random permutation per mask
    visible = order >= hidden  # ranks below `hidden` are hidden
    m = visible.reshape(n, 1, *grid).to(device)
    for d in (4, 3):  # upsample one axis at a time, smallest first: each step copies whole rows
        m = m.index_select(d, torch.arange(patch_size[d - 2], device=m.device) // block_size)
    out = empty((n, 1, *patch_size), torch.bool, m.device)  # the large last step: huge pages on a CPU
    return torch.index_select(m, 2, torch.arange(patch_size[0], device=m.device) // block_size, out=out)


__all__ = ["block_mask"]
