"""The bench summary's per-domain oracle, the new methods against the ensemble and the oracle, memory K8/K2.

Synthetic rows small enough to work out by hand (2 target domains × 2 seeds), and one summary of the real
10-seed digits-eras bench kept in ``benchmarks/results``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from hf_grasp.apps.bench.results import NEW_METHODS, ORACLE, RunResult, claims, plot, read_csv, summarise

REAL = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "bench-digits-eras-10seeds"
PAIRS = [(0, 0), (0, 1), (1, 0), (1, 1)]  # (target domain, seed)
# test accuracy per pair, in PAIRS' order: grasp is best of the existing methods on d0, the ensemble on d1,
# greedy-soup (new) is best everywhere and must never be the oracle's pick
ACC = {
    ("finetune-only", False): [0.80, 0.82, 0.70, 0.72],
    ("ensemble", False): [0.70, 0.74, 0.90, 0.86],
    ("grasp", False): [0.85, 0.83, 0.75, 0.77],
    ("greedy-soup", False): [0.99, 0.99, 0.99, 0.99],
    ("greedy-soup", True): [0.98, 0.98, 0.98, 0.98],
}
MEMORY = [{"k": 2, "method": "grasp", "peak_rss_bytes": 100 * 2**20},
          {"k": 2, "method": "multi-source-naive", "peak_rss_bytes": 250 * 2**20},
          {"k": 2, "method": "greedy-soup", "peak_rss_bytes": 200 * 2**20},
          {"k": 8, "method": "grasp", "peak_rss_bytes": 130 * 2**20},
          {"k": 8, "method": "greedy-soup", "peak_rss_bytes": 700 * 2**20},
          {"k": 8, "method": "sequential-ta", "peak_rss_bytes": 300 * 2**20}]  # no K=2: no ratio


def rows(acc: dict = ACC) -> list[RunResult]:
    out = []
    for (method, bn), accs in acc.items():
        for (d, s), a in zip(PAIRS, accs):
            tau = 0.3 if method == "grasp" else None
            out.append(RunResult(d, s, method, tau, "given", bn, a, a, 0 if method == "ensemble" else 2, 1.0))
    return out


def table_rows(text: str) -> dict[str, list[str]]:
    """A Markdown table's rows by their first cell."""
    return {cells[0]: cells[1:] for line in text.splitlines() if line.startswith("| ") and "---" not in line
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}


def against_rows(text: str) -> dict[str, list[str]]:
    section = text.split("## Against the ensemble and the per-domain oracle")[1].split("## ")[0]
    return table_rows(section)


@pytest.fixture(scope="module")
def summary():
    return summarise(rows(), MEMORY)


def test_oracle_picks_best_existing_label_per_domain_on_test(summary):
    table, figures = summary
    assert figures["_oracle_picks"] == {0: "grasp", 1: "ensemble"}
    # its (domain, seed) values are the picked label's on that domain, never greedy-soup's although it is best
    assert figures["_pairs"][ORACLE] == {(0, 0): 0.85, (0, 1): 0.83, (1, 0): 0.90, (1, 1): 0.86}
    assert sorted(figures[ORACLE]) == sorted([0.85, 0.83, 0.90, 0.86])
    assert figures["_by_domain"][ORACLE] == {0: [0.85, 0.83], 1: [0.90, 0.86]}
    main = table.split("\n\n")[0].splitlines()
    # sorted by mean with the others: below the new method, above grasp
    assert [line.split(" | ")[0].lstrip("| ") for line in main[2:]] == [
        "greedy-soup", "greedy-soup +bn", ORACLE, "ensemble", "grasp", "finetune-only"]
    assert f"| {ORACLE} | – | 86.0 ± 2.9 | +10.0 ± 8.6 | 4 |" in main
    by_domain = table.split("by target domain")[1]
    assert f"| {ORACLE} | 84.0 | 88.0 |" in by_domain
    assert "\noracle picks: d0 grasp, d1 ensemble" in by_domain
    # GRASP minus the oracle, pair by pair: equal on d0 (the oracle is GRASP there)
    assert figures["_paired_vs_grasp"][ORACLE] == pytest.approx([0.0, 0.0, -0.15, -0.09])


def test_new_methods_are_never_candidates():
    # with only new methods (and their +bn) beside one existing label there is nothing to choose among
    only_new = {k: v for k, v in ACC.items() if k[0] in NEW_METHODS or k[0] == "grasp"}
    table, figures = summarise(rows(only_new), [])
    assert ORACLE not in figures and figures["_oracle_picks"] == {} and "oracle picks" not in table


def test_one_label_best_everywhere_gives_no_oracle_row_but_claims_still_compare_with_it():
    acc = {**ACC, ("grasp", False): [0.95, 0.95, 0.95, 0.95]}  # grasp best existing label on both domains
    table, figures = summarise(rows(acc), [])
    assert ORACLE not in figures and ORACLE not in table.split("oracle picks")[0]
    assert figures["_oracle_picks"] == {0: "grasp", 1: "grasp"}
    cells = against_rows(claims(figures, []))["grasp"]
    assert cells[3:] == ["+0.0 ± 0.0", "0/4/0", "2/2: d0, d1"]  # the oracle is GRASP on every pair


