"""The seam between where images come from and what is done with them: a :class:`Source`.

A source has a ``kind`` (``openmind``, ``folder``, ``nnssl``, ``nnunet``), a ``root`` folder and
``records()``: one :class:`~openmind_prep.sources.metadata.ImageRecord` per image, whose image,
mask and label paths are relative to ``root`` (POSIX, confined to it when opened:
:func:`openmind_prep.core.paths.source_path`). ``preprocess``, ``run`` and ``plan`` take a
source; which kind a path is, is decided once (:func:`openmind_prep.sources.detect.open_source`);
a bare path where a source is expected is an OpenMind tree (:func:`openmind_prep.sources.openmind.as_source`).

A source is a small picklable value (its root and how to list it), so Dask tasks take it along;
each kind lists its records when asked.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

from openmind_prep.sources.metadata import ImageRecord
from openmind_prep.sources.selection import Selection


class Source:
    """Images under ``root``; ``origin`` is the path the user named (a folder or a file).

    ``tree`` is the folder a copy of the source mirrors (``run --source`` copies ``tree``-relative
    paths into its work folder); it is ``root`` unless the images sit in a sub-folder of it.
    ``listed_in`` names what lists the images, for messages about a listed file that is missing.

    >>> s = Source(Path("/data/x"))
    >>> (s.kind, s.root, s.tree_paths(ImageRecord("a.nii", "", "", "", "T1w")))
    ('files', PosixPath('/data/x'), ['a.nii'])
    """

    kind = "files"
    listed_in = "the source"

    def __init__(self, root: Path, origin: Path | None = None, tree: Path | None = None) -> None:
        self.root = Path(root)
        self.origin = Path(origin) if origin is not None else self.root
        self.tree = Path(tree) if tree is not None else self.root

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.origin)!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and (other.kind, other.root, other.origin) == (self.kind, self.root, self.origin)

    def __hash__(self) -> int:
        return hash((type(self), self.root))

    def records(self) -> list[ImageRecord]:
        """Every image of the source, in a stable order (the order ``--limit`` cuts)."""
        raise NotImplementedError(f"{type(self).__name__} lists no records")

    def describe(self, n_images: int) -> str:
        """The first line ``preprocess``, ``run`` and ``plan`` print: kind, path, image count.

        >>> Source(Path("/d")).describe(3)
        'source: files /d (3 images)'
        """
        return f"source: {self.kind} {self.origin} ({n_images} image{'s' if n_images != 1 else ''})"

    def tree_paths(self, record: ImageRecord) -> list[str]:
        """The record's files relative to :attr:`tree` (what a copy of the source holds)."""
        sub = self.root.relative_to(self.tree).as_posix()
        return [p if sub == "." else f"{sub}/{p}" for p in record.files()]

    def staged(self, work: Path) -> "Source":
        """This source's images as copied into ``work`` (same relative layout under it)."""
        return Staged(self.kind, Path(work) / self.root.relative_to(self.tree), tree=work)


class Staged(Source):
    """A source's files copied into a work folder (``run --source``): only its root is used."""

    def __init__(self, kind: str, root: Path, tree: Path | None = None) -> None:
        super().__init__(root, tree=tree)
        self.kind = kind

    def records(self) -> list[ImageRecord]:
        return []


#: Selection fields that only some kinds' records carry: field → (flag, what is missing).
_OPTIONAL_FIELDS = {
    "max_iqs": ("--max-iqs", "an image_quality_score", lambda r: r.image_quality_score is not None),
    "datasets": ("--dataset", "a dataset id", lambda r: bool(r.dataset)),
    "exclude_datasets": ("exclude_datasets", "a dataset id", lambda r: bool(r.dataset)),
}


def select(source: Source, selection: Selection, records: Sequence[ImageRecord] | None = None,
           say: Callable[[str], None] | None = None) -> list[ImageRecord]:
    """``selection`` applied to the source's records. A filter on a field that no record of this
    source has (no IQS in a plain folder, no dataset id) is not applied, and ``say`` gets one line
    saying so (a filter that would drop every image for want of the field is a mistake, not a wish).

    >>> from openmind_prep.sources.metadata import ImageRecord
    >>> class Two(Source):
    ...     kind = "folder"
    ...     def records(self):
    ...         return [ImageRecord("a.nii", "", "", "", "T1w"), ImageRecord("b.nii", "", "", "", "T2w")]
    >>> [r.image_path for r in select(Two(Path("/d")), Selection(modalities=("T1w",), max_iqs=2.5), say=print)]
    --max-iqs: no image of this folder source has an image_quality_score; not applied
    ['a.nii']
    """
    records = list(source.records() if records is None else records)
    dropped = {}
    for name, (flag, field, has) in _OPTIONAL_FIELDS.items():
        if getattr(selection, name) not in (None, ()) and not any(has(r) for r in records):
            dropped[name] = Selection.__dataclass_fields__[name].default
            if say is not None:
                say(f"{flag}: no image of this {source.kind} source has {field}; not applied")
    return dataclasses.replace(selection, **dropped).apply(records)
