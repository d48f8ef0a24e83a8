"""Reading OpenMind's ``openneuro_metadata.csv``.

The Hugging Face repo keeps one CSV row per image; image and mask paths are relative to the
repo's ``OpenMind/`` folder, e.g. ``ds001486/sub-001/ses-T1/anat/sub-001_ses-T1_T1w.nii.gz``.
Empty mask cells mean "no mask" (nnssl's converter crashes on them; we do not).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from openmind_prep.core.paths import InputError, read_regular, strip_nifti_suffix
from openmind_prep.store.schema import MASK_NAMES

log = logging.getLogger("openmind_prep")

METADATA_CSV = "openneuro_metadata.csv"
IMAGES_DIR = "OpenMind"

#: Columns we interpret; every other column is carried through in ``ImageRecord.extra``.
CORE_COLUMNS = (
    "image_path",
    "modality",
    "unique_id",
    "image_quality_score",
    "anon_mask_path",
    "anat_mask_path",
    "derived_from",
)


@dataclass(frozen=True)
class ImageRecord:
    """One image of a source (for the OpenMind tree: one row of the metadata CSV).

    Paths are POSIX strings relative to the source's root (``OpenMind/`` for the OpenMind tree;
    :mod:`openmind_prep.sources.base`); an empty string means "absent".

    >>> r = record_from_row({"image_path": "ds1/sub-1/ses-a/anat/x_T1w.nii.gz", "modality": "T1w"})
    >>> (r.dataset, r.subject, r.session, r.stem)
    ('ds1', 'sub-1', 'ses-a', 'ds1/sub-1/ses-a/anat/x_T1w')
    """

    image_path: str
    dataset: str
    subject: str
    session: str
    modality: str
    image_quality_score: float | None = None
    anon_mask_path: str = ""
    anat_mask_path: str = ""
    derived_from: str = ""
    unique_id: str = ""
    extra: tuple[tuple[str, str], ...] = ()
    #: A label map for this image (an nnU-Net raw dataset's ``labelsTr/`` file), relative like the
    #: image; empty when the source has none.
    label_path: str = ""

    @property
    def stem(self) -> str:
        """The image path without ``.nii`` / ``.nii.gz``: the image's key in every output."""
        return strip_nifti_suffix(self.image_path)

    @property
    def mask_paths(self) -> dict[str, str]:
        """``{"anon_mask": ..., "anat_mask": ...}`` for the masks this image has."""
        masks = dict(zip(MASK_NAMES, (self.anon_mask_path, self.anat_mask_path)))
        return {name: path for name, path in masks.items() if path}

    def files(self) -> list[str]:
        """All files of this image (image first, then its masks, then its label map), relative to the
        source's root (``OpenMind/`` for the OpenMind tree)."""
        return [self.image_path, *self.mask_paths.values(), *([self.label_path] if self.label_path else [])]


def parse_image_path(image_path: str) -> tuple[str, str, str]:
    """Split an OpenMind image path into (dataset, subject, session); session is '' if absent.

    >>> parse_image_path("ds001486/sub-001/ses-T1/anat/sub-001_ses-T1_T1w.nii.gz")
    ('ds001486', 'sub-001', 'ses-T1')
    >>> parse_image_path("ds000001/sub-01/anat/sub-01_T1w.nii.gz")
    ('ds000001', 'sub-01', '')
    """
    parts = image_path.replace("\\", "/").split("/")
    if len(parts) < 3:
        raise ValueError(f"{image_path!r}: expected <dataset>/<subject>/.../<file>")
    session = parts[2] if parts[2].startswith("ses-") else ""
    return parts[0], parts[1], session


