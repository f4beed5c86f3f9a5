"""Yearbook (Ginosar et al., 2015) -> DatasetDict, as the GRASP paper uses it.

Raw input: the release ``faces_aligned_small_mirrored_co_aligned_cropped_cleaned``,
portraits in ``F/`` and ``M/`` named ``YYYY_<state>_<city>_<school>_<n>.png``
(e.g. ``F/1905_Ohio_Cleveland_Central_0-1.png``). ``--from`` is that folder (or a
folder holding it).

Output columns: ``image`` (Image), ``label`` (ClassLabel ``earlier``/``later``),
``period`` (string), ``year`` (int64), ``gender`` (``"F"``/``"M"``). The periods
and the binary task follow the authors' released preprocessing
(``preprocessing/yearbook_preprocessing.py`` of Sekeh-Lab/grasp-multisource-transfer):

=============  ==========================  ======================
period          label 0 ("earlier")         label 1 ("later")
=============  ==========================  ======================
before-1950     year < 1940 (1930s, older)  1940-1949
1950-1969       1950-1959                   1960-1969
1970-1989       1970-1979                   1980-1989
1990-2013       1990-1999                   2000 and later
=============  ==========================  ======================

Split 80/10/10 within each (period, label) group (see :mod:`hf_grasp.inputs.converters`).
"""

from __future__ import annotations

import re
from pathlib import Path

import datasets

from ...runtime.errors import DataError
from . import build_splits, image_files, require_dir

PERIODS = ("before-1950", "1950-1969", "1970-1989", "1990-2013")
LABELS = ("earlier", "later")
GENDERS = ("F", "M")
_SUFFIXES = (".png", ".jpg", ".jpeg")
_YEAR = re.compile(r"^(\d{4})_")

_DESCRIPTION = (
    "Yearbook portraits (Ginosar et al., 2015), 1905-2013, in four periods; within each period a binary "
    "task, earlier vs later decade, as in the GRASP paper's released preprocessing. Made by `hf-grasp "
    "prepare yearbook`; split 80/10/10 per (period, label), seed {seed}."
)
_CITATION = (
    "@article{ginosar2015century, title={A Century of Portraits: A Visual Historical Record of American High "
    "School Yearbooks}, author={Ginosar, Shiry and Rakelly, Kate and Sachs, Sarah and Yin, Brian and Efros, "
    "Alexei A.}, journal={IEEE Transactions on Computational Imaging}, volume={1}, number={3}, pages={175--188}, "
    "year={2015}}"
)
_HOMEPAGE = "https://shiry.ttic.edu/projects/yearbooks/yearbooks.html"


def period_and_label(year: int) -> tuple[str, int]:
    """The period of ``year`` and its label within it (0 earlier decade, 1 later)."""
    if year < 1950:
        return PERIODS[0], int(year >= 1940)
    if year < 1970:
        return PERIODS[1], int(year >= 1960)
    if year < 1990:
        return PERIODS[2], int(year >= 1980)
    return PERIODS[3], int(year >= 2000)


def features() -> datasets.Features:
    return datasets.Features({
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=list(LABELS)),
        "period": datasets.Value("string"),
        "year": datasets.Value("int64"),
        "gender": datasets.Value("string"),
    })


def _release_root(raw: Path) -> Path:
    """``raw`` itself when it holds F/ or M/, else its single subfolder that does."""
    if any((raw / g).is_dir() for g in GENDERS):
        return raw
    inner = [d for d in sorted(raw.iterdir()) if d.is_dir() and any((d / g).is_dir() for g in GENDERS)]
    if len(inner) == 1:
        return inner[0]
    raise DataError(f"yearbook directory {raw} has no F/ or M/ folder (expected the release's layout, "
                    "e.g. F/1905_Ohio_Cleveland_Central_0-1.png)")


def scan(raw_dir: Path) -> dict[str, list]:
    """Columns (``image`` as file paths) of every portrait under ``raw_dir``, sorted by gender then file name."""
    root = _release_root(require_dir(raw_dir, "yearbook"))
    columns: dict[str, list] = {"image": [], "label": [], "period": [], "year": [], "gender": []}
    for gender in GENDERS:
        folder = root / gender
        if not folder.is_dir():
            continue
        for path in image_files(folder, _SUFFIXES):
            match = _YEAR.match(path.name)
            if match is None:
                raise DataError(f"yearbook file {path} does not start with a year (expected YYYY_...)")
            year = int(match.group(1))
            period, label = period_and_label(year)
            columns["image"].append(str(path))
            columns["label"].append(label)
            columns["period"].append(period)
            columns["year"].append(year)
            columns["gender"].append(gender)
    if not columns["image"]:
        raise DataError(f"yearbook directory {root} has no images in F/ or M/ ({', '.join(_SUFFIXES)})")
    return columns


def build_yearbook(raw_dir: Path, *, seed: int = 42) -> datasets.DatasetDict:
    """The Yearbook DatasetDict (train/validation/test) from the raw release in ``raw_dir``."""
    columns = scan(Path(raw_dir))
    groups = list(zip(columns["period"], columns["label"]))
    return build_splits(columns, features(), groups, seed=seed, description=_DESCRIPTION.format(seed=seed),
                        citation=_CITATION, homepage=_HOMEPAGE)
