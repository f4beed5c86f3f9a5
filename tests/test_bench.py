"""`hf-grasp bench --recipe digits-eras --quick`, smaller still: the whole pipeline, real runs."""

from __future__ import annotations

import csv

from conftest import run_cli


def test_bench_quick_smaller(tmp_path):
    out = tmp_path / "bench"
    proc = run_cli("bench", "--recipe", "digits-eras", "--quick", "--output", str(out),
                   "--methods", "grasp", "finetune-only", "ensemble", "task-arithmetic", "no-align",
                   "--taus", "0.9", "--orders", "2", "--max-sources", "2", "--memory-k", "2",
                   "--source-epochs", "1", env={"HF_HUB_OFFLINE": "1"}, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "results.csv")))
    methods = {(r["method"], r["recalibrate_bn"]) for r in rows}
    # parameter-space methods run with and without BN recalibration; the ensemble only without
    assert ("grasp", "True") in methods and ("task-arithmetic", "True") in methods
    assert ("ensemble", "False") in methods and ("ensemble", "True") not in methods
    assert {r["tau"] for r in rows if r["method"] == "grasp"} >= {"0.3", "0.9"}
    assert len([r for r in rows if r["method"] == "grasp" and r["order"] != "given"]) == 1
    for r in rows:
        assert 0.0 <= float(r["test_accuracy"]) <= 1.0
    # training methods all spend the same epochs; data-free ones none
    epochs = {r["method"]: int(r["epochs"]) for r in rows if r["recalibrate_bn"] == "False"}
    assert epochs["grasp"] == epochs["finetune-only"] == epochs["no-align"] == 2 and epochs["ensemble"] == 0
    table = (out / "table.md").read_text()
    assert "paired Δ vs finetune-only" in table and "| finetune-only | 2 |" in table
    claims = (out / "claims.md").read_text()
    for claim in ("GRASP vs Ensemble", "τ robustness", "order spread", "memory"):
        assert claim in claims
    assert "multi-source-naive" in (out / "memory.json").read_text()
    assert "by target domain" in table and "| grasp | " in table.split("by target domain")[1]
    assert "paired" in claims and "GRASP ahead in" in claims
    for png in ("accuracy_by_method.png", "accuracy_vs_tau.png", "accuracy_by_domain.png", "memory_vs_k.png"):
        assert (out / png).stat().st_size > 5000


def test_bench_workers_share_sources_and_resume(tmp_path):
    out = tmp_path / "bench"
    small = ["--quick", "--methods", "ensemble", "task-arithmetic", "--taus", "0.3", "--orders", "1", "--no-memory",
             "--source-epochs", "1", "--seeds", "1", "--output", str(out)]
    proc = run_cli("bench", *small, "--domains", "1", "2", "--workers", "2", env={"HF_HUB_OFFLINE": "1"},
                   timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = list(csv.DictReader(open(out / "results.csv")))
    assert {r["domain"] for r in first} == {"1", "2"}
    # one set of sources per seed, with a source for every domain; each target uses the others
    assert sorted(p.name for p in (out / "sources").iterdir()) == ["resnet-seed0"]
    assert sorted(p.name for p in (out / "sources" / "resnet-seed0").iterdir()) == (
        ["base"] + [f"d{d}" for d in range(6)])

    # the same output again without --resume: refused, nothing touched
    proc = run_cli("bench", *small, "--domains", "1", "2", "3", env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "--resume" in proc.stderr and "results.csv" in proc.stderr
    assert list(csv.DictReader(open(out / "results.csv"))) == first
    # other settings: refused, naming the setting
    proc = run_cli("bench", *small[:-2], "--output", str(out), "--max-sources", "2", "--resume",
                   env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "max_sources" in proc.stderr

    # --resume keeps the finished pairs as they were and adds only domain 3
    proc = run_cli("bench", *small, "--domains", "1", "2", "3", "--resume", env={"HF_HUB_OFFLINE": "1"},
                   timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert rows[: len(first)] == first
    assert {r["domain"] for r in rows[len(first):]} == {"3"}
    assert "target domains [1, 2, 3]" in (out / "table.md").read_text()
