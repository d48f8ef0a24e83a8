"""Thin CVA trainers: ``python -m trainers.cva`` (one file), plain loss functions, backbones, nnssl export.

Modules: :mod:`trainers.losses` (RoI-align of views and the loss terms), :mod:`trainers.networks`
(ResEnc-L, Primus-M and a tiny CPU net from dynamic-network-architectures, plus the CVA heads),
:mod:`trainers.export` (nnssl checkpoint with adaptation plan), :mod:`trainers.cva` (the trainer).
"""
