"""Which images to use: a small, reviewable selection (TOML file and/or CLI options).

A selection file (format documented in ``manifests/README.md``; the named ones ship inside the
package, in ``openmind_prep/sources/selections/``, and are addressed by name: ``--select t1w-iqs2.5``)::

    name = "t1w-t2w-flair-iqs2.5"
    modalities = ["T1w", "T2w", "FLAIR"]   # empty or absent: every modality
    max_iqs = 2.5                           # keep image_quality_score <= 2.5 (lower is better)
    datasets = []                           # only these dataset ids (empty: all)
    exclude_datasets = []                   # never these
    include_derived = true                  # FA/MD maps etc. (rows with derived_from set)
    limit = 0                               # first N after filtering, in CSV order (0: all)

Command-line options override the file field by field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable


from openmind_prep.sources.metadata import ImageRecord

#: The named selections shipped with the package (``--select NAME``).
SELECTIONS_DIR = Path(__file__).parent / "selections"

_FIELDS = ("name", "description", "modalities", "max_iqs", "datasets", "exclude_datasets",
           "include_derived", "limit")


@dataclass(frozen=True)
class Selection:
    """Filters over metadata records; ``apply`` keeps CSV order, then cuts to ``limit``.

    Images without an IQS are dropped when ``max_iqs`` is set (their quality is unknown).

    >>> from openmind_prep.sources.metadata import record_from_row
    >>> rows = [record_from_row({"image_path": f"ds{i}/sub-1/anat/a.nii.gz", "modality": m,
    ...                          "image_quality_score": q})
    ...         for i, (m, q) in enumerate([("T1w", "1.0"), ("T2w", "3.0"), ("FA", "1.0")])]
    >>> [r.dataset for r in Selection(modalities=("T1w", "T2w"), max_iqs=2.5).apply(rows)]
    ['ds0']
    """

    name: str = "custom"
    description: str = ""
    modalities: tuple[str, ...] = ()
    max_iqs: float | None = None
    datasets: tuple[str, ...] = ()
    exclude_datasets: tuple[str, ...] = ()
    include_derived: bool = True
    limit: int = 0

    def keeps(self, record: ImageRecord) -> bool:
        """Whether one record passes every filter (``limit`` aside)."""
        if self.modalities and record.modality not in self.modalities:
            return False
        if self.max_iqs is not None and (
            record.image_quality_score is None or record.image_quality_score > self.max_iqs
        ):
            return False
        if self.datasets and record.dataset not in self.datasets:
            return False
        if record.dataset in self.exclude_datasets:
            return False
        return self.include_derived or not record.derived_from

    def apply(self, records: Iterable[ImageRecord]) -> list[ImageRecord]:
        """The selected records, in input order."""
        kept = [r for r in records if self.keeps(r)]
        return kept[: self.limit] if self.limit else kept

    def to_dict(self) -> dict:
        """Plain dict (lists instead of tuples), as written into pinned lists and manifests."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def fingerprint(self) -> str:
        """Stable short hash of the filters (name and description excluded)."""
        d = {k: v for k, v in self.to_dict().items() if k not in ("name", "description")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def load_selection(path: Path) -> Selection:
    """Read a selection TOML file; unknown keys are an error naming the file.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t1.toml"
    >>> _ = p.write_text('name = "t1"\\nmodalities = ["T1w"]\\nmax_iqs = 2.5\\n')
    >>> load_selection(p).modalities
    ('T1w',)
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{path}: cannot read selection file: {e}") from e
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ValueError(f"{path}: unknown selection keys {unknown}; allowed: {list(_FIELDS)}")
    for key, value in data.items():
        problem = _field_problem(key, value)
        if problem:
            raise ValueError(f"{path}: {key} = {value!r}: {problem}")
    for key in ("modalities", "datasets", "exclude_datasets"):
        if key in data:
            data[key] = tuple(str(v) for v in data[key])
    if data.get("max_iqs") is not None:
        data["max_iqs"] = float(data["max_iqs"])
    data.setdefault("name", path.stem)
    return Selection(**data)


def _field_problem(key: str, value) -> str:
    """Why ``value`` is no value of selection field ``key`` ('' when it is one).

    >>> _field_problem("limit", -3), _field_problem("max_iqs", float("nan")), _field_problem("max_iqs", "high")
    ('expected a whole number >= 0', 'expected a finite number', 'expected a finite number')
    """
    if key in ("modalities", "datasets", "exclude_datasets"):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return "" if ok else "expected a list of strings"
    if key == "max_iqs":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return "" if ok else "expected a finite number"
    if key == "limit":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return "" if ok else "expected a whole number >= 0"
    if key == "include_derived":
        return "" if isinstance(value, bool) else "expected true or false"
    return "" if isinstance(value, str) else "expected a string"


def named_selections() -> list[str]:
    """The names of the selections shipped in the package (file stems of ``openmind_prep/sources/selections``).

    >>> "t1w-iqs2.5" in named_selections()
    True
    """
    return sorted(p.stem for p in SELECTIONS_DIR.glob("*.toml"))


def find_selection(ref: str | Path) -> Path:
    """The selection file ``ref`` names: an existing file path (relative to the current folder), or
    the name of a shipped selection (``t1w-iqs2.5`` or ``t1w-iqs2.5.toml``). Neither: ``ValueError``
    listing the names (closest first).

    >>> find_selection("t1w-iqs2.5").name
    't1w-iqs2.5.toml'
    >>> try:
    ...     find_selection("t1w-iqs25")
    ... except ValueError as e:
    ...     print(str(e)[:70])
    't1w-iqs25' is neither a file nor a named selection; did you mean t1w-
    """
    import difflib

    path = Path(ref)
    if path.is_file():
        return path
    name = path.name.removesuffix(".toml")
    shipped = SELECTIONS_DIR / f"{name}.toml"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    names = named_selections()
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ValueError(f"{str(ref)!r} is neither a file nor a named selection; {hint}(names: {', '.join(names)})")


def selection_from_options(
    select: str | Path | None = None,
    modality: Iterable[str] = (),
    max_iqs: float | None = None,
    dataset: Iterable[str] = (),
    limit: int | None = None,
) -> Selection:
    """Merge a selection (a file path or a shipped selection's name) with CLI options (each given
    option replaces the file's field).

    >>> s = selection_from_options("t1w-iqs2.5", limit=3)
    >>> (s.modalities, s.max_iqs, s.limit)
    (('T1w',), 2.5, 3)
    """
    base = load_selection(find_selection(select)) if select else Selection()
    overrides: dict = {}
    if tuple(modality):
        overrides["modalities"] = tuple(modality)
    if max_iqs is not None:
        overrides["max_iqs"] = max_iqs
    if tuple(dataset):
        overrides["datasets"] = tuple(dataset)
    if limit is not None:
        overrides["limit"] = limit
    return dataclasses.replace(base, **overrides)
