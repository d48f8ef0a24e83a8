"""Tissue probe: numbers for the quality of a representation, for any run or export.

    python -m trainers.probe runs/tiny                 # a trainers.cva run folder (or its checkpoint.pt)
    python -m trainers.probe model.pth --out probes/   # an nnssl-format export (ours or nnssl's)

The labelled volumes are nilearn's MNI152 template with background / CSF / grey / white labels
(:mod:`trainers.tissue`: our onemmiso preprocessing, centre crop ≤ ``--crop``). The probe is fitted on
one volume and scored on two others, never on halves of one (mirrored hemispheres share most labels):

* **fit**: the T1 template file at ``--resolution``;
* **another volume** (``balanced_accuracy``, ``dice``): the template's other file (2 mm for a 1 mm probe
  and vice versa) resampled by onemmiso to the same spacing: the same anatomy, sampled and cropped anew;
* **remapped contrast** (``remapped``): that volume with its intensities remapped non-monotonically
  (grey matter darkest, CSF brightest: :func:`trainers.tissue.remap_contrast`), a target that intensity
  alone cannot solve.

Three feature sources are scored in the same run: the frozen backbone (``model``: every encoder stage
upsampled to the voxel grid and L2-normalised per stage, :func:`trainers.kmeans.voxel_features`), a
randomly initialised network of the same architecture (``random``, a floor) and the raw intensity with
its local 5³ mean and standard deviation (``intensity``, a floor). Each source's channels are
standardised with the fit volume's statistics (the probe is one fixed function), then

* k-means (k = 4 classes and the demo's 6) on the fit volume → adjusted Rand index and NMI against its labels;
* a linear probe (logistic regression, balanced class weights, ≤ ``--fit-voxels`` random voxels of the fit
  volume) scored on every voxel of each scored volume → balanced accuracy and per-class Dice.

``probe.json`` (one entry per source) and ``probe.png`` (mid-slices: image, labels, k-means,
probe predictions) go to ``--out`` (default: beside the input). Primus sees the volume in tiles of
its patch size (its position embedding is fixed); residual U-Nets see it whole.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy loads when a probe runs, so --help stays fast
    import numpy as np

from trainers import architectures

DEMO_K = 6
__all__ = ["intensity_features", "network_features", "score_features", "scored_volumes", "probe_backbone", "run_probe",
           "main"]


def get_args_parser() -> argparse.ArgumentParser:
    from trainers.configs import HelpFormatter

    p = argparse.ArgumentParser("trainers.probe", description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=HelpFormatter)
    p.add_argument("input", type=Path, help="trainers.cva run folder, its checkpoint.pt, or an nnssl-format export.")
    p.add_argument("--store", type=Path, default=None,
                   help="Store the run trained on: the probe volume is cast to its dtype (default: the run "
                        "config's store if it exists, else float16 as `preprocess` writes).")
    p.add_argument("--out", type=Path, default=None, help="Folder for probe.json / probe.png (default: beside the input).")
    p.add_argument("--crop", type=int, default=128, help="Centre-crop edge in voxels (≤128 keeps a CPU run to minutes).")
    p.add_argument("--resolution", type=int, choices=[1, 2], default=1,
                   help="Template resolution in mm; 2 fits the whole brain in 128³ but is not what a 1 mm run saw.")
    p.add_argument("--stride", type=int, default=0, help="Score every n-th voxel per axis (0: 2 above 64³, else 1).")
    p.add_argument("--weights", choices=["student", "teacher"], default="student", help="Which backbone of a run checkpoint.")
    p.add_argument("--fit-voxels", type=int, default=20000, help="Voxels the linear probe and k-means are fitted on.")
    p.add_argument("--seed", type=int, default=0, help="Seeds the random-init baseline, k-means and the probe's voxels.")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default).")
    return p


def intensity_features(image: np.ndarray, size: int = 5) -> np.ndarray:
    """``[3, *shape]``: intensity, its local mean and local standard deviation over ``size``³ (edges repeated).

    >>> import numpy as np
    >>> f = intensity_features(np.arange(27.0).reshape(3, 3, 3), size=3)
    >>> f.shape, float(f[1, 1, 1, 1]), round(float(f[2, 1, 1, 1]), 3), round(float(np.arange(27.0).std()), 3)
    ((3, 3, 3, 3), 13.0, 7.789, 7.789)
    """
    import numpy as np

    from scipy.ndimage import uniform_filter

    x = np.asarray(image, dtype=np.float64)
    mean = uniform_filter(x, size, mode="nearest")
    std = np.sqrt(np.maximum(uniform_filter(x * x, size, mode="nearest") - mean**2, 0.0))
    return np.stack([x, mean, std]).astype(np.float32)


def grid_multiple(backbone) -> int:
    """Edge the input must be a multiple of: the encoder's total stride (Primus: its 8³ patch embedding)."""
    import numpy as np

    if hasattr(backbone, "eva"):
        return 8
    return int(np.prod([s[0] if isinstance(s, (list, tuple)) else s for s in backbone.encoder.strides]))


