"""Typed step records (hf_grasp.engine.records): what a method records, how the report, the resume state and a
continuation read it back, on real tiny merges and on a report written before schema 6."""

from __future__ import annotations

import dataclasses
import json
import types

import pytest
from torch import nn

from hf_grasp import GraspMerger
from hf_grasp.engine import records
from hf_grasp.engine.context import MergeContext
from hf_grasp.engine.records import Step, StepKind
from hf_grasp.methods import METHODS, get_method
from hf_grasp.output.checkpoint import Checkpoint
from hf_grasp.output.report import MergeReport, StepRecord
from hf_grasp.plan.plan import MergePlan
from hf_grasp.runtime.errors import GraspError

NO_TRAIN = dict(initial_epochs=0, finetune_epochs=0, target="digits-eras")
METRICS = {"accuracy": 0.5, "loss": 1.25, "n": 40}


@pytest.fixture(scope="module")
def srcs(checkpoints):
    return [str(p) for p in checkpoints("resnet", 3)]


@pytest.fixture(scope="module")
def grasp_run(srcs):
    """A real GRASP merge, and the context its method worked on."""
    seen = {}
    run = get_method("grasp").fn
    patch = pytest.MonkeyPatch()
    patch.setattr(METHODS["grasp"], "fn", lambda ctx: (seen.setdefault("ctx", ctx), run(ctx))[1])
    try:
        report = GraspMerger.from_pretrained(srcs, tau=0.0, **NO_TRAIN).merge().report
    finally:
        patch.undo()
    return report, seen["ctx"]


def _full_step() -> Step:
    return Step(StepKind.SOURCE, 3, source="org/m3", validation=METRICS, test={**METRICS, "loss": None},
                source_alone=METRICS, scores={"a.weight": 0.25, "b.weight": None},
                transferred={"a.weight": 1.0, "b.weight": 0.0}, skipped=["head.weight"],
                history=[{"epoch": 1, "val_accuracy": 0.5, "kept": True}], seconds=1.5,
                phases={"alignment": 0.25, "train": 1.0}, note="a note", details={"interpolation": {"lr": 0.1}})


# --- the record itself


def test_step_round_trips_through_json_and_says_what_it_is():
    step = _full_step()
    back = Step.from_dict(json.loads(json.dumps(step.to_dict())))
    assert back == step and back.kind is StepKind.SOURCE
    assert (step.label, step.transfer_counts, step.counts_as_sequential_step) == ("source 3", (1, 2), True)
    compose = Step(StepKind.COMPOSE, details={"composition": {"src2": 0.4}, "lr": 0.01})
    assert compose.label == "compose + merge" and compose.transfer_counts is None
    assert not compose.counts_as_sequential_step and Step.from_dict(compose.to_dict()) == compose
    assert Step("init").label == "init" and Step("recalibrate-bn").kind is StepKind.RECALIBRATE_BN


@pytest.mark.parametrize("change, field", [
    ({"kind": "sauce"}, "kind"),
    ({"kind": None}, "kind"),
    ({"number": "3"}, "number"),
    ({"number": None}, "number"),        # a per-source step without its position
    ({"kind": "merge"}, "number"),       # a one-shot step with one
    ({"validation": "high"}, "validation"),
    ({"test": {"accuracy": "0.5"}}, "test"),
    ({"scores": [0.1]}, "scores"),
    ({"transferred": {"a.weight": True}}, "transferred"),
    ({"skipped": "head.weight"}, "skipped"),
    ({"history": [1, 2]}, "history"),
    ({"seconds": "1 s"}, "seconds"),
    ({"phases": {"train": None}}, "phases"),
    ({"details": []}, "details"),
    ({"step": "source 3"}, "step"),      # the old label key: unknown to a Step
])
def test_a_malformed_step_is_refused_naming_the_field(change, field):
    with pytest.raises(ValueError, match=f"'{field}'"):
        Step.from_dict({**_full_step().to_dict(), **change})


def test_a_step_missing_its_kind_or_not_an_object_is_refused():
    data = _full_step().to_dict()
    del data["kind"]
    with pytest.raises(ValueError, match="'kind' is missing"):
        Step.from_dict(data)
    with pytest.raises(ValueError, match="must be an object"):
        Step.from_dict(["source", 3])


# --- continuation counts kinds


