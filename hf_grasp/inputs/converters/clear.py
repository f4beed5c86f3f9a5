"""CLEAR-10 / CLEAR-100 (Lin et al., 2021/2022) -> DatasetDict, as the GRASP paper uses them.

Raw input: a CLEAR release folder ``labeled_images/<bucket>/<class>/<id>.jpg``
(with ``class_names.txt`` and ``labeled_metadata/`` beside it) - the layout the
CLEAR authors' curation code writes and their ``clear10``/``clear100``
``train_image_only`` downloads unpack to. ``--from`` may be the folder holding
``labeled_images/``, its parent holding ``train_image_only/`` (or ``train/``), or
the ``labeled_images`` folder itself (bucket folders directly inside).

Buckets ``1`` .. ``10`` are used (all ten must be present), binned into five
periods of two years ``"1-2"``, ``"3-4"``, ``"5-6"``, ``"7-8"``, ``"9-10"`` as the
paper does; bucket ``0`` (the release's pre-training bucket) and anything else are
ignored, and so is the ``BACKGROUND`` class (not one of CLEAR-10's ten object
classes; the paper's models have ten outputs).

Classes: ``clear10`` keeps every class folder; ``clear100`` keeps the 30 classes of
the authors' released preprocessing (:data:`CLEAR100_PAPER_CLASSES`). ``classes``
(``--classes``) or ``num_classes`` (``--num-classes N``: the first N class folders in
alphabetical order) override either. Labels are the kept class names sorted
alphabetically.

Output columns: ``image`` (Image), ``label`` (ClassLabel), ``period`` (string),
``bucket`` (int64). Split 80/10/10 within each (bucket, label) group - as the
released preprocessing does before merging buckets into bins - so each
(period, label) group is split 80/10/10 too and each bucket is represented in
every split (see :mod:`hf_grasp.inputs.converters` for the rounding).
"""

from __future__ import annotations

from pathlib import Path

import datasets

from ...runtime.errors import DataError, flag
from . import build_splits, image_files, require_dir

BUCKETS = tuple(range(1, 11))
PERIODS = ("1-2", "3-4", "5-6", "7-8", "9-10")
EXCLUDED_CLASSES = ("BACKGROUND",)
_SUFFIXES = (".jpg", ".jpeg", ".png")

# The 30 CLEAR-100 classes of the paper: SELECTED_CLASSES in preprocessing/clear100_preprocessing.py
# of Sekeh-Lab/grasp-multisource-transfer.
CLEAR100_PAPER_CLASSES = (
    "airplane", "aquarium", "baseball", "beer", "boat", "bookstore", "bowling_ball", "bridge", "bus", "camera",
    "castle", "chocolate", "coins", "diving", "field_hockey", "food_truck", "football", "guitar", "hair_salon",
    "helicopter", "horse_riding", "motorcycle", "pet_store", "racing_car", "shopping_mall", "skyscraper", "soccer",
    "stadium", "train", "video_game",
)

_DESCRIPTION = (
    "{name} (Lin et al.): YFCC100M images of {n} classes, buckets 1-10 binned into five 2-year periods as in "
    "the GRASP paper. Made by `hf-grasp prepare clear --variant {variant}`; split 80/10/10 per (bucket, label), "
    "seed {seed}."
)
_CITATION = (
    "@inproceedings{lin2021clear, title={The CLEAR Benchmark: Continual LEArning on Real-World Imagery}, "
    "author={Lin, Zhiqiu and Shi, Jia and Pathak, Deepak and Ramanan, Deva}, booktitle={Thirty-fifth Conference "
    "on Neural Information Processing Systems Datasets and Benchmarks Track}, year={2021}}"
)
_HOMEPAGE = "https://clear-benchmark.github.io/"


def period_of(bucket: int) -> str:
    """The 2-year period of a CLEAR bucket: 1, 2 -> "1-2"; ...; 9, 10 -> "9-10"."""
    if bucket not in BUCKETS:
        raise ValueError(f"CLEAR bucket {bucket} is outside 1..10")
    return PERIODS[(bucket - 1) // 2]


def features(class_names: list[str]) -> datasets.Features:
    return datasets.Features({
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=class_names),
        "period": datasets.Value("string"),
        "bucket": datasets.Value("int64"),
    })


