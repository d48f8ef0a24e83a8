"""The numpy banded products preprocessing resamples with (``openmind_prep.core.banded``), and the
float16 cast it stores with: checked against a dense product, torch's banded product, and torch's cast."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from openmind_prep.core import banded
from openmind_prep.core.separable import band_blocks as torch_blocks
from openmind_prep.core.separable import separable as torch_separable
from openmind_prep.preprocess import onemmiso
from openmind_prep.preprocess.resample import axis_matrix


def _dense(x: np.ndarray, mats: dict[int, np.ndarray]) -> np.ndarray:
    """The same operator written out: one einsum per axis, float64."""
    for d, m in mats.items():
        x = np.moveaxis(np.tensordot(m, x, axes=([1], [d])), 0, d)
    return x


@pytest.mark.parametrize("shape, new", [((9, 14, 11), (17, 6, 11)), ((5, 40, 23), (5, 41, 60)), ((3, 4, 5), (1, 9, 2))])
def test_banded_separable_equals_the_dense_product(shape, new):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape)
    mats = {d: axis_matrix(shape[d], new[d], 3) for d in range(3) if shape[d] != new[d]}
    got = banded.separable(x, {d: banded.band_blocks(m, rows=4, tol=1e-10, dtype=np.float64) for d, m in mats.items()})
    assert got.shape == new
    np.testing.assert_allclose(got, _dense(x, mats), rtol=0, atol=1e-9)


def test_banded_float32_agrees_with_torchs_banded_product_and_leaves_unlisted_axes_alone():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 31, 26)).astype(np.float32)
    m0, m2 = axis_matrix(20, 33, 3), axis_matrix(26, 17, 1)
    ours = banded.separable(x, {0: banded.band_blocks(m0, rows=8, tol=1e-10), 2: banded.band_blocks(m2, rows=8)})
    theirs = torch_separable(torch.from_numpy(x), (torch_blocks(torch.from_numpy(m0), rows=8, tol=1e-10), None,
                                                    torch_blocks(torch.from_numpy(m2), rows=8)))
    assert ours.dtype == np.float32 and ours.shape == (33, 31, 17)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6, atol=1e-6)
    assert banded.separable(x, {}) is x
    with pytest.raises(ValueError, match="axis 1"):
        banded.separable(x, {1: banded.band_blocks(np.ones((2, 40)))})


def _float16_edges() -> np.ndarray:
    """Every float16 value, the float32 midpoints between neighbours (ties) and their float32
    neighbours, subnormals, signed zeros and values next to the overflow bound."""
    h = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)  # finite, >= 0
    mid = ((h[:-1].astype(np.float64) + h[1:]) / 2).astype(np.float32)  # exact in float32: ties
    near = np.concatenate([np.nextafter(mid, np.float32(0)), np.nextafter(mid, np.float32(np.inf))])
    pos = np.concatenate([h, mid, near, np.float32([6e-8, 3e-8, 2.9802322e-08, 65504, 65519.996])])
    rnd = np.random.default_rng(1).standard_normal(200_000).astype(np.float32) * 3
    return np.concatenate([pos, -pos, rnd]).astype(np.float32)


def test_numpys_float16_cast_gives_torchs_bits():
    x = _float16_edges()
    ours = x.astype(np.float16)  # the cast onemmiso uses before torch is imported
    theirs = torch.from_numpy(x).to(torch.float16).numpy()
    assert np.array_equal(ours.view(np.uint16), theirs.view(np.uint16))
    assert np.array_equal(onemmiso.to_dtype(x, np.float16).view(np.uint16), theirs.view(np.uint16))


def test_a_process_casts_with_numpy_until_the_import_pays_then_imports_torch():
    code = ("import sys, numpy as np\nfrom openmind_prep.preprocess import onemmiso as o\no.HALF_BY_NUMPY = 10\n"
            "x = np.linspace(-3, 3, 8, dtype=np.float32)\nseen = []\nfor _ in range(3):\n"
            "    seen.append('torch' in sys.modules); y = o.to_dtype(x, np.float16)\n"
            "seen.append('torch' in sys.modules)\nprint(seen, y.dtype, bool((y == x.astype(np.float16)).all()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("]")[0] + "]" == "[False, False, False, True]"  # 8, 16 voxels by numpy; then torch
    assert out.stdout.split()[-2:] == ["float16", "True"]
