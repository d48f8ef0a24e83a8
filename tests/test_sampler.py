"""Invariants of the overlapping-view sampler: the content under box 1 in view 1 is the content
under box 2 in view 2, overlap fractions stay in range, replays are bitwise, padding uses the
background value. Real MRI (nilearn's MNI152 template, downsampled and z-scored) where images matter.
"""

from __future__ import annotations

import os

import nibabel
import nilearn
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from loaders import OverlapViewSampler
from loaders.augment import IntensityParams, apply_intensity
from loaders.geometry import OverlapBox, box_grid, draw_pair_geometry
from loaders.masking import block_mask
from loaders.preview import save_views_png
from loaders.sampler import _resample

PATCH = (16, 20, 24)
SEEDS = range(24)
MNI = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data",
                   "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")


@pytest.fixture(scope="module")
def mri() -> torch.Tensor:
    """MNI152 T1 at 4 mm (49 x 58 x 47), z-scored over the whole box like onemmiso: [1, i, j, k]
    (nibabel's voxel order; the sampler does not care which axis is which)."""
    v = torch.tensor(nibabel.load(MNI).get_fdata(), dtype=torch.float32)
    v = F.avg_pool3d(v[None, None], 4, ceil_mode=True)[0]
    return (v - v.mean()) / v.std()


def _under_box(views: torch.Tensor, boxes: torch.Tensor, m: int = 7) -> torch.Tensor:
    """Resample every view over its box, trilinear, at m x m x m points per view.

    Fraction t of the way from box start to box end is the same anatomy in both views of a pair.
    Points within half a voxel of a view's edge would blend in grid_sample's zero padding, so each
    pair is sampled at t in [margin, 1 - margin] with margin = half a voxel of its narrowest extent.
    """
    b = views.shape[0] // 2
    size = torch.tensor(views.shape[2:], dtype=torch.float64)
    extent = (boxes[:, 3:] - boxes[:, :3]).double().abs() * size  # voxels
    margin = (0.5 / extent).amax(1).clamp(max=0.45) + 1e-3
    margin = torch.maximum(margin[:b], margin[b:]).repeat(2)[:, None]
    s, e = boxes[:, :3].double(), boxes[:, 3:].double()
    lo, hi = s + (e - s) * margin, s + (e - s) * (1 - margin)
    half = (hi - lo) / (2 * (m - 1))  # box_grid samples at (i + 0.5) / m: stretch to hit lo..hi
    grid = box_grid(torch.cat([lo - half, hi + half], 1), (m, m, m)).float()
    return F.grid_sample(views.float(), grid, mode="bilinear", align_corners=False)


def _directions(geometry) -> torch.Tensor:
    """Per volume and axis: sign of (view-2 centre - view-1 centre) in source voxels."""
    p = torch.tensor(geometry.patch_size, dtype=torch.float64)
    centre = torch.cat([(p - 1) / 2, torch.ones(1, dtype=torch.float64)])
    c = (geometry.affines @ centre)[:, :3]
    b = geometry.batch_size
    return torch.sign(c[b:] - c[:b])


def test_crops_and_flips_match_exactly_on_mri(mri):
    sampler = OverlapViewSampler(PATCH, flip=True, scale=False, rotate=False, intensity=False)
    seen, flipped = set(), 0
    for seed in SEEDS:
        r = sampler(mri[None].expand(3, -1, -1, -1, -1), generator=torch.Generator().manual_seed(seed))
        a = _under_box(r.views, r.boxes)
        assert (a[:3] - a[3:]).abs().max() <= 1e-5
        assert a[:3].std() > 0.1  # the boxes hold anatomy, not only background
        assert all(r.geometry.is_crop(i) for i in range(6))
        flipped += int(r.geometry.flips.any())
        dirs = _directions(r.geometry)
        seen |= {(d, float(dirs[b, d])) for b in range(3) for d in range(3)}
    assert {(d, s) for d in range(3) for s in (-1.0, 1.0)} <= seen, "both displacement directions per axis"
    assert flipped > 0


