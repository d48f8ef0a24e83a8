"""--view-augment: the reference fork's shared spatial transform (views differ by translation only) vs per view."""

from __future__ import annotations

import math

import pytest
import torch

from loaders import OverlapViewSampler
from loaders.geometry import draw_pair_geometry
from trainers import cva, losses

SHAPES = [(40, 44, 48)] * 6


def _draw(shared: bool, seed: int, **kw):
    return draw_pair_geometry(SHAPES, (16, 20, 24), shared=shared, generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("seed", range(5))
def test_shared_views_differ_by_translation_only(seed):
    g = _draw(True, seed, p_scale=1.0, p_rotate=1.0, max_rotation=math.pi)
    b = g.batch_size
    assert torch.equal(g.flips[:b], g.flips[b:]) and torch.equal(g.zooms[:b], g.zooms[b:])
    torch.testing.assert_close(g.affines[:b, :3, :3], g.affines[b:, :3, :3], rtol=0, atol=1e-12)  # same linear map
    assert (g.zooms != 1).all()  # p_scale 1: every pair zoomed, both views alike
    assert 0.4 - 1e-9 <= float(g.overlaps.min()) and float(g.overlaps.max()) <= 0.8 + 1e-9


def test_per_view_draws_mirrors_independently_and_shared_uses_the_same_random_numbers():
    per_view, shared = _draw(False, 0), _draw(True, 0)
    b = per_view.batch_size
    assert not torch.equal(per_view.flips[:b], per_view.flips[b:])  # 18 independent coin pairs: some differ
    assert torch.equal(shared.flips[:b], per_view.flips[:b]) and torch.equal(shared.zooms[:b], per_view.zooms[:b])
    torch.testing.assert_close(shared.rotations, per_view.rotations)  # rotation was always shared


def test_reference_rotations_cover_the_full_circle():
    angles = []
    for seed in range(20):
        rot = _draw(True, seed, p_rotate=1.0, max_rotation=math.pi).rotations
        angles += torch.rad2deg(torch.arccos(((rot.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1))).tolist()
    assert max(angles) > 120 and min(angles) < 60  # per-view mode stops at ±30° per axis


def test_shared_mirrored_views_show_the_same_anatomy_over_their_boxes():
    vol = torch.randn(4, 1, 40, 44, 48, generator=torch.Generator().manual_seed(1))
    sampler = OverlapViewSampler((16, 20, 24), flip=True, scale=False, rotate=False, intensity=False,
                                 mask_ratio=None, shared_spatial=True)
    pair = sampler(vol, generator=torch.Generator().manual_seed(2))
    assert pair.geometry.flips.any()
    a = losses.align_views(pair.views.double(), pair.boxes.double(), 4, 1)
    torch.testing.assert_close(a[:4], a[4:], rtol=0, atol=1e-5)  # float32 views


def test_trainer_flag_defaults_to_the_reference_recipe():
    ref = cva.view_sampler(cva.parse_args(["--store", "s", "--out", "o", "--arch", "tiny", "--patch-size", "32"]), True)
    assert ref.shared_spatial and math.isclose(ref.max_rotation, math.pi)
    per = cva.view_sampler(cva.parse_args(["--store", "s", "--out", "o", "--arch", "tiny", "--patch-size", "32",
                                           "--view-augment", "per-view"]), True)
    assert not per.shared_spatial and math.isclose(per.max_rotation, math.radians(30))


def test_reference_low_resolution_is_simulated_on_the_shared_region():
    """The fork's SimulateLowResolutionTransform runs on the region before the crops: with low-res drawn for a
    pair, both views still agree over their boxes (per-view simulation on each crop would not)."""
    from loaders.augment import draw_intensity

    vol = torch.randn(4, 1, 40, 44, 48, generator=torch.Generator().manual_seed(1))
    sampler = OverlapViewSampler((16, 20, 24), flip=False, scale=False, rotate=False, intensity=True,
                                 mask_ratio=None, shared_spatial=True)
    geometry, intensity, _ = sampler.draw([tuple(v.shape[1:]) for v in vol], 1, torch.Generator().manual_seed(2))
    assert torch.equal(intensity.lowres[:4], intensity.lowres[4:])  # one zoom per pair
    off = draw_intensity(8, 1, torch.Generator().manual_seed(0))
    ones = torch.ones(8, 1)
    only_lowres = type(off)(lowres=torch.tensor([[0.5]] * 8), noise=torch.zeros(8, dtype=torch.long),
                            noise_std=torch.zeros(8), seeds=off.seeds, blur=torch.zeros(8, 1), brightness=ones,
                            contrast=ones, gamma_inv=ones, gamma=ones)
    views = sampler.apply(vol, geometry, only_lowres)
    plain = sampler.apply(vol, geometry, None)
    assert not torch.allclose(views, plain)  # the low-res simulation changed the views
    boxes = geometry.boxes.double()
    a = losses.align_views(views.double(), boxes, 4, 1)
    torch.testing.assert_close(a[:4], a[4:], rtol=0, atol=1e-5)
    per_view = OverlapViewSampler((16, 20, 24), flip=False, scale=False, rotate=False, intensity=True,
                                  mask_ratio=None, shared_spatial=False).apply(vol, geometry, only_lowres)
    b = losses.align_views(per_view.double(), boxes, 4, 1)
    assert not torch.allclose(b[:4], b[4:], rtol=0, atol=1e-3)
