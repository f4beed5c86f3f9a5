"""Bad input: one clear line naming the culprit, a non-zero exit, no output left behind."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import merge_fails as _merge_fails

def _resized_resnet(src, dst, hidden_last):
    """A ResNet checkpoint like ``src`` but with a wider last stage."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification, ResNetConfig

    cfg = ResNetConfig.from_pretrained(src)
    cfg.hidden_sizes = cfg.hidden_sizes[:-1] + [hidden_last]
    AutoModelForImageClassification.from_config(cfg).save_pretrained(dst)
    AutoImageProcessor.from_pretrained(src).save_pretrained(dst)
    return dst


def test_architecture_mismatch_names_source_tensor_and_shapes(tmp_path, checkpoints):
    good = checkpoints("resnet", 1)[0]
    bad = _resized_resnet(good, tmp_path / "wide", 96)
    line = _merge_fails(tmp_path, [good, bad])
    assert "wide" in line and "expected shape" in line and "found" in line
    assert "96" in line  # the found shape


def test_missing_source(tmp_path, checkpoints):
    good = checkpoints("resnet", 1)[0]
    line = _merge_fails(tmp_path, [good, "no-such-org/no-such-model"])
    assert "no-such-org/no-such-model" in line


def test_pickle_only_source_is_refused(tmp_path, checkpoints):
    good = checkpoints("resnet", 1)[0]
    pick = tmp_path / "pickled"
    pick.mkdir()
    for f in good.iterdir():
        if f.suffix == ".json":
            shutil.copy(f, pick / f.name)
    torch.save(load_file(str(good / "model.safetensors")), pick / "pytorch_model.bin")
    line = _merge_fails(tmp_path, [good, pick])
    assert "pickled" in line and "--allow-pickle" in line


def test_missing_dataset_column(tmp_path, checkpoints):
    srcs = checkpoints("resnet", 2)
    line = _merge_fails(tmp_path, srcs, "--label-column", "no_such_column")
    assert "no_such_column" in line


def test_empty_target_split(tmp_path, checkpoints):
    srcs = checkpoints("resnet", 2)
    line = _merge_fails(tmp_path, srcs, "--target-domain", "99")
    assert "99" in line


def test_head_mismatch_errors_or_is_skipped(tmp_path, checkpoints):
    from hf_grasp import GraspMerger
    from hf_grasp.runtime.errors import ShapeMismatchError

    good = checkpoints("resnet", 1)[0]
    five = checkpoints("resnet", 1, seed0=50, num_labels=5)[0]
    kw = dict(target="digits-eras", initial_epochs=0, finetune_epochs=0, eval_sources=False, tau=-1.5)
    with pytest.raises(ShapeMismatchError, match="skip_mismatched_heads=True"):
        GraspMerger.from_pretrained([str(good), str(five)], **kw).merge()
    result = GraspMerger.from_pretrained([str(good), str(five)], skip_mismatched_heads=True, **kw).merge()
    rec = result.report.sources[1]
    assert rec.skipped, "the head tensors are reported as skipped"
    first, other = load_file(str(good / "model.safetensors")), load_file(str(five / "model.safetensors"))
    state = result.model.state_dict()
    for name in rec.skipped:
        assert torch.equal(state[name], first[name])  # the target's head stays
        assert rec.scores[name] is None
    body = next(n for n in state if n not in rec.skipped and n.endswith("weight") and state[n].dim() == 4)
    assert torch.equal(state[body], other[body])  # tau < -1: everything else came from the 5-class source
    json.dumps(result.report.to_dict())