def test_boxes_are_voxel_aligned_slices_for_crops(mri):
    sampler = OverlapViewSampler(PATCH, scale=False, rotate=False, intensity=False)
    for seed in SEEDS:
        r = sampler(mri[None], generator=torch.Generator().manual_seed(seed))
        b1, b2 = r.geometry.box(0), r.geometry.box(1)
        s1, s2 = b1.to_slices(PATCH), b2.to_slices(PATCH)
        c1, c2 = r.views[0, 0][s1], r.views[1, 0][s2]
        flip = [d for d in range(3) if b1.flipped[d] != b2.flipped[d]]
        assert torch.equal(c1.flip(flip) if flip else c1, c2)
        vox = [s.stop - s.start for s in s1]
        assert abs(vox[0] * vox[1] * vox[2] / (PATCH[0] * PATCH[1] * PATCH[2]) - float(r.overlaps[0])) < 1e-6


def test_crop_path_equals_grid_sample_path(mri):
    """The whole-voxel copy and the trilinear resampling are two independent ways to cut a crop."""
    sampler = OverlapViewSampler(PATCH, scale=False, rotate=False, intensity=False)
    small = mri[:, :14, :, 5:30]  # smaller than the patch on two axes: padding on both paths
    for seed in range(8):
        r = sampler([mri, small], generator=torch.Generator().manual_seed(seed))
        for row, vol in enumerate([mri, small, mri, small]):
            ref = torch.empty(1, *PATCH)
            _resample(vol, r.geometry.affines[row], ref, lambda: vol.amin(dim=(1, 2, 3)))
            assert (ref - r.views[row]).abs().max() < 1e-4


@pytest.mark.parametrize("patch", [(16, 20, 24), (24, 12, 18)])
def test_scaled_and_rotated_views_are_exact_on_a_linear_volume(patch):
    """Trilinear interpolation reproduces a linear volume exactly, so any mismatch is geometry."""
    shape = (70, 64, 58)
    coords = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    ramp = (0.7 * coords[0] - 0.4 * coords[1] + 0.25 * coords[2])[None]
    sampler = OverlapViewSampler(patch, p_scale=1.0, p_rotate=1.0, intensity=False, scale_range=(0.7, 1.4))
    for seed in range(16):
        r = sampler(ramp[None], generator=torch.Generator().manual_seed(seed))
        assert not r.geometry.is_crop(0) and not r.geometry.is_crop(1)
        # view voxel value = ramp at affine(voxel): checks the affines
        idx = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in patch], indexing="ij"), -1)
        for row in range(2):
            src = idx @ r.affines[row][:3, :3].T + r.affines[row][:3, 3]
            want = 0.7 * src[..., 0] - 0.4 * src[..., 1] + 0.25 * src[..., 2]
            assert (want - r.views[row, 0].double()).abs().max() < 1e-3
        a = _under_box(r.views, r.boxes)
        assert (a[0] - a[1]).abs().max() < 1e-3


def test_scaled_and_rotated_views_agree_on_mri(mri):
    """With zoom and rotation the two routes to the overlap differ only by interpolation."""
    sampler = OverlapViewSampler(PATCH, p_scale=1.0, p_rotate=1.0, intensity=False)
    for seed in range(12):
        r = sampler(mri[None].expand(2, -1, -1, -1, -1), generator=torch.Generator().manual_seed(seed))
        a = _under_box(r.views, r.boxes)
        diff = (a[:2] - a[2:]).abs().mean()
        assert diff < 0.15 * a.std()
        assert torch.corrcoef(torch.stack([a[:2].flatten(), a[2:].flatten()]))[0, 1] > 0.9
        # a wrong box (shifted by a quarter) is clearly worse: the test can fail
        wrong = r.boxes.clone()
        wrong[2:, [0, 3]] += 0.25
        w = _under_box(r.views, wrong)
        assert (a[:2] - w[2:]).abs().mean() > 2 * diff


