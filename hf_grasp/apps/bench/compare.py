"""The models a user weighs, on one target: GRASP, the recommended method, the best single source, the ensemble.

``hf-grasp demo`` and the Space run one merge (the *main* run: the recommended
method unless the user picks another), then :func:`compare` runs, on the same
sources, target, seed and splits, whichever of the four rows the main run is
not:

- **grasp**: GRASP as the paper defines it (the library's defaults, the
  recipe's values; a GRASP parameter the caller gives, such as the demo's
  ``--tau``, applies);
- **recommended**: :data:`~hf_grasp.methods.catalog.RECOMMENDED_METHOD` with
  :data:`~hf_grasp.methods.catalog.RECOMMENDED_OPTIONS`;
- **best-source**: the source best on target validation, fine-tuned;
- **ensemble**: the mean of the sources' probabilities, K models at inference.

A main run that is one of them is not run again; one that is none of them
(another method, or the recommended method with other options) is a row of
its own, first. Each row keeps its own variant options (``keep_start``, what
the recommended options set): the main run's are never carried into another
row; the rest of what the caller set (target, epochs, learning rate, seed) is.

:func:`verdict` is the sentence under the table: the single model best on
*validation* (the choice a user can make honestly; never on test), and how it
stands on *test* against the ensemble and the best single source.
:func:`markdown`, :func:`print_table` and :func:`plot` render the same rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ...methods import METHODS
from ...methods.catalog import RECOMMENDED_METHOD, RECOMMENDED_OPTIONS
from ...plan.options import MergeOptions
from ...runtime.errors import GraspError

if TYPE_CHECKING:
    from ...output.report import MergeReport

# the rows' roles, in the table's order; CHOSEN: a main run that is none of the four
CHOSEN, GRASP, RECOMMENDED, BEST_SOURCE, ENSEMBLE = "chosen", "grasp", "recommended", "best-source", "ensemble"
ROLES = (CHOSEN, GRASP, RECOMMENDED, BEST_SOURCE, ENSEMBLE)
#: bar colours by role (the recommended blue is the Space's "merged" colour, the ensemble its amber)
COLORS = {CHOSEN: "#7c3aed", GRASP: "#0d9488", RECOMMENDED: "#2563eb", BEST_SOURCE: "#9ca3af", ENSEMBLE: "#f59e0b"}
#: shared options that make a method's variant rather than the target or the budget: each row has its own
VARIANT_OPTIONS = frozenset({"keep_start", "recalibrate_bn", *RECOMMENDED_OPTIONS})
#: the table's columns (the terminal, the Markdown file and the Space)
COLUMNS = ["model", "validation accuracy", "test accuracy", "one model?", "what it is"]

_DASH = "–"


def row_definitions() -> dict[str, tuple[str, dict[str, Any]]]:
    """Each of the four roles as ``(method, the options that define it)``."""
    return {GRASP: ("grasp", {}), RECOMMENDED: (RECOMMENDED_METHOD, dict(RECOMMENDED_OPTIONS)),
            BEST_SOURCE: ("best-source", {}), ENSEMBLE: ("ensemble", {})}


def _default(method: str, name: str) -> Any:
    fields = {**MergeOptions.model_fields, **METHODS[method].params.model_fields}
    return fields[name].get_default(call_default_factory=True) if name in fields else None


def variant(method: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The options among ``values`` that make ``method``'s variant: those of :data:`VARIANT_OPTIONS` away from
    their defaults (``{"keep_start": True}``). A method whose result is no merged model (the ensemble trains
    nothing and merges nothing) has none."""
    if not METHODS[method].parameter_space:
        return {}
    return {k: v for k, v in values.items() if k in VARIANT_OPTIONS and v != _default(method, k)}


def report_variant(report: MergeReport) -> dict[str, Any]:
    """The variant a finished run ran with, read from its report (the options as resolved, recipe included)."""
    return variant(report.method.name, {**report.options, **report.method.params})


