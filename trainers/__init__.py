"""Thin CVA trainers: ``python -m trainers.cva`` (one file), plain loss functions, backbones, nnssl export.

Modules: :mod:`trainers.cva` (the trainer, DINO layout), :mod:`trainers.losses` (RoI-align of views and
the loss terms), :mod:`trainers.networks` (ResEnc-L, Primus-M and a tiny CPU net from
dynamic-network-architectures, plus the CVA heads), :mod:`trainers.export` (nnssl checkpoint with
adaptation plan), :mod:`trainers.kmeans` (k-means of learned features), :mod:`trainers.method` (what each
rung of the ladder computes: heads, forwards, loss terms), :mod:`trainers.optim` (SGD / AdamW with the
reference's values per architecture), :mod:`trainers.init_from` (stage 2 from a run, an nnssl export or a
Hugging Face model repo), :mod:`trainers.primus_mae` (nnssl's Primus MAE: token dropping, Eva decoder),
:mod:`trainers.probe` (tissue probe of any run or export: :mod:`trainers.tissue` labelled MNI152 volume,
:mod:`trainers.probe_io` loading, :mod:`trainers.probe_plot` figure); the trainer's plumbing:
:mod:`trainers.configs` (TOML run configs, parsed, shipped by name), :mod:`trainers.runfolder`
(config.json, log, checkpoints as plain data, stop signals), :mod:`trainers.resources` (processes,
device, setting checks, memory estimate).
"""
