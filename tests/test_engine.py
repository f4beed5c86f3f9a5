"""The GRASP loop on real small models and the digits-eras target, epochs set to 0."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from hf_grasp import GraspMerger
from hf_grasp.runtime.errors import GraspError

NO_TRAIN = dict(initial_epochs=0, finetune_epochs=0, eval_sources=False)


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def _merge(srcs, **opts):
    merger = GraspMerger.from_pretrained([str(s) for s in srcs], target="digits-eras", **{**NO_TRAIN, **opts})
    return merger.merge()


@pytest.mark.parametrize("arch", ["resnet", "mobilevit", "efficientnet", "timm:resnet10t"])
def test_tau_above_one_keeps_first_source(checkpoints, arch):
    srcs = checkpoints(arch, 3)
    result = _merge(srcs, tau=1.5)
    first = _weights(srcs[0])
    state = result.model.state_dict()
    assert set(state) == set(first)
    for name, t in first.items():
        assert torch.equal(state[name], t), name
    for rec in result.report.sources[1:]:
        assert rec.fraction_transferred == 0.0


def test_tau_below_minus_one_takes_last_source(checkpoints):
    srcs = checkpoints("resnet", 3)
    result = _merge(srcs, tau=-1.5)
    last, first = _weights(srcs[-1]), _weights(srcs[0])
    params = dict(result.model.named_parameters())
    for name, p in params.items():
        assert torch.equal(p.detach(), last[name]), name
    # buffers are not parameters: default policy keeps the first source's statistics
    for name, b in result.model.named_buffers():
        assert torch.equal(b, first[name]), name
    assert result.report.sources[-1].fraction_transferred == 1.0


def test_buffers_follow_option(checkpoints):
    srcs = checkpoints("resnet", 2)
    result = _merge(srcs, tau=-1.5, buffers="follow")
    last = _weights(srcs[-1])
    for name, t in result.model.state_dict().items():
        assert torch.equal(t, last[name]), name


@pytest.mark.parametrize("granularity", ["tensor", "row", "element"])
def test_each_tensor_comes_from_where_the_report_says(checkpoints, granularity):
    srcs = checkpoints("resnet", 3)
    result = _merge(srcs, tau=0.0, granularity=granularity)
    weights = [_weights(s) for s in srcs]
    rep = result.report.sources
    assert [r.role for r in rep] == ["init", "source", "source"]
    mixed = 0
    for name, p in result.model.named_parameters():
        p = p.detach()
        if granularity == "tensor":
            # walk the steps: the last source that transferred this tensor is where it came from
            origin = 0
            for k in (1, 2):
                if rep[k].transferred[name] == 1.0:
                    origin = k
                assert rep[k].transferred[name] in (0.0, 1.0)
                assert (rep[k].transferred[name] == 1.0) == (rep[k].scores[name] > 0.0)
            assert torch.equal(p, weights[origin][name]), name
        else:
            # every entry equals the same entry of one of the sources
            match = torch.zeros_like(p, dtype=torch.bool)
            for w in weights:
                match |= p == w[name]
            assert bool(match.all()), name
            mixed += int(0 < rep[2].transferred[name] < 1)
    if granularity != "tensor":
        assert mixed > 0, "finer granularity should split some tensors"


def test_scores_are_real_cosines(checkpoints):
    srcs = checkpoints("resnet", 2)
    result = _merge(srcs, tau=0.3)
    scores = result.report.sources[1].scores
    assert len(scores) == len(list(result.model.parameters()))
    assert all(-1.0 <= s <= 1.0 for s in scores.values())
    assert len({round(s, 6) for s in scores.values()}) > 5


def test_source_order_and_random_init(checkpoints):
    srcs = checkpoints("resnet", 3)
    result = _merge(srcs, tau=1.5, order="2,0,1")
    assert result.report.sources[0].ref == str(srcs[2])
    for name, t in _weights(srcs[2]).items():
        assert torch.equal(result.model.state_dict()[name], t)
    # init=random: the loop starts at the first source and nothing is transferred at tau > 1
    rnd = _merge(srcs, tau=1.5, init="random", seed=7)
    assert [r.role for r in rnd.report.sources] == ["source"] * 3
    for name, p in rnd.model.named_parameters():
        if p.dim() >= 2:  # norm layers start at constant 1 / 0 in every init
            assert all(not torch.equal(p.detach(), _weights(s)[name]) for s in srcs), name
    with pytest.raises(GraspError, match="permutation"):
        _merge(srcs, order="0,0,1")


def test_fine_tuning_changes_the_model_and_is_reported(checkpoints):
    srcs = checkpoints("resnet", 2)
    result = _merge(srcs, tau=0.3, initial_epochs=1, finetune_epochs=1, lr=1e-3, eval_sources=True)
    rep = result.report
    assert [s.label for s in rep.steps] == ["init", "source 1"]
    assert rep.sources[0].metrics_alone["accuracy"] >= 0
    assert len(rep.sources[1].history) == 1
    first = _weights(srcs[0])
    name = next(iter(dict(result.model.named_parameters())))
    assert not torch.equal(dict(result.model.named_parameters())[name].detach(), first[name])
    assert 0 <= rep.final["test"]["accuracy"] <= 1
    # where the time went: every phase that ran is timed, none twice (they never nest)
    assert {"load", "alignment", "transfer", "train", "validation", "test", "eval_sources"} <= set(rep.phases)
    assert sum(rep.phases.values()) <= rep.seconds
    # the validation figures after a round are the kept epoch's, not a second evaluation
    assert rep.steps[1].val_accuracy == rep.sources[1].history[0]["val_accuracy"]


def test_one_source_is_refused_even_with_a_base(checkpoints):
    (src,) = checkpoints("resnet", 1)
    base = checkpoints("resnet", 1, seed0=40)[0]
    for extra in ({}, {"base": str(base)}):
        with pytest.raises(GraspError, match="at least 2 sources"):
            GraspMerger.from_pretrained([str(src)], target="digits-eras", **NO_TRAIN, **extra)


def test_without_step_evaluation_only_the_final_model_is_evaluated(checkpoints, tmp_path):
    from hf_grasp.output.summary import _DASH, summary_markdown

    srcs = checkpoints("resnet", 3)
    each = _merge(srcs, tau=0.0)
    final = _merge(srcs, tau=0.0, eval_steps=False)
    for name, t in each.model.state_dict().items():
        assert torch.equal(final.model.state_dict()[name], t), name
    assert final.report.final == each.report.final and final.report.test_accuracy() is not None
    assert [s.test_accuracy is None for s in final.report.steps] == [True, True, False]
    assert [s.val_accuracy is None for s in final.report.steps] == [True, True, False]
    assert all(s.test_accuracy is not None and s.val_accuracy is not None for s in each.report.steps)
    assert _DASH in summary_markdown(final.report)  # a step not evaluated shows a dash
    final.save_pretrained(tmp_path / "merged")  # and its model card is written
    assert "README.md" in {p.name for p in (tmp_path / "merged").iterdir()}