def roles_of(method: str, values: Mapping[str, Any]) -> tuple[str, ...]:
    """The roles a run of ``method`` with ``values`` (its shared options and parameters as run) fills."""
    mine = variant(method, values)
    return tuple(role for role, (m, options) in row_definitions().items()
                 if m == method and mine == variant(m, options))


@dataclass
class Row:
    """One model of the comparison, as the table shows it."""

    roles: tuple[str, ...]  # what it stands for (several when two roles are one run); (CHOSEN,) for another method
    name: str               # how the table names it: the method as the command line spells it, its variant
    method: str
    validation: float | None
    test: float | None
    models: int             # models at inference: 1, or K for the ensemble
    what: str               # what it is, in a few words
    main: bool = False      # the main run: the one saved
    source: str | None = None  # the best-source row: the source it kept, as shown
    validation_loss: float | None = None
    report: MergeReport | None = field(default=None, repr=False)
    error: str | None = None  # its run failed (bad input for that method): the error line

    @property
    def one_model(self) -> bool:
        return self.models == 1

    @property
    def role(self) -> str:
        return self.roles[0]


@dataclass
class Comparison:
    """The rows, in the table's order, and the sentence under them."""

    rows: list[Row]
    target: str = ""  # "digits-eras / 2 (300 test examples)"

    @property
    def sentence(self) -> str:
        return verdict(self.rows)

    def row(self, role: str) -> Row | None:
        return next((r for r in self.rows if role in r.roles), None)

    @property
    def reports(self) -> dict[str, MergeReport]:
        """The run's report by role (a report standing for two roles appears under both)."""
        return {role: r.report for r in self.rows if r.report is not None for role in r.roles}


# --------------------------------------------------------------------------- running


#: a run of the comparison: ``(method, options) -> report`` (default: GraspMerger.from_pretrained(...).merge())
Runner = Callable[[str, dict[str, Any]], "MergeReport"]


def planned_runs(main: MergeReport) -> list[tuple[tuple[str, ...], str, dict[str, Any]]]:
    """The runs the comparison still needs beside ``main``: ``(roles, method, defining options)``, in table order.

    Two roles that are one run (the recommended method might one day be GRASP itself) share it.
    """
    covered = set(roles_of(main.method.name, {**main.options, **main.method.params}))
    runs: list[tuple[tuple[str, ...], str, dict[str, Any]]] = []
    for role, (method, options) in row_definitions().items():
        if role in covered:
            continue
        same = next((r for r in runs if r[1] == method and variant(method, r[2]) == variant(method, options)), None)
        if same is not None:
            runs[runs.index(same)] = ((*same[0], role), method, same[2])
        else:
            runs.append(((role,), method, options))
    return runs


