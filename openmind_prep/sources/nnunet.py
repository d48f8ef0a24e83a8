"""An nnU-Net raw dataset as a source: labelled downstream data, images with their label maps.

Layout (nnU-Net v2; v1's ``modality`` key is read like ``channel_names``)::

    DatasetXXX_Name/dataset.json        {"channel_names": {"0": "T1", "1": "FLAIR"}, "labels": {...},
                                         "numTraining": N, "file_ending": ".nii.gz"}
    DatasetXXX_Name/imagesTr/CASE_0000.nii.gz   channel 0 of a training case
    DatasetXXX_Name/labelsTr/CASE.nii.gz        its label map
    DatasetXXX_Name/imagesTs/CASE_0000.nii.gz   test cases (labels only if labelsTs/ has them)

One record per image channel file, keyed by its path (``imagesTr/CASE_0000``); ``label_path`` is
the case's label map where there is one (how labels are resampled and stored is the store's
business, not the listing's); modality = the channel's name; dataset = the folder's name; subject =
the case id. Only NIfTI ``file_ending`` s are supported.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from openmind_prep.core.paths import InputError, read_regular
from openmind_prep.sources.base import Source
from openmind_prep.sources.metadata import ImageRecord

DATASET_JSON = "dataset.json"
#: (images folder, labels folder) pairs, training first.
SPLITS = (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs"))


def read_dataset_json(folder: Path) -> dict:
    """``folder/dataset.json`` as a dict; unreadable, not JSON or not an object: :class:`InputError`."""
    path = Path(folder) / DATASET_JSON
    try:
        data = json.loads(read_regular(path).decode("utf-8"))  # never a FIFO
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None
    except ValueError as e:
        raise InputError(path, f"not JSON ({e})") from None
    if not isinstance(data, dict):
        raise InputError(path, "not an nnU-Net dataset.json (not a JSON object)")
    return data


class NnunetSource(Source):
    """The image channel files of an nnU-Net raw dataset (see the module docstring).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()) / "Dataset002_Toy"
    >>> for p in ("imagesTr/c1_0000.nii.gz", "imagesTr/c1_0001.nii.gz", "labelsTr/c1.nii.gz", "imagesTs/c9_0000.nii.gz"):
    ...     (d / p).parent.mkdir(parents=True, exist_ok=True); _ = (d / p).write_bytes(b"")
    >>> _ = (d / "dataset.json").write_text('{"channel_names": {"0": "T1", "1": "FLAIR"}, "file_ending": ".nii.gz"}')
    >>> [(r.image_path, r.modality, r.subject, r.label_path) for r in NnunetSource(d).records()]  # doctest: +NORMALIZE_WHITESPACE
    [('imagesTr/c1_0000.nii.gz', 'T1', 'c1', 'labelsTr/c1.nii.gz'), ('imagesTr/c1_0001.nii.gz', 'FLAIR', 'c1', 'labelsTr/c1.nii.gz'),
     ('imagesTs/c9_0000.nii.gz', 'T1', 'c9', '')]
    """

    kind = "nnunet"
    listed_in = "the dataset's images folders"

    def __init__(self, folder: Path) -> None:
        super().__init__(Path(folder))
        meta = read_dataset_json(self.root)
        self.file_ending = str(meta.get("file_ending", ".nii.gz"))
        if self.file_ending not in (".nii.gz", ".nii"):
            raise InputError(self.root / DATASET_JSON, f"file_ending {self.file_ending!r}: only NIfTI (.nii, "
                                                       ".nii.gz) datasets are supported")
        names = meta.get("channel_names") or meta.get("modality") or {}
        self.channels = {str(k): str(v) for k, v in names.items()} if isinstance(names, dict) else {}

    def records(self) -> list[ImageRecord]:
        records = []
        pattern = re.compile(rf"(.+)_(\d{{4}}){re.escape(self.file_ending)}")
        for images, labels in SPLITS:
            folder = self.root / images
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if not path.name.endswith(self.file_ending) or path.name.startswith("."):
                    continue
                match = pattern.fullmatch(path.name)
                case, channel = (match[1], str(int(match[2]))) if match else (path.name[:-len(self.file_ending)], "")
                label = f"{labels}/{case}{self.file_ending}"
                records.append(ImageRecord(
                    image_path=f"{images}/{path.name}", dataset=self.root.name, subject=case, session="",
                    modality=self.channels.get(channel, "unknown"),
                    label_path=label if match and (self.root / label).is_file() else "",
                    extra=(("split", images[-2:]),)))
        return records
