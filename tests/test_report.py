"""The report (typed, JSON), heatmap, terminal and Markdown summaries and the model card, on reports the
engine itself produced: a GRASP merge, a TIES merge and an ensemble of small real checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import time

import matplotlib.image
import pytest
from huggingface_hub import ModelCard
from rich.console import Console

from conftest import OFFLINE, last_json, run_python
from hf_grasp import GraspMerger
from hf_grasp.output.card import build_model_card
from hf_grasp.output.heatmap import plot_alignment_heatmap, shorten_tensor_names
from hf_grasp.methods.catalog import GRASP_PAPER, TIES_PAPER
from hf_grasp.output.report import MergeReport
from hf_grasp.output.summary import print_summary, shorten, summary_markdown

NO_TRAIN = dict(initial_epochs=0, finetune_epochs=0, target="digits-eras")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def srcs(checkpoints):
    return [str(p) for p in checkpoints("resnet", 3)]


@pytest.fixture(scope="module")
def grasp_report(srcs) -> MergeReport:
    return GraspMerger.from_pretrained(srcs, tau=0.0, **NO_TRAIN).merge().report


@pytest.fixture(scope="module")
def ties_report(srcs, checkpoints) -> MergeReport:
    base = str(checkpoints("resnet", 1, seed0=40)[0])
    return GraspMerger.from_pretrained(srcs, method="ties", base=base, density=0.3, eval_sources=False,
                                       **NO_TRAIN).merge().report


@pytest.fixture(scope="module")
def ensemble_report(srcs) -> MergeReport:
    return GraspMerger.from_pretrained(srcs[:2], method="ensemble", **NO_TRAIN).merge().report


def _from_hub(report: MergeReport) -> MergeReport:
    """The same report as if the sources had come from the Hub (repo id, revision, commit)."""
    refs = {s.ref: f"org/m{i}@v1" if i == 0 else f"org/m{i}" for i, s in enumerate(report.sources)}
    sources = [dataclasses.replace(s, repo_id=f"org/m{i}", revision="v1" if i == 0 else None, commit=COMMIT,
                                   ref=refs[s.ref]) for i, s in enumerate(report.sources)]
    steps = [dataclasses.replace(s, ref=refs.get(s.ref, s.ref)) for s in report.steps]
    return dataclasses.replace(report, sources=sources, steps=steps)


# --- the report itself


def test_report_records_what_the_engine_did(grasp_report, srcs):
    r = grasp_report
    assert (r.method.name, r.method.label, r.method.paper, r.method.is_grasp) == ("grasp", "GRASP", GRASP_PAPER,
                                                                                 True)
    assert r.method.params == {"tau": 0.0, "granularity": "tensor", "align_batches": 1, "buffers": "keep"}
    assert "tau" not in r.options and r.options["initial_epochs"] == 0
    assert [s.ref for s in r.sources] == srcs and [s.role for s in r.sources] == ["init", "source", "source"]
    assert [s.label for s in r.steps] == ["init", "source 1", "source 2"]
    for src in r.sources[1:]:
        assert set(src.scores) == set(src.transferred) and all(-1 <= v <= 1 for v in src.scores.values())
        assert src.fraction_transferred == sum(src.transferred.values()) / len(src.transferred)
    assert r.baselines and all(0 <= m["accuracy"] <= 1 for m in r.baselines.values())
    assert r.target.name == "digits-eras" and r.target.domain == 2 and r.target.sizes["test"] == 300


def test_json_round_trip(grasp_report, ties_report, tmp_path):
    for report in (grasp_report, ties_report):
        path = report.save(tmp_path / "out" / f"{report.method.name}.json")
        back = MergeReport.load(path)
        assert back == report
        saved = json.loads(path.read_text())
        assert saved["sources"][-1]["fraction_transferred"] == report.sources[-1].fraction_transferred
        # where this machine kept the sources stays in memory (the output check), never in the file
        assert all(s.path for s in report.sources) and not any("path" in s for s in saved["sources"])
        assert "path" not in (saved["base"] or {})
    # a report saved when the paths were written still loads
    old = grasp_report.to_dict()
    old["sources"] = [{**s, "path": f"/old/machine/{i}"} for i, s in enumerate(old["sources"])]
    assert MergeReport.from_dict(old).sources[1].path == "/old/machine/1"


def test_json_turns_non_finite_floats_into_null(grasp_report, tmp_path):
    report = dataclasses.replace(grasp_report, final={**grasp_report.final, "test": {"accuracy": 0.5,
                                                                                     "loss": float("nan")}})
    back = json.loads(report.save(tmp_path / "r.json").read_text())
    assert back["final"]["test"]["loss"] is None


# --- heatmap


def _with_scores(report: MergeReport, scores: dict) -> MergeReport:
    sources = [report.sources[0]] + [dataclasses.replace(s, scores=scores,
                                                         transferred={n: float(v > 0.3) for n, v in scores.items()})
                                     for s in report.sources[1:]]
    return dataclasses.replace(report, sources=sources)


def test_heatmap_png(grasp_report, tmp_path):
    names = list(grasp_report.sources[1].scores)
    spread = _with_scores(grasp_report, {n: math.sin(i) for i, n in enumerate(names)})  # scores span [-1, 1]
    path = plot_alignment_heatmap(spread, tmp_path / "heatmap.png")
    assert path.exists() and path.stat().st_size > 10_000
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert width > height > 100  # one wide row of tensors per source
    rgb = image[..., :3]  # both diverging ends of the colour map: strongly red and strongly blue pixels
    assert ((rgb[..., 0] > 0.6) & (rgb[..., 2] < 0.3)).any()
    assert ((rgb[..., 2] > 0.6) & (rgb[..., 0] < 0.3)).any()


def test_heatmap_scales_to_hundreds_of_tensors(grasp_report, tmp_path):
    names = [f"model.blocks.{i}.mlp.fc{j}.weight" for i in range(100) for j in range(3)]
    big = _with_scores(grasp_report, {n: (i % 21 - 10) / 10 for i, n in enumerate(names)})
    small = plot_alignment_heatmap(grasp_report, tmp_path / "small.png")
    wide = plot_alignment_heatmap(big, tmp_path / "big.png")
    assert matplotlib.image.imread(wide).shape[1] > 2 * matplotlib.image.imread(small).shape[1]


def test_heatmap_without_scored_sources_still_writes(grasp_report, tmp_path):
    one = dataclasses.replace(grasp_report, sources=grasp_report.sources[:1])
    assert plot_alignment_heatmap(one, tmp_path / "h.png").stat().st_size > 1000


def test_shortened_names_drop_common_prefix_and_stay_distinct(grasp_report):
    names = list(grasp_report.sources[1].scores)
    short = shorten_tensor_names(names)
    assert len(set(short)) == len(names) and all(len(s) <= 32 for s in short)
    assert short[0] == "resnet.embedder.embedder.conv.w"  # "classifier" differs, so "resnet." stays
    body = [n for n in names if n.startswith("resnet.encoder")]
    assert shorten_tensor_names(body)[0] == "0.L.0.l.0.conv.w"


# --- terminal and Markdown summaries


def test_print_summary_fits_80_columns_and_shows_the_run(grasp_report):
    report = _from_hub(grasp_report)
    long_ref = "/very/long/path/to/some/checkpoints/dir/resnet-s2"
    long_local = dataclasses.replace(report.sources[2], ref=long_ref, commit=None, repo_id=None)
    steps = [dataclasses.replace(s, ref=long_ref) if s.ref == "org/m2" else s for s in report.steps]
    report = dataclasses.replace(report, sources=[*report.sources[:2], long_local], steps=steps)
    console = Console(record=True, width=80)
    print_summary(report, console=console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    for needle in ("org/m0@v1", "org/m1", "…/dir/resnet-s2", "GRASP merge", "source 2", "Peak memory"):
        assert needle in text, needle
    test = report.final["test"]["accuracy"]
    assert f"{100 * test:.2f}%" in text
    step = report.steps[1]
    row = next(line for line in text.splitlines() if "org/m1" in line and "source 1" in line)
    assert f"{100 * step.val_accuracy:.2f}%" in row and f"{100 * step.test_accuracy:.2f}%" in row


def test_shorten_keeps_the_end():
    assert shorten("org/model", 24) == "org/model"
    assert shorten("/a/b/c/checkpoints/run-12/d3", 20) == "…/run-12/d3"
    assert len(shorten("x" * 50, 10)) == 10


def test_summary_markdown_keeps_every_column(grasp_report):
    report = _from_hub(grasp_report)
    md = summary_markdown(report)
    lines = md.splitlines()
    assert any(line.startswith("| Step | Source | Revision | Commit |") for line in lines)
    assert f"| source 1 | org/m1 | – | {COMMIT[:8]} |" in md
    final = report.final["test"]["accuracy"]
    assert f"| GRASP merge | {100 * report.final['validation']['accuracy']:.2f}% | {100 * final:.2f}% |" in md


# --- model cards


def _saved(card: ModelCard, tmp_path) -> ModelCard:
    card.save(tmp_path / "README.md")
    return ModelCard.load(tmp_path / "README.md")


def test_grasp_card_round_trip(grasp_report, tmp_path):
    report = _from_hub(grasp_report)
    loaded = _saved(build_model_card(report, repo_id="me/merged"), tmp_path)
    data = loaded.data.to_dict()
    assert data["base_model"] == ["org/m0", "org/m1", "org/m2"]
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "image-classification"
    assert set(data["tags"]) >= {"hf-grasp", "merge", "grasp", "model-merging"}
    result = loaded.data.eval_results[0]
    assert result.metric_type == "accuracy" and result.dataset_split == "test"
    assert result.metric_value == pytest.approx(report.final["test"]["accuracy"])
    text = loaded.text
    assert "τ = 0" in text and "| `tau` | 0.0 |" in text
    assert COMMIT in text and "`v1`" in text
    assert "2606.14900" in text and "Gradient-Aligned Sequential Parameter Transfer" in text
    assert "AutoModelForImageClassification.from_pretrained(\"me/merged\")" in text
    assert "never transferred" in text and "**eval** mode" in text and "**tensor**" in text
    assert summary_markdown(report).strip().splitlines()[2] in text  # the results tables are embedded


def test_ties_card_names_its_own_method_paper_and_parameters(ties_report, tmp_path):
    loaded = _saved(build_model_card(ties_report), tmp_path)
    text = loaded.text
    assert "TIES-Merging (Yadav et al., 2023)" in text and TIES_PAPER in text
    assert "| `density` | 0.3 |" in text and "| `scaling` | 1.0 |" in text
    assert "τ" not in text and "tau" not in text and "GRASP" not in text and "2606.14900" not in text
    assert "No training" in text and "relative to the base" in text
    assert "ties" in loaded.data.tags and "grasp" not in loaded.data.tags
    assert "| TIES merge |" not in text  # the sources were not evaluated alone in this run


def test_ensemble_card_says_it_is_k_models(ensemble_report, tmp_path):
    loaded = _saved(build_model_card(ensemble_report), tmp_path)
    text = loaded.text
    assert "Ensemble (uniform average of the sources' predicted probabilities)" in text
    assert "ensemble predictor, not a merged model" in text and "EnsembleClassifier.from_pretrained" in text
    assert "τ" not in text and "tau" not in text and "GRASP" not in text
    assert loaded.data.library_name == "hf_grasp" and "ensemble" in loaded.data.tags
    assert "| Ensemble |" in text  # each source alone beside the ensemble


def test_timm_card_without_results(grasp_report, tmp_path):
    report = dataclasses.replace(grasp_report, family="timm", final={},
                                 method=dataclasses.replace(grasp_report.method,
                                                            params={**grasp_report.method.params,
                                                                    "granularity": "row"}))
    loaded = _saved(build_model_card(report, dataset="org/data"), tmp_path)
    assert loaded.data.base_model is None and loaded.data.eval_results is None
    assert loaded.data.datasets == ["org/data"]
    assert "timm.create_model(\"local-dir:path/to/this/folder\", pretrained=True)" in loaded.text
    assert "**row**" in loaded.text


# --- memory

PEAK = """
import json, psutil
from hf_grasp.output.report import peak_rss_bytes
before = peak_rss_bytes()  # Linux carries the parent's peak over a fork: it may be above the current RSS
blob = bytearray(before - psutil.Process().memory_info().rss + 200 * 2**20)
blob[::4096] = b"x" * len(blob[::4096])  # touch every page: the RSS now passes the old peak by ~200 MiB
print(json.dumps([before, peak_rss_bytes()]))
"""


def test_peak_rss_sees_a_new_peak():
    before, after = last_json(run_python(PEAK))
    assert 10 * 2**20 < before < 24 * 2**30
    assert after - before > 150 * 2**20


# --- time


@pytest.mark.slow
def test_wall_time_covers_the_run_from_its_process_start(srcs, tmp_path):
    """The summary's wall time is the whole command's, from its process's start, imports, data and saving
    included (not the merge engine's part alone): at least the time from launching the command to its summary
    line, less what follows the stamp (the card, the printing: well under a second); at most the whole run."""
    out = tmp_path / "out"
    argv = ["merge", "--target", "digits-eras", "--sources", *srcs, "--output", str(out), "--initial-epochs", "0",
            "--finetune-epochs", "0", "--no-progress"]
    launched = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "hf_grasp.apps.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, **OFFLINE, "PYTHONUNBUFFERED": "1"})
    stdout, summary_seen = [], None
    for line in proc.stdout:  # unbuffered: each line as it is printed
        stdout.append(line)
        if line.startswith("Wall time:") and summary_seen is None:
            summary_seen = time.time()
    assert proc.wait() == 0
    ended = time.time()
    text = "".join(stdout)
    stated = float(re.search(r"^Wall time: ([\d.]+) s since the process started \(([\d.]+) s in the merge engine\)",
                             text, re.M)[1])
    report = json.loads((out / "grasp_report.json").read_text())
    assert report["wall_since"] == "the process started" and stated == pytest.approx(report["wall_seconds"], abs=0.06)
    # stamped as the report is written, after the weights and the heatmap; the card and the summary follow
    assert stated >= summary_seen - launched - 1.0
    assert stated <= ended - launched
    assert report["wall_seconds"] > 2 * report["seconds"]  # imports and data alone outweigh this small merge