def compare(sources: Sequence[str], *, target: str, main: MergeReport, options: Mapping[str, Any] | None = None,
            params: Mapping[str, Mapping[str, Any]] | None = None, label: Callable[[str], str] | None = None,
            main_note: str = "", before_run: Callable[[int, int, str], None] | None = None,
            run: Runner | None = None) -> Comparison:
    """Run what :func:`planned_runs` lists on ``sources`` and ``target``; returns every row, ``main``'s included.

    ``options``: what the caller set for the main run (shared options; its variant options are left out of
    the other rows, which take their own). ``params``: a method's own parameters for its row, by method
    (``{"grasp": {"tau": 0.5}}``). ``label``: how a source reference is shown (default: the reference).
    ``main_note``: said of the main run in its row (where it was saved). ``before_run(i, n, name)``: called
    before each further run (progress, cancellation). A run refused with a :class:`GraspError` (the ensemble of
    sources whose heads do not all predict the target's labels) is a row holding its error line.
    """
    label = label or (lambda ref: ref)
    shared = {k: v for k, v in (options or {}).items() if k in MergeOptions.model_fields and k not in VARIANT_OPTIONS}
    run = run or _runner(list(sources), target)
    main_roles = roles_of(main.method.name, {**main.options, **main.method.params}) or (CHOSEN,)
    rows = [_row(main, main_roles, label, main=True, note=main_note)]
    todo = planned_runs(main)
    for i, (roles, method, defining) in enumerate(todo, start=1):
        own = {k: v for k, v in (params or {}).get(method, {}).items() if k in METHODS[method].params.model_fields}
        # the base of task-vector methods is no input of a method that does not take one
        given = {k: v for k, v in shared.items() if k != "base" or METHODS[method].needs_base}
        if before_run is not None:
            before_run(i, len(todo), _plain_name(method, defining))
        # the variant options at their defaults unless the row sets them: a recipe's keep_start is not GRASP's
        reset = {k: _default(method, k) for k in VARIANT_OPTIONS if k in MergeOptions.model_fields}
        try:
            report = run(method, {**given, **reset, **own, **defining})
        except GraspError as e:
            rows.append(Row(roles, _plain_name(method, defining), method, None, None,
                            len(sources) if method == "ensemble" else 1, f"not run: {e}", error=str(e)))
            continue
        if report.target.sizes != main.target.sizes or report.target.domain != main.target.domain:
            raise RuntimeError(f"the {method} run saw another target ({report.target.sizes}) than the main run "
                               f"({main.target.sizes}): the comparison would not be on the same examples")
        rows.append(_row(report, roles, label))
    rows.sort(key=lambda r: ROLES.index(r.role))
    return Comparison(rows, target=_target_text(main))


def _runner(sources: list[str], target: str) -> Runner:
    def run(method: str, options: dict[str, Any]) -> MergeReport:
        from ...merger import GraspMerger

        return GraspMerger.from_pretrained(sources, target=target, method=method, **options).merge().report

    return run


def _target_text(report: MergeReport) -> str:
    t = report.target
    test = (report.final.get("test") or {}).get("n")
    return t.name + (f" / {t.domain}" if t.domain is not None else "") + (f" ({test} test examples)" if test else "")


def _flag(name: str, value: Any) -> str:
    flag = name.replace("_", "-")
    if value is True:
        return flag
    if value is False:
        return f"no {flag}"
    return f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"


def _plain_name(method: str, values: Mapping[str, Any], extra: Sequence[str] = ()) -> str:
    """``greedy-soup (keep-start)``: the method as the command line spells it, and what sets its variant."""
    parts = [*(_flag(k, v) for k, v in sorted(variant(method, values).items())), *extra]
    return method + (f" ({', '.join(parts)})" if parts else "")


