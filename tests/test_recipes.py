"""Experiment recipes: every built-in loads into valid options with the paper's values; bad recipes fail
with one line naming the file; a recipe's Hub dataset that is not available offline names the prepare command."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace
from pathlib import Path

import pytest

from hf_grasp.apps.bench import digits_eras
from hf_grasp.inputs.converters import clear, yearbook
from hf_grasp.runtime.errors import GraspError
from hf_grasp.methods import METHODS
from hf_grasp.plan.options import Layer, all_option_names, resolve
from hf_grasp.inputs.recipes import BUILTIN_RECIPES, load_recipe, resolve_target

OPTION_NAMES = set(all_option_names(METHODS))
PAPER = ("yearbook", "clear10", "clear100")


def _built(options: dict) -> SimpleNamespace:
    """A recipe's options as a GRASP merge would run with them (shared options and GRASP's parameters)."""
    shared, params = resolve("grasp", [Layer(options, "recipe", lenient=True)], methods=METHODS)
    return SimpleNamespace(**shared.to_dict(), **params.to_dict())
PAPER_MODELS = ["apple/mobilevit-xx-small", "apple/mobilevit-x-small", "google/efficientnet-b1",
                "microsoft/resnet-50"]
# DESIGN.md section 1 and the paper's appendix (GRASP settings).
PAPER_OPTIONS = {"tau": 0.3, "align_batches": 1, "batch_size": 32, "initial_epochs": 3, "finetune_epochs": 3,
                 "lr": 5e-5, "weight_decay": 0.01, "schedule": "cosine"}


@pytest.mark.parametrize("name", sorted(BUILTIN_RECIPES))
def test_builtin_recipe_builds_valid_options(name):
    rec = load_recipe(name, methods=METHODS)
    assert rec.name == name and rec.path.name == BUILTIN_RECIPES[name]
    assert set(rec.options) <= OPTION_NAMES
    opts = _built(rec.options)
    for key, value in rec.options.items():
        assert getattr(opts, key) == value, key
    # every recipe states its data columns (images, or texts and their maximum length) and a target that is one of
    # its domains
    text = "text_column" in rec.options
    for key in ("target_domain", "domain_column", "label_column") + (("max_length",) if text else ("image_column",)):
        assert key in rec.options, key
    assert opts.target_domain in [str(d) for d in rec.meta["domains"]]
    assert set(map(str, rec.meta["source_domains"])) == {str(d) for d in rec.meta["domains"]} - {opts.target_domain}
    assert set(rec.meta["splits"]) == {"train", "validation", "test"}
    assert rec.models and (text or isinstance(rec.meta["image_size"], int) and rec.meta["normalisation"])


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipes_carry_the_paper_settings(name):
    rec = load_recipe(name, methods=METHODS)
    for key, value in PAPER_OPTIONS.items():
        assert rec.options[key] == pytest.approx(value), key
    assert isinstance(rec.options["lr"], float)  # "5e-5" would be a YAML string
    assert rec.models == PAPER_MODELS
    assert rec.meta["image_size"] == 224
    assert "image processor" in rec.meta["normalisation"]
    kind = "yearbook" if name == "yearbook" else "clear"
    assert rec.prepare.startswith(f"hf-grasp prepare {kind} ")
    assert "--from RAW_DIR --output DIR" in rec.prepare
    assert rec.dataset.startswith("hf-grasp/")


def test_recipes_agree_with_the_converters():
    yb = load_recipe("yearbook", methods=METHODS)
    assert yb.meta["domains"] == list(yearbook.PERIODS) and yb.meta["labels"] == list(yearbook.LABELS)
    assert yb.options["domain_column"] == "period" and yb.options["label_column"] == "label"
    for name in ("clear10", "clear100"):
        rec = load_recipe(name, methods=METHODS)
        assert rec.meta["domains"] == list(clear.PERIODS)
        assert rec.options["domain_column"] == "period"
        assert f"--variant {name}" in rec.prepare
    assert load_recipe("clear100", methods=METHODS).meta["num_labels"] == len(clear.CLEAR100_PAPER_CLASSES) == 30
    assert len(load_recipe("clear10", methods=METHODS).meta["labels"]) == 10


def test_digits_eras_recipe_agrees_with_the_benchmark():
    rec = load_recipe("digits-eras", methods=METHODS)
    assert rec.dataset == digits_eras.DIGITS_ERAS
    assert rec.models == ["resnet", "mobilevit", "efficientnet"]
    assert rec.meta["domains"] == list(range(digits_eras.NUM_DOMAINS))
    # every key of the benchmark's RECIPE has its counterpart in the YAML
    _assert_counterparts(digits_eras.RECIPE, "recipes/digits-eras.yaml", {
        **_shared_counterparts(rec),
        "image_size": rec.meta["image_size"],
        "pretrain_epochs": rec.meta["make_sources"]["pretrain_epochs"],
        "source_epochs": rec.meta["make_sources"]["source_epochs"],
    })


def _shared_counterparts(rec) -> dict:
    """What both built-in benchmarks' RECIPE hold, as their YAML recipe states it."""
    return {
        "target_domain": str(rec.options["target_domain"]),
        "source_domains": tuple(rec.meta["source_domains"]),
        "lr": rec.options["lr"],
        "batch_size": rec.options["batch_size"],
        "train_per_class": rec.meta["train_per_class"],
        "validation_size": rec.meta["validation_size"],
        "initial_epochs": rec.options["initial_epochs"],
        "finetune_epochs": rec.options["finetune_epochs"],
    }


