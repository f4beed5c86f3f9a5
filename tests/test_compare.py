"""The comparison ``hf-grasp demo`` and the Space show: GRASP, the recommended method, the best single source and the
ensemble on the same target, in one table and one plot, and the sentence naming the single model best on
validation (never on test)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from hf_grasp.apps.bench import compare
from hf_grasp.apps.bench.compare import BEST_SOURCE, CHOSEN, ENSEMBLE, GRASP, RECOMMENDED, Row
from hf_grasp.methods.catalog import RECOMMENDED_METHOD, RECOMMENDED_OPTIONS


def _rows(grasp, recommended, best, ensemble, *, losses=(None, None, None, None)) -> list[Row]:
    """Four rows from (validation, test) pairs, as the table orders them."""
    made = [("grasp", GRASP, 1, grasp), ("greedy-soup (keep-start)", RECOMMENDED, 1, recommended),
            ("best-source: d3", BEST_SOURCE, 1, best), ("ensemble of 5", ENSEMBLE, 5, ensemble)]
    return [Row((role,), name, name.split()[0], val, test, models, "", validation_loss=loss,
                source="d3" if role == BEST_SOURCE else None)
            for (name, role, models, (val, test)), loss in zip(made, losses)]


def test_the_sentence_names_the_single_model_best_on_validation():
    rows = _rows((0.91, 0.87), (0.93, 0.9233333), (0.92, 0.9166667), (0.97, 0.9133333))
    assert compare.verdict(rows) == (
        "Best single model on validation: greedy-soup (keep-start), 93.00% val; on test it scores 92.33%, "
        "+1.00 points vs the ensemble of 5 at 91.33% and +0.67 vs the best single source, d3, at 91.67%.")


def test_grasp_best_on_validation_is_named_even_when_another_is_better_on_test():
    # the ensemble is best on validation but is K models; the test split never decides
    rows = _rows((0.95, 0.88), (0.94, 0.96), (0.90, 0.90), (0.99, 0.97))
    assert compare.verdict(rows) == (
        "Best single model on validation: grasp, 95.00% val; on test it scores 88.00%, −9.00 points vs the "
        "ensemble of 5 at 97.00% and −2.00 vs the best single source, d3, at 90.00%.")


def test_below_the_ensemble_on_test_is_said_so():
    rows = _rows((0.90, 0.85), (0.96, 0.9), (0.93, 0.9), (0.96, 0.9233333))
    sentence = compare.verdict(rows)
    assert sentence.startswith("Best single model on validation: greedy-soup (keep-start), 96.00% val;")
    assert "−2.33 points vs the ensemble of 5 at 92.33%" in sentence
    assert "level with the best single source, d3, at 90.00%" in sentence


def test_ties_on_validation_go_to_the_lower_loss_then_to_the_table():
    tied = ((0.95, 0.90), (0.95, 0.93), (0.91, 0.92), (0.95, 0.94))
    by_loss = compare.verdict(_rows(*tied, losses=(0.2, 0.3, 0.1, 0.1)))
    assert by_loss.startswith("Best single model on validation: grasp, 95.00% val (tied with greedy-soup "
                              "(keep-start); the lower validation loss decides); on test it scores 90.00%")
    same = compare.verdict(_rows(*tied))  # no loss recorded: the first in the table, and the sentence says so
    assert same.startswith("Best single model on validation: grasp, 95.00% val (tied with greedy-soup "
                           "(keep-start); the first in the table is named)")
    # the best source itself is the pick: compared with the ensemble only, and said to be the best source
    best = compare.verdict(_rows((0.9, 0.9), (0.9, 0.9), (0.99, 0.95), (0.99, 0.96), losses=(1, 1, 0.5, 0.1)))
    assert best == ("Best single model on validation: best-source: d3, 99.00% val; on test it scores 95.00%, −1.00 "
                    "points vs the ensemble of 5 at 96.00% (it is the best single source).")


def test_a_row_without_numbers_or_that_failed_is_never_the_pick():
    rows = _rows((None, None), (0.9, 0.9), (0.92, None), (0.99, 0.99))
    rows[2].error = "source 'x': its head does not predict the target's labels"
    assert compare.verdict(rows).startswith("Best single model on validation: greedy-soup (keep-start), 90.00% val")
    assert "best single source" not in compare.verdict(rows)
    assert compare.verdict(rows[3:]) == "No single model was measured on validation."


def _report(method: str, *, options=None, params=None, val=0.9, test=0.9, k=3, kept=None):
    """A stand-in MergeReport with the fields the comparison reads."""
    from hf_grasp.methods import METHODS

    info = METHODS[method]
    return SimpleNamespace(
        method=SimpleNamespace(name=method, label=info.label, pretty_name=info.pretty_name, params=params or {},
                               parameter_space=info.parameter_space),
        options={"keep_start": False, "recalibrate_bn": False, **(options or {})},
        sources=[SimpleNamespace(ref=f"/x/d{i}") for i in range(k)],
        steps=[SimpleNamespace(details={"kept": kept} if kept else {})],
        final={"validation": {"accuracy": val, "loss": 0.3, "n": 100}, "test": {"accuracy": test, "n": 300}},
        epochs_trained=0 if method == "ensemble" else 7,
        memory=SimpleNamespace(param_bytes=10, result_param_bytes=10 * (k if method == "ensemble" else 1)),
        target=SimpleNamespace(name="digits-eras", domain="2", sizes={"test": 300}))


def _fake_runs():
    calls = []

    def run(method, options):
        calls.append((method, options))
        return _report(method, options={k: v for k, v in options.items() if k in ("keep_start", "recalibrate_bn")},
                       kept=["/x/d1"] if method == "best-source" else None)

    return calls, run


@pytest.mark.parametrize("main_method, main_options, runs", [
    # the default: the recommended method with its options; GRASP, best-source and the ensemble run beside it
    (RECOMMENDED_METHOD, RECOMMENDED_OPTIONS, ["grasp", "best-source", "ensemble"]),
    # GRASP chosen: not run twice
    ("grasp", {}, [RECOMMENDED_METHOD, "best-source", "ensemble"]),
    # the ensemble or the best source chosen: the same
    ("ensemble", {}, ["grasp", RECOMMENDED_METHOD, "best-source"]),
    # another method: a fifth row, first
    ("multi-source", {}, ["grasp", RECOMMENDED_METHOD, "best-source", "ensemble"]),
])
def test_each_model_runs_once_on_the_callers_target_and_budget(main_method, main_options, runs):
    calls, run = _fake_runs()
    main = _report(main_method, options=dict(main_options))
    shared = {"initial_epochs": 1, "finetune_epochs": 2, "seed": 3, "target_domain": "2", **main_options}
    got = compare.compare(["/x/d0", "/x/d1", "/x/d2"], target="digits-eras", main=main, options=shared,
                          params={"grasp": {"tau": 0.5}}, label=lambda ref: Path(ref).name, run=run)
    assert [m for m, _ in calls] == runs
    for method, options in calls:
        # the target, the budget and the seed are the caller's; the variant is each row's own
        assert {k: options[k] for k in ("initial_epochs", "finetune_epochs", "seed", "target_domain")} == {
            "initial_epochs": 1, "finetune_epochs": 2, "seed": 3, "target_domain": "2"}
        assert options.get("tau") == (0.5 if method == "grasp" else None)
        assert compare.variant(method, options) == (
            compare.variant(method, RECOMMENDED_OPTIONS) if method == RECOMMENDED_METHOD else {})
        assert all(k in options for k in compare.VARIANT_OPTIONS if k in ("keep_start", "recalibrate_bn"))
    roles = [r.roles for r in got.rows]
    assert roles[-4:] == [(GRASP,), (RECOMMENDED,), (BEST_SOURCE,), (ENSEMBLE,)]
    assert len(got.rows) == (5 if main_method == "multi-source" else 4)
    assert [r.main for r in got.rows].count(True) == 1
    if main_method == "multi-source":
        assert got.rows[0].roles == (CHOSEN,) and got.rows[0].main
    assert got.row(BEST_SOURCE).name == "best-source: d1" and got.row(ENSEMBLE).one_model is False
    assert got.row(RECOMMENDED).name == compare._plain_name(RECOMMENDED_METHOD, RECOMMENDED_OPTIONS)


def test_the_recommended_method_with_other_options_is_a_row_of_its_own():
    calls, run = _fake_runs()
    # keep_start the other way round from the recommendation: another variant of the same method
    other = {**RECOMMENDED_OPTIONS, "keep_start": not RECOMMENDED_OPTIONS.get("keep_start", False)}
    got = compare.compare(["/x/d0"], target="t", main=_report(RECOMMENDED_METHOD, options=other), options=other,
                          run=run)
    assert RECOMMENDED_METHOD in [m for m, _ in calls]  # the recommended variant still runs, as its own row
    assert got.rows[0].roles == (CHOSEN,)


def test_the_demo_compares_four_models_in_one_table_and_one_plot(tmp_path, capsys):
    """A real small run: sources of one epoch, merges of one epoch per round."""
    from hf_grasp.apps.bench.demo import run_demo
    from hf_grasp.apps.bench.make_sources import make_sources

    make_sources(tmp_path / "sources-resnet", pretrain_epochs=1, source_epochs=1, seed=0)
    run = run_demo(tmp_path, initial_epochs=1, finetune_epochs=1)
    assert run.report.method.name == RECOMMENDED_METHOD
    assert (tmp_path / "merged-resnet" / "grasp_report.json").is_file()
    rows = run.comparison.rows
    assert [r.roles for r in rows] == [(GRASP,), (RECOMMENDED,), (BEST_SOURCE,), (ENSEMBLE,)]
    assert [r.main for r in rows] == [False, True, False, False]
    assert rows[0].name == "grasp" and rows[3].name == "ensemble of 5" and not rows[3].one_model
    assert {r.report.target.sizes["test"] for r in rows} == {300}  # the same splits
    assert all(r.report.options["seed"] == 0 and r.report.options["initial_epochs"] == 1 for r in rows)
    pick, _, _ = compare.best_on_validation(rows)
    assert pick.validation == max(r.validation for r in rows[:3])
    markdown = run.table.read_text()
    assert markdown.count("\n| ") == 6 and run.comparison.sentence in markdown  # header, rule, four rows
    assert f"Best single model on validation: {pick.name}, " in markdown
    assert run.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "Best single model on validation:" in out and "ensemble of 5" in out
    # GRASP chosen: the table still holds the four rows, GRASP run once (the saved one)
    again = run_demo(tmp_path, method="grasp", initial_epochs=1, finetune_epochs=1, tau=0.5)
    assert [r.roles for r in again.comparison.rows] == [(GRASP,), (RECOMMENDED,), (BEST_SOURCE,), (ENSEMBLE,)]
    assert again.comparison.rows[0].main and again.comparison.rows[0].name == "grasp (tau 0.5)"
    assert again.comparison.rows[2].validation == rows[2].validation  # the same run, the same model
