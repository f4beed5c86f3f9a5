"""``hf-grasp prepare``: the raw Yearbook and CLEAR layouts -> a DatasetDict that load_target reads.

Fixtures are tiny (8x8) images written here in the exact raw layouts of the releases.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import datasets
import pytest
from PIL import Image

from hf_grasp.inputs.converters import add_arguments, clear, run_prepare, split_indices, yearbook
from hf_grasp.inputs.data import load_target
from hf_grasp.runtime.errors import DataError, GraspError

# Boundary years and the (period, label) the released preprocessing gives them, by hand.
YEARBOOK_TRUTH = {
    1905: ("before-1950", 0), 1939: ("before-1950", 0), 1940: ("before-1950", 1), 1949: ("before-1950", 1),
    1950: ("1950-1969", 0), 1959: ("1950-1969", 0), 1960: ("1950-1969", 1), 1969: ("1950-1969", 1),
    1970: ("1970-1989", 0), 1979: ("1970-1989", 0), 1980: ("1970-1989", 1), 1989: ("1970-1989", 1),
    1990: ("1990-2013", 0), 1999: ("1990-2013", 0), 2000: ("1990-2013", 1), 2013: ("1990-2013", 1),
}
# Images per (period, label) group; one group of 13 shows the rounding (10 / 1 / 2).
GROUP_SIZE = {group: 10 for group in set(YEARBOOK_TRUTH.values())}
GROUP_SIZE[("1950-1969", 1)] = 13
CLEAR_PERIOD = {1: "1-2", 2: "1-2", 3: "3-4", 4: "3-4", 5: "5-6", 6: "5-6", 7: "7-8", 8: "7-8", 9: "9-10",
                10: "9-10"}


def _image(path: Path, value: int, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value % 256, 0, 0)).save(path, format=fmt)


def make_yearbook(root: Path) -> dict[str, tuple[int, str]]:
    """The release layout F/ and M/ with YYYY_*.png; returns file name -> (year, gender)."""
    files = {}
    for (period, label), n in sorted(GROUP_SIZE.items()):
        years = sorted(y for y, g in YEARBOOK_TRUTH.items() if g == (period, label))
        for i in range(n):
            year, gender = years[i % len(years)], "FM"[i % 2]
            name = f"{year}_Ohio_Cleveland_Central_{len(files)}-{i}.png"
            _image(root / gender / name, len(files), "PNG")
            files[name] = (year, gender)
    (root / "F" / ".DS_Store").write_text("not an image")  # ignored
    return files


def make_clear(root: Path, classes: list[str], per_bucket: int) -> None:
    """CLEAR's released layout: train_image_only/labeled_images/<bucket>/<class>/<id>.jpg, bucket 0 included."""
    images = root / "train_image_only" / "labeled_images"
    for b in range(0, 11):
        for c in classes:
            for i in range(per_bucket):
                _image(images / str(b) / c / f"b{b}-{c}-{i}.jpg", i, "JPEG")
    (root / "train_image_only" / "class_names.txt").write_text("\n".join(classes))


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hf-grasp prepare")
    add_arguments(parser)
    return parser.parse_args(list(argv))


def _names(ds: datasets.Dataset) -> list[str]:
    """The source file names of a split (the embedded images keep their file name)."""
    return [Path(x["path"]).name for x in ds.cast_column("image", datasets.Image(decode=False))["image"]]


def _leftovers(parent: Path, output: Path) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(f".{output.name}.")]


@pytest.fixture(scope="module")
def yearbook_raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("yb") / "faces_aligned_small_mirrored_co_aligned_cropped_cleaned"
    return root, make_yearbook(root)


