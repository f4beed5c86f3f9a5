"""Hostile targets and API calls: unreadable images, empty saved splits, remote code, wrong argument types,
and fuzzed recipes — each a clean one-line error (or a reported skip), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import merge_fails, run_cli, write_pngs
from hf_grasp.methods import METHODS
from hf_grasp import GraspMerger
from hf_grasp.inputs.data import load_target
from hf_grasp.runtime.errors import DataError, GraspError
from hf_grasp.inputs.recipes import load_recipe

DIGITS = {str(i): 3 for i in range(10)}


@pytest.fixture
def bad_imagefolder(tmp_path) -> tuple[Path, Path]:
    """An imagefolder target with 10 classes and one truncated PNG in train/3/."""
    root = tmp_path / "folder"
    write_pngs(root / "train", DIGITS, mode="RGB", seed=0)
    write_pngs(root / "test", DIGITS, mode="RGB", seed=1)
    bad = root / "train" / "3" / "1.png"
    bad.write_bytes(bad.read_bytes()[:60])  # a header and a few bytes of pixels: opens, then fails to decode
    return root, bad


def test_truncated_image_is_named_before_any_work(bad_imagefolder, checkpoints, tmp_path):
    root, bad = bad_imagefolder
    line = merge_fails(tmp_path, checkpoints("resnet", 2), target=str(root))
    assert "1.png" in line and "split 'train'" in line and "--skip-bad-images" in line


def test_skip_bad_images_leaves_the_row_out_and_says_so(bad_imagefolder, checkpoints, tmp_path):
    root, bad = bad_imagefolder
    out = tmp_path / "merged"
    proc = run_cli("merge", "--target", str(root), "--sources", *map(str, checkpoints("resnet", 2)),
                   "--output", str(out), "--initial-epochs", "0", "--finetune-epochs", "0", "--skip-bad-images",
                   env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "grasp_report.json").read_text())
    assert any("unreadable" in n and "1.png" in n for n in report["target"]["notes"])
    assert report["target"]["sizes"]["train"] + report["target"]["sizes"]["validation"] == 29


def test_an_empty_saved_split_is_named(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    full = datasets.Dataset.from_dict({"image": [str(p) for p in _pngs(tmp_path / "png", 4)], "label": [0, 1, 0, 1]},
                                      features=features)
    empty = full.select([])
    datasets.DatasetDict({"train": full, "test": empty}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError, match="split 'test' .* saved with no rows") as e:
        load_target(str(tmp_path / "saved"))
    assert "\n" not in str(e.value)


def _pngs(root: Path, n: int) -> list[Path]:
    write_pngs(root, {"x": n}, mode="RGB", seed=3)
    return sorted((root / "x").iterdir())


def test_remote_code_refusal_says_how_to_allow_it(checkpoints, tmp_path):
    customs = []
    for i, good in enumerate(checkpoints("resnet", 2)):  # two checkpoints whose config asks for custom code
        custom = tmp_path / f"custom{i}"
        custom.mkdir()
        for f in good.iterdir():
            (custom / f.name).write_bytes(f.read_bytes())
        config = json.loads((custom / "config.json").read_text())
        config.update(model_type="custom-xyz", auto_map={"AutoConfig": "configuration_x.XConfig",
                                                         "AutoModelForImageClassification": "modeling_x.XModel"})
        (custom / "config.json").write_text(json.dumps(config))
        customs.append(custom)
    line = merge_fails(tmp_path, customs)
    assert "custom code" in line and "--trust-remote-code" in line


def test_python_sources_accept_paths_and_one_string_is_a_saved_merge(checkpoints):
    srcs = checkpoints("resnet", 2)
    with pytest.raises(GraspError, match="holds no grasp_config.json: it is not a merge saved by hf-grasp"):
        GraspMerger.from_pretrained(str(srcs[0]), target="digits-eras")
    with pytest.raises(GraspError, match="str or os.PathLike"):
        GraspMerger.from_pretrained([srcs[0], 3], target="digits-eras")
    merger = GraspMerger.from_pretrained(srcs, target=Path("digits-eras"), initial_epochs=0, finetune_epochs=0,
                                         eval_sources=False)
    assert [s.name for s in merger.sources] == [str(p) for p in srcs]
    with pytest.raises(GraspError, match="tau"):
        GraspMerger.from_pretrained(srcs, target="digits-eras", tau="high")


# --- fuzzed recipes: any YAML, any option mapping -> a GraspError or a valid recipe, nothing else

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                     st.text(max_size=12))
_option_names = st.sampled_from(["tau", "lr", "batch_size", "schedule", "target_domain", "cpu", "density",
                                 "order", "granularity", "seed", "no_such_option", "validation_fraction"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(options=st.dictionaries(_option_names, _scalars, max_size=5),
       extra=st.dictionaries(st.text(max_size=8), _scalars, max_size=3))
def test_fuzzed_recipe_options_give_only_clean_errors(options, extra, tmp_path):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump({"dataset": "digits-eras", "options": options, **extra}))
    try:
        load_recipe(str(path), methods=METHODS)
    except GraspError as e:
        assert "\n" not in str(e) and str(path) in str(e)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_fuzzed_recipe_text_gives_only_clean_errors(text, tmp_path):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    try:
        load_recipe(str(path), methods=METHODS)
    except GraspError as e:
        assert "\n" not in str(e)
