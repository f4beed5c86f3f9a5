"""A finished run as the page shows it: plain rows and sentences read from the run's MergeReport and its
comparison (:mod:`hf_grasp.apps.bench.compare`: GRASP, the recommended method, the best source, the ensemble).

Every number here is a report field, rounded for display only (accuracies as
percentages with two decimals), so the page and ``grasp_report.json`` (and the
comparison's ``ROLE_report.json``) agree.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from ..bench.compare import COLORS

if TYPE_CHECKING:
    from ...output.report import MergeReport, SourceRecord
    from .session import RunOutcome

#: the comparison table's columns (:data:`hf_grasp.apps.bench.compare.COLUMNS`, accuracies as percentages)
ACCURACY_COLUMNS = ["model", "validation accuracy (%)", "test accuracy (%)", "one model?", "what it is"]
#: the chart's colours by row (the comparison's roles): the recommended method blue, the ensemble amber, GRASP
#: teal, the best source grey (as the sources were), another method chosen violet
CHART_COLORS = COLORS
TRANSFER_COLUMNS = ["source", "role", "test accuracy alone (%)", "tensors transferred", "fraction transferred",
                    "mean alignment"]


def percent(accuracy: float | None) -> float | None:
    """An accuracy in 0..1 as the page prints it."""
    return None if accuracy is None else round(100 * accuracy, 2)


def merged_name(report: MergeReport) -> str:
    """``merged (GRASP, τ 0.3)``: the method and, when it has one, its threshold."""
    tau = report.method.number("tau")
    return f"merged ({report.method.label}" + (f", τ {tau:g})" if tau is not None else ")")


def accuracy_rows(outcome: RunOutcome) -> list[list]:
    """The comparison's rows (GRASP, the recommended method, the best source, the ensemble; the visitor's method
    first when it is none of them): validation and test accuracy on the same examples. Without the comparison,
    the run's own row."""
    comparison = outcome.comparison
    if comparison is None:
        val, test = (outcome.report.final.get(split) or {} for split in ("validation", "test"))
        return [[merged_name(outcome.report), percent(val.get("accuracy")), percent(test.get("accuracy")), "yes",
                 "this run's result (the comparison was not asked for)"]]
    return [[r.name, percent(r.validation), percent(r.test), "yes" if r.one_model else f"no ({r.models} models)",
             r.what] for r in comparison.rows]


def verdict(outcome: RunOutcome) -> str:
    """The sentence under the table: the single model best on validation, and how it stands on test."""
    return outcome.comparison.sentence if outcome.comparison is not None else ""


def sources_alone(outcome: RunOutcome) -> dict[str, tuple[dict, str]]:
    """Each source's own test metrics and who measured them: the merge itself, or else (methods such as TIES
    evaluate no source alone) the ensemble run, which evaluates every source before averaging."""
    found = {s.ref: (s.metrics_alone, "source alone") for s in outcome.report.sources if s.metrics_alone}
    if outcome.ensemble is not None:
        for s in outcome.ensemble.sources:
            if s.metrics_alone and s.ref not in found:
                found[s.ref] = (s.metrics_alone, "source alone (measured by the ensemble run)")
    return found


def page_heatmap(outcome: RunOutcome, path: Path) -> Path | None:
    """The alignment heatmap with the page's source names (the saved folder keeps the full references), of
    :attr:`RunOutcome.scored`'s report: this run's, or the comparison's GRASP run when this method scores
    nothing; None when neither scored anything."""
    from ...output.heatmap import plot_alignment_heatmap

    report, _ = outcome.scored
    if not any(s.scores for s in report.sources):
        return None
    named = [dataclasses.replace(s, ref=outcome.spec.label(s.ref)) for s in report.sources]
    return plot_alignment_heatmap(dataclasses.replace(report, sources=named), path)


def scored_by(outcome: RunOutcome) -> str:
    """Whose transfer the heatmap and the table of what moved show, for their labels."""
    report, own = outcome.scored
    return "this run" if own else f"the {report.method.label} run beside it (this method moves no single tensor)"


def transfer_rows(outcome: RunOutcome) -> list[list]:
    """One row per input: its test accuracy alone, and what the method took from it (GRASP-family methods score
    every tensor; for another method, the comparison's GRASP run)."""
    report, _ = outcome.scored
    alone = sources_alone(outcome)
    return [_transfer_row(src, outcome.spec.label(src.ref), percent((alone.get(src.ref) or ({}, ""))[0]
                                                                       .get("accuracy")))
            for src in report.sources]


def _transfer_row(src: SourceRecord, label: str, alone: float | None = None) -> list:
    alone = "—" if alone is None else alone
    if src.role == "init":
        return [label, "init", alone, "—", "— (the starting point)", "—"]
    if not src.transferred:
        return [label, src.role, alone, "—", "— (no per-tensor transfer)", "—"]
    moved = sum(1 for v in src.transferred.values() if v)
    scores = [v for v in (src.scores or {}).values() if v is not None]
    mean = round(sum(scores) / len(scores), 3) if scores else "—"
    return [label, src.role, alone, f"{moved}/{len(src.transferred)}", round(src.fraction_transferred, 3), mean]


def summary(outcome: RunOutcome) -> str:
    """What ran on what, and the run's own test accuracy (Markdown); the comparison is the table's."""
    report = outcome.report
    target = report.target.name + (f" (domain {report.target.domain})" if report.target.domain is not None else "")
    test, rows = report.final.get("test") or {}, "texts" if report.target.modality == "text" else "images"
    text = (f"**{report.method.pretty_name}** merged {len(report.sources)} sources onto **{target}** in "
            f"{outcome.seconds:.1f} s ({report.epochs_trained} fine-tuning epochs). Test accuracy "
            f"**{_pct(test.get('accuracy'))}** on {test.get('n')} {rows}")
    if outcome.comparison is not None:
        text += "; the table below compares it with the others on the same sources, seed and splits"
    return text + "."


def _pct(accuracy: float | None) -> str:
    return "n/a" if accuracy is None else f"{100 * accuracy:.2f} %"
