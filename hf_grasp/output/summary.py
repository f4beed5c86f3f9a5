"""The run summary as tables: in the terminal (fits 80 columns) and as Markdown (the model card).

Both renderers take their rows from :func:`summary_tables`, so the card and the
terminal cannot disagree; the terminal shows fewer columns (no revision and
commit, which the card and the report keep) and shortens long source names.
"""

from __future__ import annotations

import math
from typing import Any

from rich import filesize
from rich.console import Console
from rich.table import Table

from .report import MergeReport, StepRecord

# One table: (title, column headers, rows of cell strings).
TableSpec = tuple[str, list[str], list[list[str]]]

_DASH = "–"
#: columns the terminal leaves out (the card keeps them)
_WIDE_ONLY = ("Revision", "Commit", "Transferred")
#: the widest a source name may be in the terminal
SOURCE_WIDTH = 24


def summary_tables(report: MergeReport, *, compact: bool = False) -> list[TableSpec]:
    """The summary as tables of strings: steps, the result's metrics, each source alone vs the result.

    ``compact``: the terminal's variant (fewer columns, source names shortened to fit 80 columns).
    """
    tables = [_steps_table(report, compact), _final_table(report), _baselines_table(report, compact)]
    return [t for t in tables if t[2]]


def _steps_table(report: MergeReport, compact: bool) -> TableSpec:
    by_ref = {s.ref: s for s in report.steps if s.ref is not None}
    used: set[int] = set()
    rows = []
    for i, src in enumerate(report.sources):
        step = by_ref.get(src.ref)
        if step is not None:
            used.add(id(step))
        after = src.metrics_after or {}
        moved = src.transferred or {}
        rows.append([
            step.label if step else ("init" if src.role == "init" else f"source {i + 1}"),
            shorten(src.ref, SOURCE_WIDTH) if compact else src.ref,
            src.revision or _DASH,
            (src.commit or "local")[:8],
            "init" if src.role == "init" else _pct(src.fraction_transferred),
            f"{sum(1 for v in moved.values() if v)}/{len(moved)}" if moved else _DASH,
            _pct(step.val_accuracy if step else (after.get("validation") or {}).get("accuracy")),
            _pct(step.test_accuracy if step else (after.get("test") or {}).get("accuracy")),
            _seconds(src.seconds),
        ])
    for step in report.steps:  # steps with no source of their own (a merge, a final fine-tune)
        if id(step) not in used:
            rows.append(_sourceless_row(step))
    headers = ["Step", "Source", "Revision", "Commit", "Transferred", "Tensors", "Val acc", "Test acc", "Time"]
    return _narrow(("Sources, in merge order (accuracy after each step)", headers, rows), compact)


def _sourceless_row(step: StepRecord) -> list[str]:
    return [step.label, _DASH, _DASH, _DASH, _DASH, _DASH, _pct(step.val_accuracy), _pct(step.test_accuracy),
            _seconds(step.seconds)]


def _narrow(table: TableSpec, compact: bool) -> TableSpec:
    if not compact:
        return table
    title, headers, rows = table
    keep = [i for i, h in enumerate(headers) if h not in _WIDE_ONLY]
    return title, [headers[i] for i in keep], [[row[i] for i in keep] for row in rows]


def _final_table(report: MergeReport) -> TableSpec:
    keys = list(dict.fromkeys(k for metrics in report.final.values() for k in metrics))
    rows = [[split] + [_format_metric(k, metrics.get(k)) for k in keys] for split, metrics in report.final.items()]
    return (f"Result: {report.method.label}", ["Split"] + keys, rows)


def _baselines_table(report: MergeReport, compact: bool) -> TableSpec:
    baselines = report.baselines
    if not baselines:
        return ("", [], [])
    rows = [[shorten(ref, SOURCE_WIDTH) if compact else ref, _DASH, _pct(m.get("accuracy"))]
            for ref, m in baselines.items()]
    label = report.method.label + (" merge" if report.method.parameter_space else "")
    rows.append([label, _pct((report.final.get("validation") or {}).get("accuracy")),
                 _pct((report.final.get("test") or {}).get("accuracy"))])
    return ("Each source alone vs the result", ["Model", "Val acc", "Test acc"], rows)


