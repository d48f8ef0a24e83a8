"""``openmind-prep demo``: the whole pipeline end to end, on the embedded sample or on OpenMind.

download (or write the embedded real-MRI sample) → preprocess (Dask) → Zarr + WebDataset shards
→ overlapping views on the device → a short tiny-model CVA run → feature k-means → downstream: a short
fine-tune of the run's export on a labelled dataset (MNI152 grey / white matter as an nnU-Net raw dataset,
``trainers.finetune``, 2 folds) next to the same fine-tune from scratch. (The tissue probe,
``python -m trainers.probe``, does not rank a representation above intensity with the labels available
offline: docs/training.md.) The run folder:

    RUN/raw/            the source tree (repo layout)       RUN/views.png     view pairs + boxes
    RUN/store/          Zarr store + manifest.parquet        RUN/loss.png      CVA loss curve
    RUN/shards/         WebDataset tars + index.json         RUN/clusters.png  k-means of features
    RUN/cva/            trainer run folder (log, ckpt)       RUN/finetune/     downstream: finetune.json / .png
    RUN/tissue/, RUN/tissue-store/  the labelled dataset     RUN/summary.json / summary.txt
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import click

from openmind_prep.cli.options import selection_options
from openmind_prep.core.dask_cluster import ClusterConfig
from openmind_prep.sources.selection import Selection


#: Seconds per stage of the demo on an idle 2-core CPU (measured 2026-12-05 from a fresh clone, load < 1:
#: 6 embedded volumes, 60 CVA steps at 32³, batch 2, 40.7 s in all): start-up and imports, per volume
#: (sample + preprocess), shards + views, per CVA step at 32³, k-means + the downstream fine-tune
#: (4.5 + 9.0 s). Printed as an estimate before it starts, stretched by the machine's load.
DEMO_COST = {"start": 2.7, "volume": 1.15, "views": 1.0, "step_32": 0.275, "clusters_downstream": 13.5}


def demo_estimate(volumes: int, steps: int, cva_patch: int, cores: int, load: float) -> tuple[float, float]:
    """(seconds on an idle machine, seconds at ``load`` on ``cores`` cores) for the demo: the stages of
    :data:`DEMO_COST`, a CVA step scaling with the view's voxels; a busy machine stretches every stage
    by ``load / cores`` (when above 1).

    >>> idle, busy = demo_estimate(6, 60, 32, cores=2, load=6.0)
    >>> round(idle, 1), round(busy / idle, 1)
    (40.6, 3.0)
    """
    c = DEMO_COST
    idle = (c["start"] + volumes * c["volume"] + c["views"] + steps * c["step_32"] * (cva_patch / 32) ** 3
            + c["clusters_downstream"])
    return idle, idle * max(1.0, load / max(cores, 1))


def _say_estimate(volumes: int | None, steps: int, cva_patch: int, downloading: bool) -> None:
    import os

    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    idle, busy = demo_estimate(volumes or 6, steps, cva_patch, cores, load)
    what = f"{volumes} volumes" if volumes else "per 6 volumes"
    line = f"estimate: about {idle / 60:.1f} min on an idle {cores}-core CPU ({what}, {steps} CVA steps at {cva_patch}^3)"
    if busy > idle * 1.2:
        line += f"; the load is {load:.1f} on {cores} cores, so expect about {busy / 60:.1f} min"
    click.echo(line + ("; plus the download" if downloading else ""))


@contextmanager
def _stage(name: str, timings: dict):
    click.secho(f"==> {name}", bold=True)
    t0 = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t0, 2)
    click.echo(f"    {name}: {timings[name]:.1f} s")


def _source(run: Path, repo: str | None, revision: str, endpoint: str | None, selection: Selection,
            small: bool) -> tuple[Path, Selection]:
    """The raw tree and the selection still to apply to it."""
    raw = run / "raw"
    if repo is None:
        from openmind_prep.sources.embedded import build_sample_tree
        from openmind_prep.sources.openmind import is_openmind_tree

        if not is_openmind_tree(raw):
            build_sample_tree(raw, small=small)
        return raw, selection
    from openmind_prep.sources.download import download
    from openmind_prep.sources.hub import HubRepo
    from openmind_prep.sources.local_hub import served

    with served(repo, endpoint) as (repo, endpoint):  # a local folder: a hub on 127.0.0.1
        download(HubRepo(repo, revision, endpoint), raw, selection=selection)
    return raw, Selection()  # RAW's CSV lists exactly what was downloaded


def _views(shards: Path, run: Path, patch: int, device: str, seed: int) -> dict:
    import torch

    from loaders import OverlapViewSampler, WebDatasetStream, collate_volumes, to_device
    from loaders.preview import save_views_png

    stream = WebDatasetStream(str(shards / "index.json"), seed=seed, shuffle_buffer=1, rank=0, world_size=1,
                              worker=0, num_workers=1)
    samples = [s for _, s in zip(range(4), stream)]
    volumes = to_device(collate_volumes(samples), device)["image"]
    sampler = OverlapViewSampler((patch,) * 3)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    pair = sampler(volumes, generator=g)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    save_views_png(pair, run / "views.png", n=len(volumes), volumes=volumes, names=[s["key"] for s in samples])
    return {"pairs": len(volumes), "patch": patch, "sampler_seconds": round(seconds, 4),
            "overlaps": [round(float(o), 3) for o in pair.overlaps],
            "keys": [s["key"] for s in samples]}


def _cva(store: Path, run: Path, steps: int, patch: int, device: str, seed: int) -> dict:
    from trainers.checks import problems
    from trainers.cva import train
    from trainers.runfolder import RunError
    from trainers.settings import resolve

    out = run / "cva"
    settings = resolve({"store": store, "out": out, "arch": "tiny", "patch_size": [patch], "batch_size": 2,
                        "steps": steps, "warmup_steps": max(1, steps // 10), "lr": 3e-3, "proj_dim": 128,
                        "pool_size": 4, "align_size": 4, "num_workers": 0, "ckpt_every": steps, "device": device,
                        "probe_every": max(1, steps // 6), "seed": seed, "export": out / "export.pth"}, world=1)
    if problems(settings):
        raise click.ClickException(problems(settings)[0])
    try:
        result = train(settings)
    except RunError as err:  # the trainer's one-line errors (bad data, a checkpoint it cannot use)
        raise click.ClickException(str(err)) from None
    shutil.copyfile(out / "loss.png", run / "loss.png")
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    first, last = log[: max(1, len(log) // 4)], log[-max(1, len(log) // 4):]
    mean = lambda rows: sum(r["loss"] for r in rows) / len(rows)  # noqa: E731
    probes = [r["probe_loss"] for r in log if "probe_loss" in r]
    return {"steps": result["step"], "patch": patch, "loss_first_quarter": round(mean(first), 4),
            "loss_last_quarter": round(mean(last), 4),
            "probe_loss_first": round(probes[0], 4), "probe_loss_last": round(probes[-1], 4),
            "samples_per_s": round(sum(r.get("samples_per_s", 0) for r in log) / len(log), 2),
            "student": result["student"]}


def _clusters(store: Path, run: Path, student, key: str, k: int, seed: int) -> dict:
    import torch

    from loaders import ZarrVolumeDataset
    from trainers.kmeans import kmeans_labels, save_clusters_png, voxel_features

    ds = ZarrVolumeDataset(store, masks=False)
    index = ds.keys.index(key) if key in ds.keys else 0
    volume = torch.as_tensor(ds[index]["image"]).float()
    backbone = student.backbone.cpu().eval()
    stride = 2 if volume[0].numel() > 96**3 else 1  # whole 1 mm brains: cluster on a 2 mm grid
    labels = kmeans_labels(voxel_features(backbone, volume, stride=stride), k, seed=seed)
    save_clusters_png(volume, labels, run / "clusters.png", title=f"k-means (k={k}) of CVA features: {ds.keys[index]}")
    return {"volume": ds.keys[index], "k": k, "voxels": int(labels.size)}


#: The downstream stage: 2 folds of 4 subjects, this many fine-tuning steps per fold, 32³ patches, one
#: learning rate for both inits (the recipes' 1e-3 pretrained / 1e-2 scratch are made for 5,000 steps, not 12),
#: so the two differ only by their initial weights.
DOWNSTREAM_STEPS = 12
DOWNSTREAM_LR = 1e-2


def _downstream(run: Path, device: str, seed: int) -> dict:
    """Fine-tune the run's export on the embedded labelled dataset (and the same from scratch); the scores."""
    import argparse

    from openmind_prep.preprocess.job import PreprocessOptions, process_batch
    from openmind_prep.sources.embedded_tissue import DATASET, DEMO_BLOCK, DEMO_CASES, build_nnunet_raw
    from openmind_prep.sources.nnunet import NnunetSource
    from openmind_prep.store.store import Store
    from trainers import runfolder
    from trainers.finetune import DEFAULTS, run_all

    folder = run / "tissue" / DATASET
    if not (folder / "dataset.json").is_file():
        build_nnunet_raw(run / "tissue", DEMO_CASES, DEMO_BLOCK)
    store = Store.create(run / "tissue-store") if not (run / "tissue-store").exists() else Store.open(
        run / "tissue-store", manifest_required=False)
    source = NnunetSource(folder)
    todo = store.pending(source.records())
    if todo:
        process_batch(todo, source, store, PreprocessOptions(dtype="float16"))
        store.merge()
    out = run / "finetune"
    args = argparse.Namespace(**{**DEFAULTS, "store": store.root, "task": "seg", "init": str(run / "cva" / "export.pth"),
                                 "compare_scratch": True, "out": out, "arch": "tiny", "folds": 2, "seed": seed,
                                 "patch_size": [32] * 3, "epochs": 1, "iterations": DOWNSTREAM_STEPS, "lr": DOWNSTREAM_LR,
                                 "device": device, "ckpt_every": DOWNSTREAM_STEPS})
    try:
        with runfolder.hold(out):
            run_all(args)
    except runfolder.RunError as err:
        raise click.ClickException(str(err)) from None
    report = json.loads((out / "finetune.json").read_text())
    means = {run_: {m: report["runs"][run_]["overall"][m]["mean"] for m in ("dsc", "nsd")} for run_ in report["runs"]}
    return {"task": "seg: MNI152 grey / white matter", "subjects": len(DEMO_CASES), "folds": 2,
            "steps_per_fold": DOWNSTREAM_STEPS, "lr": DOWNSTREAM_LR, **means,
            "paired_difference_dsc": report["paired_difference"]["dsc"]["mean"]}


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@click.command("demo")
@click.option("--out", "run", type=click.Path(path_type=Path, file_okay=False), default=Path("runs/demo"),
              show_default=True, help="Run folder (re-running resumes every stage).")
