"""The model card as published: metadata that round-trips through ``ModelCard.load``, a body without the paths
of the machine that made the merge, and the example card kept in docs/ (regenerated here, so it cannot go
stale).

The example is the offline demo made cheap: three small digits-eras ResNet checkpoints published into a fresh
HF cache by repo id (one pinned to a tag), merged with GRASP onto digits-eras by repo id with one fine-tuning
epoch, in one fresh interpreter on one thread (the thread count changes float summation order, so the
numbers), and saved as ``me/digits-eras-grasp`` would be pushed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import typing
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from pydantic import ValidationError

from conftest import run_python
from hf_grasp.methods import METHODS, MethodInfo
from hf_grasp.output.card import FOLDER, HEATMAP, MODALITY_OPTIONS, build_model_card, for_publication, hub_dataset_id
from hf_grasp.plan.config import CONFIG_NAME
from hf_grasp.plan.options import MergeOptions, MethodParams, option
from hf_grasp.output.report import MergeReport, method_record

DOCS = Path(__file__).resolve().parent.parent / "docs"
EXAMPLE = DOCS / "example-model-card.md"
UPDATE = "HF_GRASP_UPDATE_DOCS"
REPO_ID = "me/digits-eras-grasp"
SOURCES = ["demo/resnet-s0@v1", "demo/resnet-s1", "demo/resnet-s2"]

MAKE_EXAMPLE = """
import sys
from hf_grasp import GraspMerger
from hf_grasp.apps.bench.hub_cache import publish_to_cache
out, repo_id, refs, dirs = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4:]
for ref, d in zip(refs, dirs):
    publish_to_cache(d, ref.split("@")[0], tags=("v1",))
