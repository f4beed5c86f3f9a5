"""The alignment heatmap: per-tensor gradient-alignment scores of every source, as a picture.

Drawn from a :class:`~hf_grasp.output.report.MergeReport` of a GRASP-family merge
(methods that score nothing have no heatmap).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from .report import MergeReport, SourceRecord

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


def plot_alignment_heatmap(report: MergeReport, path: str | os.PathLike) -> Path:
    """Plot per-tensor alignment scores of every non-init source and save it as an image.

    Rows are sources in merge order, columns parameter tensors in model order;
    colour is the cosine score on a diverging map fixed to [-1, 1] and centred
    at 0; a black dot marks a transferred tensor (its area is the fraction of the
    tensor transferred, for row or element granularity). The threshold tau is
    marked on the colour bar. Returns the path.
    """
    # A bare Figure, not pyplot: no backend is chosen, nothing process-wide changes (a caller's GUI keeps its own).
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sources = [s for s in report.sources if s.role != "init"]
    names = _ordered_union(s.scores or {} for s in sources)

    if not sources or not names:
        fig = Figure(figsize=(6, 1.5))
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "no alignment scores: nothing was merged onto the init model", ha="center", va="center")
        fig.savefig(path, dpi=120, bbox_inches="tight")
        return path

    scores = np.full((len(sources), len(names)), np.nan)
    moved = np.zeros_like(scores)
    column = {name: j for j, name in enumerate(names)}
    for i, src in enumerate(sources):
        for name, value in (src.scores or {}).items():
            if value is not None:
                scores[i, column[name]] = value
        for name, fraction in (src.transferred or {}).items():
            if name in column and fraction:
                moved[i, column[name]] = fraction

    n_cols = len(names)
    font = 7 if n_cols <= 80 else 5 if n_cols <= 200 else 4
    col_width = max(0.1, font * 1.5 / 72)  # inches: room for one rotated label
    width = max(6.0, 2.5 + n_cols * col_width)
    height = 1.8 + 0.35 * len(sources) + font * 0.6 * max(len(s) for s in shorten_tensor_names(names)) / 72
    fig = Figure(figsize=(width, height))
    ax = fig.add_subplot()

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
    tau = report.method.number("tau")
    if tau is not None and -1 <= tau <= 1:
        bar.ax.axhline(tau, color="black", linewidth=1.5)
        label += f"; line: τ = {tau:g}"
    bar.set_label(label, fontsize=8)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    return path


def _heatmap_title(report: MergeReport) -> str:
    params, number = report.method.params, report.method.number("tau")
    tau = f", τ = {number:g}" if number is not None else ""
    granularity = params.get("granularity", "tensor")
    return (f"{report.method.label} alignment per tensor — {report.architecture} on {report.target.name} "
            f"({granularity} granularity{tau}; ● transferred)")


def _source_label(src: SourceRecord) -> str:
    moved = src.transferred or {}
    count = sum(1 for v in moved.values() if v)
    return f"{src.ref} ({count}/{len(moved)})" if moved else src.ref


def _ordered_union(dicts: Iterable[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for d in dicts:
        seen.update(dict.fromkeys(d))
    return list(seen)