def _buckets_root(raw: Path) -> Path:
    """The folder whose children are the bucket folders 1..10."""
    for candidate in (raw / "labeled_images", raw / "train_image_only" / "labeled_images",
                      raw / "train" / "labeled_images", raw):
        if any((candidate / str(b)).is_dir() for b in BUCKETS):
            return candidate
    raise DataError(f"CLEAR directory {raw} has no labeled_images/<bucket>/<class>/ folders "
                    "(buckets 1..10; also looked in train_image_only/ and train/)")


def select_classes(available: list[str], variant: str, classes: list[str] | None = None,
                   num_classes: int | None = None, where: Path | None = None) -> list[str]:
    """The class names to keep, sorted (see the module docstring for the rules)."""
    if classes is not None and num_classes is not None:
        raise DataError(f"give {flag('classes', None)} or {flag('num_classes', None)}, not both")
    if classes is not None:
        wanted = list(dict.fromkeys(classes))
    elif num_classes is not None:
        if not 1 <= num_classes <= len(available):
            raise DataError(f"{flag('num_classes', num_classes)}: CLEAR directory {where} has {len(available)} classes")
        wanted = sorted(available)[:num_classes]
    elif variant == "clear100":
        wanted = list(CLEAR100_PAPER_CLASSES)
    elif variant == "clear10":
        wanted = list(available)
    else:
        raise DataError(f"CLEAR variant {variant!r}: choose clear10 or clear100")
    missing = [c for c in wanted if c not in available]
    if missing:
        raise DataError(f"class {missing[0]!r} not found in CLEAR directory {where} "
                        f"({len(missing)} missing; pass {flag('classes', None)} or {flag('num_classes', None)} to "
                        "choose others)")
    return sorted(wanted)


def scan(raw_dir: Path, variant: str = "clear10", classes: list[str] | None = None,
         num_classes: int | None = None) -> tuple[dict[str, list], list[str]]:
    """Columns (``image`` as file paths) of the kept images, sorted by bucket, class, file; and the class names."""
    root = _buckets_root(require_dir(raw_dir, "CLEAR"))
    for b in BUCKETS:
        if not (root / str(b)).is_dir():
            raise DataError(f"CLEAR directory {root} has no bucket folder {b} (expected buckets 1..10)")
    available = sorted({d.name for b in BUCKETS for d in (root / str(b)).iterdir()
                        if d.is_dir() and d.name not in EXCLUDED_CLASSES})
    names = select_classes(available, variant, classes, num_classes, where=root)
    index = {name: i for i, name in enumerate(names)}
    columns: dict[str, list] = {"image": [], "label": [], "period": [], "bucket": []}
    for b in BUCKETS:
        for name in names:
            folder = root / str(b) / name
            if not folder.is_dir():
                continue  # a class may be absent from a bucket
            for path in image_files(folder, _SUFFIXES):
                columns["image"].append(str(path))
                columns["label"].append(index[name])
                columns["period"].append(period_of(b))
                columns["bucket"].append(b)
    if not columns["image"]:
        raise DataError(f"CLEAR directory {root} has no images ({', '.join(_SUFFIXES)}) of the kept classes")
    return columns, names


def build_clear(raw_dir: Path, *, variant: str = "clear10", classes: list[str] | None = None,
                num_classes: int | None = None, seed: int = 42) -> datasets.DatasetDict:
    """The CLEAR-10/100 DatasetDict (train/validation/test) from the raw release in ``raw_dir``."""
    columns, names = scan(Path(raw_dir), variant, classes, num_classes)
    groups = list(zip(columns["bucket"], columns["label"]))
    description = _DESCRIPTION.format(name="CLEAR-100" if variant == "clear100" else "CLEAR-10", n=len(names),
                                      variant=variant, seed=seed)
    return build_splits(columns, features(names), groups, seed=seed, description=description,
                        citation=_CITATION, homepage=_HOMEPAGE)