def _assert_counterparts(recipe: dict, yaml_file: str, counterpart: dict) -> None:
    for key, value in recipe.items():
        assert key in counterpart, f"RECIPE[{key!r}] has no counterpart in {yaml_file}"
        expected = str(value) if key == "target_domain" else tuple(value) if key == "source_domains" else value
        assert counterpart[key] == expected, key


def test_tweet_eras_recipe_agrees_with_the_benchmark():
    from hf_grasp.apps.bench import tweet_eras

    rec = load_recipe("tweet-eras", methods=METHODS)
    assert rec.dataset == tweet_eras.TWEET_ERAS and rec.models == ["bert"]
    assert rec.meta["domains"] == list(range(tweet_eras.NUM_DOMAINS))
    assert rec.options["text_column"] == "text" and rec.options["domain_column"] == "domain"
    made = rec.meta["make_sources"]
    _assert_counterparts(tweet_eras.RECIPE, "recipes/tweet-eras.yaml", {
        **_shared_counterparts(rec),
        "max_length": rec.options["max_length"],
        "vocab_size": rec.meta["vocab_size"],
        **{k: made[k] for k in ("pretrain", "pretrain_epochs", "pretrain_lr", "source_epochs", "source_lr")},
    })


def _write(tmp_path, text, name="mine.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_unknown_option_names_key_and_file(tmp_path):
    path = _write(tmp_path, "dataset: digits-eras\noptions:\n  tau: 0.5\n  learning_rate: 0.1\n")
    with pytest.raises(GraspError) as e:
        load_recipe(str(path), methods=METHODS)
    msg = str(e.value)
    assert "learning_rate" in msg and str(path) in msg and "\n" not in msg


def test_invalid_yaml_names_the_file(tmp_path):
    path = _write(tmp_path, "dataset: [unclosed\noptions: {tau: 0.3\n")
    with pytest.raises(GraspError, match="not valid YAML") as e:
        load_recipe(str(path), methods=METHODS)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("options, culprit", [
    ("lr: 5e-5", "write 5.0e-5"),       # YAML 1.1 reads this as a string
    ("batch_size: 3.5", "batch_size"),
    ("cpu: 1", "cpu"),
    ("schedule: sometimes", "schedule"),  # outside its choices
    ("batch_size: 0", "batch_size"),      # outside its range
])
def test_bad_option_values_name_option_and_file(tmp_path, options, culprit):
    path = _write(tmp_path, f"dataset: digits-eras\noptions:\n  {options}\n")
    with pytest.raises(GraspError) as e:
        load_recipe(str(path), methods=METHODS)
    assert culprit in str(e.value) and str(path) in str(e.value)


def test_missing_dataset_and_unknown_recipe(tmp_path):
    path = _write(tmp_path, "options:\n  tau: 0.5\n")
    with pytest.raises(GraspError, match="dataset"):
        load_recipe(str(path), methods=METHODS)
    with pytest.raises(GraspError, match="no-such-recipe"):
        load_recipe("no-such-recipe", methods=METHODS)


def test_a_yaml_file_is_a_recipe_too(tmp_path):
    path = _write(tmp_path, "dataset: ./data\nmodels: [org/m]\nnote: mine\noptions:\n  tau: 0.5\n  lr: 1.0e-4\n"
                            "  target_domain: 3\n")
    rec = load_recipe(str(path), methods=METHODS)
    assert (rec.name, rec.dataset, rec.models, rec.meta) == ("mine", "./data", ["org/m"], {"note": "mine"})
    opts = _built(rec.options)
    # a number for a text option arrives as text, as it would from the command line
    assert (opts.tau, opts.lr, opts.target_domain) == (0.5, 1e-4, "3")


def test_resolve_target_cases(tmp_path):
    digits = load_recipe("digits-eras", methods=METHODS).options
    # a built-in recipe name as the target: its dataset and options
    assert resolve_target("digits-eras", None, methods=METHODS) == ("digits-eras", digits)
    assert resolve_target(None, "digits-eras", methods=METHODS) == ("digits-eras", digits)
    # the user's own copy of the data with a recipe's settings: the path is kept, nothing is looked up
    data = tmp_path / "yearbook"
    data.mkdir()
    dataset, layer = resolve_target(str(data), "yearbook", methods=METHODS)
    assert dataset == str(data) and layer == load_recipe("yearbook", methods=METHODS).options
    assert layer["target_domain"] == "1990-2013" and layer["domain_column"] == "period"
    # anything else passes through unchanged
    assert resolve_target("org/some-dataset", None, methods=METHODS) == ("org/some-dataset", {})
    assert resolve_target(str(data), None, methods=METHODS) == (str(data), {})
    with pytest.raises(GraspError):
        resolve_target(None, None, methods=METHODS)


_OFFLINE_PROBE = """
import sys
from hf_grasp.runtime.errors import DataError
from hf_grasp.inputs.recipes import resolve_target
from hf_grasp.methods import METHODS
try:
    resolve_target(sys.argv[1] or None, sys.argv[2] or None, methods=METHODS)
except DataError as e:
    print(e)
    sys.exit(3)
"""


@pytest.mark.parametrize("target, recipe, dataset, command", [
    ("yearbook", "", "hf-grasp/yearbook", "hf-grasp prepare yearbook"),
    ("", "clear100", "hf-grasp/clear100-30", "hf-grasp prepare clear --variant clear100"),
])
def test_recipe_dataset_not_available_offline_names_prepare_command(tmp_path, target, recipe, dataset, command):
    # a fresh HF_HOME, and no inherited HF_* variable pointing at another cache
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run([sys.executable, "-c", _OFFLINE_PROBE, target, recipe], capture_output=True, text=True,
                          env=env, timeout=300, cwd=Path(__file__).parent)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    assert dataset in lines[0] and command in lines[0] and "offline" in lines[0]