def _iqs(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        score = float(value)
    except ValueError:
        raise ValueError(f"image_quality_score {value[:40]!r} is not a number") from None
    return None if math.isnan(score) else score


def _clean(value: str | None) -> str:
    value = (value or "").strip()
    return "" if value.lower() == "nan" else value


def record_from_row(row: dict[str, str]) -> ImageRecord:
    """Build an :class:`ImageRecord` from one CSV row (a ``csv.DictReader`` dict)."""
    image_path = _clean(row.get("image_path"))
    if not image_path:
        raise ValueError("row without image_path")
    dataset, subject, session = parse_image_path(image_path)
    return ImageRecord(
        image_path=image_path,
        dataset=dataset,
        subject=subject,
        session=session,
        modality=_clean(row.get("modality")),
        image_quality_score=_iqs(row.get("image_quality_score")),
        anon_mask_path=_clean(row.get("anon_mask_path")),
        anat_mask_path=_clean(row.get("anat_mask_path")),
        derived_from=_clean(row.get("derived_from")),
        unique_id=_clean(row.get("unique_id")),
        extra=tuple((k, v or "") for k, v in row.items() if k not in CORE_COLUMNS and k is not None),
    )


class MetadataError(ValueError):
    """The metadata CSV cannot be read; the message names the file and, where known, the line."""


def _decode(data: bytes, csv_path: Path) -> str:
    """The CSV's text: UTF-8, a leading BOM dropped; a byte that is not UTF-8 is a
    :class:`MetadataError` naming the line and column (any newline convention is kept for ``csv``)."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise MetadataError(f"{csv_path}: line {line}: not UTF-8 (byte 0x{data[e.start]:02x} at column "
                            f"{column}); save the CSV as UTF-8") from None


def read_metadata(csv_path: Path) -> list[ImageRecord]:
    """Read the metadata CSV into records, in file order. UTF-8 with or without a BOM; a bad byte,
    a malformed row or value is a :class:`MetadataError` (a ``ValueError``) naming the file and the
    line the row starts on: a header naming a column twice, a NUL byte, a quoted field that runs over
    lines (a quote left open), an oversized field. A row repeating an earlier row's ``image_path``
    is used once, with a warning naming both lines.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / METADATA_CSV
    >>> _ = p.write_text("image_path,modality,image_quality_score,anon_mask_path\\n"
    ...                  "ds1/sub-1/anat/sub-1_T1w.nii.gz,T1w,1.5,\\n")
    >>> [(r.modality, r.image_quality_score, r.mask_paths) for r in read_metadata(p)]
    [('T1w', 1.5, {})]
    >>> _ = p.write_bytes(b"image_path,modality\\nds1/sub-1/x.nii.gz,T1w\\nds1/x.nii.gz,T1w\\n")
    >>> read_metadata(p)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    openmind_prep.sources.metadata.MetadataError: .../openneuro_metadata.csv: line 3: 'ds1/x.nii.gz': expected <dataset>/<subject>/.../<file>
    """
    csv_path = Path(csv_path)
    try:
        data = read_regular(csv_path)  # a FIFO is refused, never read
    except OSError as e:
        raise MetadataError(f"{csv_path}: cannot read: {e.strerror or e}") from None
    except InputError as e:
        raise MetadataError(str(e)) from None
    rows = _rows(csv.reader(io.StringIO(_decode(data, csv_path), newline="")), csv_path)
    header_line, header = next(rows, (1, []))
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        raise MetadataError(f"{csv_path}: line {header_line} (the header): column {twice[0]!r} appears twice")
    if "image_path" not in header:
        raise MetadataError(f"{csv_path}: not an OpenMind metadata CSV (no 'image_path' column)")
    records: list[ImageRecord] = []
    first_line: dict[str, int] = {}
    for line, values in rows:
        try:
            record = record_from_row(dict(zip(header, values)))
        except ValueError as e:
            raise MetadataError(f"{csv_path}: line {line}: {e}") from None
        if record.image_path in first_line:
            log.warning("%s: line %d repeats the image_path %s of line %d; the image is used once", csv_path,
                        line, record.image_path, first_line[record.image_path])
            continue
        first_line[record.image_path] = line
        records.append(record)
    return records


def _rows(reader, csv_path: Path):
    """``(line the row starts on, values)`` of each non-empty row of a ``csv.reader``, refusing NUL bytes,
    fields that run over lines and ``csv`` errors with a :class:`MetadataError` naming that line."""
    end = 0
    while True:
        start = end + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise MetadataError(f"{csv_path}: line {start}: {e}") from None
        end = reader.line_num
        if not values:
            continue
        if any("\x00" in v for v in values):
            raise MetadataError(f"{csv_path}: line {start}: a NUL byte in a field")
        if end > start and any("\n" in v or "\r" in v for v in values):
            raise MetadataError(f"{csv_path}: line {start}: a quoted field opened on this line runs on to line "
                                f"{end}; is a closing quote missing?")
        yield start, values
