"""nnssl's ``pretrain_data.json`` as a source: any dataset prepared for nnssl comes in unchanged.

The file is what nnssl's ``Collection.to_dict(relative_paths=True)`` writes (e.g. its
``dataset_conversion/Dataset001_OpenMind.py``)::

    {"collection_index": 1, "collection_name": "Dataset001_OpenMind",
     "datasets": {"ds001486": {"dataset_index": "ds001486", "name": null,
        "dataset_info": {"image_quality_score": [{"modality": "T1w", "derived_from": null,
                                                  "image_quality_score": 1.7}]},
        "subjects": {"sub-001": {"subject_id": "sub-001", "subject_info": {"age": 30},
           "sessions": {"ses-T1": {"session_id": "ses-T1", "session_info": null,
              "images": [{"name": "sub-001_ses-T1_T1w.nii.gz", "modality": "T1w",
                          "image_path": "$nnssl_raw/.../sub-001_ses-T1_T1w.nii.gz",
                          "image_info": {"manufacturer": "Siemens"},
                          "associated_masks": {"anonymization_mask": "...", "anatomy_mask": null}}]}}}}}}}

Paths are resolved as nnssl's ``resolve_relative_paths`` does: a first part ``$NAME`` is the
environment variable ``NAME`` (nnssl writes ``$nnssl_raw`` / ``$nnssl_preprocessed``), an absolute
path is taken as it is, and any other path is relative to the current folder. The source's root is
the deepest folder holding every image and mask; records' paths are relative to it, so a
``pretrain_data.json`` of OpenMind gives the same store keys as the OpenMind tree itself. Each
image's image_quality_score is its dataset's entry for its modality and ``derived_from`` (where
nnssl's converter keeps it).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from openmind_prep.core.paths import InputError, read_regular
from openmind_prep.sources.base import Source
from openmind_prep.sources.metadata import ImageRecord

PRETRAIN_JSON = "pretrain_data.json"


def resolve_nnssl_path(path: str, where: Path) -> str:
    """An nnssl path made absolute: ``$NAME/...`` from the environment, a relative path from the
    current folder (both as nnssl resolves them); a missing variable is an :class:`InputError`.

    >>> os.environ["nnssl_doctest_raw"] = "/data/raw/"
    >>> resolve_nnssl_path("$nnssl_doctest_raw/Dataset001/a.nii.gz", Path("p.json"))
    '/data/raw/Dataset001/a.nii.gz'
    """
    first = path.split("/", 1)[0]
    if first.startswith("$"):
        value = os.environ.get(first[1:])
        if value is None:
            raise InputError(where, f"{path!r} starts with {first} but the environment variable {first[1:]} is "
                                    "not set (nnssl resolves it from the environment)")
        path = value.rstrip("/") + path[len(first):]
    if path.startswith("/") and "/." not in path and "//" not in path and not path.endswith("/"):
        return path  # already normal (the common case: 114k paths, ~3x faster)
    return os.path.normpath(os.path.abspath(path))


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _iqs_table(dataset_info) -> dict[tuple[str, str], float]:
    """``(modality, derived_from) → image_quality_score`` from a dataset's ``dataset_info``."""
    table = {}
    for entry in (dataset_info or {}).get("image_quality_score") or ():
        score = entry.get("image_quality_score") if isinstance(entry, dict) else None
        if isinstance(score, (int, float)) and not math.isnan(score):
            table[(_text(entry.get("modality")), _text(entry.get("derived_from")))] = float(score)
    return table


def _images(collection: dict):
    """``(dataset id, subject, session, dataset_info, subject_info, image dict)`` in file order."""
    for dataset_id, dataset in collection["datasets"].items():
        for subject_id, subject in dataset["subjects"].items():
            for session_id, session in subject["sessions"].items():
                for image in session["images"]:
                    yield (str(dataset_id), str(subject_id), str(session_id), dataset.get("dataset_info"),
                           subject.get("subject_info"), image)


class NnsslSource(Source):
    """The images a ``pretrain_data.json`` lists (see the module docstring)."""

    kind = "nnssl"
    listed_in = PRETRAIN_JSON

    def __init__(self, json_path: Path) -> None:
        self.json_path = Path(json_path)
        self._listing: list[tuple] | None = self._read()
        paths = [p for *_, files in self._listing for p in files if p]
        root = os.path.commonpath({os.path.dirname(p) for p in paths}) if paths else str(self.json_path.parent)
        super().__init__(Path(root), origin=self.json_path)

    def _read(self) -> list[tuple]:
        """``(dataset id, subject, session, IQS table, subject_info, image dict, (image, anon mask,
        anat mask) as absolute paths)`` per image, in file order."""
        try:
            collection = json.loads(read_regular(self.json_path).decode("utf-8"))  # never a FIFO
        except OSError as e:
            raise InputError(self.json_path, f"cannot read: {e.strerror or e}") from None
        except ValueError as e:
            raise InputError(self.json_path, f"not JSON ({e})") from None
        listing, tables = [], {}
        try:
            for dataset_id, subject, session, dataset_info, subject_info, image in _images(collection):
                if not isinstance(image.get("image_path"), str) or not image["image_path"]:
                    raise InputError(self.json_path, f"an image without image_path ({str(image)[:80]})")
                if dataset_id not in tables:
                    tables[dataset_id] = _iqs_table(dataset_info)
                masks = image.get("associated_masks") or {}
                files = tuple(resolve_nnssl_path(p, self.json_path) if isinstance(p, str) and p else ""
                              for p in (image["image_path"], masks.get("anonymization_mask"),
                                        masks.get("anatomy_mask")))
                listing.append((dataset_id, subject, session, tables[dataset_id], subject_info or {}, image, files))
        except (KeyError, TypeError, AttributeError) as e:
            raise InputError(self.json_path, f"not an nnssl pretrain_data.json (collections → datasets → "
                                             f"subjects → sessions → images; {type(e).__name__}: {e})") from None
        return listing

    def __getstate__(self) -> dict:  # Dask tasks need the root, not the listing
        return {k: v for k, v in vars(self).items() if k != "_listing"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _listing=None)  # read again if a worker asks for the records

    def records(self) -> list[ImageRecord]:
        if self._listing is None:
            self._listing = self._read()
        cut = len(str(self.root).rstrip("/")) + 1  # every path lies under root (their common folder)
        records = []
        for dataset_id, subject, session, iqs, subject_info, image, files in self._listing:
            image_info = image.get("image_info") or {}
            modality, derived = _text(image.get("modality")), _text(image_info.get("derived_from"))
            rel = [p[cut:] if p else "" for p in files]
            extra = {**{k: _text(v) for k, v in subject_info.items()},
                     **{k: _text(v) for k, v in image_info.items() if k != "derived_from"}}
            records.append(ImageRecord(
                image_path=rel[0], dataset=dataset_id, subject=subject, session=session, modality=modality,
                image_quality_score=iqs.get((modality, derived)), anon_mask_path=rel[1], anat_mask_path=rel[2],
                derived_from=derived, unique_id=f"{dataset_id}__{subject}__{session}__{_text(image.get('name'))}",
                extra=tuple(sorted(extra.items()))))
        return records
