"""``hf-grasp bench``: the summary on synthetic rows, the runner's control flow with fake runs, one real run.

Tables, claims, plots and the CSV are pure functions of result rows, and the
runner's bookkeeping (which runs a pair makes, resume, refusals, memory rows)
does not need a model: both are checked here in seconds. One tiny real bench
(``slow``) covers what only real runs show: worker processes sharing one set of
sources, real epoch budgets and BN recalibration, resume and refusals through
the command's exit status. The memory runs' children are faked here (a real one
merges for tens of seconds); their script is compiled and its imports resolved.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
from dataclasses import asdict, replace

import pytest

from hf_grasp.apps.bench import runner
from hf_grasp.apps.bench.runner import BenchConfig, _check_resumable, bench
from hf_grasp.apps.bench.results import RunResult, claims, plot, read_csv, summarise, write_csv
from hf_grasp.apps.cli import main
from hf_grasp.runtime.errors import GraspError

PAIRS = [(1, 0), (1, 1), (2, 0), (2, 1)]  # (target domain, seed)
ENSEMBLE = [0.70, 0.95, 0.72, 0.75]  # GRASP is ahead in 3 of the 4 pairs
MEMORY = [{"k": 2, "method": "grasp", "peak_rss_bytes": 100 * 2**20},
          {"k": 2, "method": "multi-source-naive", "peak_rss_bytes": 250 * 2**20},
          {"k": 4, "method": "grasp", "peak_rss_bytes": 110 * 2**20},
          {"k": 4, "method": "multi-source-naive", "peak_rss_bytes": 500 * 2**20}]
PNGS = ("accuracy_by_method.png", "accuracy_vs_tau.png", "accuracy_by_domain.png", "memory_vs_k.png")


def synthetic_rows() -> list[RunResult]:
    """Every kind of row a bench writes, with accuracies whose summary is worked out by hand below.

    finetune-only scores 0.80, 0.82, 0.84, 0.86 over the pairs; GRASP (τ = 0.3) 10 points more.
    """
    rows = []
    for i, (d, s) in enumerate(PAIRS):
        ft = 0.80 + 0.02 * i

        def run(method, acc, *, tau=None, order="given", bn=False, epochs=2):
            return RunResult(d, s, method, tau, order, bn, acc, acc - 0.01, epochs, 30.0)

        rows += [run("finetune-only", ft), run("grasp", ft + 0.10, tau=0.3), run("grasp", ft + 0.11, tau=0.3, bn=True),
                 run("no-align", ft + 0.05), run("ensemble", ENSEMBLE[i], epochs=0),
                 run("task-arithmetic", 0.50, epochs=0), run("task-arithmetic", 0.60, bn=True, epochs=0),
                 run("grasp", ft + 0.09, tau=0.9), run("grasp", 0.50, tau=0.1),
                 run("grasp", ft + 0.08, tau=0.3, order="1,0")]
    return rows


@pytest.fixture(scope="module")
def summary():
    return summarise(synthetic_rows(), MEMORY)


# --------------------------------------------------------------------------- summary: pure functions of rows


def test_table_mean_std_and_paired_delta_vs_finetune_only(summary):
    table, _ = summary
    lines = table.split("\n\n")[0].splitlines()
    assert lines[0] == ("| method | fine-tune epochs | test accuracy % (mean ± std) | "
                       "paired Δ vs finetune-only (points) | n |")
    # best first; only given-order rows, GRASP at τ = 0.3; each label ± BN recalibration on its own row
    assert lines[2:] == [
        "| grasp +bn | 2 | 94.0 ± 2.6 | +11.0 ± 0.0 | 4 |",
        "| grasp | 2 | 93.0 ± 2.6 | +10.0 ± 0.0 | 4 |",
        "| no-align | 2 | 88.0 ± 2.6 | +5.0 ± 0.0 | 4 |",
        "| finetune-only | 2 | 83.0 ± 2.6 | +0.0 ± 0.0 | 4 |",
        "| ensemble | 0 | 78.0 ± 11.5 | -5.0 ± 12.0 | 4 |",
        "| task-arithmetic +bn | 0 | 60.0 ± 0.0 | -23.0 ± 2.6 | 4 |",
        "| task-arithmetic | 0 | 50.0 ± 0.0 | -33.0 ± 2.6 | 4 |",
    ]


def test_paired_delta_is_a_dash_without_finetune_only():
    table, _ = summarise([r for r in synthetic_rows() if r.method != "finetune-only"], [])
    assert "| grasp | 2 | 93.0 ± 2.6 | – | 4 |" in table


def test_tau_memory_and_by_domain_tables(summary):
    table, figures = summary
    # the τ sweep: given order, no BN recalibration
    assert ("| τ | GRASP test accuracy % |\n|---|---|\n"
            "| 0.1 | 50.0 ± 0.0 |\n| 0.3 | 93.0 ± 2.6 |\n| 0.9 | 92.0 ± 2.6 |") in table
    assert ("| K | method | peak RSS (MiB) |\n|---|---|---|\n"
            "| 2 | grasp | 100 |\n| 2 | multi-source-naive | 250 |\n| 4 | grasp | 110 |") in table
    by_domain = table.split("by target domain")[1]
    assert "| method | d1 | d2 |" in by_domain
    assert "| grasp | 91.0 | 95.0 |" in by_domain and "| finetune-only | 81.0 | 85.0 |" in by_domain
    assert sorted(figures["_by_domain"]["grasp"]) == [1, 2]
    assert figures["_order_spread"] == pytest.approx([0.02] * 4)


def test_memory_table_absent_without_memory_rows():
    table, _ = summarise(synthetic_rows(), [])
    assert "peak RSS" not in table


def test_claims_beside_the_measured_figures(summary):
    _, figures = summary
    text = claims(figures, MEMORY)
    measured = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[2].rstrip(" |") for line in text.splitlines()[2:]}
    assert measured["GRASP vs Ensemble"] == ("GRASP 93.0% vs 78.0% (paired +15.0 ± 12.0 points; "
                                             "GRASP ahead in 3 of 4 (domain, seed) pairs)")
    assert measured["GRASP vs Multi-Source"] == measured["GRASP vs PEARL"] == "not run"
    assert measured["τ robustness"] == "τ 0.3–0.9: 92.0%–93.0% (range 1.0 points)"
    assert measured["order spread"] == "max − min over orders: 2.0 ± 0.0 points"
    assert measured["ablation: no alignment"] == "+5.0 points for GRASP (paired +5.0 ± 0.0)"
    assert measured["ablation: no fine-tuning"] == "not run"
    assert measured["memory"] == "K=2: 100 vs 250 MiB (2.50x); K=4: 110 vs 500 MiB (4.55x)"
    assert "| GRASP vs Ensemble | 93.5% vs 71.7% mean accuracy (+21.8 points) |" in text  # the paper's column


def test_claims_not_run_where_nothing_measured():
    _, figures = summarise([r for r in synthetic_rows() if r.method == "finetune-only"], [])
    lines = claims(figures, MEMORY[:1]).splitlines()[2:]  # memory: GRASP alone is no comparison
    assert len(lines) == 8 and all(line.endswith("| not run |") for line in lines)


def test_plots_written(summary, tmp_path):
    _, figures = summary
    plot(synthetic_rows(), MEMORY, figures, tmp_path)
    for png in PNGS:
        assert (tmp_path / png).stat().st_size > 5000, png


def test_plots_without_data_are_skipped(tmp_path):
    rows = [r for r in synthetic_rows() if r.method == "finetune-only"]
    _, figures = summarise(rows, [])
    plot(rows, [], figures, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy_by_domain.png", "accuracy_by_method.png"]


def test_csv_round_trip(tmp_path):
    rows = synthetic_rows()
    path = tmp_path / "out" / "results.csv"
    write_csv(rows, path)
    assert read_csv(path) == rows
    assert [p.name for p in path.parent.iterdir()] == ["results.csv"]  # no temporary file left behind


def test_read_csv_refuses_other_files(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("domain,seed\n1,x\n")
    with pytest.raises(GraspError, match=rf"{path}: not a results.csv written by hf-grasp bench"):
        read_csv(path)


def test_summary_and_package_import_no_torch():
    code = ("import sys, hf_grasp.apps.bench, hf_grasp.apps.bench.results\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- resume refusal on hand-written files


@pytest.fixture
def earlier_bench(tmp_path):
    """An output directory as an earlier ``--quick`` bench of domains 1 and 2 left it."""
    cfg = BenchConfig.quick(domains=[1, 2], seeds=[0, 1])
    (tmp_path / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    write_csv(synthetic_rows(), tmp_path / "results.csv")
    return cfg, tmp_path


def test_resume_nothing_to_keep_in_a_fresh_output(tmp_path):
    assert _check_resumable(BenchConfig.quick(), tmp_path, resume=False) == []


def test_rerun_without_resume_refused(earlier_bench):
    cfg, out = earlier_bench
    with pytest.raises(GraspError, match=r"results.csv exists: pass resume=True"):
        _check_resumable(cfg, out, resume=False)


def test_resume_keeps_rows_when_only_domains_seeds_and_memory_change(earlier_bench):
    cfg, out = earlier_bench
    grown = replace(cfg, domains=[1, 2, 3], seeds=[0, 1, 2], memory_k=(8,), memory_arch="resnet18")
    assert _check_resumable(grown, out, resume=True) == synthetic_rows()


@pytest.mark.parametrize("change, named", [({"max_sources": 2}, "(max_sources)"),
                                           ({"taus": (0.5,), "n_orders": 3}, "(n_orders, taus)"),
                                           ({"options": {}}, "(options)")])
def test_resume_with_other_settings_refused_naming_them(earlier_bench, change, named):
    cfg, out = earlier_bench
    with pytest.raises(GraspError, match=r"resume=True: .*config.json was written with other settings "
                                          + re.escape(named)):
        _check_resumable(replace(cfg, **change), out, resume=True)


def test_resume_without_config_json_refused(earlier_bench):
    cfg, out = earlier_bench
    (out / "config.json").unlink()
    with pytest.raises(GraspError, match=r"has results.csv but no bench config.json"):
        _check_resumable(cfg, out, resume=True)


# --------------------------------------------------------------------------- the runner with fake runs


@pytest.fixture
def fake_runs(monkeypatch):
    """Replace the real merges and source making; returns the list of runs asked for."""
    calls = []

    def fake_sources(cfg, output, seed):
        return output / "sources" / f"seed{seed}"

    def fake_run(refs, domain, seed, method, cfg, *, base, tau=None, order="given", recal=False, variant=""):
        calls.append({"refs": refs, "domain": domain, "method": method, "tau": tau, "order": order, "recal": recal,
                      "variant": variant})
        acc = 0.5 + 0.1 * (method == "grasp") + 0.01 * domain
        return RunResult(domain, seed, method, tau if method == "grasp" else None, order, recal, acc, acc,
                         0 if method == "ensemble" else 2, 0.01, variant)

    monkeypatch.setattr(runner, "_sources", fake_sources)
    monkeypatch.setattr(runner, "_run", fake_run)
    return calls


def quick(**overrides) -> BenchConfig:
    """A small ``--quick`` config for the fake runs: 4 methods, τ 0.9 besides 0.3, 2 orders, K = 2, 2 domains."""
    small = dict(methods=["grasp", "finetune-only", "ensemble", "task-arithmetic"], taus=(0.9,), n_orders=2,
                 max_sources=2, memory_k=(), domains=[1, 2])
    return BenchConfig.quick(**{**small, **overrides})


def test_pair_runs_methods_bn_tau_sweep_and_orders(fake_runs, tmp_path):
    out = tmp_path / "bench"
    bench(quick(), out)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {r["domain"] for r in rows} == {"1", "2"}
    methods = {(r["method"], r["recalibrate_bn"]) for r in rows}
    # parameter-space methods run with and without BN recalibration; the ensemble only without
    assert ("grasp", "True") in methods and ("task-arithmetic", "True") in methods
    assert ("ensemble", "False") in methods and ("ensemble", "True") not in methods
    assert {r["tau"] for r in rows if r["method"] == "grasp"} == {"0.3", "0.9"}
    # the variants of the methods that run: grasp keep-start once per pair, without BN recalibration
    assert {(r["method"], r["variant"], r["recalibrate_bn"]) for r in rows if r["variant"]} == {
        ("grasp", "keep-start", "False")}
    assert {r["tau"] for r in rows if r["method"] != "grasp"} == {""}
    for domain in ("1", "2"):
        assert len([r for r in rows if r["domain"] == domain and r["method"] == "grasp" and r["order"] != "given"]) == 1
    # K = 2 sources, never the target domain's
    for call in fake_runs:
        assert len(call["refs"]) == 2 and not any(ref.endswith(f"d{call['domain']}") for ref in call["refs"])
    table = (out / "table.md").read_text()
    assert table.startswith("hf-grasp bench --recipe digits-eras: arch resnet, target domains [1, 2], seeds [0], K = 2")
    assert "paired Δ vs finetune-only" in table and "| finetune-only | 2 |" in table
    assert "GRASP vs Ensemble" in (out / "claims.md").read_text()
    assert json.loads((out / "config.json").read_text())["max_sources"] == 2
    for png in PNGS[:3]:
        assert (out / png).stat().st_size > 5000


def test_default_sweep_and_orders_without_grasp_still_run_grasp(fake_runs, tmp_path):
    bench(quick(methods=["ensemble"], taus=(0.3,), n_orders=1, domains=[2]), tmp_path)
    runs = [(c["method"], c["tau"], c["recal"]) for c in fake_runs]
    assert runs == [("ensemble", None, False), ("grasp", 0.3, False)]


def test_resume_adds_only_new_pairs_and_refusals(fake_runs, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "run_memory", lambda cfg: MEMORY)
    bench(quick(memory_k=(2, 4)), tmp_path)
    first = (tmp_path / "results.csv").read_text()
    n_first = len(fake_runs)

    with pytest.raises(GraspError, match=r"results.csv exists: pass resume=True"):
        bench(quick(domains=[1, 2, 3]), tmp_path)
    with pytest.raises(GraspError, match=r"other settings \(max_sources\)"):
        bench(quick(domains=[1, 2, 3], max_sources=3), tmp_path, resume=True)
    assert (tmp_path / "results.csv").read_text() == first and len(fake_runs) == n_first

    bench(quick(domains=[1, 2, 3]), tmp_path, resume=True)
    assert {c["domain"] for c in fake_runs[n_first:]} == {3}
    assert (tmp_path / "results.csv").read_text().startswith(first)
    assert "target domains [1, 2, 3]" in (tmp_path / "table.md").read_text()
    # a resumed bench without memory runs keeps the earlier memory figures
    assert json.loads((tmp_path / "memory.json").read_text()) == MEMORY
    assert [h["pairs_run"] for h in json.loads((tmp_path / "history.json").read_text())] == [2, 1]


def test_resume_adds_methods_to_finished_pairs_only_under_the_same_merge_defaults(fake_runs, tmp_path, monkeypatch):
    bench(quick(domains=[1]), tmp_path)
    before = len(fake_runs)
    bench(quick(domains=[1], methods=["grasp", "finetune-only", "ensemble", "task-arithmetic", "multi-source"]),
          tmp_path, resume=True)
    added = fake_runs[before:]
    assert {(c["method"], c["recal"], c["variant"]) for c in added} == {
        ("multi-source", False, ""), ("multi-source", True, ""), ("multi-source", False, "keep-start")}
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == len(fake_runs)
    # rows made under other merge defaults (here: a changed default) get no new runs beside them
    config = json.loads((tmp_path / "config.json").read_text())
    config["merge_defaults"]["schedule_per"] = "step"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(GraspError, match=r"other merge defaults \(schedule_per 'step' -> 'epoch'\)"):
        bench(quick(domains=[1], methods=["grasp", "scratch"]), tmp_path, resume=True)
    bench(quick(domains=[1]), tmp_path, resume=True)  # nothing to run: re-drawing the tables is fine
    assert len(fake_runs) == len(added) + before
    # an option added since is no change: its default is the behaviour before it
    config["merge_defaults"]["schedule_per"] = "epoch"
    del config["merge_defaults"]["eval_steps"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    bench(quick(domains=[1], methods=["grasp", "scratch"]), tmp_path, resume=True)
    assert {c["method"] for c in fake_runs[len(added) + before:]} == {"scratch"}


def test_bench_refuses_other_recipes_and_unknown_methods(fake_runs, tmp_path):
    with pytest.raises(GraspError, match=r"bench recipe='yearbook': only digits-eras"):
        bench(quick(recipe="yearbook"), tmp_path / "a")
    with pytest.raises(GraspError, match=r"unknown method\(s\) nope; registered: "):
        bench(quick(methods=["grasp", "nope"]), tmp_path / "b")
    assert fake_runs == []


def test_memory_runs_both_methods_per_k_in_fresh_interpreters(monkeypatch):
    made, children = [], []

    def fake_subprocess_run(argv, **kw):
        children.append(json.loads(argv[-1]))
        return subprocess.CompletedProcess(argv, 0, stdout=f"noise\n{len(children)}\n", stderr="")

    monkeypatch.setattr("hf_grasp.apps.bench.archs.new_checkpoint", lambda arch, d, **kw: made.append((arch, d.name)))
    monkeypatch.setattr(runner.subprocess, "run", fake_subprocess_run)
    rows = runner.run_memory(BenchConfig(memory_k=(2, 4), memory_arch="resnet"))
    assert made == [("resnet", f"s{i}") for i in range(5)]  # K = 4 sources and a base
    assert [(c["method"], len(c["sources"])) for c in children] == [
        (m, k) for k in (2, 4) for m in runner.MEMORY_METHODS]
    # the methods on task vectors get the extra checkpoint as their base, the others no options
    assert all(c["options"] == ({"base": c["options"].get("base")} if c["method"] == "sequential-ta" else {})
               for c in children)
    assert {c["options"]["base"].rsplit("/", 1)[-1] for c in children if c["method"] == "sequential-ta"} == {"s4"}
    assert rows[-1] == {"k": 4, "method": runner.MEMORY_METHODS[-1], "peak_rss_bytes": 2 * len(runner.MEMORY_METHODS)}

    monkeypatch.setattr(runner.subprocess, "run", lambda argv, **kw: subprocess.CompletedProcess(
        argv, 1, stdout="", stderr="Traceback ...\nValueError: boom\n"))
    with pytest.raises(GraspError, match=r"memory run grasp K=2 failed: ValueError: boom"):
        runner.run_memory(BenchConfig(memory_k=(2,)))


def test_memory_child_script_compiles_and_its_imports_resolve():
    compile(runner.MEMORY_CHILD, "<memory child>", "exec")
    imports = [line for line in runner.MEMORY_CHILD.splitlines() if line.startswith(("import ", "from "))]
    exec("\n".join(imports), {})


def test_flags_make_the_config(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(runner, "bench", lambda cfg, output, **kw: seen.update(cfg=cfg, output=output, **kw))
    parser = argparse.ArgumentParser()
    runner.add_arguments(parser)
    runner.run_from_args(parser.parse_args([
        "--quick", "--methods", "grasp", "ensemble", "--taus", "0.3", "--orders", "1", "--no-memory",
        "--source-epochs", "1", "--seeds", "2", "--domains", "1", "3", "--max-sources", "2",
        "--output", str(tmp_path), "--resume", "--workers", "2"]))
    assert seen["cfg"] == BenchConfig.quick(methods=["grasp", "ensemble"], taus=(0.3,), n_orders=1, memory_k=(),
                                            pretrain_epochs=1, source_epochs=1, seeds=[0, 1], domains=[1, 3],
                                            max_sources=2)
    assert (seen["output"], seen["resume"], seen["workers"]) == (tmp_path, True, 2)
    runner.run_from_args(parser.parse_args(["--memory-k", "2", "4"]))
    assert seen["cfg"] == BenchConfig(memory_k=(2, 4)) and (seen["resume"], seen["workers"]) == (False, 1)


# --------------------------------------------------------------------------- one real bench


@pytest.mark.slow
def test_real_bench_workers_share_sources_and_resume(tmp_path, monkeypatch, capsys):
    # hf-grasp's own main() in this process (the modules are loaded already); workers are spawned processes
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "bench"
    small = ["bench", "--quick", "--methods", "grasp", "finetune-only", "no-align", "ensemble", "task-arithmetic",
             "--taus", "0.3", "--orders", "1", "--source-epochs", "1", "--seeds", "1", "--no-memory",
             "--output", str(out)]
    assert main([*small, "--max-sources", "2", "--domains", "1", "2", "--workers", "2"]) == 0
    first = list(csv.DictReader(open(out / "results.csv")))
    assert {r["domain"] for r in first} == {"1", "2"}
    # one set of sources per seed, with a source for every domain; each target uses the others
    assert sorted(p.name for p in (out / "sources").iterdir()) == ["resnet-seed0"]
    assert sorted(p.name for p in (out / "sources" / "resnet-seed0").iterdir()) == (
        ["base"] + [f"d{d}" for d in range(6)])
    assert list((out / "logs").glob("worker-*.log"))  # the pairs ran in worker processes
    methods = {(r["method"], r["recalibrate_bn"]) for r in first}
    # parameter-space methods run with and without BN recalibration; the ensemble only without
    assert ("grasp", "True") in methods and ("task-arithmetic", "True") in methods
    assert ("ensemble", "False") in methods and ("ensemble", "True") not in methods
    for r in first:
        assert 0.0 <= float(r["test_accuracy"]) <= 1.0
    # training methods all spend the same epochs (K = 2: one initial round and one more); data-free ones none
    epochs = {(r["method"], int(r["epochs"])) for r in first if r["recalibrate_bn"] == "False"}
    assert epochs == {("grasp", 2), ("finetune-only", 2), ("no-align", 2), ("ensemble", 0), ("task-arithmetic", 0)}
    assert "| finetune-only | 2 |" in (out / "table.md").read_text()
    capsys.readouterr()

    # the same output again without --resume: refused with exit status 2, nothing touched
    assert main([*small, "--max-sources", "2", "--domains", "1", "2", "3"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "results.csv" in err
    assert list(csv.DictReader(open(out / "results.csv"))) == first
    # other settings: refused, naming the setting
    assert main([*small, "--max-sources", "3", "--resume"]) == 2
    assert "max_sources" in capsys.readouterr().err

    # --resume keeps the finished pairs as they were and adds only domain 3
    assert main([*small, "--max-sources", "2", "--domains", "1", "2", "3", "--resume"]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert rows[: len(first)] == first
    assert {r["domain"] for r in rows[len(first):]} == {"3"}
    assert "target domains [1, 2, 3]" in (out / "table.md").read_text()


def test_stopping_the_workers_loop_stops_running_and_queued_jobs(tmp_path):
    # A SIGTERM or Ctrl-C reaches the bench as an exception at its loop over finished pairs. Leaving the pool
    # used to wait for the running pairs and then run every queued one: the bench answered a SIGTERM only at
    # its end. Jobs here sleep 300 s; stopping after the first quick one must not wait for them.
    import multiprocessing
    import time

    finishing = runner._each(time.sleep, [(0.01,), (300,), (300,), (300,)], 2, tmp_path)
    assert next(finishing) == ((0.01,), None)
    start = time.monotonic()
    finishing.close()  # what an exception in the caller's loop does to the generator
    for _ in range(100):
        if not multiprocessing.active_children():
            break
        time.sleep(0.1)
    assert not multiprocessing.active_children()
    assert time.monotonic() - start < 60  # a hang check: the jobs it must not wait for take 300 s


def test_variants_flag_chooses_the_option_sets_a_pair_runs(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(runner, "bench", lambda cfg, output, **kw: seen.update(cfg=cfg))
    parser = argparse.ArgumentParser()
    runner.add_arguments(parser)
    for flags, variants in ((["--variants", "keep-start"], ("keep-start",)), (["--variants"], ()), ([], None)):
        runner.run_from_args(parser.parse_args(["--methods", "grasp", "distill", *flags]))
        assert seen["cfg"].variants == variants
        runs = runner.pair_runs(replace(seen["cfg"], taus=(0.3,), n_orders=1), 0, 5)
        ran = {(r["method"], r.get("variant", "")) for r in runs if r.get("variant")}
        every = {(m, v) for m, v in runner.VARIANT_RUNS if m in ("grasp", "distill")}
        assert ran == (every if variants is None else {(m, v) for m, v in every if v in variants})
    with pytest.raises(SystemExit):
        parser.parse_args(["--variants", "sideways"])
