"""Labels matched by name (hf_grasp.inputs.labels): a source holding the target's labels in another order is merged as if
it held them in the target's, one holding other labels is refused in one line (or its head left out)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import merge_fails
from hf_grasp import GraspMerger
from hf_grasp.runtime.errors import SourceError
from hf_grasp.inputs.labels import (
    AS_TARGET,
    LEFT_OUT,
    PERMUTED,
    POSITIONAL,
    LabelMatch,
    after_preflight,
    config_label_names,
    difference,
    head_tensors,
    match_labels,
    permutation,
    permute_rows,
    relabelled_config,
)
from hf_grasp.inputs.sources import iter_across, stream_into

DIGITS = [str(i) for i in range(10)]  # digits-eras' ClassLabel names, and the test checkpoints' id2label
ORDER = (3, 7, 0, 9, 1, 5, 2, 8, 6, 4)  # the permuted copy's class i is the original's class ORDER[i]
HEAD = {"classifier.1.weight", "classifier.1.bias"}  # the head of bench.archs' transformers ResNet
NO_TRAIN = dict(target="digits-eras", initial_epochs=0, finetune_epochs=0, eval_sources=False)
EVERYTHING = dict(tau=-2.0, buffers="follow")  # GRASP transfers every tensor of each source, statistics too


# --- the pure functions ---------------------------------------------------------------------------------------------


def test_label_names_from_transformers_and_timm_configs():
    assert config_label_names({"id2label": {"1": "dog", "0": "cat"}}) == ["cat", "dog"]
    assert config_label_names({"label_names": ["cat", "dog"], "num_classes": 2}) == ["cat", "dog"]  # save_for_hf
    assert config_label_names({"label_names": {"0": "cat", "1": "dog"}}) == ["cat", "dog"]
    assert config_label_names({"pretrained_cfg": {"label_names": ["cat", "dog"]}}) == ["cat", "dog"]
    assert config_label_names({"id2label": {"0": 7, "1": 8}}) == ["7", "8"]


def test_generic_missing_or_unindexed_names_leave_a_source_positional():
    for config in ({"id2label": {"0": "LABEL_0", "1": "LABEL_1"}}, {}, {"num_classes": 10},
                   {"id2label": {"0": "cat", "2": "dog"}}, {"id2label": {"a": "cat"}}, {"label_names": "cat"}):
        assert config_label_names(config) is None, config
    assert match_labels("s", None, DIGITS) == LabelMatch(POSITIONAL)
    assert match_labels("s", DIGITS, None) == LabelMatch(POSITIONAL)  # a target without a ClassLabel


def test_permutation_puts_each_target_class_at_its_index():
    names = [DIGITS[i] for i in ORDER]
    rows = permutation(names, DIGITS)
    assert [names[r] for r in rows] == DIGITS
    head = torch.arange(10.0)[:, None] * torch.ones(1, 3)  # row i scores the source's class i
    permuted = permute_rows(head[list(ORDER)], rows)  # the source's head, back in the target's order
    assert torch.equal(permuted, head)
    assert torch.equal(permute_rows(torch.arange(10.0)[list(ORDER)], rows), torch.arange(10.0))  # a bias too
    with pytest.raises(ValueError, match="no 10 rows"):
        permute_rows(torch.zeros(3, 10), rows)
    with pytest.raises(ValueError, match="missing '9'"):
        permutation(DIGITS[:9] + ["x"], DIGITS)


def test_match_outcomes():
    assert match_labels("s", DIGITS, DIGITS) == LabelMatch(AS_TARGET)
    permuted = match_labels("s", [DIGITS[i] for i in ORDER], DIGITS)
    assert permuted.order == PERMUTED and permuted.rows == permutation([DIGITS[i] for i in ORDER], DIGITS)
    assert match_labels("s", DIGITS[:5], DIGITS) == LabelMatch(POSITIONAL)  # another size: the head's shape check
    other = DIGITS[:7] + ["siete"] + DIGITS[8:]
    with pytest.raises(SourceError) as e:
        match_labels("org/x", other, DIGITS)
    assert str(e.value) == ("source 'org/x': its labels differ from the target's: missing '7', extra 'siete' "
                            "(labels are matched by name; pass skip_mismatched_heads=True to leave its head out and "
                            "keep the target's)")
    assert match_labels("org/x", other, DIGITS, skip_mismatched_heads=True) == LabelMatch(LEFT_OUT)


def test_difference_names_a_few_of_each():
    many = [f"c{i}" for i in range(12)]
    assert difference(many, DIGITS[:2] + many[2:]) == "missing '0', '1', extra 'c0', 'c1'"
    assert difference(many, [f"d{i}" for i in range(12)]).startswith(
        "missing 'd0', 'd1', 'd2', 'd3', 'd4' (and 7 more), extra 'c0'")
    assert difference(["a", "a", "b"], ["a", "b", "c"]) == "missing 'c', named more than once 'a'"


def test_left_out_heads_join_the_ones_preflight_skips():
    named = LabelMatch(LEFT_OUT, heads=frozenset(HEAD))
    assert after_preflight(named, []) == (named, sorted(HEAD))
    shape_skipped = LabelMatch(LEFT_OUT, heads=frozenset({"fc.weight"}))  # a head of another size
    assert after_preflight(LabelMatch(POSITIONAL), ["fc.weight"]) == (shape_skipped, ["fc.weight"])
    assert after_preflight(LabelMatch(AS_TARGET), []) == (LabelMatch(AS_TARGET), [])
    assert after_preflight(None, []) == (None, [])


def test_the_head_is_found_on_the_architecture_not_by_its_shape(tmp_path):
    from hf_grasp.apps.bench import archs
    from hf_grasp.inputs.families import TransformersFamily

    archs.new_checkpoint("resnet", tmp_path / "r", num_labels=16, seed=0)  # its stem has 16 channels too
    state = load_file(str(tmp_path / "r" / "model.safetensors"))
    assert len([n for n, t in state.items() if t.dim() and t.shape[0] == 16]) > len(HEAD)
    assert head_tensors(TransformersFamily(), tmp_path / "r", 16) == HEAD


def test_relabelled_config_names_the_classes_where_each_library_reads_them():
    hf = relabelled_config({"model_type": "resnet", "id2label": {"0": "b", "1": "a"}, "label2id": {}}, ["a", "b"])
    assert hf["id2label"] == {"0": "a", "1": "b"} and hf["label2id"] == {"a": 0, "b": 1} and "label_names" not in hf
    timm = relabelled_config({"architecture": "resnet10t", "num_classes": 2, "label_names": ["b", "a"],
                              "pretrained_cfg": {"label_names": ["b", "a"]}}, ["a", "b"])
    assert timm["label_names"] == ["a", "b"] and timm["pretrained_cfg"]["label_names"] == ["a", "b"]
    assert "id2label" not in timm


# --- the case: a trained digits source, and the same model with its classes renumbered ---------------------


def _renumbered(src: Path, dst: Path, order, head=HEAD, names=None) -> Path:
    """A copy of checkpoint ``src`` whose class ``i`` is ``src``'s class ``order[i]``: the head's rows and the
    config's label names reordered together (the same model); ``names`` renames the classes instead."""
    shutil.copytree(src, dst)
    state = load_file(str(src / "model.safetensors"))
    for name in head:
        state[name] = state[name][list(order)].contiguous()
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    old = config_label_names(config)
    new = names or [old[i] for i in order]
    if "label_names" in config:  # timm
        config["label_names"] = new
    else:
        config["id2label"] = {str(i): n for i, n in enumerate(new)}
        config["label2id"] = {n: i for i, n in enumerate(new)}
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