def _earlier(report: MergeReport, steps: list[StepRecord]) -> types.SimpleNamespace:
    return types.SimpleNamespace(earlier=dataclasses.replace(report, steps=steps))


def test_continuation_counts_kinds_so_a_renamed_label_cannot_break_it(grasp_run, monkeypatch):
    report, _ = grasp_run
    steps = [StepRecord(StepKind.INIT, None, "a", 0.5, 0.5), StepRecord(StepKind.SOURCE, 2, "b", 0.5, 0.5),
             StepRecord(StepKind.RECALIBRATE_BN, None, None, 0.6, 0.6)]
    ctx = _earlier(report, steps)
    assert MergeContext.first_step.fget(ctx) == 2
    # the labels reworded: the steps are the same kinds, so the continuation starts at the same step
    monkeypatch.setitem(records._LABELS, StepKind.SOURCE, "transfer from source")
    monkeypatch.setitem(records._LABELS, StepKind.INIT, "initial model")
    assert [s.label for s in steps] == ["initial model", "transfer from source 2", "recalibrate-bn"]
    assert MergeContext.first_step.fget(ctx) == 2
    # and through the JSON a continuation reads the earlier merge from
    back = MergeReport.from_dict(json.loads(json.dumps(dataclasses.replace(report, steps=steps).to_dict())))
    assert MergeContext.first_step.fget(types.SimpleNamespace(earlier=back)) == 2
    assert MergeContext.first_step.fget(types.SimpleNamespace(earlier=None)) == 0


# --- real merges


def test_a_grasp_merge_records_typed_steps_end_to_end(grasp_run, tmp_path):
    report, ctx = grasp_run
    assert [(s.kind, s.number) for s in ctx.records] == [(StepKind.INIT, None), (StepKind.SOURCE, 1),
                                                        (StepKind.SOURCE, 2)]
    assert all(type(r) is Step for r in ctx.records)
    assert [(s.kind, s.number, s.label) for s in report.steps] == [
        (StepKind.INIT, None, "init"), (StepKind.SOURCE, 1, "source 1"), (StepKind.SOURCE, 2, "source 2")]
    # each step's share of the run's phases: both sources were aligned, and no step took more than the run did
    for step in report.steps[1:]:
        assert step.phases["alignment"] > 0 and step.phases["load"] > 0
    for name, total in report.phases.items():
        assert sum(s.phases.get(name, 0.0) for s in report.steps) <= total + 0.01
    moved, total = ctx.records[1].transfer_counts
    assert total == len(report.sources[1].transferred) and 0 <= moved <= total
    saved = json.loads(report.save(tmp_path / "r.json").read_text())
    assert saved["schema"] == 7 and "extras" not in saved
    assert [(s["step"], s["kind"], s["number"]) for s in saved["steps"]] == [
        ("init", "init", None), ("source 1", "source", 1), ("source 2", "source", 2)]
    assert MergeReport.load(tmp_path / "r.json") == report
    # a method's own values have a place of their own: a stray keyword is a mistake
    with pytest.raises(TypeError):
        ctx.record(kind=StepKind.MERGE, composition={"src1": 1.0})
    assert len(ctx.records) == 3


def test_one_shot_and_sequential_ta_merges_record_their_kinds_and_details(srcs, checkpoints):
    base = str(checkpoints("resnet", 1, seed0=40)[0])
    ties = GraspMerger.from_pretrained(srcs, method="ties", base=base, density=0.3, eval_sources=False,
                                       **NO_TRAIN).merge().report
    assert [(s.kind, s.number, s.ref, s.label) for s in ties.steps] == [(StepKind.MERGE, None, None, "merge")]
    assert ties.steps[0].details == {} and ties.extras == []
    seq = GraspMerger.from_pretrained(srcs[:2], method="sequential-ta", base=base, ta_grid=[0.0, 0.5],
                                      eval_sources=False, **NO_TRAIN).merge().report
    assert [s.label for s in seq.steps] == ["init", "source 1", "source 2", "average"]
    assert [s.kind for s in seq.steps] == [StepKind.INIT, StepKind.SOURCE, StepKind.SOURCE, StepKind.AVERAGE]
    for step in seq.steps[1:3]:
        assert step.details["scaling"] in (0.0, 0.5) and set(step.details["tried"]) == {"0.0", "0.5"}
    assert seq.steps[3].details["scaling"] == [s.details["scaling"] for s in seq.steps[1:3]]
    assert [e["step"] for e in seq.extras] == ["source 1", "source 2", "average"]  # derived from the details


