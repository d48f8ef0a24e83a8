"""Per-view intensity augmentation on the device the views live on.

The list and probabilities follow the CVA fork's crop augmentations (batchgenerators): low-res
simulation (p=0.1, zoom 0.5-1, p per channel 0.5; with the fork's shared views once on the region both views
are cut from, :func:`shared_lowres`), Rician or Gaussian noise (one of them, p=0.1,
std 0-0.1), Gaussian blur (p=0.2, sigma 0.5-1, p per channel 0.5), multiplicative brightness
(p=0.15, 0.75-1.25), contrast (p=0.15, 0.75-1.25, range preserved), gamma on the inverted image
(p=0.1) and gamma (p=0.3), both 0.7-1.5 with mean and std retained.

Draw first (``draw_intensity``: small CPU tensors from a ``torch.Generator``), apply second
(``apply_intensity``); noise fields come from a device generator seeded by the drawn seeds,
so applying the same ``IntensityParams`` again gives the same views.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from loaders.geometry import split_range
from openmind_prep.core.separable import gaussian_matrix, separable


@dataclass(frozen=True, eq=False)
class IntensityParams:
    """Drawn intensity augmentation for ``N`` views with ``C`` channels; identity values = off.

    ``lowres`` ``[N, C]`` zoom (1 = off); ``noise`` ``[N]`` 0 none, 1 Gaussian, 2 Rician;
    ``noise_std`` ``[N]``; ``seeds`` ``[N]`` int64; ``blur`` ``[N, C]`` sigma (0 = off);
    ``brightness``, ``contrast`` ``[N, C]`` factors (1 = off); ``gamma_inv``, ``gamma``
    ``[N, C]`` exponents (1 = off).
    """

    lowres: Tensor
    noise: Tensor
    noise_std: Tensor
    seeds: Tensor
    blur: Tensor
    brightness: Tensor
    contrast: Tensor
    gamma_inv: Tensor
    gamma: Tensor


def draw_intensity(n: int, channels: int, generator: torch.Generator) -> IntensityParams:
    """Draw intensity augmentation parameters for ``n`` views (CPU, fixed draw order).

    >>> p = draw_intensity(8, 1, torch.Generator().manual_seed(0))
    >>> tuple(p.gamma.shape), bool(((p.gamma >= 0.7) & (p.gamma <= 1.5)).all())
    ((8, 1), True)
    """
    g = generator

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    c = channels
    u = {k: rand(n, c) for k in ("lr_pc", "lr", "bl_pc", "bl", "br", "ct_side", "ct",
                                  "gi_side", "gi", "g_side", "g")}
    v = {k: rand(n) for k in ("lr_p", "nz_p", "nz_kind", "nz", "bl_p", "br_p", "ct_p", "gi_p", "g_p")}
    seeds = torch.randint(0, 2**62, (n,), generator=g, dtype=torch.int64)

    def gate(p_sample: float, key: str, drawn: Tensor, off: float, u_channel: Tensor | None = None) -> Tensor:
        on = (v[key] < p_sample)[:, None]
        if u_channel is not None:  # p per channel 0.5
            on = on & (u_channel < 0.5)
        return torch.where(on, drawn, torch.full_like(drawn, off)).float()

    lowres = gate(0.1, "lr_p", 0.5 + 0.5 * u["lr"], 1.0, u["lr_pc"])
    noise_on = v["nz_p"] < 0.1
    noise = torch.where(noise_on, torch.where(v["nz_kind"] < 0.5, 2, 1), 0)
    return IntensityParams(
        lowres=lowres,
        noise=noise,
        noise_std=(0.1 * v["nz"]).float(),
        seeds=seeds,
        blur=gate(0.2, "bl_p", 0.5 + 0.5 * u["bl"], 0.0, u["bl_pc"]),
        brightness=gate(0.15, "br_p", 0.75 + 0.5 * u["br"], 1.0),
        contrast=gate(0.15, "ct_p", split_range(u["ct_side"], u["ct"], 0.75, 1.25), 1.0),
        gamma_inv=gate(0.1, "gi_p", split_range(u["gi_side"], u["gi"], 0.7, 1.5), 1.0),
        gamma=gate(0.3, "g_p", split_range(u["g_side"], u["g"], 0.7, 1.5), 1.0),
    )


def _blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of one ``[Z, Y, X]`` volume (scipy ``gaussian_filter``, mode 'nearest')."""
    return separable(x, tuple(gaussian_matrix(n, sigma) for n in x.shape))  # type: ignore[arg-type]


def _std_mean(x: Tensor) -> tuple[Tensor, Tensor]:
    """Unbiased std and mean, two-pass (``torch.std_mean`` within round-off, faster on a CPU).

    The sum of squares accumulates in float64: a float32 ``dot`` over a 160³ view drifts by ~6e-5
    relative (measured), more than ``torch.std_mean`` does.
    """
    mean = x.mean()
    d = (x - mean).reshape(-1)
    ss = torch.linalg.vector_norm(d, dtype=torch.float64).square()
    return (ss / max(d.numel() - 1, 1)).sqrt().to(x.dtype), mean


