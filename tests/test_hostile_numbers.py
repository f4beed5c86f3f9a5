"""Hostile numbers: a NaN or inf in a source, a loss, a gradient or the merged model is one named error, never saved.

Sources are real small checkpoints copied to ``tmp_path`` and edited with
safetensors; the CLI cases go through ``merge_fails`` (exit 2, one ``error:``
line, no output left, sources untouched).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from conftest import merge_fails
from hf_grasp.runtime.errors import NumericalError
from hf_grasp.methods.grasp import transfer_aligned

STEM = "resnet.embedder.embedder.convolution.weight"  # the first conv: read first, used by every method
HEAD = "classifier.1.weight"


def _edited(src: Path, dst: Path, name: str, value: float, count: int | None = 3) -> Path:
    """A copy of checkpoint ``src`` at ``dst`` whose tensor ``name`` has its first ``count`` entries
    (all of them with ``None``) set to ``value``."""
    shutil.copytree(src, dst)
    weights = load_file(str(dst / "model.safetensors"))
    weights[name].view(-1)[:count] = value
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.fixture
def good(checkpoints):
    return checkpoints("resnet", 2)


def test_nan_in_the_first_source(tmp_path, good):
    bad = _edited(good[0], tmp_path / "nan-first", STEM, float("nan"))
    line = merge_fails(tmp_path, [bad, good[1]])
    assert "nan-first" in line and repr(STEM) in line and "3 NaN and 0 inf" in line
    assert "re-download or re-export it" in line and "--sources" in line


@pytest.mark.parametrize("tau", [[], ["--tau", "-2"]], ids=["default-tau", "tau-minus-2"])
def test_inf_in_a_later_source_is_an_error_not_a_silent_drop(tmp_path, good, tau):
    bad = _edited(good[1], tmp_path / "inf-later", HEAD, float("inf"), count=2)
    line = merge_fails(tmp_path, [good[0], bad], *tau)
    assert "inf-later" in line and repr(HEAD) in line and "0 NaN and 2 inf" in line


def test_nan_in_a_source_read_across_sources(tmp_path, good, checkpoints):
    base = checkpoints("resnet", 1, seed0=40)[0]
    bad = _edited(good[1], tmp_path / "nan-across", STEM, float("nan"), count=1)
    line = merge_fails(tmp_path, [good[0], bad], "--method", "task-arithmetic", "--base", str(base))
    assert "nan-across" in line and repr(STEM) in line and "1 NaN and 0 inf" in line


def test_source_whose_finite_weights_overflow_on_the_target(tmp_path, good):
    # finite, so streaming lets it through even though its sum overflows (the exact check decides)
    huge = _edited(good[1], tmp_path / "huge", HEAD, 3e38, count=None)
    line = merge_fails(tmp_path, [good[0], huge])
    assert "GRASP step 1" in line and "huge" in line and "source model" in line and "loss" in line
    assert "check the source" in line


def test_diverging_fine_tune_names_round_and_epoch(tmp_path, good):
    line = merge_fails(tmp_path, good, "--initial-epochs", "1", "--lr", "1e30")
    assert "initial fine-tune" in line and good[0].name in line and "epoch 1/1" in line
    assert "training loss" in line and "--lr" in line


def test_overflowing_merge_is_not_returned(tmp_path, good, checkpoints):
    base = checkpoints("resnet", 1, seed0=40)[0]
    huge = [_edited(s, tmp_path / f"huge-{i}", STEM, 3e38, count=None) for i, s in enumerate(good)]
    line = merge_fails(tmp_path, huge, "--method", "task-arithmetic", "--base", str(base), "--scaling", "1")
    assert "merged model" in line and repr(STEM) in line and "inf" in line and "not saved" in line


def test_nonfinite_gradient_is_named_before_anything_is_transferred():
    merged, source = nn.Linear(3, 2), nn.Linear(3, 2)
    for model in (merged, source):
        for p in model.parameters():
            p.grad = torch.ones_like(p)
    source.weight.grad[0, 0] = float("nan")
    before = {n: t.clone() for n, t in merged.state_dict().items()}
    with pytest.raises(NumericalError, match=r"^step 1: the source's gradient of 'weight' has 1 NaN and 0 inf"):
        transfer_aligned(merged, source, tau=-2, granularity="row", step="step 1")
    assert all(torch.equal(t, before[n]) for n, t in merged.state_dict().items())