def test_an_infinite_tau_is_written_as_text_and_read_back_as_a_float(grasp_run, tmp_path):
    report, _ = grasp_run
    method = dataclasses.replace(report.method, params={**report.method.params, "tau": float("-inf")})
    no_align = dataclasses.replace(report, method=method)
    saved = json.loads(no_align.save(tmp_path / "r.json").read_text())
    assert saved["method"]["params"]["tau"] == "-inf" and float(saved["method"]["params"]["tau"]) == float("-inf")
    back = MergeReport.load(tmp_path / "r.json")
    assert back == no_align and back.method.number("tau") == float("-inf")
    assert report.method.number("tau") == 0.0 and report.method.number("granularity") is None
    assert report.method.number("absent") is None


# --- a report written before schema 6


def test_a_schema_5_report_loads_with_kinds_and_its_extras_as_details(grasp_run):
    report, _ = grasp_run
    old = report.to_dict()
    old["schema"] = 5
    old["steps"] = [{k: s[k] for k in ("step", "ref", "val_accuracy", "test_accuracy", "seconds")}
                    for s in old["steps"]]
    old["steps"].append({"step": "compose + merge", "ref": None, "val_accuracy": 0.7, "test_accuracy": 0.6,
                         "seconds": 2.0})
    old["extras"] = [{"step": "source 2", "interpolation": {"lr": 0.1}}, {"step": "compose + merge", "lr": 0.01}]
    old["method"]["params"]["tau"] = None  # schema 5 wrote an infinite τ as null
    back = MergeReport.from_dict(json.loads(json.dumps(old)))
    assert [(s.kind, s.number) for s in back.steps] == [(StepKind.INIT, None), (StepKind.SOURCE, 1),
                                                       (StepKind.SOURCE, 2), (StepKind.COMPOSE, None)]
    assert [s.label for s in back.steps] == ["init", "source 1", "source 2", "compose + merge"]
    assert back.steps[2].details == {"interpolation": {"lr": 0.1}} and back.steps[1].details == {}
    assert back.extras == old["extras"] and back.schema == 5
    assert [s.val_accuracy for s in back.steps[:3]] == [s.val_accuracy for s in report.steps]
    assert back.method.number("tau") is None
    old["steps"].append({"step": "sauce 2", "ref": None, "val_accuracy": None, "test_accuracy": None})
    with pytest.raises(GraspError, match="'sauce 2'"):
        MergeReport.from_dict(old)


# --- the resume state


def _config() -> MergePlan:
    return MergePlan.from_dict({"method": "grasp", "sources": ["org/a", "org/b"], "target": "digits-eras",
                                  "recipe": None, "options": {}, "params": {}})


def test_the_resume_state_keeps_typed_steps(tmp_path):
    steps = [Step(StepKind.INIT, source="org/a", validation=METRICS, test=METRICS, phases={"train": 0.5}),
             _full_step()]
    Checkpoint(tmp_path, _config()).save(nn.Linear(2, 2), steps)
    saved = json.loads((tmp_path / "state.json").read_text())
    assert [r["kind"] for r in saved["records"]] == ["init", "source"]
    restored = Checkpoint(tmp_path, _config(), resume=True).restore(nn.Linear(2, 2))
    assert restored == steps and all(type(r) is Step for r in restored)


@pytest.mark.parametrize("record, why", [
    ({"step": "init", "source": "org/a", "validation": None, "test": None}, "record 1: unknown field 'step'"),
    ({"kind": "source", "number": 1.5, "source": "org/a"}, "record 1: field 'number' must be an integer or null"),
    ("init", "record 1: a step must be an object"),
])
def test_a_resume_state_with_a_malformed_record_is_refused(tmp_path, record, why):
    Checkpoint(tmp_path, _config()).save(nn.Linear(2, 2), [Step(StepKind.INIT, source="org/a")])
    state = json.loads((tmp_path / "state.json").read_text())
    (tmp_path / "state.json").write_text(json.dumps({**state, "records": [record]}))
    with pytest.raises(GraspError) as e:
        Checkpoint(tmp_path, _config(), resume=True)
    message = str(e.value)
    assert "its resume state" in message and "is unreadable" in message and why in message
    assert "overwrite=True" in message
