"""Which kind of source a path is (``preprocess SRC``, ``run --source SRC``, ``plan --source SRC``).

In this order:

1. a folder with ``openneuro_metadata.csv`` → ``openmind`` (the OpenMind tree);
2. a ``.json`` file, or a folder with ``pretrain_data.json`` → ``nnssl``;
3. a folder with ``dataset.json`` → ``nnunet`` (an nnU-Net raw dataset);
4. any other folder → ``folder`` (every NIfTI file at any depth).

``--source-kind`` names the kind instead (e.g. ``folder`` for a folder that happens to hold a
``dataset.json`` of another tool).
"""

from __future__ import annotations

from pathlib import Path

from openmind_prep.core.paths import InputError
from openmind_prep.sources.base import Source
from openmind_prep.sources.folder import FolderSource, nifti_files
from openmind_prep.sources.metadata import METADATA_CSV
from openmind_prep.sources.nnssl import PRETRAIN_JSON, NnsslSource
from openmind_prep.sources.nnunet import DATASET_JSON, NnunetSource
from openmind_prep.sources.openmind import OpenMindSource, is_openmind_tree

KINDS = ("openmind", "folder", "nnssl", "nnunet")


def detect_kind(path: Path) -> str:
    """The kind of source ``path`` is (see the module docstring).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> detect_kind(d)
    'folder'
    >>> _ = (d / "dataset.json").write_text("{}"); detect_kind(d)
    'nnunet'
    """
    path = Path(path)
    if path.is_file():
        return "nnssl"
    if is_openmind_tree(path):
        return "openmind"
    if (path / PRETRAIN_JSON).is_file():
        return "nnssl"
    if (path / DATASET_JSON).is_file():
        return "nnunet"
    return "folder"


def open_source(path: Path, kind: str | None = None, *, mask_pattern: str | None = None) -> Source:
    """The source at ``path``: of ``kind``, or of the kind :func:`detect_kind` finds. A path that is
    none of them (a file that is not JSON, a folder without any image) is an :class:`InputError`.
    ``mask_pattern`` (``--mask-pattern``) applies to ``folder`` sources only."""
    path, detected = Path(path), kind is None
    kind = kind or detect_kind(path)
    if kind not in KINDS:
        raise ValueError(f"unknown source kind {kind!r} (one of {', '.join(KINDS)})")
    if mask_pattern and kind != "folder":
        raise ValueError(f"--mask-pattern applies to folder sources; {path} is a source of kind {kind}")
    if path.is_file() and kind != "nnssl":
        raise InputError(path, f"a source of kind {kind} is a folder, not a file")
    if kind == "openmind":
        return OpenMindSource(path)
    if kind == "nnssl":
        return NnsslSource(path if path.is_file() else path / PRETRAIN_JSON)
    if kind == "nnunet":
        return NnunetSource(path)
    if not nifti_files(path):
        tried = (f"not an OpenMind tree ({path / METADATA_CSV}: cannot read: No such file or directory), no "
                 f"{PRETRAIN_JSON} or {DATASET_JSON}, and " if detected else "")
        raise InputError(path, f"no images found: {tried}no .nii or .nii.gz file at any depth")
    return FolderSource(path, mask_pattern)
