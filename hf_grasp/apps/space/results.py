"""A finished run as the page shows it: plain rows and sentences read from the run's MergeReport.

Every number here is a report field, rounded for display only (accuracies as
percentages with two decimals), so the page and ``grasp_report.json`` agree.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ...output.report import MergeReport, SourceRecord
    from .session import RunOutcome

ACCURACY_COLUMNS = ["model", "test accuracy (%)", "test examples", "what it is"]
#: bar colours by kind of row: the merged model stands out, the sources recede
CHART_COLORS = {"merged": "#2563eb", "ensemble": "#f59e0b", "source": "#9ca3af"}
TRANSFER_COLUMNS = ["source", "role", "tensors transferred", "fraction transferred", "mean alignment"]


def percent(accuracy: float | None) -> float | None:
    """An accuracy in 0..1 as the page prints it."""
    return None if accuracy is None else round(100 * accuracy, 2)


def merged_name(report: MergeReport) -> str:
    """``merged (GRASP, τ 0.3)``: the method and, when it has one, its threshold."""
    tau = report.method.number("tau")
    return f"merged ({report.method.label}" + (f", τ {tau:g})" if tau is not None else ")")


def accuracy_rows(outcome: RunOutcome) -> list[list]:
    """The merged model, the ensemble, then each source alone: all on the target's test split."""
    report, spec = outcome.report, outcome.spec
    test = report.final.get("test") or {}
    rows = [[merged_name(report), percent(test.get("accuracy")), test.get("n"), "this run's result"]]
    if outcome.ensemble is not None and outcome.ensemble is not report:
        ens = outcome.ensemble.final.get("test") or {}
        rows.append([f"ensemble of {len(outcome.ensemble.sources)}", percent(ens.get("accuracy")), ens.get("n"),
                     "mean of the sources' probabilities (no training)"])
    for ref, (metrics, how) in sources_alone(outcome).items():
        rows.append([spec.label(ref), percent(metrics.get("accuracy")), metrics.get("n"), how])
    return rows


def sources_alone(outcome: RunOutcome) -> dict[str, tuple[dict, str]]:
    """Each source's own test metrics and who measured them: the merge itself, or else (methods such as TIES
    evaluate no source alone) the ensemble run, which evaluates every source before averaging."""
    found = {s.ref: (s.metrics_alone, "source alone") for s in outcome.report.sources if s.metrics_alone}
    if outcome.ensemble is not None:
        for s in outcome.ensemble.sources:
            if s.metrics_alone and s.ref not in found:
                found[s.ref] = (s.metrics_alone, "source alone (measured by the ensemble run)")
    return found


def chart_frame(rows: list[list]):
    """The accuracy rows as the bar chart's data frame (model, accuracy, kind)."""
    import pandas as pd

    kinds = ["merged" if r[0].startswith("merged") else "ensemble" if r[0].startswith("ensemble") else "source"
             for r in rows]
    return pd.DataFrame({"model": [r[0] for r in rows], "test accuracy (%)": [r[1] for r in rows], "kind": kinds})


def page_heatmap(outcome: RunOutcome, path: Path) -> Path | None:
    """The alignment heatmap with the page's source names (the saved folder keeps the full references);
    None when the method scored nothing."""
    from ...output.heatmap import plot_alignment_heatmap

    report = outcome.report
    if not any(s.scores for s in report.sources):
        return None
    named = [dataclasses.replace(s, ref=outcome.spec.label(s.ref)) for s in report.sources]
    return plot_alignment_heatmap(dataclasses.replace(report, sources=named), path)


def transfer_rows(outcome: RunOutcome) -> list[list]:
    """One row per input: what the method took from it (GRASP-family methods score every tensor)."""
    return [_transfer_row(src, outcome.spec.label(src.ref)) for src in outcome.report.sources]


def _transfer_row(src: SourceRecord, label: str) -> list:
    if src.role == "init":
        return [label, "init", "—", "— (the starting point)", "—"]
    if not src.transferred:
        return [label, src.role, "—", "— (no per-tensor transfer)", "—"]
    moved = sum(1 for v in src.transferred.values() if v)
    scores = [v for v in (src.scores or {}).values() if v is not None]
    mean = round(sum(scores) / len(scores), 3) if scores else "—"
    return [label, src.role, f"{moved}/{len(src.transferred)}", round(src.fraction_transferred, 3), mean]


def summary(outcome: RunOutcome) -> str:
    """Two sentences: what ran on what, and how the merged model compares (Markdown)."""
    report, spec = outcome.report, outcome.spec
    target = report.target.name + (f" (domain {report.target.domain})" if report.target.domain is not None else "")
    test, rows = report.final.get("test") or {}, "texts" if report.target.modality == "text" else "images"
    text = (f"**{report.method.pretty_name}** merged {len(report.sources)} sources onto **{target}** in "
            f"{outcome.seconds:.1f} s ({report.epochs_trained} fine-tuning epochs). Test accuracy "
            f"**{_pct(test.get('accuracy'))}** on {test.get('n')} {rows}")
    alone = [(spec.label(ref), metrics["accuracy"]) for ref, (metrics, _) in sources_alone(outcome).items()]
    if alone:
        name, best = max(alone, key=lambda pair: pair[1])
        text += f"; best source alone {_pct(best)} ({name})"
    if outcome.ensemble is not None and outcome.ensemble is not report:
        text += f"; ensemble {_pct(outcome.ensemble.test_accuracy())}"
    return text + "."


def _pct(accuracy: float | None) -> str:
    return "n/a" if accuracy is None else f"{100 * accuracy:.2f} %"