@pytest.fixture(scope="module")
def digits(checkpoints, tmp_path_factory):
    """``(other, trained, permuted, renamed)``: a random source, one fine-tuned 4 epochs on digits-eras (about a
    second; ~30% test accuracy, chance is 10%), the trained one renumbered, and the trained one with '7' renamed."""
    root = tmp_path_factory.mktemp("labels")
    start, other = checkpoints("resnet", 2, seed0=80)
    GraspMerger.from_pretrained([str(start), str(other)], method="finetune-only", **{**NO_TRAIN, "initial_epochs": 4},
                                eval_steps=False).merge().save_pretrained(root / "trained")
    trained = root / "trained"
    permuted = _renumbered(trained, root / "permuted", ORDER)
    renamed = _renumbered(trained, root / "renamed", range(10), names=DIGITS[:7] + ["seven"] + DIGITS[8:])
    return other, trained, permuted, renamed


def test_permuted_source_predicts_by_name_what_the_original_does(digits):
    from transformers import AutoModelForImageClassification

    other, trained, permuted, _ = digits
    merger = GraspMerger.from_pretrained([str(other), str(trained), str(permuted)], **NO_TRAIN)
    original, renumbered = merger.sources[1:]
    assert (original.labels.order, renumbered.labels.order) == (AS_TARGET, PERMUTED)
    assert renumbered.labels.heads == HEAD  # found on the architecture, not guessed from shapes
    x = merger.data.preprocessed["test"].pixel_values
    # loaded by transformers as saved, the copy numbers the classes otherwise but names the same ones
    plain = {d: AutoModelForImageClassification.from_pretrained(d).eval() for d in (trained, permuted)}
    with torch.no_grad():
        index = {d: m(pixel_values=x).logits.argmax(-1) for d, m in plain.items()}
    named = {d: [plain[d].config.id2label[int(i)] for i in index[d]] for d in plain}
    assert named[trained] == named[permuted] and not torch.equal(index[trained], index[permuted])
    # streamed by hf-grasp, the copy's head is in the target's order: the same logits, so the same classes by name
    probe = merger.family.build(merger.model_dir)
    logits = {}
    for source in (original, renumbered):
        stream_into(probe, source)
        with torch.no_grad():
            logits[source.name] = merger.family.logits(probe, {"pixel_values": x})
    assert torch.equal(logits[original.name], logits[renumbered.name])
    assert [merger.data.label_names[i] for i in logits[renumbered.name].argmax(-1)] == named[trained]
    # and so is every tensor read side by side (the task-vector methods' stream)
    for name, (a, b) in iter_across([original, renumbered], list(probe.state_dict())):
        assert torch.equal(a, b), name


