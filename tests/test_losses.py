"""CVA loss functions against known functions of position and naive reference implementations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainers import losses
from trainers.cva import update_teacher


def _ramps(shape=(6, 8, 10)) -> torch.Tensor:
    """[1, 3, Z, Y, X]: channel a = continuous normalised position along tensor axis 2 + a, each with its own slope."""
    x, y, z = shape
    u = [(torch.arange(n, dtype=torch.float64) + 0.5) / n for n in shape]
    f = torch.stack([
        1.0 * u[0].view(x, 1, 1).expand(x, y, z),
        -2.0 * u[1].view(1, y, 1).expand(x, y, z),
        3.0 * u[2].view(1, 1, z).expand(x, y, z),
    ])
    return f[None]


@pytest.mark.parametrize("samples_per_bin", [1, 2])
@pytest.mark.parametrize("box", [
    (0.2, 0.15, 0.1, 0.8, 0.45, 0.9),    # non-cubic
    (0.85, 0.2, 0.3, 0.3, 0.8, 0.5),     # x flipped
    (0.3, 0.9, 0.9, 0.6, 0.1, 0.2),      # y and z flipped, non-cubic
])
def test_align_views_returns_the_function_over_the_box(box, samples_per_bin):
    f = _ramps()
    o = 3
    got = losses.align_views(f, torch.tensor([box], dtype=torch.float64), o, samples_per_bin)[0]
    t = (torch.arange(o, dtype=torch.float64) + 0.5) / o
    ux, uy, uz = (box[a] + (box[a + 3] - box[a]) * t for a in range(3))
    want = torch.stack([
        1.0 * ux.view(o, 1, 1).expand(o, o, o),
        -2.0 * uy.view(1, o, 1).expand(o, o, o),
        3.0 * uz.view(1, 1, o).expand(o, o, o),
    ])
    torch.testing.assert_close(got, want, atol=1e-9, rtol=0)


def _two_views(c=5, flip_z=True):
    """A random feature field, view 1 = [0:12]³, view 2 = [4:16]³ (z mirrored), and their overlap boxes."""
    g = torch.Generator().manual_seed(0)
    field = torch.randn(1, c, 16, 16, 16, generator=g, dtype=torch.float64)
    v1 = field[:, :, 0:12, 0:12, 0:12]
    v2 = field[:, :, 4:16, 4:16, 4:16]
    v2 = v2.flip(4) if flip_z else v2
    b1 = [4 / 12, 4 / 12, 4 / 12, 1.0, 1.0, 1.0]
    b2 = [0.0, 0.0, 1.0, 8 / 12, 8 / 12, 4 / 12] if flip_z else [0.0, 0.0, 0.0, 8 / 12, 8 / 12, 8 / 12]
    return torch.cat([v1, v2]), torch.tensor([b1, b2], dtype=torch.float64)


def test_aligned_views_of_one_field_agree_and_cosine_is_zero():
    views, boxes = _two_views()
    a = losses.align_views(views, boxes, 4, 2)
    torch.testing.assert_close(a[0], a[1], atol=1e-9, rtol=0)
    assert abs(losses.aligned_cosine(a, a).item()) < 1e-9
    assert abs(losses.gram_consistency(a, a).item()) < 1e-12


def test_cosine_sees_a_wrong_box():
    views, boxes = _two_views()
    wrong = boxes.clone()
    wrong[1, [2, 5]] = wrong[1, [5, 2]]  # forget the mirror of view 2
    a = losses.align_views(views, wrong, 4, 2)
    assert losses.aligned_cosine(a, a).item() > 0.3


def test_aligned_cosine_is_symmetrised_two_minus_two_cos():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 6, 2, 2, 2, generator=g), torch.randn(4, 6, 2, 2, 2, generator=g)
    cos = lambda a, b: F.cosine_similarity(a, b, dim=1).mean()
    want = 0.5 * (2 - 2 * cos(s[:2], t[2:])) + 0.5 * (2 - 2 * cos(s[2:], t[:2]))
    torch.testing.assert_close(losses.aligned_cosine(s, t), want)


def _naive_nt_xent(a, b, tau, groups):
    z = F.normalize(torch.cat([a, b]).double(), dim=1)
    g = torch.cat([groups, groups]).tolist()
    n, total = a.shape[0], 0.0
    for r in range(2 * n):
        p = (r + n) % (2 * n)
        pos = math.exp(float(z[r] @ z[p]) / tau)
        neg = sum(math.exp(float(z[r] @ z[j]) / tau) for j in range(2 * n) if j != p and g[j] != g[r])
        total += -math.log(pos / (pos + neg))
    return total / (2 * n)


@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_nt_xent_equals_a_per_row_loop(tau):
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    groups = torch.tensor([0, 1, 2, 0, 1, 2])
    assert losses.nt_xent(a, b, tau, groups).item() == pytest.approx(_naive_nt_xent(a, b, tau, groups), rel=1e-5)
    no_groups = torch.arange(6)
    assert losses.nt_xent(a, b, tau).item() == pytest.approx(_naive_nt_xent(a, b, tau, no_groups), rel=1e-5)


def test_contrastive_vectors_pairs_student_view1_with_teacher_view2():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    t_swapped = torch.cat([t[2:], t[:2]])
    want = _naive_nt_xent(s, t_swapped, 0.5, torch.tensor([0, 1, 0, 1]))
    assert losses.contrastive_vectors(s, t).item() == pytest.approx(want, rel=1e-5)


def test_contrastive_voxels_equals_a_per_voxel_loop():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(4, 3, 2, 1, 2, generator=g), torch.randn(4, 3, 2, 1, 2, generator=g)
    rows_s, rows_t, groups = [], [], []
    for r in range(4):
        for v in range(4):
            i, k = divmod(v, 2)
            rows_s.append(s[r, :, i, 0, k])
            rows_t.append(t[(r + 2) % 4, :, i, 0, k])
            groups.append((r % 2) * 4 + v)
    want = _naive_nt_xent(torch.stack(rows_s), torch.stack(rows_t), 0.5, torch.tensor(groups))
    assert losses.contrastive_voxels(s, t).item() == pytest.approx(want, rel=1e-5)


def test_gram_consistency_equals_the_formula():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(2, 3, 2, 2, 2, generator=g), torch.randn(2, 3, 2, 2, 2, generator=g)
    want = 0.0
    for r in range(2):
        x = F.normalize(s[r].reshape(3, -1), dim=0)
        y = F.normalize(t[(r + 1) % 2].reshape(3, -1), dim=0)
        want += (x @ x.T - y @ y.T).pow(2).mean().item() / 2  # sums over the 8 voxels, not means
    assert losses.gram_consistency(s, t).item() == pytest.approx(want, rel=1e-5)


def test_masked_huber_averages_over_hidden_voxels_only():
    g = torch.Generator().manual_seed(6)
    p, t = torch.randn(2, 1, 4, 4, 4, generator=g) * 3, torch.randn(2, 1, 4, 4, 4, generator=g)
    hidden = torch.rand(2, 1, 4, 4, 4, generator=g) < 0.75
    want = F.huber_loss(p[hidden], t[hidden])
    torch.testing.assert_close(losses.masked_huber(p, t, hidden), want)
    torch.testing.assert_close(losses.masked_huber(p, t, None), F.huber_loss(p, t))


def test_ema_update_is_the_weighted_average():
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.clone() for p in teacher.parameters()]
    update_teacher(student, teacher, 0.995)
    for old, s, t in zip(before, student.parameters(), teacher.parameters()):
        torch.testing.assert_close(t, 0.995 * old + 0.005 * s, atol=1e-7, rtol=0)
        assert not torch.equal(t, old)