def test_overlap_fractions_stay_in_range():
    shapes = [(40, 44, 48), (12, 50, 30), (200, 60, 61)]
    for lo, hi in [(0.4, 0.8), (0.2, 0.3), (0.9, 1.0)]:
        for scale in (False, True):
            for seed in range(30):
                g = draw_pair_geometry(shapes, (16, 20, 24), min_overlap=lo, max_overlap=hi,
                                       scale_range=(0.7, 1.4) if scale else None, p_scale=0.5,
                                       generator=torch.Generator().manual_seed(seed))
                assert ((g.overlaps >= lo - 1e-9) & (g.overlaps <= hi + 1e-9)).all(), (lo, hi, g.overlaps)
                ext = (g.boxes[:, 3:] - g.boxes[:, :3]).abs().prod(1)
                assert torch.allclose(torch.maximum(ext[:3], ext[3:]), g.overlaps)  # smaller view's share


def test_replay_is_bitwise_and_seeds_matter(mri):
    sampler = OverlapViewSampler(PATCH, p_scale=0.5, p_rotate=0.5)
    vols = [mri, mri[:, 3:40, 10:, :30]]
    r = sampler(vols, generator=torch.Generator().manual_seed(5))
    assert torch.equal(sampler.apply(vols, r.geometry, r.intensity), r.views)
    again = sampler(vols, generator=torch.Generator().manual_seed(5))
    assert torch.equal(again.views, r.views) and torch.equal(again.masks, r.masks)
    other = sampler(vols, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(other.views, r.views)
    with pytest.raises(ValueError, match="do not match"):
        sampler.apply([mri], r.geometry)


def test_padding_uses_the_background_value(mri):
    """A volume smaller than the patch is padded with its minimum (z-scored zero), boxes stay exact."""
    tiny = mri[:, 20:30, 25:33, 18:40] + 0.0  # 10 x 8 x 22, smaller than 16 x 20 x 24
    bg = float(mri.min())
    assert bg < -0.5  # z-scored background is far from 0, so padding with 0 would show
    sampler = OverlapViewSampler(PATCH, scale=False, rotate=False, intensity=False)
    for seed in range(10):
        r = sampler([tiny], generator=torch.Generator().manual_seed(seed))
        for row in range(2):
            inside = torch.zeros(PATCH, dtype=torch.bool)
            a = r.affines[row]
            sl = []
            for d in range(3):
                idx = a[d, d] * torch.arange(PATCH[d], dtype=torch.float64) + a[d, 3]
                sl.append((idx >= 0) & (idx < tiny.shape[1 + d]))
            inside = sl[0][:, None, None] & sl[1][None, :, None] & sl[2][None, None, :]
            assert (~inside).any()
            assert torch.all(r.views[row, 0][~inside] == float(tiny.min()))
        a = _under_box(r.views, r.boxes)
        assert (a[0] - a[1]).abs().max() <= 1e-5
    # an explicit pad value is honoured
    r = OverlapViewSampler(PATCH, scale=False, rotate=False, intensity=False, pad_value=3.5)(
        [tiny], generator=torch.Generator().manual_seed(0))
    assert (r.views == 3.5).any() and float(tiny.max()) < 3.5


def test_list_input_of_different_shapes(mri):
    vols = [mri, mri[:, :30, 5:50, 10:], torch.flip(mri, [1])[:, :, :25]]
    r = OverlapViewSampler(PATCH, scale=False, rotate=False, intensity=False)(
        vols, generator=torch.Generator().manual_seed(2))
    assert r.views.shape == (6, 1, *PATCH) and r.boxes.shape == (6, 6) and r.affines.shape == (6, 4, 4)
    a = _under_box(r.views, r.boxes)
    assert (a[:3] - a[3:]).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="volume 1"):
        OverlapViewSampler(PATCH)([mri, mri[0]])


