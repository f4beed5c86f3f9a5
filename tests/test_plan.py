"""The merge plan: every rule combining the options with a method's abilities, refused in one place, and
``grasp_config.json`` as the plan saved (±inf kept, the previous version's files still read)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from conftest import run_python
from hf_grasp.methods import METHODS, register_method
from hf_grasp.plan.options import Layer
from hf_grasp.plan.plan import MergePlan
from hf_grasp.runtime.errors import GraspError


def _plan(method: str = "grasp", sources=("a", "b"), **options) -> MergePlan:
    return MergePlan.build(METHODS[method], [Layer(options)], methods=METHODS, sources=list(sources))


@pytest.fixture
def mine():
    """A method registered from outside hf_grasp, declaring no capability flag."""
    register_method("mine", description="pulls")(lambda ctx: None)
    yield METHODS["mine"]
    METHODS.pop("mine")


# --------------------------------------------------------------------------- the rules, refused by the plan


def test_init_first_needs_two_sources():
    with pytest.raises(GraspError, match="^GRASP with init=first needs at least 2 sources$"):
        _plan(sources=["a"])
    assert _plan(sources=["a"], init="random").merge_options.init == "random"


def test_evict_sources_refused_for_a_method_reading_every_source_at_once():
    with pytest.raises(GraspError, match="^evict_sources=True: method 'ties' reads one tensor of every source"):
        _plan("ties", base="b0", evict_sources=True)
    assert _plan("multi-source", evict_sources=True).merge_options.evict_sources


def test_a_method_on_task_vectors_needs_base():
    with pytest.raises(GraspError, match="^method 'opcm' works on task vectors: pass base"):
        _plan("opcm")
    assert _plan("opcm", base="b0").merge_options.base == "b0"


def test_launch_rules_take_the_process_count():
    with pytest.raises(GraspError, match="^method 'pearl' cannot run on 2 processes yet"):
        _plan("pearl").check_launch(2)
    _plan("pearl").check_launch(1)
    _plan(align_mode="train-merged").check_launch(2)  # BatchNorm in train mode normalises over the global batch
    with pytest.raises(GraspError, match="^batch_size 3: each batch is split between the 2 processes, so it must "
                                         "be a multiple of 2$"):
        _plan(batch_size=3).check_launch(2)
    _plan(batch_size=3).check_launch(1)
    _plan(batch_size=4).check_launch(2)


def test_resume_checkpoint_and_recalibration_follow_the_method():
    with pytest.raises(GraspError, match="^resume=True: method 'multi-source' does not checkpoint its steps; only "
                                         "grasp, learned-interpolation, no-align, no-finetune can be resumed$"):
        _plan("multi-source").check_resume()
    _plan().check_resume()
    assert _plan().keeps_checkpoint and not _plan("multi-source").keeps_checkpoint
    assert _plan("scratch", recalibrate_bn=True).recalibrates_bn
    assert not _plan("ensemble", recalibrate_bn=True).recalibrates_bn  # not one model of merged parameters
    assert not _plan("scratch").recalibrates_bn


def test_only_a_sequential_method_continues_a_sequential_merge():
    grasp, soup = METHODS["grasp"], METHODS["multi-source"]
    assert MergePlan.can_continue(grasp) and MergePlan.can_continue(grasp, METHODS["no-align"])
    assert not MergePlan.can_continue(grasp, soup) and not MergePlan.can_continue(soup)
    assert not MergePlan.can_continue(soup, grasp)


def test_a_plan_read_from_a_file_does_not_judge_a_run():
    loaded = MergePlan.from_dict(_plan().to_dict())
    with pytest.raises(GraspError, match="read from a file"):
        loaded.check_launch(1)


def test_builtins_declare_multi_process_and_a_registered_method_defaults_to_safe(mine):
    single = {"pearl", "greedy-soup", "sequential-ta", "learned-interpolation", "best-source", "distill", "soup-wise"}
    assert {n for n, m in METHODS.items() if not m.multi_process} == single | {"mine"}
    assert not mine.sequential and not mine.multi_process
    with pytest.raises(GraspError, match="^method 'mine' cannot run on 2 processes yet"):
        _plan("mine").check_launch(2)
    with pytest.raises(GraspError, match="^resume=True: method 'mine' does not checkpoint"):
        _plan("mine").check_resume()


def test_register_method_takes_every_capability_flag():
    register_method("mine-too", sequential=True, multi_process=True, needs_base=True, reads_across_sources=True,
                    parameter_space=False, extra="peft")(lambda ctx: None)
    try:
        info = METHODS["mine-too"]
        assert (info.sequential, info.multi_process, info.needs_base, info.reads_across_sources,
                info.parameter_space, info.extra) == (True, True, True, True, False, "peft")
    finally:
        METHODS.pop("mine-too")


# --------------------------------------------------------------------------- end to end, through GraspMerger


def test_from_pretrained_refuses_a_registered_method_on_two_processes(checkpoints, monkeypatch, mine):
    from hf_grasp import merger
    from hf_grasp import GraspMerger

    monkeypatch.setattr(merger, "process_state", lambda cpu=None: SimpleNamespace(num_processes=2))
    monkeypatch.setattr(merger, "announce_processes", lambda state: None)
    srcs = [str(s) for s in checkpoints("resnet", 2)]
    with pytest.raises(GraspError, match="^method 'mine' cannot run on 2 processes yet"):
        GraspMerger.from_pretrained(srcs, target="digits-eras", method="mine")


def test_from_pretrained_refuses_through_the_plan_before_any_work(checkpoints):
    from hf_grasp import GraspMerger

    [src] = [str(s) for s in checkpoints("resnet", 1)]
    with pytest.raises(GraspError, match="^GRASP with init=first needs at least 2 sources$"):
        GraspMerger.from_pretrained([src], target="digits-eras")
    with pytest.raises(GraspError, match="^method 'ties' works on task vectors"):
        GraspMerger.from_pretrained([src, src], target="digits-eras", method="ties")


# --------------------------------------------------------------------------- grasp_config.json


def test_infinite_tau_survives_a_save_and_a_reload(tmp_path):
    plan = _plan(tau=-math.inf)
    path = plan.save(tmp_path / "grasp_config.json")
    assert json.loads(path.read_text())["params"]["tau"] == "-inf"  # strict JSON: no -Infinity, never null
    loaded = MergePlan.load(path)
    assert loaded.params["tau"] == -math.inf and loaded.differences(plan) == []
    # rebuilt from the file (what --from and --resume do), the merge runs with the same τ
    rebuilt = MergePlan.build(METHODS["grasp"], [Layer(loaded.options | loaded.params, lenient=True)],
                              methods=METHODS, sources=loaded.sources)
    assert rebuilt.method_params.tau == -math.inf
    assert MergePlan.from_dict(_plan(tau=math.inf).to_dict()).params["tau"] == math.inf


def test_a_text_option_named_inf_stays_text():
    plan = MergePlan.from_dict({**_plan().to_dict(), "options": {"target_domain": "inf", "init": "inf"}})
    assert plan.options["target_domain"] == "inf" and plan.options["init"] == "inf"


def test_a_config_of_the_previous_version_loads(tmp_path):
    # as MergeConfig wrote it (0.1.0): every key, options without schedule_per, the sources pinned
    old = {"method": "grasp", "sources": ["org/a@" + "1" * 40, "./b"], "target": "digits-eras", "recipe": None,
           "options": {"lr": 0.001, "init": "first", "order": "given", "seed": 3, "base": None},
           "params": {"tau": 0.3, "granularity": "row", "align_batches": 1, "buffers": "keep"},
           "version": "0.1.0", "schema": 1, "continues": None}
    path = tmp_path / "grasp_config.json"
    path.write_text(json.dumps(old, indent=2))
    plan = MergePlan.load(path)
    assert (plan.method, plan.sources, plan.target, plan.version, plan.continues) == (
        "grasp", old["sources"], "digits-eras", "0.1.0", None)
    assert plan.options == {"schedule_per": "step", **old["options"]}  # the behaviour it ran with
    assert plan.arguments()["granularity"] == "row" and plan.arguments()["sources"] == old["sources"]
    assert "order" not in plan.inherited() and plan.inherited()["seed"] == 3
    assert plan.to_dict() == {**old, "options": plan.options}
    assert plan.differences(MergePlan.from_dict({**old, "params": {**old["params"], "tau": 0.5}})) == [
        "option tau is 0.3 now, 0.5 before"]


def test_the_plan_stage_imports_neither_torch_nor_the_methods():
    proc = run_python("import sys, hf_grasp.plan.plan, hf_grasp.plan.options\n"
                      "print(sorted(m for m in ('torch', 'hf_grasp.methods', 'hf_grasp.output', 'hf_grasp.inputs') "
                      "if m in sys.modules))")
    assert proc.stdout.strip() == "[]"