def footer_lines(report: MergeReport) -> list[str]:
    """The run's wall time (the merge engine's part beside it), peak memory, and how many models the result holds."""
    lines = [_time_line(report)]
    memory = report.memory
    if memory.peak_rss_bytes:
        # the process's own high-water mark, whatever held it (imports, the data, the models)
        lines.append(f"Peak memory: {_size(memory.peak_rss_bytes)} (RSS of the process); model parameters: "
                     f"{_size(memory.param_bytes)}")
    if memory.result_param_bytes != memory.param_bytes:
        lines.append(f"The result holds {memory.result_param_bytes // memory.param_bytes} models at inference "
                     f"({_size(memory.result_param_bytes)} of parameters)")
    return lines


def _time_line(report: MergeReport) -> str:
    """The whole run's wall time, counted from what ``wall_since`` says, with the merge engine's share.

    ``report.seconds`` alone leaves out the imports, the data, resolving the sources: a fraction of the run.
    """
    engine = f"{_seconds(report.seconds)} in the merge engine"
    if report.wall_seconds is None:  # a report saved before the run's wall time was recorded
        return f"Time: {engine} (the run's wall time was not recorded)"
    return f"Wall time: {_seconds(report.wall_seconds)} since {report.wall_since} ({engine})"


def header_line(report: MergeReport) -> str:
    target = report.target
    domain = f" / {target.domain}" if target.domain is not None else ""
    sizes = ", ".join(f"{k} {v}" for k, v in target.sizes.items())
    return (f"{report.method.label}: {len(report.sources)} {report.family} {report.architecture} models onto "
            f"{target.name}{domain}" + (f" [{sizes}]" if sizes else ""))


# --------------------------------------------------------------------------- renderers


def print_summary(report: MergeReport, console: Console | None = None) -> None:
    """Print the run summary as rich tables that fit the terminal (80 columns when piped)."""
    console = console or Console()
    console.print(f"[bold]{header_line(report)}[/bold]")
    for title, headers, rows in summary_tables(report, compact=True):
        table = Table(title=title, title_justify="left", header_style="bold")
        for h in headers:
            table.add_column(h, justify="right" if h.endswith(("acc", "Time", "Tensors")) else "left",
                             no_wrap=h != "Source")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for line in footer_lines(report):
        console.print(line)


def summary_markdown(report: MergeReport) -> str:
    """The same summary as Markdown, every column kept (for the model card)."""
    out = [header_line(report), ""]
    for title, headers, rows in summary_tables(report):
        out += [f"**{title}**", "", _md_row(headers), _md_row(["---"] * len(headers))]
        out += [_md_row(row) for row in rows]
        out.append("")
    out += [" · ".join(footer_lines(report)), ""]
    return "\n".join(out).rstrip() + "\n"


def shorten(name: str, width: int) -> str:
    """``name`` in at most ``width`` characters, keeping its end (a path's last parts, a repo's name)."""
    if len(name) <= width:
        return name
    parts = name.replace("\\", "/").split("/")
    tail = parts[-1]
    for part in reversed(parts[:-1]):  # as many trailing path parts as fit
        if len(part) + 1 + len(tail) + 2 > width:  # "part/" and the leading "…/"
            break
        tail = f"{part}/{tail}"
    return ("…/" + tail) if len(tail) + 2 <= width else "…" + name[-(width - 1):]


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _pct(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return _DASH
    return f"{100 * value:.2f}%"


def _seconds(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return _DASH
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _size(n: int) -> str:
    """Bytes in decimal units (``1.12 GB``), as rich prints file sizes."""
    return filesize.decimal(n, precision=2)


def _format_metric(name: str, value: Any) -> str:
    if value is None:
        return _DASH
    if "accuracy" in name:
        return _pct(value)
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
