"""Deterministic K-fold splits by subject: no subject's images on both sides of a fold.

A subject is ``dataset/subject`` from the manifest; an image without a subject (a plain folder, an
nnU-Net case) is its own subject. Subjects are ordered by a keyed hash of their name (stable across
machines, Python versions and the order of the manifest) and dealt to folds in turn, so a fold's
members never depend on which other images happen to be present beyond their count.

>>> keys = ["a/s1/x", "a/s1/y", "a/s2/x", "a/s3/x", "b/s1/x"]
>>> subjects = {k: "/".join(k.split("/")[:2]) for k in keys}
>>> folds = kfold(keys, subjects, k=2)
>>> sorted(len(f) for f in folds)
[2, 3]
>>> all(not ({subjects[k] for k in f} & {subjects[k] for k in g}) for f in folds for g in folds if f is not g)
True
"""

from __future__ import annotations

import hashlib
from typing import Mapping, Sequence


def subject_of(row: Mapping) -> str:
    """The subject a manifest row belongs to (``dataset/subject``), else its image path."""
    if row.get("subject"):
        return f"{row.get('dataset', '')}/{row['subject']}"
    return str(row["image_path"])


def kfold(keys: Sequence[str], subjects: Mapping[str, str], k: int, *, seed: int = 0) -> list[list[str]]:
    """``k`` held-out lists of ``keys``: every subject's keys in exactly one of them."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(subjects[key], []).append(key)
    if k < 2:
        raise ValueError(f"--folds {k}: need at least 2 folds")
    if len(groups) < k:
        raise ValueError(f"--folds {k}: only {len(groups)} subject(s) with labels; use --folds {max(2, len(groups))} "
                         "or more labelled subjects")
    order = sorted(groups, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    folds: list[list[str]] = [[] for _ in range(k)]
    for i, subject in enumerate(order):
        folds[i % k].extend(sorted(groups[subject]))
    return folds


def split(folds: Sequence[Sequence[str]], fold: int) -> tuple[list[str], list[str]]:
    """(training keys, held-out keys) of fold ``fold`` (0-based)."""
    if not 0 <= fold < len(folds):
        raise ValueError(f"--fold {fold}: folds are 0..{len(folds) - 1}")
    held = list(folds[fold])
    train = [key for i, f in enumerate(folds) if i != fold for key in f]
    return train, held
