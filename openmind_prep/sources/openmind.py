"""The OpenMind tree as a source: ``SRC/openneuro_metadata.csv`` lists the images, which live under
``SRC/OpenMind/`` (the Hugging Face repo's layout; what ``download``, ``sample`` and the embedded
sample write). The CSV itself is read by :mod:`openmind_prep.sources.metadata`."""

from __future__ import annotations

from pathlib import Path

from openmind_prep.sources.base import Source
from openmind_prep.sources.metadata import IMAGES_DIR, METADATA_CSV, ImageRecord, read_metadata


class OpenMindSource(Source):
    """The OpenMind tree at ``tree`` (its CSV: ``csv``, default ``tree/openneuro_metadata.csv``).

    >>> s = OpenMindSource(Path("/data/raw"))
    >>> (s.kind, s.root, s.csv.name)
    ('openmind', PosixPath('/data/raw/OpenMind'), 'openneuro_metadata.csv')
    """

    kind = "openmind"
    listed_in = METADATA_CSV

    def __init__(self, tree: Path, csv: Path | None = None) -> None:
        tree = Path(tree)
        super().__init__(tree / IMAGES_DIR, origin=tree, tree=tree)
        self.csv = Path(csv) if csv is not None else tree / METADATA_CSV
        self.whole_csv = csv is not None

    @classmethod
    def from_csv(cls, csv: Path) -> "OpenMindSource":
        """Every row of a metadata CSV (``plan --metadata``: the images need not be there)."""
        return cls(Path(csv).parent, csv=Path(csv))

    def records(self) -> list[ImageRecord]:
        """The CSV's rows (a bad CSV is a ``MetadataError`` naming the file and line); in a RAW folder
        written by ``download``, those whose files were all downloaded
        (:func:`~openmind_prep.sources.pinned.downloaded_records`)."""
        if self.whole_csv:
            return read_metadata(self.csv)
        from openmind_prep.sources.pinned import downloaded_records

        return downloaded_records(self.tree)

    def staged(self, work: Path) -> "OpenMindSource":
        """The same layout inside ``work`` (``work/OpenMind/...``), as ``download`` and ``run`` write it."""
        return OpenMindSource(Path(work))


def is_openmind_tree(path: Path) -> bool:
    """Whether ``path`` is a folder heading an OpenMind tree (it has the metadata CSV)."""
    return (Path(path) / METADATA_CSV).is_file()


def as_source(source: "Source | Path | str") -> Source:
    """``source`` itself, or the OpenMind tree at that path (what a bare path meant before sources
    had kinds).

    >>> as_source("/data/raw").root, as_source(as_source("/data/raw")) == as_source("/data/raw")
    (PosixPath('/data/raw/OpenMind'), True)
    """
    return source if isinstance(source, Source) else OpenMindSource(Path(source))
