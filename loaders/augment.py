"""Per-view intensity augmentation on the device the views live on.

The list and probabilities follow the CVA fork's crop augmentations (batchgenerators): low-res
simulation (p=0.1, zoom 0.5-1, p per channel 0.5), Rician or Gaussian noise (one of them, p=0.1,
std 0-0.1), Gaussian blur (p=0.2, sigma 0.5-1, p per channel 0.5), multiplicative brightness
(p=0.15, 0.75-1.25), contrast (p=0.15, 0.75-1.25, range preserved), gamma on the inverted image
(p=0.1) and gamma (p=0.3), both 0.7-1.5 with mean and std retained.

Draw first (``draw_intensity``: small CPU tensors from a ``torch.Generator``), apply second
(``apply_intensity``); noise fields come from a device generator seeded by the drawn seeds,
so applying the same ``IntensityParams`` again gives the same views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


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


def _split_range(u_side: Tensor, u: Tensor, lo: float, hi: float) -> Tensor:
    """batchgenerators' draw: half the time below 1, half above (when the range straddles 1)."""
    below = lo + (min(1.0, hi) - lo) * u
    above = max(lo, 1.0) + (hi - max(lo, 1.0)) * u
    return torch.where((u_side < 0.5) & (lo < 1), below, above)


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
        contrast=gate(0.15, "ct_p", _split_range(u["ct_side"], u["ct"], 0.75, 1.25), 1.0),
        gamma_inv=gate(0.1, "gi_p", _split_range(u["gi_side"], u["gi"], 0.7, 1.5), 1.0),
        gamma=gate(0.3, "g_p", _split_range(u["g_side"], u["g"], 0.7, 1.5), 1.0),
    )


def _blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of one ``[X, Y, Z]`` volume (truncate 4 sigma, edges replicated)."""
    r = max(1, int(4 * sigma + 0.5))
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    y = x[None, None]
    for d in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + d] = 2 * r + 1
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - d)] = pad[2 * (2 - d) + 1] = r
        y = F.conv3d(F.pad(y, pad, mode="replicate"), k.reshape(shape))
    return y[0, 0]


def _gamma(x: Tensor, gamma: float, invert: bool) -> Tensor:
    """batchgenerators' gamma with retained mean and std (optionally on the inverted image)."""
    x = -x if invert else x
    mean, std = x.mean(), x.std()
    lo = x.min()
    rng = x.max() - lo
    y = ((x - lo) / (rng + 1e-7)).pow(gamma) * rng + lo
    y = (y - y.mean()) / (y.std() + 1e-8) * std + mean
    return -y if invert else y


def apply_intensity(views: Tensor, params: IntensityParams) -> Tensor:
    """Apply drawn intensity augmentation to ``views`` ``[N, C, X, Y, Z]`` (a new tensor).

    >>> v = torch.randn(2, 1, 8, 8, 8)
    >>> p = draw_intensity(2, 1, torch.Generator().manual_seed(1))
    >>> apply_intensity(v, p).shape
    torch.Size([2, 1, 8, 8, 8])
    """
    out = views.clone()
    n, c, *size = out.shape
    for i in range(n):
        for ch in range(c):
            z = float(params.lowres[i, ch])
            if z < 1:
                small = [max(1, round(s * z)) for s in size]
                lowv = F.interpolate(out[i, ch][None, None], size=small, mode="nearest")
                out[i, ch] = F.interpolate(lowv, size=size, mode="trilinear", align_corners=False)[0, 0]
        kind = int(params.noise[i])
        if kind:
            gen = torch.Generator(device=out.device).manual_seed(int(params.seeds[i]))
            std = float(params.noise_std[i])
            n1 = torch.randn(out[i].shape, generator=gen, device=out.device, dtype=out.dtype) * std
            if kind == 1:
                out[i] += n1
            else:
                n2 = torch.randn(out[i].shape, generator=gen, device=out.device, dtype=out.dtype) * std
                out[i] = torch.sqrt((out[i] + n1) ** 2 + n2**2) * torch.sign(out[i])
        for ch in range(c):
            x = out[i, ch]
            if float(params.blur[i, ch]) > 0:
                x = _blur(x, float(params.blur[i, ch]))
            if float(params.brightness[i, ch]) != 1:
                x = x * float(params.brightness[i, ch])
            if float(params.contrast[i, ch]) != 1:
                mean, lo, hi = x.mean(), x.min(), x.max()
                x = ((x - mean) * float(params.contrast[i, ch]) + mean).clamp(lo, hi)
            if float(params.gamma_inv[i, ch]) != 1:
                x = _gamma(x, float(params.gamma_inv[i, ch]), invert=True)
            if float(params.gamma[i, ch]) != 1:
                x = _gamma(x, float(params.gamma[i, ch]), invert=False)
            out[i, ch] = x
    return out


__all__ = ["IntensityParams", "apply_intensity", "draw_intensity"]