def network_features(backbone, image: np.ndarray, *, stride: int = 1, window=None) -> np.ndarray:
    """Frozen per-voxel features ``[D, *shape/stride]`` of ``image`` (shape a multiple of :func:`grid_multiple`).

    With ``window`` (Primus), the volume is padded with its minimum to whole windows and encoded tile by tile.

    >>> import numpy as np
    >>> from trainers.networks import tiny
    >>> network_features(tiny().eval(), np.zeros((16, 16, 32), np.float32), stride=2).shape
    (120, 8, 8, 16)
    """
    import numpy as np

    import torch

    from trainers.kmeans import voxel_features

    vol = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    if window is None:
        return voxel_features(backbone, vol, multiple=grid_multiple(backbone), stride=stride).numpy()
    w, shape = [int(n) for n in window], vol.shape[1:]
    padded = [-(-n // s) * s for n, s in zip(shape, w)]
    big = torch.full((1, *padded), float(vol.min()))
    big[:, : shape[0], : shape[1], : shape[2]] = vol
    out = None
    for corner in np.ndindex(*[p // s for p, s in zip(padded, w)]):
        lo = [c * s for c, s in zip(corner, w)]
        f = voxel_features(backbone, big[(slice(None), *[slice(a, a + s) for a, s in zip(lo, w)])], multiple=8, stride=stride)
        if out is None:
            out = torch.zeros((f.shape[0], *[n // stride for n in shape]))
        keep = [slice(0, (min(a + s, n) - a) // stride) for a, s, n in zip(lo, w, shape)]
        out[(slice(None), *[slice(a // stride, a // stride + k.stop) for a, k in zip(lo, keep)])] = f[(slice(None), *keep)]
    return out.numpy()


def standardise(features: np.ndarray, stats: tuple | None = None) -> tuple[np.ndarray, tuple]:
    """``[voxels, D]`` float32: each channel to zero mean, unit variance over the voxels (constant: 0), with
    ``stats`` (mean, sd) when given (another volume scored by a probe fitted here); returns them too."""
    import numpy as np

    flat = features.reshape(features.shape[0], -1).T.astype(np.float32)
    if stats is None:
        stats = (flat.mean(axis=0), np.maximum(flat.std(axis=0), 1e-6))
    flat -= stats[0]
    flat /= stats[1]
    return flat, stats


def dice_per_class(truth: np.ndarray, pred: np.ndarray, names) -> dict:
    """Dice ``2|P∩T| / (|P| + |T|)`` per class (None where the class is in neither).

    >>> import numpy as np
    >>> dice_per_class(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), ["a", "b", "c"])
    {'a': 0.6667, 'b': 0.8, 'c': None}
    """
    out = {}
    for c, name in enumerate(names):
        t, p = truth == c, pred == c
        denom = int(t.sum() + p.sum())
        out[name] = round(2 * int((t & p).sum()) / denom, 4) if denom else None
    return out


def score_features(features: np.ndarray, labels: np.ndarray, *, scored: dict | None = None, ks=(4, DEMO_K),
                   seed: int = 0, fit_voxels: int = 20000) -> tuple[dict, dict]:
    """k-means ARI/NMI on the fit volume (``features`` ``[D, *labels.shape]``) and a linear probe fitted there,
    scored on each of ``scored`` (``{name: (features, labels)}`` of other volumes; default: the fit volume).

    The first scored volume gives ``balanced_accuracy`` and ``dice``; every one its entry under its name.
    Returns the metrics and the label maps (``kmeans`` for ``ks[0]``, ``probe`` on the first scored volume).

    >>> import numpy as np
    >>> lab = np.zeros((8, 8, 8), np.uint8); lab[:, 4:] = 1
    >>> m, _ = score_features(lab[None].astype(np.float32), lab, ks=(2,))
    >>> m["ari"], m["balanced_accuracy"], m["dice"]["grey"]
    (1.0, 1.0, None)
    >>> m, _ = score_features(lab[None].astype(np.float32), lab, ks=(2,), scored={"flipped": (1 - lab[None], lab)})
    >>> m["balanced_accuracy"], m["flipped"]["balanced_accuracy"]
    (0.0, 0.0)
    """
    import numpy as np

    import torch
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits
    from sklearn.metrics import adjusted_rand_score, balanced_accuracy_score, normalized_mutual_info_score

    from trainers.kmeans import kmeans_labels
    from trainers.tissue import CLASSES

    (flat, stats), y, grid = standardise(features), labels.ravel().astype(np.int64), labels.shape
    metrics: dict = {"features": int(features.shape[0]), "kmeans": {}}
    maps = {}
    for k in ks:
        with threadpool_limits(1):
            clusters = kmeans_labels(torch.from_numpy(flat.T.reshape(-1, *grid)), k, seed=seed, fit_voxels=fit_voxels)
        metrics["kmeans"][str(k)] = {"ari": round(float(adjusted_rand_score(y, clusters.ravel())), 4),
                                     "nmi": round(float(normalized_mutual_info_score(y, clusters.ravel())), 4)}
        maps.setdefault("kmeans", clusters)
    metrics.update(metrics["kmeans"][str(ks[0])])
    fit = np.arange(len(y))
    if len(fit) > fit_voxels:
        fit = np.sort(np.random.default_rng(seed).choice(fit, fit_voxels, replace=False))
    # one BLAS thread: these fits are small, and threads thrash on a shared CPU (6.6 s vs 0.17 s measured)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # convergence notes; classes a scored volume lacks
        clf = LogisticRegression(C=1.0, max_iter=500, class_weight="balanced").fit(flat[fit], y[fit])
        for i, (name, (feats, lab)) in enumerate((scored or {"fit volume": (features, labels)}).items()):
            truth = lab.ravel().astype(np.int64)
            pred = clf.predict(standardise(feats, stats)[0])
            entry = {"balanced_accuracy": round(float(balanced_accuracy_score(truth, pred)), 4),
                     "dice": dice_per_class(truth, pred, CLASSES)}
            if i == 0:
                metrics.update(entry)
                maps["probe"] = pred.reshape(lab.shape).astype(np.uint8)
            metrics[name] = entry
    return metrics, maps


def random_like(loaded, seed: int):
    """The random-init baseline: a fresh network of ``loaded``'s architecture, weights drawn from ``seed``."""
    import torch

    from trainers.probe_io import build_like

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_like(loaded.arch, loaded.patch_size, loaded.kwargs).eval()


def probe_backbone(backbone, volume, *, scored: dict | None = None, random_backbone=None, intensity: bool = True,
                   stride: int = 1, window=None, seed: int = 0, fit_voxels: int = 20000) -> tuple[dict, dict]:
    """Score ``backbone`` (and the baselines asked for): fit on ``volume``, score on each of ``scored``
    (``{name: TissueVolume}``; default: ``volume`` itself), all :class:`trainers.tissue.TissueVolume`.

    Returns ``({source: metrics}, {source: maps})``; sources ``model``, ``random``, ``intensity``.
    """
    scored = scored or {"fit volume": volume}
    labels = volume.labels[::stride, ::stride, ::stride]
    sources = {"model": backbone, "random": random_backbone, "intensity": intensity or None}
    results, maps = {}, {}

    def feats(net, name, vol):
        if name == "intensity":
            return intensity_features(vol.image)[:, ::stride, ::stride, ::stride]
        return network_features(net, vol.image, stride=stride, window=window)

    for name, net in sources.items():
        if net is None:
            continue
        t0 = time.perf_counter()
        others = {k: (feats(net, name, v), v.labels[::stride, ::stride, ::stride]) for k, v in scored.items()}
        results[name], maps[name] = score_features(feats(net, name, volume), labels, scored=others, seed=seed,
                                                   fit_voxels=fit_voxels)
        results[name]["seconds"] = round(time.perf_counter() - t0, 2)
    first = next(iter(scored.values()))
    maps["labels"], maps["image"] = labels, volume.image[::stride, ::stride, ::stride]
    maps["scored_labels"], maps["scored_image"] = (first.labels[::stride, ::stride, ::stride],
                                                   first.image[::stride, ::stride, ::stride])
    return results, maps


def scored_volumes(resolution: int, crop: int, *, dtype: str = "float16", multiple: int = 1) -> dict:
    """The volumes a probe fitted on the ``resolution`` mm template file is scored on: the other file resampled
    to ``resolution`` (``another_volume``) and the same with its contrast remapped (``remapped``)."""
    from trainers.tissue import mni_tissue

    other = 3 - resolution  # the template's other file: another volume of the same anatomy
    return {name: mni_tissue(resolution, crop, dtype=dtype, multiple=multiple, source_resolution=other, contrast=c)
            for name, c in (("another_volume", "t1"), ("remapped", "remapped"))}


def _store_dtype(store: Path | None, input_path: Path) -> str:
    """The dtype ``store`` holds its images in (None: the run config's store if it is still there; else float16)."""
    from openmind_prep.store.store import Store

    from trainers.probe_io import ProbeInputError

    if store is None:
        config = (input_path if input_path.is_dir() else input_path.parent) / "config.json"
        try:
            store = Path(json.loads(config.read_text()).get("store") or "")
        except (OSError, ValueError, AttributeError):
            return "float16"
        if not Store(store).has_manifest():
            return "float16"
    try:
        rows = [r for r in Store.open(store).ok_rows() if r.get("dtype")]
    except Exception as e:  # noqa: BLE001 - any unreadable store is one line
        raise ProbeInputError(f"{store}: not a readable store ({type(e).__name__}: {' '.join(str(e).split())})") from None
    return rows[0]["dtype"] if rows else "float16"


def run_probe(args: argparse.Namespace) -> dict:
    """Load the input, build the volume and baselines, score, write ``probe.json`` / ``probe.png``."""
    import numpy as np

    from openmind_prep.core import atomic
    from trainers.probe_io import ProbeInputError, load_backbone
    from trainers.probe_plot import probe_png
    from trainers.tissue import CLASSES, mni_tissue

    t0 = time.perf_counter()
    loaded = load_backbone(args.input, args.weights)
    dtype = _store_dtype(args.store, args.input)
    stride = args.stride or (2 if args.crop > 64 else 1)
    windowed = loaded.arch in architectures.names() and architectures.get(loaded.arch).windowed
    window = loaded.patch_size if windowed else None
    multiple = int(np.lcm(grid_multiple(loaded.network), stride))
    if window is None and args.crop < 2 * grid_multiple(loaded.network):  # instance norm needs > 1 voxel
        raise ProbeInputError(f"--crop {args.crop}: {loaded.arch} needs at least {2 * grid_multiple(loaded.network)}"
                              " voxels per axis (its deepest stage must keep 2³)")
    volume = mni_tissue(args.resolution, args.crop, dtype=dtype, multiple=multiple)
    other = 3 - args.resolution
    scored = scored_volumes(args.resolution, args.crop, dtype=dtype, multiple=multiple)
    results, maps = probe_backbone(loaded.network, volume, scored=scored, random_backbone=random_like(loaded, args.seed),
                                   stride=stride, window=window, seed=args.seed, fit_voxels=args.fit_voxels)
    out = args.out or (args.input if args.input.is_dir() else args.input.parent)
    counts = np.bincount(maps["labels"].ravel(), minlength=len(CLASSES))
    report = {
        **results,
        "meta": {"input": str(args.input), "source": loaded.source, "arch": loaded.arch,
                 "patch_size": list(loaded.patch_size), "volume": "nilearn MNI152 2009a T1 (onemmiso)",
                 "resolution_mm": args.resolution, "dtype": dtype, "crop_box_zyx": [list(b) for b in volume.box],
                 "stride": stride, "grid": list(maps["labels"].shape), "classes": list(CLASSES),
                 "class_fraction": [round(float(c) / counts.sum(), 4) for c in counts],
                 "scored_crop_box_zyx": [list(b) for b in scored["another_volume"].box],
                 "fit": f"the {args.resolution} mm template file",
                 "score": f"the {other} mm template file resampled to {args.resolution} mm (another volume; "
                          "balanced_accuracy, dice) and the same with remapped contrast (remapped)",
                 "seed": args.seed, "out": str(out), "seconds": round(time.perf_counter() - t0, 1)},
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "probe.json", json.dumps(report, indent=2) + "\n")
    png = probe_png(maps, results, title=f"tissue probe: {args.input}")
    atomic.write_with(out / "probe.png", lambda tmp: tmp.write_bytes(png))
    return report


SOURCES = {"model": "the input's backbone", "random": "same architecture, random init (floor)",
           "intensity": "intensity + local mean/sd (floor)"}


def summary_lines(report: dict, out: Path | None = None) -> list[str]:
    """What was scored (volume, crop, grid, fit / score split), one labelled line per source, and where the
    results went.

    >>> r = {"model": {"ari": 0.5, "nmi": 0.4, "balanced_accuracy": 0.8, "dice": {"a": 0.7, "b": None}},
    ...      "meta": {"volume": "V", "resolution_mm": 1, "crop_box_zyx": [[0, 64]] * 3, "stride": 2, "grid": [32] * 3,
    ...               "fit": "left", "score": "right"}}
    >>> print("\\n".join(summary_lines(r, Path("o"))))  # doctest: +NORMALIZE_WHITESPACE
    scored V at 1 mm: crop 64×64×64 voxels (z 0:64, y 0:64, x 0:64), one voxel in 2 per axis → 32×32×32 grid
    linear probe fitted on left, scored on right; k-means (k=4) on the fit volume
    model     (the input's backbone)                  k-means ARI 0.500  NMI 0.400 | probe balanced accuracy 0.800  mean Dice 0.700
    wrote o/probe.json and o/probe.png
    """
    meta = report["meta"]
    box = meta["crop_box_zyx"]
    edges = "×".join(str(b - a) for a, b in box)
    where = ", ".join(f"{axis} {a}:{b}" for axis, (a, b) in zip("zyx", box))
    every = "every voxel" if meta["stride"] == 1 else f"one voxel in {meta['stride']} per axis"
    lines = [f"scored {meta['volume']} at {meta['resolution_mm']} mm: crop {edges} voxels ({where}), {every} → "
             f"{'×'.join(map(str, meta['grid']))} grid",
             f"linear probe fitted on {meta['fit']}, scored on {meta['score']}; k-means (k=4) on the fit volume"]
    for name, what in SOURCES.items():
        if name in report:
            r = report[name]
            dice = [v for v in r["dice"].values() if v is not None]
            remapped = f" | remapped contrast {r['remapped']['balanced_accuracy']:.3f}" if "remapped" in r else ""
            lines.append(f"{name:9s} ({what}){' ' * (38 - len(what))}  k-means ARI {r['ari']:.3f}  NMI {r['nmi']:.3f}"
                         f" | probe balanced accuracy {r['balanced_accuracy']:.3f}"
                         f"  mean Dice {sum(dice) / max(len(dice), 1):.3f}{remapped}")
    if out is not None:
        lines.append(f"wrote {out / 'probe.json'} and {out / 'probe.png'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Command line: bad input is one line and exit 1, a usage error one line and exit 2 (no usage dump)."""
    parser = get_args_parser()
    parser.error = lambda message: (print(f"trainers.probe: error: {message}", file=sys.stderr), sys.exit(2))
    args = parser.parse_args(argv)
    import torch

    from trainers.probe_io import ProbeInputError

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = run_probe(args)
    except ProbeInputError as e:
        print(f"trainers.probe: error: {e}", file=sys.stderr)
        return 1
    print("\n".join(summary_lines(report, Path(report["meta"]["out"]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
