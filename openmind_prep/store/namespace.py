"""The store's key namespace: which group key each image gets, and which images may not get one.

An image's key is its path without ``.nii`` / ``.nii.gz``. A key may never touch the store's own
names (a first part starting with ``_`` or ``.`` such as ``_tmp``, ``_manifest``, ``_lock``;
``manifest.parquet``; ``zarr.json`` anywhere) and keys never nest: no key equals, contains or
lies inside another image's key (``a.nii`` beside ``a.nii.gz``; ``a.nii.gz`` beside
``a/image.nii.gz``, whose group would replace or sit inside ``a``'s). :func:`claim` hands keys
out over a whole selection at once, the store's ``ok`` images first, then in order; an image it
refuses gets a ``failed`` row, so no array is ever replaced by another image's.
"""

from __future__ import annotations

from typing import Iterable

from openmind_prep.core.paths import leaves_root, strip_nifti_suffix

#: Names the store uses for itself at its top level (besides any first part starting with "_" or ".").
RESERVED = ("manifest.parquet", "zarr.json")


def image_key(image_path: str) -> str:
    """The group key of an image: its path without ``.nii`` / ``.nii.gz``.

    >>> image_key("ds1/sub-1/anat/sub-1_T1w.nii.gz")
    'ds1/sub-1/anat/sub-1_T1w'
    """
    return strip_nifti_suffix(image_path)


def key_problem(key: str) -> str:
    """Why ``key`` cannot be an image group's key ('' when it can).

    >>> key_problem("ds1/sub-1/anat/x"), key_problem("_tmp/sub-1/x")[:22], key_problem("a/../b")[:10]
    ('', 'it uses the name _tmp,', 'it has an ')
    """
    parts = key.split("/")
    if leaves_root(key) or "\\" in key:
        return "it has an empty, '.' or '..' part (or a backslash)"
    bad = next((p for p in parts if p == "zarr.json"), None)
    if bad or parts[0].startswith(("_", ".")) or parts[0] in RESERVED:
        return (f"it uses the name {bad or parts[0]}, which the store keeps for itself (a first part "
                f"starting with '_' or '.', {', '.join(RESERVED)})")
    return ""


def ancestors(key: str) -> list[str]:
    """The keys of the groups above ``key``.

    >>> ancestors("a/b/c")
    ['a', 'a/b']
    """
    parts = key.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def claim(owned: Iterable[tuple[str, str]], image_paths: Iterable[str]) -> dict[str, str]:
    """``image_path → reason`` for each of ``image_paths`` that may not get its key, given the
    ``(key, image_path)`` pairs already ``owned`` (the store's ``ok`` rows); the others, in order,
    take theirs.

    >>> paths = ["a.nii", "a.nii.gz", "a/image.nii.gz", "b/x.nii", "b.nii"]
    >>> claim([("a", "a.nii")], paths)  # doctest: +NORMALIZE_WHITESPACE
    {'a.nii.gz': "its store key 'a' is already used by 'a.nii' (same path without .nii/.nii.gz)",
     'a/image.nii.gz': "its store key 'a/image' lies inside the group of 'a.nii'",
     'b.nii': "its store key 'b' would hold the group of 'b/x.nii'"}
    """
    owner: dict[str, str] = {}  # key -> image_path
    below: dict[str, str] = {}  # every ancestor of an owned key -> one image below it

    def take(key: str, path: str) -> None:
        owner[key] = path
        for parent in ancestors(key):
            below.setdefault(parent, path)

    for key, path in owned:
        take(key, path)
    refused = {}
    for path in image_paths:
        key = image_key(path)
        above = next((owner[a] for a in ancestors(key) if owner.get(a, path) != path), None)
        if key_problem(key):
            refused[path] = f"its store key {key!r} is refused: {key_problem(key)}"
        elif owner.get(key, path) != path:
            refused[path] = f"its store key {key!r} is already used by {owner[key]!r} (same path without .nii/.nii.gz)"
        elif above is not None:
            refused[path] = f"its store key {key!r} lies inside the group of {above!r}"
        elif below.get(key, path) != path:
            refused[path] = f"its store key {key!r} would hold the group of {below[key]!r}"
        else:
            take(key, path)
    return refused