def test_mask_ratio_holds():
    g = torch.Generator().manual_seed(0)
    for patch, block in [((32, 32, 48), 16), ((16, 20, 24), 4), ((160, 160, 160), 16)]:
        m = block_mask(6, patch, 0.75, block, generator=g)
        cells = [-(-p // block) for p in patch]
        n = cells[0] * cells[1] * cells[2]
        small = m[:, 0, ::block, ::block, ::block]  # one voxel per block
        assert small.shape[1:] == tuple(cells)
        hidden = (~small).flatten(1).sum(1)
        assert torch.all(hidden == int(0.75 * n))
        assert not torch.equal(m[0], m[1])
    r = OverlapViewSampler(PATCH, mask_ratio=0.5, mask_block=4)(torch.randn(2, 1, 30, 30, 30), generator=g)
    assert r.masks.shape == (4, 1, *PATCH) and r.masks.dtype == torch.bool
    assert OverlapViewSampler(PATCH, mask_ratio=None)(torch.randn(1, 1, 30, 30, 30), generator=g).masks is None


def _params(n: int, **over) -> IntensityParams:
    base = dict(lowres=torch.ones(n, 1), noise=torch.zeros(n, dtype=torch.long), noise_std=torch.zeros(n),
                seeds=torch.arange(n), blur=torch.zeros(n, 1), brightness=torch.ones(n, 1),
                contrast=torch.ones(n, 1), gamma_inv=torch.ones(n, 1), gamma=torch.ones(n, 1))
    base.update(over)
    return IntensityParams(**base)


def test_intensity_augmentations(mri):
    v = mri[None, :, 10:26, 10:30, 10:34].contiguous()
    assert torch.equal(apply_intensity(v, _params(1)), v)  # identity parameters change nothing
    assert torch.allclose(apply_intensity(v, _params(1, brightness=torch.tensor([[1.2]]))), v * 1.2)
    c = apply_intensity(v, _params(1, contrast=torch.tensor([[1.25]])))
    assert c.min() >= v.min() and c.max() <= v.max() and c.std() > v.std()
    for key in ("gamma", "gamma_inv"):
        gm = apply_intensity(v, _params(1, **{key: torch.tensor([[1.4]])}))
        assert not torch.allclose(gm, v)
        assert abs(gm.mean() - v.mean()) < 1e-4 and abs(gm.std() - v.std()) < 1e-3
    bl = apply_intensity(v, _params(1, blur=torch.tensor([[1.0]])))
    assert (bl - bl.mean()).abs().mean() < (v - v.mean()).abs().mean() and abs(bl.mean() - v.mean()) < 0.05
    nz = apply_intensity(v, _params(1, noise=torch.tensor([1]), noise_std=torch.tensor([0.05])))
    assert abs(float((nz - v).std()) - 0.05) < 0.005
    lr = apply_intensity(v, _params(1, lowres=torch.tensor([[0.5]])))
    assert lr.shape == v.shape and not torch.allclose(lr, v)


def test_blur_matches_scipy(mri):
    """The matrix-product blur equals scipy's gaussian_filter with edge replication (mode='nearest')."""
    from scipy.ndimage import gaussian_filter

    v = mri[None, :, 10:26, 10:30, 10:34].contiguous()
    for sigma in (0.5, 0.8, 1.0):
        ours = apply_intensity(v, _params(1, blur=torch.tensor([[sigma]])))[0, 0].double()
        ref = torch.from_numpy(gaussian_filter(v[0, 0].double().numpy(), sigma, mode="nearest", truncate=4.0))
        assert (ours - ref).abs().max() < 1e-5


def test_intensity_switch_and_default_draw(mri):
    vols = mri[None].expand(8, -1, -1, -1, -1)
    off = OverlapViewSampler(PATCH, intensity=False)(vols, generator=torch.Generator().manual_seed(1))
    on = OverlapViewSampler(PATCH, intensity=True)(vols, generator=torch.Generator().manual_seed(1))
    assert off.intensity is None and on.intensity is not None
    changed = [not torch.equal(on.views[i], off.views[i]) for i in range(16)]
    assert any(changed) and not all(changed)  # probabilities < 1: some views untouched


def test_save_views_png(mri, tmp_path):
    r = OverlapViewSampler(PATCH)(mri[None].expand(3, -1, -1, -1, -1), generator=torch.Generator().manual_seed(0))
    path = save_views_png(r, tmp_path / "out" / "views.png", n=2, dpi=50, panel_inches=2.0)
    with Image.open(path) as im:
        # 2 pairs as rows of 6 panels (no source given), 2-inch panels at 50 dpi, 0.08-inch gaps,
        # a 0.75-inch header (legend) and 0.35-inch row labels
        width, height = 0.35 + 6 * 2.0 + 5 * 0.08 + 0.1, 0.75 + 2 * 2.0 + 0.08 + 0.1
        assert im.format == "PNG" and abs(im.size[0] - width * 50) <= 1 and abs(im.size[1] - height * 50) <= 1
        assert len(im.convert("L").getcolors(maxcolors=256) or ()) > 20  # an image, not a blank canvas


def test_overlap_box_value_object():
    box = OverlapBox(start=(0.25, 1.0, 0.0), end=(0.75, 0.5, 0.5))
    assert box.flipped == (False, True, False)
    assert box.to_slices((16, 20, 24)) == (slice(4, 12), slice(10, 20), slice(0, 12))
    with pytest.raises(ValueError, match="voxel-aligned"):
        OverlapBox(start=(0.1, 0.0, 0.0), end=(0.5, 0.5, 0.5)).to_slices((16, 20, 24))


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match=r"\[B, C, Z, Y, X\]"):
        OverlapViewSampler(PATCH)(torch.randn(1, 30, 30, 30))
    with pytest.raises(ValueError, match="min_overlap"):
        OverlapViewSampler(PATCH, min_overlap=0.9, max_overlap=0.5)(torch.randn(1, 1, 30, 30, 30))


def _assert_route_equals_grid_sample(mri, sampler, route, tolerance: float, rotated: bool) -> None:
    """Every view the sampler cut (of a large and a small volume, 10 seeds) equals the 3-D
    grid_sample route within ``tolerance``, is bitwise what ``route`` gives (the sampler took it),
    and some views reach outside their volume, so padding is compared too."""
    small = mri[:, :14, :, 5:30]
    seen_pad = False
    for seed in range(10):
        r = sampler([mri, small], generator=torch.Generator().manual_seed(seed))
        for row, vol in enumerate([mri, small, mri, small]):
            assert r.geometry.is_axis_aligned(row) != rotated and not r.geometry.is_crop(row)
            ref, got = torch.empty(1, *PATCH), torch.empty(1, *PATCH)
            pad = lambda: vol.amin(dim=(1, 2, 3))  # noqa: E731
            _resample(vol, r.geometry.affines[row], ref, pad)
            route(vol, r.geometry.affines[row], got, pad)
            assert (ref - got).abs().max() < tolerance
            assert torch.equal(got, r.views[row])
            a = r.geometry.affines[row]
            corners = torch.tensor([[i, j, k] for i in (0, PATCH[0] - 1) for j in (0, PATCH[1] - 1)
                                    for k in (0, PATCH[2] - 1)], dtype=torch.float64) @ a[:3, :3].T + a[:3, 3]
            seen_pad |= bool((corners < 0).any() or (corners > torch.tensor(vol.shape[1:]) - 1).any())
    assert seen_pad


def test_separable_route_equals_grid_sample_route(mri):
    """Unrotated zoomed (and mirrored) views take banded per-axis matrix products; the grid_sample
    route is the independent reference, including views that leave the volume (padding)."""
    from loaders.sampler import _resample_separable

    sampler = OverlapViewSampler(PATCH, p_scale=1.0, rotate=False, intensity=False)
    _assert_route_equals_grid_sample(mri, sampler, _resample_separable, 1e-4, rotated=False)


def test_separable_route_matches_scipy_float64(mri):
    """Against scipy's float64 trilinear interpolation (map_coordinates order 1) at the affine's points."""
    from scipy.ndimage import map_coordinates

    from loaders.sampler import _resample_separable

    sampler = OverlapViewSampler(PATCH, p_scale=1.0, rotate=False, intensity=False)
    vol = mri[:, :, :, :].contiguous()
    idx = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in PATCH], indexing="ij"), -1)
    checked = 0
    for seed in range(12):
        r = sampler([vol], generator=torch.Generator().manual_seed(seed))
        for row in range(2):
            a = r.affines[row]
            src = idx @ a[:3, :3].T + a[:3, 3]
            if (src < 0).any() or (src > torch.tensor(vol.shape[1:], dtype=torch.float64) - 1).any():
                continue  # padded views are covered by the grid_sample comparison
            want = map_coordinates(vol[0].double().numpy(), src.permute(3, 0, 1, 2).numpy(), order=1)
            got = torch.empty(1, *PATCH)
            _resample_separable(vol, a, got, lambda: vol.amin(dim=(1, 2, 3)))
            assert (got[0].double() - torch.from_numpy(want)).abs().max() < 2e-5
            checked += 1
    assert checked >= 6


