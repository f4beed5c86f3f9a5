"""Report rendering (JSON, heatmap, terminal, Markdown) and the model card, on a hand-made report."""

from __future__ import annotations

import math

import matplotlib.image
import pytest
from huggingface_hub import ModelCard
from rich.console import Console

from hf_grasp.card import build_model_card
from hf_grasp.options import MergeOptions
from hf_grasp.report import (
    peak_rss_bytes,
    plot_alignment_heatmap,
    print_summary,
    read_json,
    shorten_tensor_names,
    summary_markdown,
    write_json,
)

COMMIT_1 = "a" * 40
COMMIT_2 = "0123456789abcdef0123456789abcdef01234567"


def tensor_names() -> list[str]:
    names = ["resnet.embedder.embedder.convolution.weight", "resnet.embedder.embedder.normalization.weight",
             "resnet.embedder.embedder.normalization.bias"]
    for stage in range(2):
        for layer in range(3):
            for part in ("convolution.weight", "normalization.weight", "normalization.bias"):
                names.append(f"resnet.encoder.stages.{stage}.layers.{layer}.layer.0.{part}")
                names.append(f"resnet.encoder.stages.{stage}.layers.{layer}.layer.1.{part}")
    return names + ["classifier.1.weight", "classifier.1.bias"]


def make_report() -> dict:
    names = tensor_names()
    scores_2 = {n: math.sin(i) for i, n in enumerate(names)}
    scores_3 = {n: math.cos(i * 0.7) for i, n in enumerate(names)}
    scores_3[names[-1]] = None  # e.g. a skipped head
    tau = 0.3

    def moved(scores):
        return {n: 1.0 if (s is not None and s > tau) else 0.0 for n, s in scores.items()}

    return {
        "config": MergeOptions(tau=tau).to_dict(),
        "target": {"name": "digits-eras", "domain": "era 3", "sizes": {"train": 800, "validation": 100, "test": 100},
                   "notes": ["built from scikit-learn's digits"]},
        "family": "transformers",
        "architecture": "ResNetForImageClassification",
        "sources": [
            {"ref": "org/m1@v1", "repo_id": "org/m1", "revision": "v1", "commit": COMMIT_1, "path": "/cache/m1",
             "files": {"model.safetensors": "f" * 64}, "role": "init", "scores": {n: None for n in names},
             "transferred": {}, "fraction_transferred": None, "metrics_before": {}, "metrics_after": {},
             "seconds": 12.5},
            {"ref": "org/m2", "repo_id": "org/m2", "revision": "main", "commit": COMMIT_2, "path": "/cache/m2",
             "files": {"model.safetensors": "e" * 64}, "role": "source", "scores": scores_2,
             "transferred": moved(scores_2), "fraction_transferred": 0.4123, "metrics_before": {},
             "metrics_after": {}, "seconds": 8.0},
            {"ref": "./local-model", "repo_id": None, "revision": None, "commit": None, "path": "/abs/local-model",
             "files": {"model.safetensors": "d" * 64}, "role": "source", "scores": scores_3,
             "transferred": moved(scores_3), "fraction_transferred": 0.2567, "metrics_before": {},
             "metrics_after": {}, "seconds": 7.25},
        ],
        "steps": [
            {"step": "init", "val_accuracy": 0.81, "test_accuracy": 0.7925},
            {"step": "source 2", "val_accuracy": 0.86, "test_accuracy": 0.8433},
            {"step": "source 3", "val_accuracy": 0.9, "test_accuracy": 0.8871},
        ],
        "final": {"validation": {"accuracy": 0.9, "loss": 0.31}, "test": {"accuracy": 0.8871, "loss": 0.35}},
        "baselines": {"org/m1@v1": {"test": {"accuracy": 0.6012}}, "org/m2": {"test": {"accuracy": 0.5544}}},
        "timings": {"total_seconds": 95.2},
        "memory": {"peak_rss_bytes": 3 * 2**30, "param_bytes": 2**30},
    }


def test_json_round_trip(tmp_path):
    report = make_report()
    path = write_json(report, tmp_path / "out" / "report.json")
    assert read_json(path) == report


def test_json_turns_non_finite_floats_into_null(tmp_path):
    report = make_report()
    report["final"]["test"]["loss"] = float("nan")
    back = read_json(write_json(report, tmp_path / "r.json"))
    assert back["final"]["test"]["loss"] is None


def test_heatmap_png(tmp_path):
    report = make_report()
    path = plot_alignment_heatmap(report, tmp_path / "heatmap.png")
    assert path.exists() and path.stat().st_size > 10_000
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert width > height > 100  # one wide row of tensors per source
    # both diverging ends of the colour map are used (scores span [-1, 1]): strongly red and strongly blue pixels
    rgb = image[..., :3]
    assert ((rgb[..., 0] > 0.6) & (rgb[..., 2] < 0.3)).any()
    assert ((rgb[..., 2] > 0.6) & (rgb[..., 0] < 0.3)).any()