def _row(report: MergeReport, roles: tuple[str, ...], label: Callable[[str], str], *, main: bool = False,
         note: str = "") -> Row:
    method, k = report.method.name, len(report.sources)
    values = {**report.options, **report.method.params}
    # a method's own parameters away from their defaults are part of its name (grasp (tau 0.5))
    params = [_flag(n, v) for n, v in sorted(report.method.params.items())
              if n not in VARIANT_OPTIONS and v != _default(method, n) and not isinstance(v, (list, tuple, dict))]
    kept = next((s.details["kept"] for s in report.steps if s.details.get("kept")), None)
    name = _plain_name(method, values, params)
    if method == "best-source" and kept:
        name += f": {label(kept[0])}"
    memory = report.memory
    models = max(1, memory.result_param_bytes // memory.param_bytes) if memory.param_bytes else 1
    if method == "ensemble":
        name = f"ensemble of {k}"
    val, test = report.final.get("validation") or {}, report.final.get("test") or {}
    what = _what(report, roles, label, kept)
    if note:
        what = f"{what}; {note}"
    return Row(roles, name, method, val.get("accuracy"), test.get("accuracy"), models, what, main=main,
               source=label(kept[0]) if method == "best-source" and kept else None,
               validation_loss=val.get("loss"), report=report)


def _what(report: MergeReport, roles: tuple[str, ...], label: Callable[[str], str], kept: list | None) -> str:
    """What a row is, in a few words (its name says the method and variant; the card says the rest)."""
    k, tuned = len(report.sources), "fine-tuned" if report.epochs_trained else "not fine-tuned"
    parts = []
    for role in roles:
        if role == GRASP:
            parts.append("GRASP as the paper defines it")
        elif role == RECOMMENDED:
            parts.append(f"the recommended method ({report.method.label.lower()})")
        elif role == BEST_SOURCE:
            parts.append(f"the source best on validation, {tuned}")
        elif role == ENSEMBLE:
            parts.append(f"the mean of {k} sources' probabilities, untrained")
        else:
            parts.append(f"the method chosen ({report.method.label})")
    return "; ".join(parts)


# --------------------------------------------------------------------------- the sentence


def pct(accuracy: float | None) -> str:
    """An accuracy in 0..1 as the table prints it (``92.33%``)."""
    if not isinstance(accuracy, (int, float)) or isinstance(accuracy, bool) or not math.isfinite(accuracy):
        return _DASH
    return f"{100 * accuracy:.2f}%"


def _points(a: float, b: float, *, unit: bool) -> str:
    diff = round(100 * (a - b), 2)
    if diff == 0:
        return "level with"
    sign = "+" if diff > 0 else "−"
    return f"{sign}{abs(diff):.2f}" + (" points" if unit else "") + " vs"


def _phrase(row: Row) -> str:
    """How the sentence names a row it compares with, its test accuracy included."""
    if ENSEMBLE in row.roles:
        return f"the {row.name} at {pct(row.test)}"
    if BEST_SOURCE in row.roles:
        return "the best single source" + (f", {row.source}," if row.source else "") + f" at {pct(row.test)}"
    return f"{row.name} at {pct(row.test)}"


def best_on_validation(rows: Sequence[Row]) -> tuple[Row | None, list[Row], str]:
    """The single model best on validation, the others tied with it, and what broke the tie ("" when none).

    Ties (the same validation accuracy) go to the lower validation loss, then to the table's order; test
    accuracy never decides.
    """
    candidates = [r for r in rows if r.one_model and r.error is None and isinstance(r.validation, (int, float))
                  and math.isfinite(r.validation)]
    if not candidates:
        return None, [], ""
    top = max(r.validation for r in candidates)
    tied = [r for r in candidates if math.isclose(r.validation, top, rel_tol=0, abs_tol=1e-9)]
    losses = [r.validation_loss if isinstance(r.validation_loss, (int, float)) else math.inf for r in tied]
    pick = tied[losses.index(min(losses))]
    others = [r for r in tied if r is not pick]
    if not others:
        return pick, [], ""
    by_loss = min(losses) < min(loss for r, loss in zip(tied, losses) if r is not pick)
    return pick, others, "the lower validation loss decides" if by_loss else "the first in the table is named"


def verdict(rows: Sequence[Row]) -> str:
    """One sentence: which single model is best on validation, and how it stands on test against the ensemble
    and the best single source (the ensemble is not one model, so it is never the pick)."""
    pick, tied, why = best_on_validation(rows)
    if pick is None:
        return "No single model was measured on validation."
    text = f"Best single model on validation: {pick.name}, {pct(pick.validation)} val"
    if tied:
        text += f" (tied with {' and '.join(r.name for r in tied)}; {why})"
    if not isinstance(pick.test, (int, float)):
        return text + "; its test accuracy was not measured."
    text += f"; on test it scores {pct(pick.test)}"
    against = []
    for role in (ENSEMBLE, BEST_SOURCE):
        other = next((r for r in rows if role in r.roles), None)
        if other is None or other is pick or not isinstance(other.test, (int, float)) or other.error:
            continue
        against.append(f"{_points(pick.test, other.test, unit=not against)} {_phrase(other)}")
    if against:
        text += ", " + " and ".join(against)
    if BEST_SOURCE in pick.roles:
        text += " (it is the best single source)"
    return text + "."


# --------------------------------------------------------------------------- rendering


def table_rows(comparison: Comparison) -> list[list[str]]:
    """The rows as cells of strings (:data:`COLUMNS`)."""
    return [[r.name, pct(r.validation), pct(r.test),
             "yes" if r.one_model else f"no ({r.models} models)", r.what] for r in comparison.rows]


def markdown(comparison: Comparison, title: str | None = None) -> str:
    """The table and the sentence as Markdown (the demo writes it beside the merged model)."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    out = [f"**{title or 'Same sources, seed and splits'}**" + (f" — {comparison.target}" if comparison.target
                                                                else ""), "",
           line(COLUMNS), line(["---"] * len(COLUMNS)), *(line(row) for row in table_rows(comparison)), "",
           comparison.sentence, ""]
    return "\n".join(out)


def print_table(comparison: Comparison, console=None, title: str | None = None) -> None:
    """The table and the sentence in the terminal, fitting 80 columns (piped output): the Markdown file's rows,
    each model's "what it is" on a second line under its name; the saved run's name in bold."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    table = Table(title=(title or "Same sources, seed and splits") + (f": {comparison.target}"
                                                                        if comparison.target else ""),
                  title_justify="left", header_style="bold")
    for h in ("Model: what it is", "Val acc", "Test acc", "One model?"):
        table.add_column(h, justify="right" if h.endswith("acc") else "left", no_wrap=h != "Model: what it is")
    for row, cells in zip(comparison.rows, table_rows(comparison)):
        name = f"[bold]{escape(row.name)}[/bold]" if row.main else escape(row.name)
        table.add_row(f"{name}\n[dim]{escape(row.what)}[/dim]", cells[1], cells[2],
                      cells[3])
    console.print(table)
    console.print(comparison.sentence)


