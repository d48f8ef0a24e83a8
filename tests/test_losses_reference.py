"""Every loss term against the reference fork's formula, re-typed here in the fork's own structure.

The fork (Tenbatsu24/LatentCampus, ``nnssl/training/loss/aligned_mae_loss.py``) computes its terms
on ``[zjs, zis]`` similarity matrices with a "correlated mask" of excluded entries, and the Gram and
cosine terms on channel-normalised aligned features rolled by half the batch. The functions below
follow that structure (masks, ``roll``, sums divided by counts), not ours (``masked_fill``,
``swap_views``, groups), and each of our terms must equal them within 1e-5 relative on the same tensors.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainers import losses


def _fork_correlated_mask(b: int) -> torch.Tensor:
    """True = a negative: not self, not the positive (±b), not the same volume's other rows (±b/2)."""
    eye = torch.eye(2 * b, dtype=torch.uint8)
    mask = eye + eye.roll(-b, dims=1) + eye.roll(-b // 2, dims=1) + eye.roll(b // 2, dims=1)
    return (1 - mask).bool()


def _fork_ntxent(zis: torch.Tensor, zjs: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """The fork's NTXentLoss(using_teacher=True) on already swapped, L2-normalised inputs."""
    b = zis.shape[0]
    reps = torch.cat([zjs, zis]).double()
    sim = reps @ reps.T
    positives = torch.cat([torch.diag(sim, b), torch.diag(sim, -b)]).view(2 * b, 1)
    negatives = sim[_fork_correlated_mask(b)].view(2 * b, -1)
    logits = torch.cat([positives, negatives], dim=1) / tau
    labels = torch.zeros(2 * b, dtype=torch.long)
    return F.cross_entropy(logits, labels, reduction="sum") / (2 * b)


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_masked_huber_equals_the_forks():
    pred, target = _rand(4, 1, 6, 6, 6, seed=0) * 2, _rand(4, 1, 6, 6, 6, seed=1)
    visible = (_rand(4, 1, 6, 6, 6, seed=2) > 0.6).double()  # the fork's mask: 1 = visible
    huber = torch.where((pred - target).abs() < 1, 0.5 * (pred - target) ** 2, (pred - target).abs() - 0.5)
    eps = torch.finfo(torch.float64).eps
    want = (huber * (1 - visible)).sum() / ((1 - visible).sum() + eps)
    got = losses.masked_huber(pred, target, visible == 0)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    # the AE variant: the fork passes an all-zero mask (every voxel counts)
    want_ae = huber.sum() / (huber.numel() + eps)
    assert losses.masked_huber(pred, target, None).item() == pytest.approx(want_ae.item(), rel=1e-5)


def test_cva_cosine_equals_the_forks_cosine_regression():
    s, t = _rand(4, 16, 3, 3, 3, seed=3), _rand(4, 16, 3, 3, 3, seed=4)
    b = s.shape[0] // 2
    p, q = F.normalize(s, dim=1), F.normalize(t.roll(b, 0), dim=1)
    want = 2 - 2 * (p * q).sum(dim=1).mean()
    assert losses.aligned_cosine(s, t).item() == pytest.approx(want.item(), rel=1e-5)


def test_gram_equals_the_forks_gram_branch():
    s, t = _rand(4, 32, 4, 4, 4, seed=5), _rand(4, 32, 4, 4, 4, seed=6)
    b = s.shape[0] // 2
    p, q = F.normalize(s, dim=1), F.normalize(t.roll(b, 0), dim=1)
    x = p.flatten(2).transpose(1, 2)  # "b c x y z -> b (x y z) c"
    y = q.flatten(2).transpose(1, 2)
    want = torch.mean((torch.bmm(x.transpose(1, 2), x) - torch.bmm(y.transpose(1, 2), y)) ** 2)
    got = losses.gram_consistency(s, t)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    normalised = torch.mean(((torch.bmm(x.transpose(1, 2), x) - torch.bmm(y.transpose(1, 2), y)) / 64) ** 2)
    assert got.item() == pytest.approx(64**2 * normalised.item(), rel=1e-5)  # not divided by the voxel count
    assert got.item() > 1e-2 > 1e-4 > normalised.item()


def test_gram_cosine_is_the_cva_form_on_the_forks_gram_matrices():
    """``--gram-norm cosine``: 2 - 2 ⟨G_s, G_t⟩ / (‖G_s‖ ‖G_t‖) on the fork's own Gram matrices (bmm of the
    rolled, normalised features), the same for any channel width and voxel count, and in [0, 2]."""
    for c, v_edge, seed in ((32, 4, 9), (2048, 7, 10), (8, 2, 11)):
        s, t = _rand(4, c, v_edge, v_edge, v_edge, seed=seed), _rand(4, c, v_edge, v_edge, v_edge, seed=seed + 50)
        b = s.shape[0] // 2
        x = F.normalize(s, dim=1).flatten(2).transpose(1, 2)  # "b c x y z -> b (x y z) c"
        y = F.normalize(t.roll(b, 0), dim=1).flatten(2).transpose(1, 2)
        g_x, g_y = torch.bmm(x.transpose(1, 2), x), torch.bmm(y.transpose(1, 2), y)
        inner = (g_x * g_y).sum(dim=(1, 2))
        want = 2 - 2 * (inner / (g_x.pow(2).sum(dim=(1, 2)).sqrt() * g_y.pow(2).sum(dim=(1, 2)).sqrt())).mean()
        got = losses.gram_consistency(s, t, "cosine")
        assert got.item() == pytest.approx(want.item(), rel=1e-5)
        assert 0.0 <= got.item() <= 2.0
        assert inner.min() >= 0  # why the bound is 2: Gram matrices of real features never point apart
    s = torch.zeros(2, 3, 2, 2, 2)
    s[0, 0], s[1, 1] = 1.0, 1.0  # view 0 all channel 0, view 1 all channel 1
    assert losses.gram_consistency(s, s.roll(1, 0), "cosine").item() == pytest.approx(0.0, abs=1e-7)
    assert losses.gram_consistency(s, s, "cosine").item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="gram norm"):
        losses.gram_consistency(s, s, "unit-trace")


def test_ntxent_on_vectors_equals_the_forks():
    s, t = _rand(8, 24, seed=7), _rand(8, 24, seed=8)
    b = s.shape[0] // 2
    want = _fork_ntxent(F.normalize(s, dim=1), F.normalize(t.roll(b, 0), dim=1))
    assert losses.contrastive_vectors(s, t).item() == pytest.approx(want.item(), rel=1e-5)


def test_c_cva_equals_the_forks_fine_grained_contrastive():
    s, t = _rand(4, 8, 2, 3, 2, seed=9), _rand(4, 8, 2, 3, 2, seed=10)
    b = s.shape[0] // 2
    p, q = F.normalize(s, dim=1), F.normalize(t.roll(b, 0), dim=1)
    flat = lambda z: z.permute(0, 2, 3, 4, 1).reshape(-1, z.shape[1])  # "b c x y z -> (b x y z) c"
    want = _fork_ntxent(flat(p), flat(q))
    assert losses.contrastive_voxels(s, t).item() == pytest.approx(want.item(), rel=1e-5)
