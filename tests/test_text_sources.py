"""`hf-grasp make-sources tweet-eras` and `hf-grasp demo --text`: the text benchmark's tokenizer, base and sources
made, saved as Hub repos hold them, published by repo id, and merged by the demo."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import OFFLINE, run_cli
from huggingface_hub import snapshot_download
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from hf_grasp.apps.bench import tweet_eras
from hf_grasp.apps.bench.demo import run_demo
from hf_grasp.apps.bench.make_sources import make_sources
from hf_grasp.runtime.errors import GraspError

SOURCES = ("d0", "d1", "d3", "d4", "d5")  # the recipe's target era, 2, has none


def _readme(folder):
    text = (folder / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    return meta, float(re.search(r"Validation accuracy on its own data: ([0-9]+\.[0-9]+)", text)[1])


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The CLI in a fresh process with its own HF_HOME: sources under demo/sources-bert (where the demo looks),
    published into that HF cache as made/tweet-eras-bert-*."""
    root = tmp_path_factory.mktemp("text-demo")
    # three epochs instead of the recipe's six: the test wants sources that learned, not the benchmark's figures
    proc = run_cli("make-sources", "tweet-eras", "--source-epochs", "3", "--output", str(root / "sources-bert"),
                   "--org", "made", env={**OFFLINE, "HF_HOME": str(root / "hf")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root


def test_made_sources_share_a_tokenizer_learned_their_eras_and_resolve_by_repo_id(made):
    folder = made / "sources-bert"
    assert sorted(p.name for p in folder.iterdir()) == sorted(("base",) + SOURCES)
    vocab = AutoTokenizer.from_pretrained(folder / "base").get_vocab()
    assert len(vocab) == tweet_eras.RECIPE["vocab_size"]
    accuracies = {}
    for tag in ("base",) + SOURCES:
        model = AutoModelForSequenceClassification.from_pretrained(folder / tag)
        assert model.config.id2label == {0: "negative", 1: "positive"}
        assert AutoTokenizer.from_pretrained(folder / tag).get_vocab() == vocab
        meta, accuracies[tag] = _readme(folder / tag)
        assert meta["license"] == "other" and meta["license_name"] and meta["license_link"]
        assert meta["library_name"] == "transformers" and "tweet-eras" in meta["tags"]
    # the base is an untrained init (chance on two classes); the sources learned their eras (six epochs: 0.69-0.86)
    assert accuracies.pop("base") == pytest.approx(0.5, abs=0.06)
    assert sum(accuracies.values()) / len(accuracies) >= 0.62 and max(accuracies.values()) >= 0.7, accuracies
    # published by repo id into the process's HF cache, the same files
    local = snapshot_download("made/tweet-eras-bert-d3", cache_dir=made / "hf" / "hub", local_files_only=True)
    assert (folder / "d3" / "model.safetensors").read_bytes() == (
        Path(local) / "model.safetensors").read_bytes()


@pytest.mark.parametrize("flags, culprit", [({"arch": "resnet"}, "arch='resnet'"),
                                            ({"image_size": 32}, "image_size=32"),
                                            ({"pretrain_epochs": 2}, "pretrain_epochs=2")])
def test_image_only_settings_are_refused_for_the_text_benchmark(tmp_path, flags, culprit):
    with pytest.raises(GraspError, match=re.escape(culprit)):
        make_sources(tmp_path / "out", benchmark="tweet-eras", **flags)
    assert not (tmp_path / "out").exists()


def test_make_sources_command_names_a_wrong_arch_in_one_line(tmp_path):
    proc = run_cli("make-sources", "tweet-eras", "--arch", "mobilevit", "--output", str(tmp_path / "out"),
                   env=OFFLINE, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --arch mobilevit: tweet-eras has one architecture, bert (its tiny BERT)"]
    assert not (tmp_path / "out").exists()


def test_demo_text_merges_the_made_sources_into_a_pipeline_model(made):
    # the demo reuses the sources it finds (made above, as `hf-grasp demo --text` makes them); one epoch per round
    result = run_demo(made, benchmark="tweet-eras", initial_epochs=1, finetune_epochs=1, eval_sources=False)
    report = result.report
    # the recommended method saved, beside GRASP, the best source (BERT has no BatchNorm: judged on validation
    # alone) and the ensemble, on the same texts; one table, one plot
    assert [r.name.split(" ")[0].rstrip(":") for r in result.comparison.rows] == [
        "grasp", report.method.name, "best-source", "ensemble"]
    assert [r.main for r in result.comparison.rows] == [False, True, False, False]
    assert result.table.read_text().count("\n| ") == 6 and result.plot.is_file()
    assert report.target.modality == "text" and report.target.domain == tweet_eras.RECIPE["target_domain"]
    assert [s.ref.split("/")[-1] for s in report.sources] == [f"d{d}" for d in tweet_eras.RECIPE["source_domains"]]
    assert report.final["test"]["accuracy"] > 0.6
    clf = pipeline("text-classification", model=str(made / "merged-bert"))
    assert clf("what a great flight, thank you")[0]["label"] in ("negative", "positive")
