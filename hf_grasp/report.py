"""Rendering the structured merge report: JSON, alignment heatmap, terminal and Markdown tables.

The merge engine builds one plain, JSON-able dict per run; everything here only
reads it. The terminal summary and the model card's Markdown are rendered from
the same tables (:func:`summary_tables`) so they cannot disagree. Its shape::

    {"config": {...options: tau, granularity, ...},
     "target": {"name", "domain", "sizes": {"train": n, ...}, "notes": [...]},
     "family": "transformers", "architecture": "ResNetForImageClassification",
     "sources": [{"ref": "org/m1@v1", "repo_id", "revision", "commit" (None if local),
                  "path", "files": {"model.safetensors": sha256}, "role": "init" | "source",
                  "scores": {tensor: cosine | None},          # None for the init source
                  "transferred": {tensor: fraction 0..1},     # of the tensor's entries
                  "fraction_transferred", "metrics_before", "metrics_after", "seconds"}],
     "steps": [{"step": "init" | "source 2" | ..., "val_accuracy", "test_accuracy"}],
     "final": {"validation": {"accuracy": ...}, "test": {"accuracy": ...}},
     "baselines": {source ref: {"test": {"accuracy": ...}}},  # optional: each source alone
     "timings": {"total_seconds": ...}, "memory": {"peak_rss_bytes", "param_bytes", "result_param_bytes"}}

Steps pair with sources by their ``"ref"`` key when they have one, else by
position; steps beyond the sources (a final fine-tune) get rows of their own.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable

from rich.console import Console
from rich.table import Table

# One table: (title, column headers, rows of cell strings).
TableSpec = tuple[str, list[str], list[list[str]]]

_DASH = "–"


# --------------------------------------------------------------------------- JSON


def write_json(report: dict, path: str | os.PathLike) -> Path:
    """Write ``report`` as indented JSON (atomically) and return the path.

    NaN/inf become ``null`` (strict JSON); numpy/torch scalars and paths are
    converted to plain values.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_json(path: str | os.PathLike) -> dict:
    """Read a report written by :func:`write_json`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy arrays/scalars, torch tensors
        return _jsonable(obj.tolist())
    raise TypeError(f"report value of type {type(obj).__name__} is not JSON-serialisable: {obj!r}")


# --------------------------------------------------------------------------- memory


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Linux reports KiB, macOS bytes.
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except (ImportError, OSError):  # Windows has no resource module
        import psutil

        info = psutil.Process().memory_info()
        return int(getattr(info, "peak_wset", info.rss))


# --------------------------------------------------------------------------- heatmap

_ABBREVIATIONS = {
    "weight": "w",
    "bias": "b",
    "convolution": "conv",
    "normalization": "norm",
    "embeddings": "emb",
    "embedding": "emb",
    "encoder": "enc",
    "decoder": "dec",
    "attention": "attn",
    "classifier": "cls",
    "layers": "L",
    "layer": "l",
    "stages": "S",
    "blocks": "B",
    "block": "blk",
    "downsample": "down",
    "shortcut": "short",
}


def shorten_tensor_names(names: list[str], max_len: int = 32) -> list[str]:
    """Short, still distinguishable axis labels for parameter tensor names.

    Drops the dotted prefix every name shares (``resnet.``, ``model.``),
    abbreviates frequent words (``weight`` -> ``w``, ``convolution`` -> ``conv``)
    and keeps the tail of what is still longer than ``max_len``.
    """
    parts = [name.split(".") for name in names]
    common = 0
    if len(parts) > 1:
        while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
            common += 1
    short = []
    for p in parts:
        label = ".".join(_ABBREVIATIONS.get(word, word) for word in p[common:])
        if len(label) > max_len:
            label = "…" + label[-(max_len - 1) :]
        short.append(label)
    return short


def plot_alignment_heatmap(report: dict, path: str | os.PathLike) -> Path:
    """Plot per-tensor alignment scores of every non-init source and save it as an image.

    Rows are sources in merge order, columns parameter tensors in model order;
    colour is the cosine score on a diverging map fixed to [-1, 1] and centred
    at 0; a black dot marks a transferred tensor (its area is the fraction of the
    tensor transferred, for row or element granularity). The threshold tau is
    marked on the colour bar. Returns the path.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display here, and no GUI backend wanted in a library call
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sources = [s for s in report.get("sources", []) if s.get("role") != "init"]
    names = _ordered_union(s.get("scores") or {} for s in sources)

    if not sources or not names:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no alignment scores: nothing was merged onto the init model", ha="center", va="center")
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        return path

    scores = np.full((len(sources), len(names)), np.nan)
    moved = np.zeros_like(scores)
    column = {name: j for j, name in enumerate(names)}
    for i, src in enumerate(sources):
        for name, value in (src.get("scores") or {}).items():
            if value is not None:
                scores[i, column[name]] = value
        for name, fraction in (src.get("transferred") or {}).items():
            if name in column and fraction:
                moved[i, column[name]] = fraction

    n_cols = len(names)
    font = 7 if n_cols <= 80 else 5 if n_cols <= 200 else 4
    col_width = max(0.1, font * 1.5 / 72)  # inches: room for one rotated label
    width = max(6.0, 2.5 + n_cols * col_width)
    height = 1.8 + 0.35 * len(sources) + font * 0.6 * max(len(s) for s in shorten_tensor_names(names)) / 72
    fig, ax = plt.subplots(figsize=(width, height))

    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="#d9d9d9")  # grey: no score (a skipped head)
    image = ax.imshow(
        np.ma.masked_invalid(scores), cmap=cmap, vmin=-1.0, vmax=1.0, aspect="auto", interpolation="nearest"
    )
    rows, cols = np.nonzero(moved)
    if len(rows):
        ax.scatter(cols, rows, s=18 * moved[rows, cols], c="black", marker="o", linewidths=0, label="transferred")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, -0.02), fontsize=7, frameon=False, handletextpad=0.2)

    ax.set_xticks(range(n_cols))
    ax.set_xticklabels(shorten_tensor_names(names), rotation=90, fontsize=font)
    ax.set_yticks(range(len(sources)))
    ax.set_yticklabels([_source_label(s) for s in sources], fontsize=8)
    ax.set_xlabel("parameter tensor (model order)")
    ax.set_title(_heatmap_title(report), fontsize=9, loc="left")

    bar = fig.colorbar(image, ax=ax, fraction=0.03 if width > 12 else 0.05, pad=0.01)
    label = "gradient alignment (cosine)"
    tau = (report.get("config") or {}).get("tau")
    if isinstance(tau, (int, float)) and -1 <= tau <= 1:
        bar.ax.axhline(tau, color="black", linewidth=1.5)
        label += f"; line: τ = {tau:g}"
    bar.set_label(label, fontsize=8)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def _heatmap_title(report: dict) -> str:
    target = (report.get("target") or {}).get("name", "?")
    arch = report.get("architecture", "?")
    config = report.get("config") or {}
    tau = f", τ = {config['tau']:g}" if isinstance(config.get("tau"), (int, float)) else ""
    granularity = config.get("granularity", "tensor")
    return f"GRASP alignment per tensor — {arch} on {target} ({granularity} granularity{tau}; ● transferred)"