@pytest.fixture(scope="module")
def yearbook_out(yearbook_raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("yb-out") / "yearbook"
    # --from the folder holding the release folder: the converter finds F/ and M/ one level down
    dd = run_prepare(_args("yearbook", "--from", str(yearbook_raw[0].parent), "--output", str(out)))
    return out, dd


def test_yearbook_columns_labels_and_periods(yearbook_raw, yearbook_out):
    files = yearbook_raw[1]
    out, dd = yearbook_out
    assert set(dd) == {"train", "validation", "test"}
    feats = dd["train"].features
    assert isinstance(feats["image"], datasets.Image)
    assert feats["label"] == datasets.ClassLabel(names=["earlier", "later"])
    assert feats["period"] == datasets.Value("string") and feats["gender"] == datasets.Value("string")
    assert feats["year"] == datasets.Value("int64")
    seen = []
    for split in dd.values():
        for name, row in zip(_names(split), split.select_columns(["label", "period", "year", "gender"])):
            year, gender = files[name]
            assert (row["year"], row["gender"]) == (year, gender), name
            assert (row["period"], row["label"]) == YEARBOOK_TRUTH[year], name
            seen.append(name)
    # disjoint splits covering every image exactly once
    assert sorted(seen) == sorted(files)
    image = dd["test"][0]["image"]
    assert isinstance(image, Image.Image) and image.size == (8, 8)
    assert all(yearbook.period_and_label(y) == g for y, g in YEARBOOK_TRUTH.items())


def test_yearbook_split_sizes_per_group(yearbook_out):
    _, dd = yearbook_out
    counts = {s: Counter(zip(dd[s]["period"], dd[s]["label"])) for s in dd}
    for group, n in GROUP_SIZE.items():
        # floor(0.8 n) train, floor(0.1 n) validation, the rest test
        assert (counts["train"][group], counts["validation"][group], counts["test"][group]) == \
            (8 * n // 10, n // 10, n - 8 * n // 10 - n // 10), group
    assert (counts["train"][("1950-1969", 1)], counts["validation"][("1950-1969", 1)],
            counts["test"][("1950-1969", 1)]) == (10, 1, 2)


def test_yearbook_is_deterministic_and_seeded(yearbook_raw, yearbook_out, tmp_path):
    _, first = yearbook_out
    again = run_prepare(_args("yearbook", "--from", str(yearbook_raw[0]), "--output", str(tmp_path / "again")))
    other = run_prepare(_args("yearbook", "--from", str(yearbook_raw[0]), "--output", str(tmp_path / "other"),
                              "--seed", "1"))
    for split in first:
        assert _names(again[split]) == _names(first[split])
    assert _names(other["test"]) != _names(first["test"])
    assert "seed 42" in first["train"].info.description and "Ginosar" in first["train"].info.citation


def test_yearbook_output_loads_as_a_target(yearbook_out):
    out, _ = yearbook_out
    target = load_target(str(out), domain="1970-1989", domain_column="period")
    sizes = {s: len(d) for s, d in target.splits.items()}
    assert sizes == {"train": 16, "validation": 2, "test": 2}
    assert target.label_names == ["earlier", "later"] and target.num_labels == 2
    assert sorted(set(target.splits["train"]["label"])) == [0, 1]


def test_yearbook_bad_year_names_the_file_and_leaves_nothing(tmp_path):
    raw = tmp_path / "raw"
    make_yearbook(raw)
    _image(raw / "M" / "19x5_broken.png", 0, "PNG")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="19x5_broken.png"):
        run_prepare(_args("yearbook", "--from", str(raw), "--output", str(out)))
    assert not out.exists() and not _leftovers(tmp_path, out)


def test_yearbook_missing_folders_name_the_directory(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    with pytest.raises(DataError, match=f"{raw}.*F/ or M/"):
        run_prepare(_args("yearbook", "--from", str(raw), "--output", str(tmp_path / "out")))
    (raw / "F").mkdir()
    (raw / "F" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=f"{raw}.*no images"):
        run_prepare(_args("yearbook", "--from", str(raw), "--output", str(tmp_path / "out")))
    with pytest.raises(DataError, match="nowhere"):
        run_prepare(_args("yearbook", "--from", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_failed_write_leaves_no_output(yearbook_raw, tmp_path, monkeypatch):
    out = tmp_path / "out"

    def half_written(self, path, **kwargs):
        Path(path).mkdir(parents=True, exist_ok=True)  # as save_to_disk: the directory may exist (empty)
        (Path(path) / "partial.arrow").write_bytes(b"...")
        raise OSError("disk full")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", half_written)
    with pytest.raises(OSError, match="disk full"):
        run_prepare(_args("yearbook", "--from", str(yearbook_raw[0]), "--output", str(out)))
    assert not out.exists() and not _leftovers(tmp_path, out)


def test_existing_output_needs_overwrite(yearbook_raw, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(GraspError, match="pass overwrite=True"):
        run_prepare(_args("yearbook", "--from", str(yearbook_raw[0]), "--output", str(out)))
    assert (out / "keep.txt").read_text() == "mine"
    dd = run_prepare(_args("yearbook", "--from", str(yearbook_raw[0]), "--output", str(out), "--overwrite"))
    assert not (out / "keep.txt").exists() and len(dd["train"]) == sum(8 * n // 10 for n in GROUP_SIZE.values())
    assert not _leftovers(tmp_path, out)


def test_push_to_hub_uploads_what_was_written(yearbook_raw, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub",
                        lambda self, repo_id, **kw: calls.append((repo_id, kw, {s: len(d) for s, d in self.items()})))
    dd = run_prepare(_args("yearbook", "--from", str(yearbook_raw[0]), "--output", str(tmp_path / "out"),
                           "--push-to-hub", "me/yearbook", "--private"))
    assert calls == [("me/yearbook", {"private": True}, {s: len(d) for s, d in dd.items()})]


def test_clear_options_refused_for_yearbook(yearbook_raw, tmp_path):
    with pytest.raises(GraspError, match="--variant"):
        run_prepare(_args("yearbook", "--variant", "clear100", "--from", str(yearbook_raw[0]),
                          "--output", str(tmp_path / "out")))


def test_split_indices_rounding_and_determinism():
    groups = ["a"] * 10 + ["b"] * 19 + ["c"] * 3
    parts = split_indices(groups, seed=0)
    assert parts == split_indices(groups, seed=0)
    assert sorted(sum(parts.values(), [])) == list(range(len(groups)))
    per = {s: Counter(groups[i] for i in rows) for s, rows in parts.items()}
    assert [per[s]["a"] for s in ("train", "validation", "test")] == [8, 1, 1]
    assert [per[s]["b"] for s in ("train", "validation", "test")] == [15, 1, 3]
    assert [per[s]["c"] for s in ("train", "validation", "test")] == [2, 0, 1]


# --------------------------------------------------------------------------- CLEAR

CLEAR10_CLASSES = ["bus", "baseball", "camera"]


@pytest.fixture(scope="module")
def clear10_out(tmp_path_factory):
    raw = tmp_path_factory.mktemp("clear10") / "clear-10"
    make_clear(raw, CLEAR10_CLASSES + ["BACKGROUND"], per_bucket=10)
    out = raw.parent / "out"
    return raw, run_prepare(_args("clear", "--variant", "clear10", "--from", str(raw), "--output", str(out))), out


def test_clear_buckets_periods_and_labels(clear10_out):
    _, dd, _ = clear10_out
    feats = dd["train"].features
    assert feats["label"].names == sorted(CLEAR10_CLASSES)  # BACKGROUND dropped, names sorted
    assert feats["period"] == datasets.Value("string") and feats["bucket"] == datasets.Value("int64")
    names = feats["label"].names
    rows = 0
    for split in dd.values():
        for name, row in zip(_names(split), split.select_columns(["label", "period", "bucket"])):
            bucket, cls, _ = name.split("-")  # the fixture's b<bucket>-<class>-<i>.jpg
            assert (row["bucket"], names[row["label"]]) == (int(bucket[1:]), cls), name
            assert row["period"] == CLEAR_PERIOD[row["bucket"]] == clear.period_of(row["bucket"])
            rows += 1
    assert rows == 10 * len(CLEAR10_CLASSES) * 10  # buckets 1..10 only: bucket 0 ignored
    assert set(dd["train"]["bucket"]) == set(range(1, 11))
    # 80/10/10 within every (bucket, label) group
    for split, n in (("train", 8), ("validation", 1), ("test", 1)):
        counts = Counter(zip(dd[split]["bucket"], dd[split]["label"]))
        assert set(counts.values()) == {n} and len(counts) == 10 * len(CLEAR10_CLASSES)


def test_clear_output_loads_as_a_target(clear10_out):
    _, _, out = clear10_out
    target = load_target(str(out), domain="9-10", domain_column="period")
    assert {s: len(d) for s, d in target.splits.items()} == {"train": 48, "validation": 6, "test": 6}
    assert target.label_names == sorted(CLEAR10_CLASSES)


@pytest.mark.parametrize("sub", ["", "train_image_only", "train_image_only/labeled_images"])
def test_clear_finds_the_buckets_in_each_layout(clear10_out, sub):
    raw = clear10_out[0]
    columns, names = clear.scan(raw / sub if sub else raw)
    assert names == sorted(CLEAR10_CLASSES) and len(columns["image"]) == 300


@pytest.fixture(scope="module")
def clear100_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("clear100") / "clear-100"
    make_clear(raw, list(clear.CLEAR100_PAPER_CLASSES) + ["aardvark", "yoga"], per_bucket=1)
    return raw


def test_clear100_keeps_the_papers_30_classes(clear100_raw):
    columns, names = clear.scan(clear100_raw, "clear100")
    assert names == sorted(clear.CLEAR100_PAPER_CLASSES) and len(names) == 30
    assert len(columns["image"]) == 30 * 10
    assert {names[label] for label in columns["label"]} == set(clear.CLEAR100_PAPER_CLASSES)


def test_clear_class_choices(clear100_raw):
    # --num-classes: the first N class folders alphabetically
    _, names = clear.scan(clear100_raw, "clear100", num_classes=30)
    assert names == sorted([*clear.CLEAR100_PAPER_CLASSES, "aardvark", "yoga"])[:30]
    assert "aardvark" in names and "video_game" not in names
    # --classes: exactly those, sorted
    columns, names = clear.scan(clear100_raw, "clear100", classes=["yoga", "bus"])
    assert names == ["bus", "yoga"] and len(columns["image"]) == 20
    # clear10 keeps every class folder
    assert len(clear.scan(clear100_raw, "clear10")[1]) == 32
    with pytest.raises(DataError, match="'unicorn'"):
        clear.scan(clear100_raw, "clear100", classes=["bus", "unicorn"])


def test_clear100_through_run_prepare(clear100_raw, tmp_path):
    # --classes through the CLI arguments; one image per bucket and class is too few to split 80/10/10
    with pytest.raises(DataError, match="too few images"):
        run_prepare(_args("clear", "--variant", "clear100", "--classes", "bus,yoga", "--from", str(clear100_raw),
                          "--output", str(tmp_path / "out")))
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path, tmp_path / "out")


def test_clear_missing_bucket_and_layout_name_the_directory(tmp_path):
    raw = tmp_path / "clear"
    make_clear(raw, ["bus"], per_bucket=1)
    root = raw / "train_image_only" / "labeled_images"
    for f in (root / "7" / "bus").iterdir():
        f.unlink()
    (root / "7" / "bus").rmdir()
    (root / "7").rmdir()
    with pytest.raises(DataError, match=f"{root}.*bucket folder 7"):
        clear.scan(raw)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"{empty}.*labeled_images"):
        run_prepare(_args("clear", "--from", str(empty), "--output", str(tmp_path / "out")))