def plot(comparison: Comparison, path: str | Path, title: str | None = None) -> Path:
    """Validation and test accuracy of every row as grouped bars, saved as a PNG at ``path``.

    A bare matplotlib ``Figure`` (no pyplot: no backend chosen, nothing process-wide changed), as the bench's
    plots are drawn; safe in a worker thread.
    """
    from matplotlib.figure import Figure

    rows = [r for r in comparison.rows if r.error is None]
    fig = Figure(figsize=(max(6.0, 1.6 * len(rows) + 1.5), 4.2))
    ax = fig.add_subplot()
    width = 0.38
    values = [100 * v for r in rows for v in (r.validation, r.test) if isinstance(v, (int, float))]
    for i, r in enumerate(rows):
        colour = COLORS.get(r.role, COLORS[CHOSEN])
        for offset, value, alpha, hatch in ((-width / 2, r.validation, 0.45, "//"), (width / 2, r.test, 1.0, None)):
            if not isinstance(value, (int, float)):
                continue
            ax.bar(i + offset, 100 * value, width, color=colour, alpha=alpha, hatch=hatch, edgecolor=colour,
                   linewidth=2.0 if r.main else 0.5)
            ax.annotate(f"{100 * value:.2f}", (i + offset, 100 * value), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 2), textcoords="offset points")
    labels = [r.name + ("\n(saved)" if r.main else "") + ("" if r.one_model else f"\n({r.models} models, not one)")
              for r in rows]
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    low = min(values) if values else 0.0
    ax.set_ylim(max(0.0, low - 10), 100)
    ax.set_ylabel("accuracy (%)")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(facecolor="#6b7280", alpha=0.45, hatch="//", label="validation"),
                       Patch(facecolor="#6b7280", label="test")], loc="upper left", bbox_to_anchor=(1.0, 1.0),
              fontsize=8)
    ax.set_title(title or f"validation and test accuracy: {comparison.target}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


__all__ = ["BEST_SOURCE", "CHOSEN", "COLORS", "COLUMNS", "Comparison", "ENSEMBLE", "GRASP", "RECOMMENDED", "Row",
           "best_on_validation", "compare", "markdown", "planned_runs", "plot", "print_table", "roles_of",
           "table_rows", "verdict"]
