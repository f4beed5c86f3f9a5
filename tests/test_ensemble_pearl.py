"""The ensemble and PEARL baselines, checked against computations done here with the plain libraries."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModelForImageClassification, ResNetForImageClassification

from hf_grasp import GraspMerger
from hf_grasp.inputs.data import load_target
from hf_grasp.methods.ensemble_model import EnsembleClassifier
from hf_grasp.inputs.recipes import resolve_target
from hf_grasp.methods import METHODS, get_method
from hf_grasp.methods.catalog import PearlParams

RANK = PearlParams().pearl_rank


def _merge(srcs, method, **opts):
    kw = dict(initial_epochs=0, finetune_epochs=0)
    return GraspMerger.from_pretrained([str(s) for s in srcs], target="digits-eras", method=method,
                                       **{**kw, **opts}).merge()


def _test_split():
    dataset, options = resolve_target("digits-eras", None, methods=METHODS)
    data = load_target(dataset, domain=options["target_domain"])
    return data.splits["test"]


def _probabilities(src, images) -> torch.Tensor:
    """Softmax of one checkpoint, loaded and preprocessed by transformers alone."""
    model = AutoModelForImageClassification.from_pretrained(src, dtype=torch.float32).eval()
    pixels = AutoImageProcessor.from_pretrained(src)(images=[im.convert("RGB") for im in images],
                                                     return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(pixel_values=pixels).logits.softmax(-1)


# --- ensemble


def test_ensemble_is_the_mean_of_the_sources_probabilities(checkpoints, tmp_path):
    srcs = checkpoints("resnet", 3)
    result = _merge(srcs, "ensemble")
    test = _test_split()
    labels = torch.tensor(test["label"])
    per_source = [_probabilities(s, test["image"]) for s in srcs]
    mean = torch.stack(per_source).mean(0)

    final = result.report.final["test"]
    assert final["n"] == len(labels)
    assert final["accuracy"] == pytest.approx((mean.argmax(-1) == labels).float().mean().item())
    assert final["loss"] == pytest.approx(-mean[torch.arange(len(labels)), labels].log().mean().item(), rel=1e-4)
    # each source alone, from the same pass
    for rec, probs in zip(result.report.sources, per_source):
        assert rec.metrics_alone["accuracy"] == pytest.approx((probs.argmax(-1) == labels).float().mean().item())
    # the step table shows the ensemble growing one source at a time
    assert [s.label for s in result.report.steps] == ["source 1", "source 2", "source 3"]
    two = torch.stack(per_source[:2]).mean(0)
    assert result.report.steps[1].test_accuracy == pytest.approx((two.argmax(-1) == labels).float().mean().item())
    # the run held one model at a time; the result serves all three
    memory = result.report.memory
    assert memory.result_param_bytes == 3 * memory.param_bytes

    # saved as a predictor: references, no weights
    out = tmp_path / "ens"
    result.save_pretrained(out)
    files = {p.name for p in out.iterdir()}
    assert {"ensemble.json", "preprocessor_config.json", "README.md", "grasp_report.json"} <= files
    assert not any(f.endswith((".safetensors", ".bin", ".pth")) for f in files) and "config.json" not in files
    spec = json.loads((out / "ensemble.json").read_text())
    # the members by reference as given (a local one is found again by it), no path the tool derived
    assert [m["ref"] for m in spec["members"]] == [str(s) for s in srcs]
    assert not any("path" in m for m in spec["members"])
    assert spec["family"] == "transformers" and spec["num_labels"] == 10
    readme = (out / "README.md").read_text()
    assert "ensemble predictor, not a merged model" in readme and "EnsembleClassifier.from_pretrained" in readme

    # reloaded with the plain libraries, it predicts the same averaged probabilities
    clf = EnsembleClassifier.from_pretrained(out)
    assert len(clf.members) == 3
    few = test.select(range(8))["image"]
    with torch.no_grad():
        got = clf(clf.preprocess(few))
    torch.testing.assert_close(got.probabilities, mean[:8], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.logits.exp(), mean[:8], atol=1e-5, rtol=1e-4)


def test_ensemble_refuses_a_source_without_a_target_head(checkpoints):
    srcs = checkpoints("resnet", 1) + checkpoints("resnet", 1, seed0=7, num_labels=4)
    with pytest.raises(Exception, match="head"):
        _merge(srcs, "ensemble", skip_mismatched_heads=True)


# --- pearl


def _truncated(delta: torch.Tensor, rank: int) -> torch.Tensor:
    m = delta.reshape(delta.shape[0], -1)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    return (u[:, :rank] * s[:rank] @ vh[:rank]).reshape(delta.shape)


def _untrained(weights: list[dict], name: str) -> torch.Tensor:
    """base + (1/K) sum of the other sources' rank-16 truncated task vectors, the base being the first source."""
    base = weights[0][name]
    return base + sum(_truncated(w[name] - base, RANK) for w in weights[1:]) / len(weights)


def test_pearl_untrained_is_the_average_of_rank16_task_vectors(checkpoints, tmp_path):
    srcs = checkpoints("resnet", 3)
    result = _merge(srcs, "pearl", eval_sources=False)
    weights = [load_file(str(s / "model.safetensors")) for s in srcs]
    model = result.model
    assert type(model) is ResNetForImageClassification
    assert list(model.state_dict()) == list(AutoModelForImageClassification.from_pretrained(srcs[0]).state_dict())
    layers = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    exact = 0
    for name, tensor in model.state_dict().items():
        if name.endswith(".weight") and name.removesuffix(".weight") in layers:
            torch.testing.assert_close(tensor, _untrained(weights, name), atol=2e-5, rtol=1e-4)
            if min(tensor.shape[0], tensor[0].numel()) <= RANK:  # nothing truncated: the plain source average
                torch.testing.assert_close(tensor, sum(w[name] for w in weights) / 3, atol=2e-5, rtol=1e-4)
                exact += 1
        else:  # biases, normalisation parameters and statistics are the base's
            assert torch.equal(tensor, weights[0][name]), name
    assert exact == 5  # stem conv, two stage-1 convs, the first shortcut, the classifier
    # a plain checkpoint of the architecture
    result.save_pretrained(tmp_path / "pearl")
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "pearl").state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded[name], tensor), name


def test_pearl_trains_adapters_and_composition(checkpoints, monkeypatch):
    srcs = checkpoints("resnet", 3)
    seen = {}
    run = get_method("pearl").fn
    monkeypatch.setattr(METHODS["pearl"], "fn", lambda ctx: (seen.setdefault("ctx", ctx), run(ctx))[1])
    result = _merge(srcs, "pearl", initial_epochs=2, eval_sources=False)
    final = seen["ctx"].records[-1]
    losses = [h["train_loss"] for h in final.history]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert set(final.details["composition"]) == {"src2", "src3"}
    assert all(abs(c - 1 / 3) > 1e-5 for c in final.details["composition"].values())  # the weights were learned

    weights = [load_file(str(s / "model.safetensors")) for s in srcs]
    state = result.model.state_dict()
    assert type(result.model) is ResNetForImageClassification and sorted(state) == sorted(weights[0])
    conv = "resnet.encoder.stages.3.layers.0.layer.0.convolution.weight"
    assert not torch.allclose(state[conv], _untrained(weights, conv), atol=1e-4)  # its adapters moved
    # the base stays frozen: only adapters and composition weights train
    for name in ("classifier.1.bias", "resnet.embedder.embedder.normalization.weight"):
        assert torch.equal(state[name], weights[0][name]), name
    assert all(p.requires_grad for p in result.model.parameters())