def test_separable_operators():
    from openmind_prep.core.separable import band_blocks, gaussian_matrix, linear_matrix, separable

    g = torch.Generator().manual_seed(0)
    x = torch.randn(13, 17, 11, generator=g, dtype=torch.float64)
    mats = (linear_matrix(9, 13, 1.3, 0.4), gaussian_matrix(17, 0.9), linear_matrix(20, 11, -0.45, 10.2))
    dense = torch.einsum("ai,bj,ck,ijk->abc", *mats, x)  # the Kronecker product, written out
    assert torch.allclose(separable(x, mats), dense, atol=1e-12)
    m = linear_matrix(40, 30, 0.7, 2.0)
    blocks = band_blocks(m, dtype=torch.float64, rows=8)
    rebuilt = torch.zeros_like(m)
    for r0, r1, c0, c1, w in blocks:
        rebuilt[r0:r1, c0:c1] = w
    assert torch.equal(rebuilt, m) and max(c1 - c0 for _, _, c0, c1, _ in blocks) <= 8
    assert torch.allclose(m.sum(1), torch.ones(40, dtype=torch.float64))
    with pytest.raises(ValueError, match="does not fit"):
        separable(x, (mats[1], None, None))


def test_fast_statistics_and_masks_equal_the_plain_forms(mri):
    from loaders.augment import _std_mean

    v = mri[0, 5:40, 3:50, 2:40].contiguous()
    s, m = _std_mean(v)
    s_ref, m_ref = torch.std_mean(v.double())
    assert abs(float(s) - float(s_ref)) < 1e-5 and abs(float(m) - float(m_ref)) < 1e-5
    g = torch.Generator().manual_seed(3)
    for patch, block in [((40, 24, 33), 8), ((32, 32, 48), 16)]:
        mask = block_mask(3, patch, 0.6, block, generator=torch.Generator().manual_seed(3))
        grid = [-(-p // block) for p in patch]
        order = torch.rand(3, grid[0] * grid[1] * grid[2], generator=g.manual_seed(3)).argsort(dim=1)
        small = (order >= int(0.6 * grid[0] * grid[1] * grid[2])).reshape(3, 1, *grid)
        for d in (2, 3, 4):
            small = small.repeat_interleave(block, dim=d)
        assert torch.equal(mask, small[:, :, :patch[0], :patch[1], :patch[2]])


def test_stacked_route_equals_grid_sample_route(mri):
    """Rotated views on a CPU take the stacked-plane 2-D kernel + lerp in x; the 3-D grid_sample
    route is the independent reference (zoom, mirrors and views leaving the volume included)."""
    from loaders.sampler import _resample_stacked

    sampler = OverlapViewSampler(PATCH, p_scale=0.5, p_rotate=1.0, intensity=False)
    _assert_route_equals_grid_sample(mri, sampler, _resample_stacked, 1e-3, rotated=True)


def test_huge_page_buffers():
    import gc
    import mmap

    from openmind_prep.core.hugepages import MIN_BYTES, empty

    x = empty((3, MIN_BYTES // 4), torch.float32)
    x.copy_(torch.arange(x.numel(), dtype=torch.float32).reshape(x.shape))
    gc.collect()
    _ = [torch.ones(MIN_BYTES // 4) for _ in range(4)]  # reuse of freed memory would show
    assert torch.equal(x, torch.arange(x.numel(), dtype=torch.float32).reshape(x.shape))
    assert x.is_contiguous() and x.dtype == torch.float32
    if hasattr(mmap, "MADV_HUGEPAGE"):
        assert x.data_ptr() % (2 << 20) == 0  # aligned to a huge page
    small = empty((5, 2), torch.bool)
    assert small.shape == (5, 2) and small.dtype == torch.bool
