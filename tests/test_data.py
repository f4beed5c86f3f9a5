"""hf_grasp.inputs.data: targets through `datasets` (built-in, imagefolder, save_to_disk, Hub id) and loaders."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

import hf_grasp.inputs.data
from conftest import write_pngs
from hf_grasp.apps.bench.digits_eras import load_digits_eras
from hf_grasp.inputs.data import TargetData, alignment_batches, load_target, make_loader, preprocess, preprocess_target
from hf_grasp.runtime.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """A torchvision-free transform: PIL -> float (N, C, H, W) in [0, 1]; checks it got RGB."""
    arrays = [np.asarray(im, dtype=np.float32) / 255.0 for im in images]
    assert all(a.ndim == 3 and a.shape[2] == 3 for a in arrays), "transform must receive RGB images"
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def digits_target() -> TargetData:
    return load_target("digits-eras", domain=2)


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory) -> Path:
    """train/ and test/ with class subfolders; greyscale PNGs, as some datasets have."""
    root = tmp_path_factory.mktemp("imagefolder")
    write_pngs(root / "train", {"cat": 10, "dog": 10, "eel": 10}, mode="L", seed=0)
    write_pngs(root / "test", {"cat": 3, "dog": 3, "eel": 3}, mode="L", seed=1)
    return root


# --------------------------------------------------------------------------- digits-eras


def test_digits_eras_domain_target(digits_target):
    t = digits_target
    assert {s: len(ds) for s, ds in t.splits.items()} == {"train": 100, "validation": 100, "test": 300}
    assert list(t.splits) == ["train", "validation", "test"]
    assert t.num_labels == 10 and t.label_names == [str(c) for c in range(10)]
    assert t.domain == 2 and t.name == "digits-eras"
    for ds in t.splits.values():
        assert ds.column_names == ["image", "label"]
    assert Counter(t.splits["train"]["label"][:]) == {c: 10 for c in range(10)}
    assert any("pretrain" in note for note in t.notes)
    # These are exactly domain 2's rows of the benchmark.
    bench = load_digits_eras()["test"]
    rows = [i for i, d in enumerate(bench["domain"][:]) if d == 2]
    assert t.splits["test"]["label"][:] == [bench[i]["label"] for i in rows]
    assert np.array_equal(np.asarray(t.splits["test"][5]["image"]), np.asarray(bench[rows[5]]["image"]))


def test_domain_given_as_string_is_converted(digits_target):
    t = load_target("digits-eras", domain="2")
    assert t.domain == 2
    assert t.splits["train"]["label"][:] == digits_target.splits["train"]["label"][:]


def test_no_domain_uses_every_domain_and_trust_remote_code_is_noted():
    t = load_target("digits-eras", trust_remote_code=True)
    assert {s: len(ds) for s, ds in t.splits.items()} == {"train": 600, "validation": 600, "test": 1800}
    assert any("no domain selected" in note for note in t.notes)
    assert any(note.startswith("trust_remote_code ignored") for note in t.notes)


# --------------------------------------------------------------------------- local sources


def test_imagefolder_validation_carved_deterministically(imagefolder):
    t = load_target(str(imagefolder), validation_fraction=0.2, seed=3)
    assert t.label_names == ["cat", "dog", "eel"] and t.num_labels == 3
    assert {s: len(ds) for s, ds in t.splits.items()} == {"train": 24, "validation": 6, "test": 9}
    # Stratified: two validation rows per class.
    assert Counter(t.splits["validation"]["label"][:]) == {0: 2, 1: 2, 2: 2}
    assert any(n.startswith("validation carved from train: 20% stratified") and "seed 3" in n for n in t.notes)

    def fingerprint(target):
        return [np.asarray(row["image"]).tobytes() for row in target.splits["validation"]]

    again = load_target(str(imagefolder), validation_fraction=0.2, seed=3)
    assert fingerprint(again) == fingerprint(t)
    other = load_target(str(imagefolder), validation_fraction=0.2, seed=4)
    assert fingerprint(other) != fingerprint(t)
    # Train and carved validation do not overlap.
    train = {np.asarray(row["image"]).tobytes() for row in t.splits["train"]}
    assert not train & set(fingerprint(t))


def test_save_to_disk_round_trip_with_renames_and_string_domain(tmp_path):
    rng = np.random.default_rng(0)

    def split(n, offset):
        return datasets.Dataset.from_dict(
            {
                "img": [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(n)],
                "target": [(i + offset) % 4 for i in range(n)],
                "era": ["a" if i % 2 else "b" for i in range(n)],
                "extra": list(range(n)),
            },
            features=datasets.Features(
                {
                    "img": datasets.Image(),
                    "target": datasets.ClassLabel(names=["w", "x", "y", "z"]),
                    "era": datasets.Value("string"),
                    "extra": datasets.Value("int64"),
                }
            ),
        )

    saved = datasets.DatasetDict({"train": split(16, 0), "valid": split(8, 1), "test": split(8, 2)})
    saved.save_to_disk(str(tmp_path / "saved"))

    t = load_target(str(tmp_path / "saved"), image_column="img", label_column="target",
                    domain_column="era", domain="b")
    assert {s: len(ds) for s, ds in t.splits.items()} == {"train": 8, "validation": 4, "test": 4}
    assert all(ds.column_names == ["image", "label"] for ds in t.splits.values())
    assert t.label_names == ["w", "x", "y", "z"] and t.num_labels == 4
    assert any("'valid' used as 'validation'" in n for n in t.notes)
    # Row content survives: domain "b" is the even rows.
    assert t.splits["train"]["label"][:] == [i % 4 for i in range(0, 16, 2)]
    assert np.array_equal(np.asarray(t.splits["test"][1]["image"]), np.asarray(saved["test"][2]["img"]))


def test_integer_labels_without_classlabel(tmp_path):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(20)]
    ds = datasets.Dataset.from_dict({"image": images, "label": [i % 5 for i in range(20)]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.Value("int64")}))
    datasets.DatasetDict({"train": ds, "test": ds.select(range(5))}).save_to_disk(str(tmp_path / "d"))
    t = load_target(str(tmp_path / "d"))
    assert t.num_labels == 5 and t.label_names is None
    assert len(t.splits["train"]) == 18 and len(t.splits["validation"]) == 2
    assert any("not stratified" in n for n in t.notes)


# --------------------------------------------------------------------------- errors


def test_missing_label_column_names_column_split_and_columns():
    with pytest.raises(DataError, match=r"column 'digit' not found in split 'train'.*columns: image, label, domain"):
        load_target("digits-eras", label_column="digit")


def test_missing_domain_column():
    with pytest.raises(DataError, match=r"column 'era' not found in split 'train'"):
        load_target("digits-eras", domain=1, domain_column="era")


def test_empty_after_domain_filter_names_split_and_domain():
    with pytest.raises(DataError, match=r"split 'train' of digits-eras has no rows with domain == 9\b"):
        load_target("digits-eras", domain=9)


def test_domain_of_wrong_type():
    with pytest.raises(DataError, match=r"domain 'north' does not fit column 'domain'"):
        load_target("digits-eras", domain="north")


def test_no_test_split_lists_splits(imagefolder):
    # Class folders directly under the root: imagefolder gives only "train".
    with pytest.raises(DataError, match=r"has no 'test' split.*\(splits: train\)"):
        load_target(str(imagefolder / "train"))


def test_no_train_split(tmp_path):
    ds = datasets.Dataset.from_dict({"image": [Image.new("RGB", (4, 4))], "label": [0]})
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(DataError, match=r"no 'train' split \(splits: test\)"):
        load_target(str(tmp_path / "d"))


def test_empty_split(monkeypatch):
    # datasets itself refuses to save or load empty splits, so hand one over in memory.
    ds = datasets.Dataset.from_dict({"image": [Image.new("RGB", (4, 4))] * 4, "label": [0, 1, 0, 1]})
    empty = datasets.DatasetDict({"train": ds, "validation": ds, "test": ds.select([])})
    monkeypatch.setitem(hf_grasp.inputs.data._DATASETS, "tiny", lambda: empty)
    with pytest.raises(DataError, match=r"split 'test' of tiny is empty"):
        load_target("tiny")


def test_library_failure_on_local_data_becomes_data_error(tmp_path):
    ds = datasets.Dataset.from_dict({"image": [Image.new("RGB", (4, 4))], "label": [0]})
    ds.to_parquet(str(tmp_path / "train.parquet"))
    ds.select([]).to_parquet(str(tmp_path / "test.parquet"))
    with pytest.raises(DataError, match=rf"cannot read local dataset {tmp_path}: .*test"):
        load_target(str(tmp_path))


def test_unlabelled_test_split_rejected(tmp_path):
    images = [Image.new("RGB", (4, 4)) for _ in range(4)]
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    train = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 0, 1]}, features=feats)
    test = datasets.Dataset.from_dict({"image": images, "label": [-1, -1, -1, -1]}, features=feats)
    datasets.DatasetDict({"train": train, "validation": train, "test": test}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(DataError, match=r"label column 'label' in split 'test' .* has label -1"):
        load_target(str(tmp_path / "d"))


def test_missing_local_path():
    with pytest.raises(DataError, match=r"dataset path ./no/such/dir does not exist"):
        load_target("./no/such/dir")


def test_missing_hub_dataset_offline(tmp_path):
    # datasets reads HF_HUB_OFFLINE when imported: run in a fresh interpreter.
    code = (
        "from hf_grasp.inputs.data import load_target\n"
        "from hf_grasp.runtime.errors import DataError\n"
        "try:\n"
        "    load_target('nobody-here/no-such-dataset')\n"
        "except DataError as e:\n"
        "    print('DataError:', e)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert line.startswith("DataError:") and "'nobody-here/no-such-dataset'" in line
    assert "not in the local datasets cache" in line and "HF_HUB_OFFLINE" in line
    assert "\n" not in line


# --------------------------------------------------------------------------- loaders


def test_make_loader_shapes_and_seeded_shuffle(digits_target):
    train = digits_target.splits["train"]
    batches = list(make_loader(train, to_tensor, batch_size=32, shuffle=False))
    assert [b["pixel_values"].shape for b in batches] == [(32, 3, 28, 28)] * 3 + [(4, 3, 28, 28)]
    assert all(b["labels"].dtype == torch.long and b["pixel_values"].dtype == torch.float32 for b in batches)
    assert torch.cat([b["labels"] for b in batches]).tolist() == train["label"][:]

    def order(seed):
        return torch.cat([b["labels"] for b in make_loader(train, to_tensor, batch_size=32, shuffle=True,
                                                           seed=seed)]).tolist()

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(order(1)) == sorted(train["label"][:])


def test_loader_converts_greyscale_to_rgb(imagefolder):
    t = load_target(str(imagefolder))
    assert t.splits["train"][0]["image"].mode == "L"  # stored as is, converted only in the collate
    batch = next(iter(make_loader(t.splits["test"], to_tensor, batch_size=4, shuffle=False)))
    assert batch["pixel_values"].shape == (4, 3, 12, 12)
    # Grey replicated across channels.
    assert torch.equal(batch["pixel_values"][:, 0], batch["pixel_values"][:, 2])


def test_alignment_batches_deterministic_per_seed(digits_target):
    train = digits_target.splits["train"]
    a = alignment_batches(train, to_tensor, n_batches=2, batch_size=16, seed=0)
    b = alignment_batches(train, to_tensor, n_batches=2, batch_size=16, seed=0)
    c = alignment_batches(train, to_tensor, n_batches=2, batch_size=16, seed=1)
    assert len(a) == 2 and a[0]["pixel_values"].shape == (16, 3, 28, 28) and a[0]["labels"].shape == (16,)
    for x, y in zip(a, b):
        assert torch.equal(x["pixel_values"], y["pixel_values"]) and torch.equal(x["labels"], y["labels"])
    assert not torch.equal(a[0]["pixel_values"], c[0]["pixel_values"])
    # Without replacement: 32 distinct rows of the 100.
    rows = torch.cat([x["pixel_values"] for x in a]).flatten(1)
    assert len({r.numpy().tobytes() for r in rows}) == 32


def test_alignment_batches_wrap_around_small_split(imagefolder):
    test = load_target(str(imagefolder)).splits["test"]  # 9 rows
    batches = alignment_batches(test, to_tensor, n_batches=3, batch_size=5, seed=0)
    rows = [r.numpy().tobytes() for b in batches for r in b["pixel_values"].flatten(1)]
    assert len(rows) == 15
    assert len(set(rows[:9])) == 9  # every row once before any repeats
    assert rows[9:] == rows[:6]  # then the same permutation again


def test_preprocessed_split_gives_the_same_batches_as_decoding_per_batch(digits_target, monkeypatch):
    train = digits_target.splits["train"]
    pre = preprocess(train, to_tensor)
    assert pre.pixel_values.shape == (100, 3, 28, 28) and pre.labels.tolist() == train["label"][:]
    for shuffle in (False, True):
        lazy = make_loader(train, to_tensor, batch_size=32, shuffle=shuffle, seed=3)
        cached = make_loader(train, to_tensor, batch_size=32, shuffle=shuffle, seed=3, preprocessed=pre)
        for a, b in zip(lazy, cached, strict=True):
            assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["labels"], b["labels"])
    a = alignment_batches(train, to_tensor, n_batches=2, batch_size=16, seed=5)
    b = alignment_batches(train, to_tensor, n_batches=2, batch_size=16, seed=5, preprocessed=pre)
    assert all(torch.equal(x["pixel_values"], y["pixel_values"]) for x, y in zip(a, b))
    # a split over the budget is not kept in memory: it stays decoded per batch, and the target says so
    assert preprocess(train, to_tensor, budget=pre.pixel_values.nbytes - 1) is None
    target = TargetData("t", None, digits_target.splits, 10, None, [])
    monkeypatch.setattr(hf_grasp.inputs.data, "PREPROCESS_BUDGET_BYTES", 0)
    preprocess_target(target, to_tensor)
    assert target.preprocessed == {} and any("decoded batch by batch" in n for n in target.notes)