def test_permuted_source_merges_as_the_original(digits, tmp_path):
    other, trained, permuted, _ = digits
    kw = {**NO_TRAIN, **EVERYTHING, "eval_sources": True}
    want = GraspMerger.from_pretrained([str(other), str(trained)], **kw).merge()
    got = GraspMerger.from_pretrained([str(other), str(permuted)], **kw).merge()
    assert [s.label_order for s in got.report.sources] == [AS_TARGET, PERMUTED]
    state = got.model.state_dict()
    assert all(torch.equal(t, state[n]) for n, t in want.model.state_dict().items())
    assert got.report.test_accuracy() == want.report.test_accuracy() > 0.2  # unpermuted, this scored below chance
    assert got.report.sources[1].metrics_alone == want.report.sources[1].metrics_alone
    got.save_pretrained(tmp_path / "merged")
    saved = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config_label_names(saved) == DIGITS
    report = json.loads((tmp_path / "merged" / "grasp_report.json").read_text())
    assert [s["label_order"] for s in report["sources"]] == [AS_TARGET, PERMUTED]
    assert report["target"]["label_names"] == DIGITS
    card = (tmp_path / "merged" / "README.md").read_text()
    assert "- `permuted` holds the target's labels in another order: its classifier head's rows were put in the " \
           "target's order as it was read." in card
    assert card.count("in another order") == 1  # the source as the target gets no line


def test_permuted_lead_gives_a_model_named_and_ordered_as_the_target(digits, tmp_path):
    """The lead sets the architecture and config; its head, permuted, must not leave its order in the config."""
    from transformers import AutoModelForImageClassification

    other, trained, permuted, _ = digits
    kw = {**NO_TRAIN, "tau": 2.0}  # nothing transferred: the merge is the lead
    want = GraspMerger.from_pretrained([str(trained), str(other)], **kw).merge()
    got = GraspMerger.from_pretrained([str(permuted), str(other)], **kw).merge()
    state = got.model.state_dict()
    assert all(torch.equal(t, state[n]) for n, t in want.model.state_dict().items())
    assert got.model.config.id2label == dict(enumerate(DIGITS))
    got.save_pretrained(tmp_path / "merged")
    assert config_label_names(json.loads((tmp_path / "merged" / "config.json").read_text())) == DIGITS
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "merged").eval()
    assert reloaded.config.id2label == dict(enumerate(DIGITS))
    assert torch.equal(reloaded.classifier[1].weight, want.model.classifier[1].weight)


