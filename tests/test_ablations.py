"""GRASP's ablations through the shared code path."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from hf_grasp import GraspMerger


def _run(srcs, method, **opts):
    kw = dict(initial_epochs=0, finetune_epochs=0, eval_sources=False, lr=1e-3)
    return GraspMerger.from_pretrained([str(s) for s in srcs], target="digits-eras", method=method,
                                       **{**kw, **opts}).merge()


def test_no_align_transfers_everything(checkpoints):
    srcs = checkpoints("resnet", 3)
    result = _run(srcs, "no-align", tau=5.0)  # tau is overridden: alignment is off
    last = load_file(str(srcs[-1] / "model.safetensors"))
    for name, p in result.model.named_parameters():
        assert torch.equal(p.detach(), last[name]), name
    assert result.report.method.name == "no-align"


def test_finetune_only_spends_the_same_budget_in_one_round(checkpoints):
    srcs = checkpoints("resnet", 3)
    result = _run(srcs, "finetune-only", initial_epochs=1, finetune_epochs=1)
    first, *others = result.report.sources
    assert first.ref == str(srcs[0]) and first.role == "init"
    assert len(first.history) == 3  # 1 initial + 1 per further source
    assert all(o.metrics_after is None for o in others)  # listed as inputs, never transferred from
    assert result.report.epochs_trained == 3


def test_no_finetune_skips_stage_5_only(checkpoints):
    srcs = checkpoints("resnet", 2)
    result = _run(srcs, "no-finetune", initial_epochs=1, finetune_epochs=2)
    init, step = result.report.sources
    assert len(init.history) == 1 and step.history == []


def test_scratch_and_recalibrate_bn(checkpoints):
    srcs = checkpoints("resnet", 2)
    result = _run(srcs, "scratch", initial_epochs=1, recalibrate_bn=True, seed=3)
    steps = [s.label for s in result.report.steps]
    assert steps == ["init", "recalibrate-bn"]
    first = load_file(str(srcs[0] / "model.safetensors"))
    conv = next(n for n, p in result.model.named_parameters() if p.dim() == 4)
    assert not torch.equal(result.model.state_dict()[conv], first[conv])
