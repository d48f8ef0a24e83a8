"""A plain folder of NIfTI files as a source: every ``.nii`` / ``.nii.gz`` file at any depth is an
image (other files, and folders or files whose name starts with ``.``, are ignored).

- key: the path relative to the folder (the store refuses clashes, e.g. ``a.nii`` next to
  ``a.nii.gz``, as for every source);
- modality: the BIDS suffix (``sub-01_ses-1_T1w.nii.gz`` → ``T1w``) when it is one of
  :data:`BIDS_SUFFIXES`, else ``unknown``;
- subject / session: a ``sub-*`` / ``ses-*`` folder or file-name entity where there is one;
  dataset and image_quality_score stay empty;
- masks: ``mask_pattern`` (``--mask-pattern``) names an image's mask from its path without
  ``.nii``/``.nii.gz`` (``{stem}``), e.g. ``{stem}_mask.nii.gz`` or
  ``anon_mask={stem}_defacemask.nii.gz``; a file that is some image's mask is not an image itself.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from openmind_prep.core.paths import InputError, leaves_root, strip_nifti_suffix
from openmind_prep.sources.base import Source
from openmind_prep.sources.metadata import ImageRecord
from openmind_prep.store.schema import MASK_NAMES

#: BIDS suffixes of anatomical (and a few other) MRI images; OpenMind's modality names.
BIDS_SUFFIXES = frozenset({
    "T1w", "T2w", "FLAIR", "PDw", "T2starw", "PDT2", "inplaneT1", "inplaneT2", "angio", "T1map", "T2map",
    "T2starmap", "R1map", "R2map", "PDmap", "MP2RAGE", "UNIT1", "UNIT1_denoised", "MEGRE", "MESE", "FLASH",
    "SWI", "minIP", "T1rho", "MTR", "MTw", "dwi", "bold", "sbref", "epi", "asl", "m0scan",
    "FA", "MD", "ADC", "TRACE", "PET", "pet", "CT", "ct",
})
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def bids_modality(rel: str) -> str:
    """The modality a file name's BIDS suffix names, else ``unknown``.

    >>> [bids_modality(p) for p in ("sub-1/anat/sub-1_ses-a_T1w.nii.gz", "scan_FLAIR.nii", "brain.nii")]
    ['T1w', 'FLAIR', 'unknown']
    """
    stem = strip_nifti_suffix(rel.rsplit("/", 1)[-1])
    suffix = stem.rsplit("_", 1)[-1] if "_" in stem else ""
    if stem.endswith("_UNIT1_denoised"):
        return "UNIT1_denoised"
    return suffix if suffix in BIDS_SUFFIXES else "unknown"


def _entity(rel: str, key: str) -> str:
    """The first ``key-<label>`` found in a folder name or a file-name entity ('' if none).

    >>> _entity("data/sub-07/anat/sub-07_ses-2_T1w.nii.gz", "ses"), _entity("x.nii", "sub")
    ('ses-2', '')
    """
    for part in rel.split("/"):
        for piece in strip_nifti_suffix(part).split("_"):
            if re.fullmatch(rf"{key}-[A-Za-z0-9]+", piece):
                return piece
    return ""


def parse_mask_pattern(pattern: str) -> tuple[str, str]:
    """``(mask name, template)`` from ``[anon_mask=|anat_mask=]TEMPLATE`` (default: ``anat_mask``,
    the foreground mask); the template must contain ``{stem}``.

    >>> parse_mask_pattern("{stem}_mask.nii.gz"), parse_mask_pattern("anon_mask={stem}_deface.nii")
    (('anat_mask', '{stem}_mask.nii.gz'), ('anon_mask', '{stem}_deface.nii'))
    """
    name, template = pattern.split("=", 1) if "=" in pattern.split("{", 1)[0] else ("anat_mask", pattern)
    if name not in MASK_NAMES:
        raise ValueError(f"--mask-pattern {pattern!r}: the mask name must be one of {', '.join(MASK_NAMES)}")
    if "{stem}" not in template or not template.endswith(NIFTI_SUFFIXES):
        raise ValueError(f"--mask-pattern {pattern!r}: needs {{stem}} (the image's path without .nii/.nii.gz) "
                         "and a .nii or .nii.gz ending, e.g. {stem}_mask.nii.gz")
    return name, template


def nifti_files(folder: Path) -> list[str]:
    """Every ``.nii`` / ``.nii.gz`` file under ``folder`` (POSIX, relative, sorted); names starting
    with ``.`` are skipped, links to folders are not followed."""
    found = []
    for top, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(top).relative_to(folder).as_posix()
        found += [n if rel == "." else f"{rel}/{n}" for n in files
                  if n.endswith(NIFTI_SUFFIXES) and not n.startswith(".")]
    return sorted(found)


class FolderSource(Source):
    """Every NIfTI file under ``folder`` (see the module docstring).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> for p in ("sub-1/anat/sub-1_T1w.nii.gz", "sub-1/anat/sub-1_T1w_mask.nii.gz", "x/brain.nii", "notes.txt"):
    ...     (d / p).parent.mkdir(parents=True, exist_ok=True); _ = (d / p).write_bytes(b"")
    >>> [(r.image_path, r.modality, r.subject, r.mask_paths) for r in FolderSource(d, "{stem}_mask.nii.gz").records()]
    [('sub-1/anat/sub-1_T1w.nii.gz', 'T1w', 'sub-1', {'anat_mask': 'sub-1/anat/sub-1_T1w_mask.nii.gz'}), ('x/brain.nii', 'unknown', '', {})]
    """

    kind = "folder"
    listed_in = "the folder listing"

    def __init__(self, folder: Path, mask_pattern: str | None = None) -> None:
        super().__init__(Path(folder))
        self.mask_pattern = mask_pattern
        if mask_pattern:
            parse_mask_pattern(mask_pattern)  # a bad pattern fails before anything is listed

    def records(self) -> list[ImageRecord]:
        files = nifti_files(self.root)
        masks: dict[str, str] = {}
        mask_name = ""
        if self.mask_pattern:
            mask_name, template = parse_mask_pattern(self.mask_pattern)
            present = set(files)
            for rel in files:
                mask = template.format(stem=strip_nifti_suffix(rel))
                if leaves_root(mask):
                    raise InputError(self.root / mask, f"--mask-pattern {self.mask_pattern!r} leaves the folder")
                if mask in present and mask != rel:
                    masks[rel] = mask
        taken = set(masks.values())
        return [ImageRecord(image_path=rel, dataset="", subject=_entity(rel, "sub"), session=_entity(rel, "ses"),
                            modality=bids_modality(rel), **({f"{mask_name}_path": masks[rel]} if rel in masks else {}))
                for rel in files if rel not in taken]