def _source_label(src: dict) -> str:
    moved = src.get("transferred") or {}
    count = sum(1 for v in moved.values() if v)
    return f"{src.get('ref', '?')} ({count}/{len(moved)})" if moved else str(src.get("ref", "?"))


def _ordered_union(dicts: Iterable[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for d in dicts:
        seen.update(dict.fromkeys(d))
    return list(seen)


# --------------------------------------------------------------------------- tables


def summary_tables(report: dict) -> list[TableSpec]:
    """The summary as tables of strings, shared by the terminal and Markdown renderers."""
    tables = [_steps_table(report), _final_table(report)]
    baselines = _baselines_table(report)
    if baselines is not None:
        tables.append(baselines)
    return [t for t in tables if t[2]]


def _steps_table(report: dict) -> TableSpec:
    sources = report.get("sources") or []
    steps = report.get("steps") or []
    by_ref = {s.get("ref"): s for s in steps if s.get("ref") is not None}
    aligned = not by_ref and len(steps) == len(sources)
    used: set[int] = set()
    rows = []
    for i, src in enumerate(sources):
        step = by_ref.get(src.get("ref")) if by_ref else (steps[i] if aligned else None)
        if step is not None:
            used.add(id(step))
        after = src.get("metrics_after") or {}
        fraction = src.get("fraction_transferred")
        moved = src.get("transferred") or {}
        rows.append(
            [
                str(step.get("step")) if step else ("init" if src.get("role") == "init" else f"source {i + 1}"),
                str(src.get("ref", _DASH)),
                str(src.get("revision") or _DASH),
                (src.get("commit") or "local")[:8],
                "init" if src.get("role") == "init" else _pct(fraction),
                f"{sum(1 for v in moved.values() if v)}/{len(moved)}" if moved else _DASH,
                _pct(split_accuracy(step, "validation") if step else split_accuracy(after, "validation")),
                _pct(split_accuracy(step, "test") if step else split_accuracy(after, "test")),
                _seconds(src.get("seconds")),
            ]
        )
    for step in steps:  # steps with no source of their own (a final fine-tune, say)
        if id(step) not in used:
            rows.append(
                [str(step.get("step", _DASH)), _DASH, _DASH, _DASH, _DASH, _DASH,
                 _pct(split_accuracy(step, "validation")), _pct(split_accuracy(step, "test")), _seconds(step.get("seconds"))]
            )
    headers = ["Step", "Source", "Revision", "Commit", "Transferred", "Tensors", "Val acc", "Test acc", "Time"]
    return ("Sources, in merge order (accuracy after each step)", headers, rows)


def _final_table(report: dict) -> TableSpec:
    final = report.get("final") or {}
    keys = _ordered_union(v for v in final.values() if isinstance(v, dict))
    rows = [
        [split] + [_format_metric(k, (final.get(split) or {}).get(k)) for k in keys]
        for split in final
        if isinstance(final.get(split), dict)
    ]
    return ("Merged model", ["Split"] + keys, rows)


def _baselines_table(report: dict) -> TableSpec | None:
    baselines = report.get("baselines") or {}
    if not baselines:
        return None
    rows = [[str(ref), _pct(split_accuracy(m, "validation")), _pct(split_accuracy(m, "test"))] for ref, m in baselines.items()]
    final = report.get("final") or {}
    rows.append(["GRASP merge", _pct(split_accuracy(final, "validation")), _pct(split_accuracy(final, "test"))])
    return ("Each source alone vs the merge", ["Model", "Val acc", "Test acc"], rows)


def _footer(report: dict) -> list[str]:
    lines = []
    total = (report.get("timings") or {}).get("total_seconds")
    if total is not None:
        lines.append(f"Total time: {_seconds(total)}")
    memory = report.get("memory") or {}
    peak, params = memory.get("peak_rss_bytes"), memory.get("param_bytes")
    if peak:
        text = f"Peak RSS: {peak / 2**30:.2f} GiB"
        if params:
            text += f" ({peak / params:.1f}× the model's {params / 2**20:.1f} MiB of parameters)"
        lines.append(text)
    result = memory.get("result_param_bytes")
    if params and result and result != params:
        lines.append(f"The result holds {result // params} models at inference ({result / 2**20:.1f} MiB of parameters)")
    return lines


def _header(report: dict) -> str:
    target = report.get("target") or {}
    domain = f" / {target['domain']}" if target.get("domain") else ""
    sizes = target.get("sizes") or {}
    size_text = ", ".join(f"{k} {v}" for k, v in sizes.items())
    return (
        f"GRASP merge of {len(report.get('sources') or [])} models "
        f"({report.get('family', '?')} {report.get('architecture', '?')}) "
        f"onto {target.get('name', '?')}{domain}" + (f" [{size_text}]" if size_text else "")
    )


def split_accuracy(container: Any, split: str) -> float | None:
    """Accuracy of ``split`` in any of the shapes the report uses.

    ``{"validation": {"accuracy": x}}``, ``{"val": {...}}``, ``{"val_accuracy": x}``
    or ``{"validation_accuracy": x}``.
    """
    if not isinstance(container, dict):
        return None
    aliases = ("validation", "val") if split == "validation" else (split,)
    for alias in aliases:
        nested = container.get(alias)
        if isinstance(nested, dict) and nested.get("accuracy") is not None:
            return nested["accuracy"]
        if container.get(f"{alias}_accuracy") is not None:
            return container[f"{alias}_accuracy"]
    return None


def _pct(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return _DASH
    return f"{100 * value:.2f}%"


def _seconds(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return _DASH
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _format_metric(name: str, value: Any) -> str:
    if value is None:
        return _DASH
    if "accuracy" in name:
        return _pct(value)
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


# --------------------------------------------------------------------------- renderers


def print_summary(report: dict, console: Console | None = None) -> None:
    """Print the run summary as rich tables: sources and steps, final metrics, baselines."""
    console = console or Console()
    console.print(f"[bold]{_header(report)}[/bold]")
    for title, headers, rows in summary_tables(report):
        table = Table(title=title, title_justify="left", header_style="bold")
        for h in headers:
            table.add_column(h, justify="right" if h.endswith(("acc", "Time", "Tensors", "Transferred")) else "left")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for line in _footer(report):
        console.print(line)


def summary_markdown(report: dict) -> str:
    """The same summary as :func:`print_summary`, as Markdown (for the model card)."""
    out = [_header(report), ""]
    for title, headers, rows in summary_tables(report):
        out += [f"**{title}**", "", _md_row(headers), _md_row(["---"] * len(headers))]
        out += [_md_row(row) for row in rows]
        out.append("")
    footer = _footer(report)
    if footer:
        out += [" · ".join(footer), ""]
    return "\n".join(out).rstrip() + "\n"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
