"""The ``--resume`` state is trusted only as far as it is checked (issue 24, items 4-6 and 10).

One real GRASP merge of three tiny local sources is interrupted after its second step (module fixture); each
test copies that state, damages it the way a hostile or unlucky user would, and resumes: refused with one line
naming the culprit, or resumed to the very bits of the merge never stopped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conftest import merge_stopped_at_step
from hf_grasp.engine.records import StepKind
from hf_grasp.output.checkpoint import Checkpoint, ResumeStateError, kept_for_resume
from hf_grasp.runtime.errors import GraspError

STATE = "state.json"


class Trial:
    """A merger of three local sources, its uninterrupted result and the state it left after two steps."""

    def __init__(self, root: Path, checkpoints):
        from hf_grasp import GraspMerger

        self.root = root
        self.sources = []
        for src in checkpoints("resnet", 3, seed0=240):
            copy = root / "sources" / src.name  # ours: one test rewrites a source's weights
            shutil.copytree(src, copy)
            self.sources.append(copy)
        self.merger = GraspMerger.from_pretrained([str(s) for s in self.sources], target="digits-eras",
                                                  initial_epochs=0, finetune_epochs=0)
        self.final = _weights(self.merger.merge().model)
        self.pristine = root / "pristine"
        merge_stopped_at_step(self.merger, self.pristine, 2)
        self.saved = json.loads((self.pristine / STATE).read_text())
        assert self.saved["steps_done"] == 2
        self.expected = [(StepKind.INIT, None, str(self.sources[0])), (StepKind.SOURCE, 1, str(self.sources[1])),
                         (StepKind.SOURCE, 2, str(self.sources[2]))]

    def area(self, tmp_path: Path, name: str = "area") -> Path:
        """A fresh copy of the state after two steps."""
        area = tmp_path / name
        shutil.copytree(self.pristine, area)
        return area

    def resume(self, area: Path):
        return self.merger.merge(checkpoint_dir=area, resume=True)

    def restore(self, area: Path):
        """The resume path alone (what ``MergeContext.resume`` does): the model and the records restored."""
        model = self.merger._build()
        records = Checkpoint(area, self.merger.plan, resume=True).restore(
            model, expected=self.expected, inputs=self.merger.inputs.everyone)
        return model, records


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _edit(area: Path, **fields) -> None:
    state = json.loads((area / STATE).read_text())
    state.update(fields)
    (area / STATE).write_text(json.dumps(state))


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(trial: Trial, area: Path, *parts: str) -> str:
    with pytest.raises(GraspError) as e:
        trial.resume(area)
    message = str(e.value)
    assert "\n" not in message and all(p in message for p in parts), message
    return message


@pytest.fixture(scope="module")
def trial(tmp_path_factory, checkpoints):
    return Trial(tmp_path_factory.mktemp("resume-trust"), checkpoints)


def test_the_state_after_two_steps_resumes_to_the_same_bits(trial, tmp_path):
    result = trial.resume(trial.area(tmp_path))
    assert _same(_weights(result.model), trial.final)
    assert [s.label for s in result.report.steps] == ["init", "source 1", "source 2"]


def test_a_state_with_more_steps_than_this_merge_has_is_refused(trial, tmp_path):
    # the hostile try: 9 steps recorded for 3 sources, the step-2 weights renamed; before: exit 0, those weights
    # saved as the final model and report rows for sources that do not exist
    area = trial.area(tmp_path)
    records = trial.saved["records"] + [dict(trial.saved["records"][-1], number=k) for k in range(3, 10)]
    (area / "merged-step2.safetensors").rename(area / "merged-step9.safetensors")
    _edit(area, steps_done=9, records=records, weights="merged-step9.safetensors")
    _refused(trial, area, str(area / STATE), "records 9 finished step(s)", "this merge has only 3", "overwrite=True")


@pytest.mark.parametrize("change, culprit", [
    ({"number": 2}, "record 2 is source 2"),
    ({"source": "org/elsewhere"}, "'org/elsewhere'"),
    ({"kind": "init", "number": None}, "record 2 is init"),
])
def test_a_record_that_is_not_this_merges_step_is_refused(trial, tmp_path, change, culprit):
    area = trial.area(tmp_path)
    _edit(area, records=[trial.saved["records"][0], {**trial.saved["records"][1], **change}])
    _refused(trial, area, str(area / STATE), culprit, "step 2 of this merge is source 1")


def test_a_resume_area_that_is_a_symlink_is_never_followed(trial, tmp_path):
    elsewhere = trial.area(tmp_path, "elsewhere")
    before = {p.name: p.read_bytes() for p in elsewhere.iterdir()}
    link = tmp_path / "area"
    link.symlink_to(elsewhere)
    _refused(trial, link, str(link), "symbolic link", "never followed")
    # a fresh run into a linked area (state written there, old weights deleted there before the fix)
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "fresh").symlink_to(empty)
    with pytest.raises(GraspError, match="symbolic link"):
        trial.merger.merge(checkpoint_dir=tmp_path / "fresh")
    assert {p.name: p.read_bytes() for p in elsewhere.iterdir()} == before and not list(empty.iterdir())


def test_a_state_file_that_is_a_symlink_is_never_followed(trial, tmp_path):
    area = trial.area(tmp_path)
    real = tmp_path / "real-state.json"
    (area / STATE).rename(real)
    (area / STATE).symlink_to(real)
    _refused(trial, area, str(area / STATE), "state.json is a symbolic link")


@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_a_weights_file_linking_to_a_source_is_refused(trial, tmp_path, link):
    # before: a weights file linking to a source's weights was loaded silently, that source's model resumed over
    area = trial.area(tmp_path)
    weights, source = area / "merged-step2.safetensors", trial.sources[1] / "model.safetensors"
    weights.unlink()
    (weights.symlink_to if link == "symbolic" else weights.hardlink_to)(source)
    _edit(area, weights_sha256=_sha256(source))  # the state agrees with the link: only the link itself is wrong
    why = "is a symbolic link" if link == "symbolic" else "has other hard links"
    _refused(trial, area, "merged-step2.safetensors", why, "overwrite=True")


@pytest.mark.parametrize("name, why", [("../merged-step2.safetensors", "not a state file of this area"),
                                       ("sub/merged-step2.safetensors", "not a state file of this area"),
                                       ("merged-step1.safetensors", "not the state file of step 2")])
def test_the_weights_must_be_this_steps_plain_file_in_the_area(trial, tmp_path, name, why):
    area = trial.area(tmp_path)
    _edit(area, weights=name)
    _refused(trial, area, str(area / STATE), "is unreadable", why)


def test_a_local_source_changed_since_the_kill_is_refused_by_name(trial, tmp_path):
    from safetensors.torch import load_file, save_file

    area = trial.area(tmp_path)
    weights = trial.sources[2] / "model.safetensors"
    kept = weights.read_bytes()
    tensors = load_file(weights)
    first = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
    tensors[first] = tensors[first] + 1
    save_file(tensors, weights, metadata={"format": "pt"})
    try:
        from hf_grasp import GraspMerger

        # a rerun resolves (and hashes) its sources anew
        rerun = GraspMerger.from_pretrained([str(s) for s in trial.sources], target="digits-eras",
                                            initial_epochs=0, finetune_epochs=0)
        with pytest.raises(GraspError) as e:
            rerun.merge(checkpoint_dir=area, resume=True)
    finally:
        weights.write_bytes(kept)
    assert f"local source {str(trial.sources[2])!r} changed since the interrupted run" in str(e.value)
    assert "model.safetensors has sha256" in str(e.value) and "\n" not in str(e.value)


def test_nan_weights_in_the_state_are_a_corrupt_state_not_a_learning_rate(trial, tmp_path):
    # before: "GRASP step 2 ...: the loss is NaN; lower --lr, or check the sources merged so far"
    from safetensors.torch import load_file, save_file

    area = trial.area(tmp_path)
    weights = area / "merged-step2.safetensors"
    tensors = load_file(weights)
    name = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, weights)
    _edit(area, weights_sha256=_sha256(weights))
    message = _refused(trial, area, "resume state is corrupt", "NaN", "overwrite=True without resume=True")
    assert "--lr" not in message
    # and without the sha256 updated, its bytes are not the ones the state recorded
    save_file(load_file(trial.pristine / "merged-step2.safetensors") | {name: torch.zeros_like(tensors[name])}, weights)
    _refused(trial, area, "resume state is corrupt", "does not hold the bytes")


def test_a_refused_state_gets_no_advice_to_resume(tmp_path, caplog):
    area = tmp_path / "area"
    area.mkdir()
    (area / STATE).write_text("{}")
    with caplog.at_level(logging.WARNING, logger="hf_grasp"):
        with pytest.raises(ResumeStateError):
            with kept_for_resume(area):
                raise ResumeStateError("refused")
        with pytest.raises(KeyboardInterrupt):
            with kept_for_resume(area):
                raise KeyboardInterrupt
    assert [r.getMessage().count("resume=True") for r in caplog.records] == [1]  # the interruption's, only
    assert (area / STATE).exists()


# --- the fuzz: state.json's fields replaced by anything JSON holds, files removed or turned into links

JSON = st.recursive(st.none() | st.booleans() | st.integers(min_value=-(10 ** 30), max_value=10 ** 30)
                    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=4),
                    max_leaves=20)
FIELDS = ["format", "steps_done", "weights", "weights_sha256", "pins", "config", "records"]
DAMAGE = st.one_of(
    st.tuples(st.just("field"), st.sampled_from(FIELDS), JSON),
    st.tuples(st.just("missing"), st.sampled_from(FIELDS), st.none()),
    st.tuples(st.just("record"), st.sampled_from(["kind", "number", "source", "validation", "scores", "details",
                                                  "phases", "oops"]), JSON),
    st.tuples(st.just("deep"), st.sampled_from(FIELDS + ["records"]), st.integers(30, 5000)),
    st.tuples(st.just("file"), st.sampled_from(["remove weights", "remove state", "link weights", "link state",
                                                "truncate weights", "empty state", "not json"]), st.none()),
)


def _damage(area: Path, how: str, what: str, value) -> None:
    state = json.loads((area / STATE).read_text())
    weights = area / "merged-step2.safetensors"
    if how == "field":
        state[what] = value
    elif how == "missing":
        del state[what]
    elif how == "record":
        state["records"][1][what] = value
    elif how == "deep":  # written as text: json.dumps itself cannot nest so deep
        state[what] = "DEEP"
        text = json.dumps(state).replace('"DEEP"', "[" * value + "]" * value)
        (area / STATE).write_text(text)
        return
    elif what.startswith("remove"):
        (weights if "weights" in what else area / STATE).unlink()
        return
    elif what.startswith("link"):
        path = weights if "weights" in what else area / STATE
        path.rename(area.parent / path.name)
        path.symlink_to(area.parent / path.name)
        return
    elif what == "truncate weights":
        weights.write_bytes(weights.read_bytes()[:100])
        return
    else:
        (area / STATE).write_text("" if what == "empty state" else "{\"steps_done\": 2, ")
        return
    (area / STATE).write_text(json.dumps(state))


# no shrinking, no example database in the repository: bounded time, nothing left behind
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None,
          phases=(Phase.explicit, Phase.generate))
@given(damage=DAMAGE)
def test_fuzzed_resume_states_are_refused_in_one_line_or_resume_the_saved_model(trial, tmp_path_factory, damage):
    area = trial.area(tmp_path_factory.mktemp("fuzz"))
    _damage(area, *damage)
    try:
        model, records = trial.restore(area)
    except GraspError as e:
        assert "\n" not in str(e) and len(str(e)) < 600, str(e)
        assert str(area) in str(e) or "resume=True" in str(e), str(e)
        return
    # accepted: the weights saved after step 2 (or no state at all: the merge starts from the beginning)
    if not os.path.lexists(area / STATE):
        assert records == []
        return
    assert [(r.kind, r.number, r.source) for r in records] == trial.expected[:2]
    saved = trial.merger._build()
    from safetensors.torch import load_model

    load_model(saved, str(trial.pristine / "merged-step2.safetensors"))
    assert _same(_weights(model), _weights(saved))


def test_the_cli_refuses_a_state_in_one_line_without_advising_resume(trial, tmp_path):
    # before: "warning: ... rerun the same command with --resume to go on from there", then the refusal
    from conftest import _run_main

    area = trial.area(tmp_path, ".merged.resume")
    (area / "merged-step2.safetensors").rename(area / "merged-step9.safetensors")
    _edit(area, steps_done=9, weights="merged-step9.safetensors",
          records=trial.saved["records"] + [dict(trial.saved["records"][-1], number=k) for k in range(3, 10)])
    code, _, err = _run_main(["merge", "--target", "digits-eras", "--sources", *map(str, trial.sources), "--output",
                              str(tmp_path / "merged"), "--resume", "--initial-epochs", "0", "--finetune-epochs", "0"])
    assert code == 2 and "Traceback" not in err, err
    [line] = [e for e in err.splitlines() if e.startswith("error: ")]
    assert "records 9 finished step(s)" in line and "--overwrite without --resume" in line
    advice = [e for e in err.splitlines() if "warning" in e and ("--resume" in e or "kept in" in e or "left in" in e)]
    assert not advice, err
    assert (area / "state.json").exists() and not (tmp_path / "merged").exists()