def test_claims_against_ensemble_and_oracle(summary):
    _, figures = summary
    text = claims(figures, MEMORY)
    assert text.splitlines()[0] == "| claim | paper | measured here |"  # the paper's table still first
    assert "Best by mean without the oracle: greedy-soup." in text
    got = against_rows(text)
    assert list(got) == ["label", "greedy-soup", "greedy-soup +bn", "grasp"]  # best by mean is greedy-soup
    # greedy-soup − ensemble: .29 .25 .09 .13; − oracle: .14 .16 .09 .13
    assert got["greedy-soup"] == ["99.0", "+19.0 ± 9.5", "4/0/0", "+13.0 ± 2.9", "4/0/0", "2/2: d0, d1"]
    # grasp − ensemble: .15 .09 −.15 −.09; − oracle: 0 0 −.15 −.09 (the oracle is GRASP on d0)
    assert got["grasp"] == ["80.0", "+0.0 ± 14.3", "2/0/2", "-6.0 ± 7.3", "0/2/2", "1/2: d0"]


def test_claims_against_without_ensemble_says_not_run():
    table, figures = summarise([r for r in rows() if r.method != "ensemble"], [])
    assert figures["_oracle_picks"] == {0: "grasp", 1: "grasp"}
    cells = against_rows(claims(figures, []))["greedy-soup"]
    # the oracle is GRASP everywhere now: .99 − (.85 .83 .75 .77)
    assert cells[1:3] == ["not run", "not run"] and cells[3:5] == ["+19.0 ± 4.8", "4/0/0"]


def test_claims_without_new_methods_keep_only_the_paper_table():
    _, figures = summarise([r for r in rows() if r.method not in NEW_METHODS], [])
    text = claims(figures, [])
    assert "## " not in text and len(text.splitlines()) == 2 + 8


def test_memory_k8_over_k2_per_method(summary):
    table, figures = summary
    text = claims(figures, MEMORY)
    section = text.split("## Peak RSS K8/K2 per method")[1]
    assert table_rows(section) == {"method": ["K=2 (MiB)", "K=8 (MiB)", "K8/K2"],
                                   "grasp": ["100", "130", "1.300"], "greedy-soup": ["200", "700", "3.500"]}
    # the paper-claims memory line still compares GRASP with naive multi-source where both ran
    assert "| K=2: 100 vs 250 MiB (2.50x) |" in text
    assert "| 8 | greedy-soup | 700 |" in table


def test_plots_with_new_methods_and_oracle(summary, tmp_path):
    _, figures = summary
    plot(rows(), MEMORY, figures, tmp_path)
    for png in ("accuracy_by_method.png", "accuracy_by_domain.png", "memory_vs_k.png"):
        assert (tmp_path / png).stat().st_size > 5000, png


def test_real_10_seed_bench(tmp_path):
    results = read_csv(REAL / "results.csv")
    memory = json.loads((REAL / "memory.json").read_text())
    table, figures = summarise(results, memory)
    text = claims(figures, memory)
    plot(results, memory, figures, tmp_path)
    assert f"| {ORACLE} | – |" in table
    assert "oracle picks: d0 no-align +bn, d1 ensemble, d2 ensemble, d3 ensemble" in table
    oracle = statistics.mean(figures[ORACLE])
    # the best per domain, each domain with the same number of seeds: at least every label's overall mean
    for label in (k for k in figures if not k.startswith("_") and k != ORACLE):
        assert oracle >= statistics.mean(figures[label]) - 1e-12, label
    assert "| grasp | 1218 | 1235 | 1.014 |" in text and "| multi-source-naive | 1212 | 1439 | 1.188 |" in text
    for png in ("accuracy_by_method.png", "accuracy_vs_tau.png", "accuracy_by_domain.png", "memory_vs_k.png"):
        assert (tmp_path / png).stat().st_size > 5000, png


def test_a_variant_is_its_own_row_never_the_oracle_nor_in_the_tau_sweep_or_order_spread():
    from dataclasses import replace

    base = rows()
    # grasp with --keep-start, far better than anything on d0 and different from grasp everywhere
    variant = [replace(r, variant="keep-start", test_accuracy=0.97) for r in base if r.method == "grasp"]
    table, figures = summarise(base + variant, [])
    main = table_rows(table.split("| τ |")[0])
    assert main["grasp keep-start"][1].startswith("97.0")
    assert figures["_oracle_picks"] == {0: "grasp", 1: "ensemble"}
    assert figures["_tau"] == {0.3: [r.test_accuracy for r in base if r.method == "grasp"]}
    assert figures["_order_spread"] == []  # one grasp run per pair at its defaults: no spread to measure
    assert "grasp keep-start" in against_rows(claims(figures, []))


def test_every_row_is_paired_against_the_best_best_source_row_which_is_an_oracle_candidate():
    acc = {**ACC, ("best-source", False): [0.90, 0.80, 0.95, 0.70], ("best-source", True): [0.80, 0.80, 0.80, 0.80]}
    _, figures = summarise(rows(acc), [])
    assert figures["_oracle_picks"] == {0: "best-source", 1: "ensemble"}  # an existing method: a candidate
    text = claims(figures, [])
    assert "## Against the best single source (best-source)" in text  # 83.75 beats its +bn row's 80.0
    got = table_rows(text.split("## Against the best single source (best-source)")[1].split("## ")[0])
    assert "best-source" not in got and set(got) - {"label"} == {
        "greedy-soup", "greedy-soup +bn", "grasp", "ensemble", "finetune-only", "best-source +bn", ORACLE}
    # greedy-soup − best-source: .09 .19 .04 .29; finetune-only: −.10 .02 −.25 .02
    assert got["greedy-soup"] == ["99.0", "+15.2 ± 11.1", "4/0/0", "2/2"]
    assert got["finetune-only"] == ["76.0", "-7.8 ± 12.8", "2/0/2", "0/2"]