def test_heatmap_scales_to_hundreds_of_tensors(tmp_path):
    report = make_report()
    names = [f"model.blocks.{i}.mlp.fc{j}.weight" for i in range(100) for j in range(3)]
    for src in report["sources"][1:]:
        src["scores"] = {n: (i % 21 - 10) / 10 for i, n in enumerate(names)}
        src["transferred"] = {n: float(s > 0.3) for n, s in src["scores"].items()}
    small = plot_alignment_heatmap(make_report(), tmp_path / "small.png")
    big = plot_alignment_heatmap(report, tmp_path / "big.png")
    assert matplotlib.image.imread(big).shape[1] > 2 * matplotlib.image.imread(small).shape[1]


def test_heatmap_without_sources_still_writes(tmp_path):
    report = make_report()
    report["sources"] = report["sources"][:1]
    assert plot_alignment_heatmap(report, tmp_path / "h.png").stat().st_size > 1000


def test_shortened_names_drop_common_prefix_and_stay_distinct():
    names = tensor_names()
    short = shorten_tensor_names(names)
    assert len(set(short)) == len(names)
    assert all(len(s) <= 32 for s in short)
    assert short[0] == "resnet.embedder.embedder.conv.w"  # "classifier" differs, so "resnet." stays
    body = [n for n in names if n.startswith("resnet.encoder")]
    assert shorten_tensor_names(body)[0] == "0.L.0.l.0.conv.w"


def test_print_summary_shows_sources_and_accuracies():
    console = Console(record=True, width=200)
    print_summary(make_report(), console=console)
    text = console.export_text()
    for needle in ("org/m1@v1", "org/m2", "./local-model", "aaaaaaaa", "01234567", "local",
                   "41.23%", "79.25%", "84.33%", "88.71%", "90.00%", "60.12%", "55.44%", "3.00 GiB", "3.0×"):
        assert needle in text, needle
    # the step row carries its source's accuracies
    row = next(line for line in text.splitlines() if "org/m2" in line and "source 2" in line)
    assert "86.00%" in row and "84.33%" in row


def test_summary_markdown_tables():
    md = summary_markdown(make_report())
    lines = md.splitlines()
    assert any(line.startswith("| Step | Source |") for line in lines)
    assert "| source 3 | ./local-model | – | local |" in md
    assert "| GRASP merge | 90.00% | 88.71% |" in md
    assert "| org/m2 | – | 55.44% |" in md
    assert "88.71%" in md and "0.3500" in md


def test_model_card_round_trip(tmp_path):
    report = make_report()
    card = build_model_card(
        report,
        base_models=["org/m1@v1", "hf-hub:org/m2", "./local-model", "/abs/local-model"],
        library_name="transformers",
        dataset=None,
        repo_id="me/merged",
    )
    path = tmp_path / "README.md"
    card.save(path)
    loaded = ModelCard.load(path)
    data = loaded.data.to_dict()
    assert data["base_model"] == ["org/m1", "org/m2"]
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "image-classification"
    assert set(data["tags"]) >= {"hf-grasp", "merge", "grasp", "model-merging"}
    result = loaded.data.eval_results[0]
    assert result.metric_type == "accuracy" and result.metric_value == pytest.approx(0.8871)
    assert result.dataset_split == "test"
    text = loaded.text
    assert "τ = 0.3" in text
    assert COMMIT_2 in text and "`v1`" in text
    assert "2606.14900" in text and "Gradient-Aligned Sequential Parameter Transfer" in text
    assert "AutoModelForImageClassification.from_pretrained(\"me/merged\")" in text
    assert "never transferred" in text and "**eval** mode" in text and "**tensor**" in text
    assert summary_markdown(report).strip().splitlines()[2] in text  # the results tables are embedded


def test_model_card_timm_without_results(tmp_path):
    report = make_report()
    report["final"] = {}
    report["config"]["granularity"] = "row"
    card = build_model_card(report, base_models=["./local-model"], library_name="timm", dataset="org/data")
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.base_model is None
    assert loaded.data.eval_results is None
    assert loaded.data.datasets == ["org/data"]
    assert "timm.create_model(\"local-dir:path/to/this/model\", pretrained=True)" in loaded.text
    assert "**row**" in loaded.text


def test_peak_rss_is_plausible():
    peak = peak_rss_bytes()
    assert 10 * 2**20 < peak < 24 * 2**30
    before = peak
    blob = bytearray(200 * 2**20)  # touch 200 MiB
    blob[:: 4096] = b"x" * len(blob[:: 4096])
    assert peak_rss_bytes() >= before
    del blob