result = GraspMerger.from_pretrained(refs, target="digits-eras", initial_epochs=0, finetune_epochs=1).merge()
result.save_pretrained(out, model_card_kwargs={"repo_id": repo_id})
"""

#: what differs between two runs of the same merge: seconds and memory (the card keeps them, the test does not)
VOLATILE = [(re.compile(r"\b\d+(?:\.\d+)? (?:s|min)\b"), "<time>"),
            (re.compile(r"Peak memory: [\d.]+ [kMG]B"), "Peak memory: <rss>"),
            # the sources' commits are content hashes of their folders, whose config.json names the transformers
            # release that wrote it: a newer release the installer picks gives other commits, not another card
            (re.compile(r"\b[0-9a-f]{40}\b|\b[0-9a-f]{8}\b"), "<commit>")]


def normalised(card: str) -> str:
    for pattern, placeholder in VOLATILE:
        card = pattern.sub(placeholder, card)
    return card


@pytest.fixture(scope="module")
def example(checkpoints, datasets_cache, tmp_path_factory) -> Path:
    """The example merge's output folder (weights, README.md, grasp_report.json, alignment.png)."""
    root = tmp_path_factory.mktemp("example")
    out = root / "merged"
    env = {"HF_HOME": str(root / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(datasets_cache),
           "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    run_python(MAKE_EXAMPLE, out, REPO_ID, ",".join(SOURCES), *checkpoints("resnet", 3), env=env)
    return out


def test_example_card_in_docs_is_current(example):
    card = (example / "README.md").read_text()
    if os.environ.get(UPDATE):
        DOCS.mkdir(exist_ok=True)
        EXAMPLE.write_text(card)
        shutil.copyfile(example / HEATMAP, DOCS / HEATMAP)  # the image the card shows, beside it
    assert EXAMPLE.is_file() and (DOCS / HEATMAP).is_file(), \
        f"no example card in docs/: run `{UPDATE}=1 python -m pytest tests/test_card.py`"
    assert normalised(EXAMPLE.read_text()) == normalised(card), (
        f"{EXAMPLE.relative_to(DOCS.parent)} differs from the card the code renders now; if the change is meant, "
        f"regenerate it: `{UPDATE}=1 HF_HUB_OFFLINE=1 python -m pytest tests/test_card.py`")


def test_card_metadata_round_trips(example):
    card = ModelCard.load(example / "README.md")
    report = json.loads((example / "grasp_report.json").read_text())
    data = card.data
    assert data.base_model == [ref.split("@")[0] for ref in SOURCES]
    assert data.base_model_relation == "merge"
    assert (data.library_name, data.pipeline_tag) == ("transformers", "image-classification")
    assert {"hf-grasp", "merge", "model-merging", "grasp"} <= set(data.tags)
    assert data.datasets is None  # digits-eras is a built-in, not a Hub dataset
    [result] = data.eval_results
    assert (result.task_type, result.metric_type, result.dataset_split) == ("image-classification", "accuracy",
                                                                            "test")
    assert result.metric_value == report["final"]["test"]["accuracy"]
    assert result.dataset_type == "digits-eras" and result.dataset_name == "digits-eras (domain 2)"
    assert card.data.model_name == REPO_ID


def test_card_body_pins_sources_shows_the_heatmap_and_how_to_use_it(example):
    text = ModelCard.load(example / "README.md").text
    report = MergeReport.load(example / "grasp_report.json")
    for src in report.sources:  # the table pins every source: ref, revision, resolved commit
        row = next(line for line in text.splitlines() if line.startswith("| ") and f"`{src.ref}`" in line)
        assert f"`{src.commit}`" in row and (f"`{src.revision}`" in row if src.revision else "| – |" in row)
    assert report.sources[0].revision == "v1"
    assert f"![Alignment of each source with the merged model, per tensor]({HEATMAP})" in text
    assert (example / HEATMAP).is_file()
    assert f'AutoModelForImageClassification.from_pretrained("{REPO_ID}")' in text
    assert f'GraspMerger.from_pretrained("{REPO_ID}").merge()' in text
    assert f"hf-grasp merge --from {REPO_ID} --output out/" in text
    assert f"hf-grasp merge --init {REPO_ID} --sources NEW_SOURCE --output out/" in text
    assert f"This repo holds `{CONFIG_NAME}`" in text and (example / CONFIG_NAME).is_file()  # what it says is there
    assert "Local sources" not in text  # every source is on the Hub


def test_card_names_no_path_of_the_machine(example):
    for name in ("README.md", "grasp_report.json", "grasp_config.json"):
        text = (example / name).read_text()
        assert str(example.parent) not in text and "/tmp/" not in text and str(Path.home()) not in text, name
    assert MergeReport.load(example / "grasp_report.json").sources[0].path is None  # where the files were: not kept


# --- cards built from reports (no merge of their own)


@pytest.fixture(scope="module")
def local_report(example, checkpoints) -> MergeReport:
    """The example's report as if its sources had been local folders (absolute paths, no commits)."""
    report = MergeReport.load(example / "grasp_report.json")
    dirs = {s.ref: str(d) for s, d in zip(report.sources, checkpoints("resnet", 3))}
    sources = [dataclasses.replace(s, ref=dirs[s.ref], path=dirs[s.ref], repo_id=None, revision=None, commit=None)
               for s in report.sources]
    steps = [dataclasses.replace(s, ref=dirs.get(s.ref, s.ref)) for s in report.steps]
    return dataclasses.replace(report, sources=sources, steps=steps)


def test_local_sources_are_named_by_their_folder(local_report, tmp_path):
    card = build_model_card(local_report)
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    paths = [s.ref for s in local_report.sources]
    assert all(p.startswith("/") for p in paths)
    assert not [p for p in paths if p in loaded.content]
    for p in paths:
        assert f"| `{Path(p).name}` | – | local |" in loaded.text
    assert "base_model" not in loaded.data.to_dict() and "base_model_relation" not in loaded.data.to_dict()
    assert f'from_pretrained("{FOLDER}")' in loaded.text and f"--from {FOLDER} --output" in loaded.text
    assert "Local sources (`resnet-s0`, `resnet-s1`, `resnet-s2`) were folders" in loaded.text
    assert loaded.data.eval_results[0].metric_value == local_report.test_accuracy()


def test_local_names_keep_as_many_path_parts_as_tell_them_apart(local_report):
    a, b, _ = local_report.sources
    twins = dataclasses.replace(local_report, sources=[dataclasses.replace(a, ref="/x/run1/checkpoint-500"),
                                                       dataclasses.replace(b, ref="local-dir:/x/run2/checkpoint-500")],
                                steps=[], options={**local_report.options, "init": "/x/run1/checkpoint-500"})
    shown = for_publication(twins)
    assert [s.ref for s in shown.sources] == ["run1/checkpoint-500", "run2/checkpoint-500"]
    assert shown.options["init"] == "run1/checkpoint-500"
    assert [s.ref for s in twins.sources][0] == "/x/run1/checkpoint-500"  # the report itself is left alone


def test_hub_dataset_target_goes_into_datasets_and_model_index(local_report, tmp_path):
    report = dataclasses.replace(local_report, target=dataclasses.replace(local_report.target, name="org/data",
                                                                          domain=None, notes=[]))
    assert hub_dataset_id("org/data") == "org/data"
    card = build_model_card(report, repo_id="me/merged")
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.datasets == ["org/data"]
    [result] = loaded.data.eval_results
    assert (result.dataset_type, result.dataset_name) == ("org/data", "org/data")
    assert result.metric_value == report.test_accuracy()


def test_local_and_builtin_targets_are_not_hub_datasets(local_report, tmp_path, monkeypatch):
    folder = tmp_path / "data" / "my_imagefolder"
    folder.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert [hub_dataset_id(t) for t in ("digits-eras", str(folder), "./data", "data/my_imagefolder",
                                        "~/x", "a/b/c")] == [None] * 6
    report = dataclasses.replace(local_report, target=dataclasses.replace(
        local_report.target, name=str(folder), notes=[f"{folder} holds a single Dataset without splits"]))
    card = build_model_card(report)
    assert card.data.datasets is None and str(tmp_path) not in card.content
    assert "**my_imagefolder**" in card.text and "my_imagefolder holds a single Dataset" in card.text


def test_card_without_a_saved_configuration_offers_no_reproduce_section(local_report):
    text = build_model_card(local_report, repo_id="me/merged", reproducible=False).text
    assert "Reproduce" not in text and "--from" not in text and "Local sources" not in text
    assert 'from_pretrained("me/merged")' in text  # loading it stays


# --- the run's settings, stated as each option and method parameter declares (option(card=...))

BUILT_IN = [info for info in METHODS.values() if (info.impl or "").startswith("hf_grasp.")]


def _declared(model) -> list[tuple[str, typing.Any]]:
    """``(name, field)`` of every field of ``model`` the card states (the others declare why not)."""
    return [(name, f) for name, f in model.model_fields.items() if "card" in (f.json_schema_extra or {})]


def _sentence(field, value) -> str:
    """The sentence the field's declaration gives for ``value``."""
    card = field.json_schema_extra["card"]
    if isinstance(card, dict):
        card = card[value] if value in card else card[...]
    shown = ", ".join(f"{v:g}" for v in value) if isinstance(value, tuple) else value
    return card.format(value=shown)


def _other_value(model, name: str, field) -> typing.Any:
    """A valid value of the field other than its default, derived from the field: another of its declared or
    Literal choices, the other flag, a different number within its constraints, a text for a text option."""
    default, card = field.default, field.json_schema_extra["card"]
    candidates = [k for k in card if k is not ...] if isinstance(card, dict) else []
    if typing.get_origin(field.annotation) is typing.Literal:
        candidates += typing.get_args(field.annotation)
    if isinstance(default, bool):
        candidates.append(not default)
    elif isinstance(default, (int, float)):
        candidates += [default + 1, default * 2, default / 2, 0.5]
    elif isinstance(default, tuple):
        candidates.append(default[1:])
    else:
        candidates.append("other-text")
    for value in candidates:
        if value == default or (isinstance(value, bool) and not isinstance(default, bool)):
            continue
        try:
            model.model_validate({name: value})
        except ValidationError:
            continue
        return value
    raise AssertionError(f"no other valid value found for {name}")


def test_every_option_and_parameter_declares_how_the_card_states_it():
    for model in [MergeOptions, *{info.params for info in BUILT_IN}]:
        for name, f in model.model_fields.items():
            extra = f.json_schema_extra or {}
            assert ("card" in extra) != ("card_skip" in extra), f"{model.__name__}.{name}: card= or card_skip="
            assert extra.get("card_skip", "why").strip(), f"{model.__name__}.{name}: card_skip says why"
    with pytest.raises(TypeError):
        option(1, "x", card="{value}", card_skip="why")


@pytest.fixture(scope="module")
def report(example) -> MergeReport:
    return MergeReport.load(example / "grasp_report.json")


def test_card_states_each_shared_option_as_run_never_the_default(report):
    """Each option set to another value than its default: the card states that value's sentence, not the
    default's (the example merge is GRASP and trained, so every option the card states applies)."""
    defaults = {name: f.default for name, f in MergeOptions.model_fields.items()}
    # an option of text targets only is stated on a text merge's card, the others on the example's (images)
    text_report = dataclasses.replace(report, target=dataclasses.replace(report.target, modality="text"))
    reports = {name: text_report if name in MODALITY_OPTIONS["text"] else report for name in defaults}
    for name, f in _declared(MergeOptions):
        text = build_model_card(dataclasses.replace(reports[name], options=defaults)).text
        assert _sentence(f, f.default) in text, name
    for name, f in _declared(MergeOptions):
        value = _other_value(MergeOptions, name, f)
        text = build_model_card(dataclasses.replace(reports[name], options={**defaults, name: value})).text
        assert _sentence(f, value) in text, (name, value)
        assert _sentence(f, f.default) not in text, (name, value)
    for name in MODALITY_OPTIONS["image"]:  # and never on the other modality's card
        f = MergeOptions.model_fields[name]
        assert _sentence(f, f.default) not in build_model_card(dataclasses.replace(text_report, options=defaults)).text


@pytest.mark.parametrize("info", BUILT_IN, ids=lambda info: info.name)
def test_card_states_each_method_parameter_as_run_never_the_default(report, info):
    record = method_record(info, info.params())
    text = build_model_card(dataclasses.replace(report, method=record)).text
    for name, f in _declared(info.params):
        assert _sentence(f, f.default) in text, name
    for name, f in _declared(info.params):
        value = _other_value(info.params, name, f)
        changed = dataclasses.replace(record, params={**record.params, name: value})
        text = build_model_card(dataclasses.replace(report, method=changed)).text
        assert _sentence(f, value) in text, (name, value)
        assert _sentence(f, f.default) not in text, (name, value)


@pytest.mark.parametrize("tau", [float("inf"), "inf", float("-inf"), "-inf"])
def test_card_states_a_non_finite_tau(report, tau):
    """τ = ±inf (transfer nothing / everything), as the run holds it or as the JSON report saves it."""
    changed = dataclasses.replace(report.method, params={**report.method.params, "tau": tau})
    text = build_model_card(dataclasses.replace(report, method=changed)).text
    shown = "-inf" if str(tau).startswith("-") else "inf"
    assert f"Threshold τ = {shown}: a unit moves" in text
    assert f"(the black line on the colour bar is τ = {shown})" in text


def test_parameters_of_a_method_from_outside_are_stated_too(report, monkeypatch):
    class MineParams(MethodParams):
        strength: float = option(0.5, "How hard to pull.", gt=0)

    info = MethodInfo("mine", "Mine", "Mine", "pulls the sources together.", MineParams)
    monkeypatch.setitem(METHODS, "mine", info)
    record = dataclasses.replace(method_record(info, MineParams(strength=0.7)), is_grasp=False)
    text = build_model_card(dataclasses.replace(report, method=record)).text
    assert "**Parameters of Mine**" in text and "- `strength` = 0.7" in text
    gone = dataclasses.replace(record, name="gone", params={"pull": 3})  # a method this process does not know
    assert "- `pull` = 3" in build_model_card(dataclasses.replace(report, method=gone)).text