def test_ensemble_of_a_permuted_member_predicts_as_with_the_original(digits, tmp_path):
    """The ensemble's saved predictor loads each member as published: a renumbered member's outputs are put in
    the target's order there too."""
    from hf_grasp.inputs.data import load_target
    from hf_grasp.methods.ensemble_model import EnsembleClassifier

    other, trained, permuted, _ = digits
    images = load_target("digits-eras").splits["test"].select(range(64))["image"]
    probs = {}
    for source in (trained, permuted):
        result = GraspMerger.from_pretrained([str(other), str(source)], method="ensemble", **NO_TRAIN).merge()
        result.save_pretrained(tmp_path / source.name)
        clf = EnsembleClassifier.from_pretrained(tmp_path / source.name)
        assert clf.spec.labels == DIGITS
        with torch.no_grad():
            probs[source.name] = clf(clf.preprocess(images)).probabilities
    torch.testing.assert_close(probs["permuted"], probs["trained"], rtol=0, atol=1e-6)


def test_positional_when_a_source_names_no_labels(digits, tmp_path):
    other, trained, _, _ = digits
    generic = _renumbered(trained, tmp_path / "generic", range(10), names=[f"LABEL_{i}" for i in range(10)])
    merger = GraspMerger.from_pretrained([str(other), str(generic)], **NO_TRAIN)
    assert merger.sources[1].labels == LabelMatch(POSITIONAL)


# --- other labels -------------------------------------------------------------------------------------------------


def test_other_labels_are_one_error_line_and_nothing_is_written(digits, tmp_path):
    other, _, _, renamed = digits
    line = merge_fails(tmp_path, [other, renamed])  # exit 2, one line, nothing written, sources untouched
    assert line == (f"error: source {str(renamed)!r}: its labels differ from the target's: missing '7', extra "
                    "'seven' (labels are matched by name; pass --skip-mismatched-heads to leave its head out and keep "
                    "the target's)")


def test_other_labels_with_skip_mismatched_heads_leave_the_head_out(digits):
    other, _, _, renamed = digits
    result = GraspMerger.from_pretrained([str(other), str(renamed)], skip_mismatched_heads=True,
                                         **{**NO_TRAIN, **EVERYTHING}).merge()
    rec = result.report.sources[1]
    assert rec.label_order == LEFT_OUT and set(rec.skipped) == HEAD
    state, first, src = result.model.state_dict(), load_file(str(other / "model.safetensors")), \
        load_file(str(renamed / "model.safetensors"))
    for name in HEAD:
        assert torch.equal(state[name], first[name])  # the target's head stays
    body = next(n for n in state if n not in HEAD and state[n].dim() == 4)
    assert torch.equal(state[body], src[body])  # everything else came from it


def test_a_hub_source_with_other_labels_is_refused_before_its_weights_are_downloaded(digits, hub, tmp_path):
    serve, env, log = hub
    other, _, _, renamed = digits
    serve("org/renamed", renamed)
    line = merge_fails(tmp_path, [other, "org/renamed"], env=env)
    assert "'org/renamed'" in line and "missing '7', extra 'seven'" in line
    assert not [p for m, p, r in log if m == "GET" and p.endswith(".safetensors") and r is None]


# --- timm: label_names ------------------------------------------------------------------------------------------------


def test_timm_source_renumbered_streams_as_the_original(checkpoints, tmp_path):
    (original,) = checkpoints("timm:resnet10t", 1, seed0=81)
    config = json.loads((original / "config.json").read_text())
    assert config_label_names(config) == DIGITS  # what save_for_hf writes: label_names
    permuted = _renumbered(original, tmp_path / "permuted", ORDER, head={"fc.weight", "fc.bias"})
    merger = GraspMerger.from_pretrained([str(original), str(permuted)], **NO_TRAIN)
    a, b = merger.sources
    assert (a.labels.order, b.labels.order, b.labels.heads) == (AS_TARGET, PERMUTED, {"fc.weight", "fc.bias"})
    x = merger.data.preprocessed["test"].pixel_values[:64]
    probe, logits = merger.family.build(merger.model_dir), []
    for source in (a, b):
        stream_into(probe, source)
        with torch.no_grad():
            logits.append(merger.family.logits(probe, {"pixel_values": x}))
    assert torch.equal(*logits)