def _gamma_(x: Tensor, gamma: float, invert: bool) -> Tensor:
    """batchgenerators' gamma with retained mean and std (optionally on the inverted image), in place."""
    if invert:
        x.neg_()
    std, mean = _std_mean(x)
    lo, top = torch.aminmax(x)
    rng = top - lo
    # the reference's "* rng + lo" cancels in the re-standardisation below (exp(gamma log x) was
    # tried: log_ of the many background zeros is ~2x slower than pow_ on real MRI)
    x.sub_(lo).div_(rng + 1e-7).pow_(gamma)
    std2, mean2 = _std_mean(x)
    gain = std / (std2 + 1e-8)
    x.mul_(gain).add_(mean - mean2 * gain)  # (x - mean2) * gain + mean in two passes
    if invert:
        x.neg_()
    return x


def simulate_lowres_(volume: Tensor, zooms: Tensor) -> Tensor:
    """Low-resolution simulation in place on ``volume`` ``[C, Z, Y, X]``: channel ``c`` with ``zooms[c] < 1`` is
    downsampled (nearest) to that fraction and upsampled back (trilinear). Returns ``volume``.

    >>> v = torch.arange(8.0).view(1, 2, 2, 2)
    >>> simulate_lowres_(v.clone(), torch.tensor([0.5])).unique().numel(), simulate_lowres_(v.clone(), torch.ones(1)).equal(v)
    (1, True)
    """
    size = volume.shape[1:]
    for ch in range(volume.shape[0]):
        z = float(zooms[ch])
        if z < 1:
            small = [max(1, round(s * z)) for s in size]
            low = F.interpolate(volume[ch][None, None], size=small, mode="nearest")
            volume[ch] = F.interpolate(low, size=tuple(size), mode="trilinear", align_corners=False)[0, 0]
    return volume


def shared_lowres(params: IntensityParams) -> IntensityParams:
    """``params`` with each pair's low-res zoom the first view's for both views (rows ``i`` and ``i + B``), as
    the fork simulates low resolution once on the region both views are cut from.

    >>> p = shared_lowres(draw_intensity(4, 1, torch.Generator().manual_seed(3)))
    >>> torch.equal(p.lowres[:2], p.lowres[2:])
    True
    """
    b = params.lowres.shape[0] // 2
    return dataclasses.replace(params, lowres=torch.cat([params.lowres[:b], params.lowres[:b]]))


def apply_intensity(views: Tensor, params: IntensityParams, *, inplace: bool = False) -> Tensor:
    """Apply drawn intensity augmentation to ``views`` ``[N, C, Z, Y, X]`` (a copy unless ``inplace``).

    >>> v = torch.randn(2, 1, 8, 8, 8)
    >>> p = draw_intensity(2, 1, torch.Generator().manual_seed(1))
    >>> apply_intensity(v, p).shape
    torch.Size([2, 1, 8, 8, 8])
    """
    out = views if inplace else views.clone()
    n, c, *size = out.shape
    for i in range(n):
        simulate_lowres_(out[i], params.lowres[i])
        kind = int(params.noise[i])
        if kind:
            gen = torch.Generator(device=out.device).manual_seed(int(params.seeds[i]))
            std = float(params.noise_std[i])
            n1 = torch.randn(out[i].shape, generator=gen, device=out.device, dtype=out.dtype).mul_(std)
            if kind == 1:
                out[i] += n1
            else:
                n2 = torch.randn(out[i].shape, generator=gen, device=out.device, dtype=out.dtype).mul_(std)
                sign = torch.sign(out[i])
                out[i] = n1.add_(out[i]).square_().add_(n2.square_()).sqrt_().mul_(sign)
        for ch in range(c):
            x = out[i, ch]
            if float(params.blur[i, ch]) > 0:
                x.copy_(_blur(x, float(params.blur[i, ch])))
            if float(params.brightness[i, ch]) != 1:
                x.mul_(float(params.brightness[i, ch]))
            if float(params.contrast[i, ch]) != 1:
                mean, (lo, hi) = x.mean(), torch.aminmax(x)
                x.sub_(mean).mul_(float(params.contrast[i, ch])).add_(mean).clamp_(lo, hi)
            if float(params.gamma_inv[i, ch]) != 1:
                _gamma_(x, float(params.gamma_inv[i, ch]), invert=True)
            if float(params.gamma[i, ch]) != 1:
                _gamma_(x, float(params.gamma[i, ch]), invert=False)
    return out


__all__ = ["IntensityParams", "apply_intensity", "draw_intensity"]