@click.option("--repo", default=None, help="Hugging Face dataset repo (e.g. AnonRes/OpenMind), or a local folder "
              "laid out as it; default: the embedded real-MRI sample.")
@click.option("--revision", default="main", show_default=True, help="Repo revision (with --repo).")
@click.option("--endpoint", default=None, help="Hub endpoint (default: HF_ENDPOINT or huggingface.co).")
@selection_options
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Dask workers [default: all cores].")
@click.option("--steps", type=click.IntRange(min=2), default=60, show_default=True, help="CVA optimiser steps.")
@click.option("--patch", type=click.IntRange(min=16), default=48, show_default=True,
              help="View edge in voxels of views.png; the CVA step trains the tiny net on min(patch, 32) "
                   "rounded down to a multiple of 8 (summary: cva.patch).")
@click.option("--device", default="auto", show_default=True, help="auto (cuda if present), cpu or cuda.")
@click.option("--small", is_flag=True, help="Use the 3-volume small sample (quicker).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--downstream/--no-downstream", "with_downstream", default=True, show_default=True,
              help="End with the short fine-tune of the export on the labelled MNI152 tissue dataset.")
def demo_command(run: Path, repo: str | None, revision: str, endpoint: str | None, selection: Selection,
                 workers: int | None, steps: int, patch: int, device: str, small: bool, seed: int,
                 with_downstream: bool) -> None:
    """Run the main job end to end: data → preprocess → shards → views → CVA → pictures."""
    import torch

    from openmind_prep.preprocess.job import PreprocessOptions, preprocess
    from openmind_prep.shards.writer import merge_index, write_shards

    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    cva_patch = min(patch, 32) // 8 * 8  # the tiny net: multiples of 8, small enough for a CPU
    _say_estimate(selection.limit or None if repo else (3 if small else 6), steps, cva_patch, bool(repo))
    run.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    with _stage("download" if repo else "sample", timings):
        raw, rest = _source(run, repo, revision, endpoint, selection, small)
    with _stage("preprocess", timings):
        records, _, table = preprocess(raw, run / "store", rest, ClusterConfig(workers=workers),
                                       PreprocessOptions(dtype="float16"))
        rows = table.to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        raise click.ClickException(f"no image was preprocessed; see {run / 'store' / 'manifest.parquet'}")
    with _stage("shards", timings):
        write_shards(run / "store", run / "shards", shard_size=64 * 2**20, rows=ok, progress=True)
        index = merge_index(run / "shards")
    with _stage("views", timings):
        views = _views(run / "shards", run, patch, device, seed)
    with _stage("cva", timings):
        cva = _cva(run / "store", run, steps, cva_patch, device, seed)
    with _stage("clusters", timings):
        clusters = _clusters(run / "store", run, cva.pop("student"), views["keys"][0], 6, seed)
    downstream = None
    if with_downstream:
        with _stage("downstream", timings):
            downstream = _downstream(run, device, seed)
    timings["total"] = round(time.perf_counter() - t_all, 2)
    summary = {
        "source": repo or "embedded sample (nilearn MNI152, nibabel, dipy)", "device": device,
        "images": len(records), "ok": len(ok), "failed": len(rows) - len(ok),
        "shards": len(index["shards"]), "shard_samples": index["samples"],
        "views": views, "cva": cva, "clusters": clusters, "downstream": downstream, "seconds": timings,
        "artefacts": ["store/manifest.parquet", "shards/index.json", "views.png", "loss.png", "clusters.png",
                      *(["finetune/finetune.json", "finetune/finetune.png"] if downstream else [])],
    }
    (run / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"openmind-prep demo on {summary['source']} ({device})",
             f"images: {len(records)} selected, {len(ok)} ok, {summary['failed']} failed",
             f"shards: {summary['shards']} with {summary['shard_samples']} samples",
             f"views: {views['pairs']} pairs of {patch}^3, overlaps {views['overlaps']}",
             f"cva: {cva['steps']} steps at {cva['patch']}^3, loss on a fixed batch {cva['probe_loss_first']} -> {cva['probe_loss_last']}, "
             f"training loss {cva['loss_first_quarter']} -> {cva['loss_last_quarter']} (mean of first/last quarter), "
             f"{cva['samples_per_s']} samples/s",
             *([] if downstream is None else [
             f"downstream: {downstream['task']} ({downstream['subjects']} subjects, {downstream['folds']} folds, "
             f"{downstream['steps_per_fold']} steps): DSC {_score(downstream['pretrained']['dsc'])} from the CVA export vs "
             f"{_score(downstream['scratch']['dsc'])} from scratch, NSD {_score(downstream['pretrained']['nsd'])} vs "
             f"{_score(downstream['scratch']['nsd'])} (same lr {downstream['lr']:g} for both)"]),
             "seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())]
    (run / "summary.txt").write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))
    click.echo(f"run folder: {run}")
