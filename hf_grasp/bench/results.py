"""What ``hf-grasp bench`` writes, from its result rows alone: CSV, tables, claims, plots.

Pure functions of :class:`RunResult` rows (and the memory rows); no model, no
torch. ``results.csv`` holds one row per run; :func:`summarise` turns the rows
into ``table.md`` (mean ± std per method, each method's paired difference
against ``finetune-only`` over the same (domain, seed) pairs, the τ sweep, the
memory runs, accuracy by target domain) and the figures :func:`claims` sets
beside the paper's; :func:`plot` draws ``accuracy_by_method.png``,
``accuracy_vs_tau.png``, ``accuracy_by_domain.png`` and ``memory_vs_k.png``.
"""

from __future__ import annotations

import csv
import os
import statistics
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import GraspError

#: the τ every main-table GRASP row uses; the other τ values are the sweep
MAIN_TAU = 0.3
# the methods drawn in accuracy_by_domain.png (all of them are in the table)
BY_DOMAIN_PLOT = ("grasp", "finetune-only", "ensemble", "multi-source", "pearl", "fisher", "task-arithmetic +bn")

PAPER_CLAIMS = {
    "GRASP vs Ensemble": "93.5% vs 71.7% mean accuracy (+21.8 points)",
    "GRASP vs Multi-Source": "GRASP ahead of Multi-Source on every dataset",
    "GRASP vs PEARL": "GRASP ahead of PEARL",
    "τ robustness": "τ in 0.3-0.9 changes accuracy by about ±0.04%",
    "order spread": "five source orders vary by ≤ 0.8%",
    "ablation: no alignment": "costs ≈ 1.5 points",
    "ablation: no fine-tuning": "costs ≈ 2.8 points",
    "memory": "4.0 GB vs 15.4 GB for Multi-Source at K=4 (≈ 3.9x)",
}


@dataclass
class RunResult:
    """One bench run: a method (at τ, in a source order, ± BN recalibration) on one (target domain, seed)."""

    domain: int
    seed: int
    method: str
    tau: float | None
    order: str
    recalibrate_bn: bool
    test_accuracy: float
    val_accuracy: float
    epochs: int
    seconds: float


def read_csv(path: Path) -> list[RunResult]:
    """The runs a previous bench wrote to ``results.csv``."""
    def parse(row: dict) -> RunResult:
        return RunResult(int(row["domain"]), int(row["seed"]), row["method"],
                         float(row["tau"]) if row["tau"] else None, row["order"], row["recalibrate_bn"] == "True",
                         float(row["test_accuracy"]), float(row["val_accuracy"]), int(row["epochs"]),
                         float(row["seconds"]))

    with open(path, newline="") as f:
        try:
            return [parse(row) for row in csv.DictReader(f)]
        except (KeyError, ValueError) as e:
            raise GraspError(f"{path}: not a results.csv written by hf-grasp bench ({e})") from None


def write_csv(results: list[RunResult], path: Path) -> None:
    """Write ``results`` to ``path`` (as :func:`read_csv` reads it), replacing the file in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[f.name for f in fields(RunResult)])
        w.writeheader()
        w.writerows(asdict(r) for r in results)
    os.replace(tmp, path)  # never a half-written results.csv to resume from


def _label(r: RunResult) -> str:
    return r.method + (" +bn" if r.recalibrate_bn else "")


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _pm(xs: list[float], scale: float = 100.0, *, signed: bool = False) -> str:
    m, s = _mean_std(xs)
    return f"{scale * m:{'+' if signed else ''}.1f} ± {scale * s:.1f}"


def _is_sweep_grasp(r: RunResult) -> bool:
    """A GRASP run in the given source order without BN recalibration: the τ sweep's rows."""
    return r.method == "grasp" and r.order == "given" and not r.recalibrate_bn


def summarise(results: list[RunResult], memory: list[dict]) -> tuple[str, dict]:
    """The Markdown table and the figures the claims compare against."""
    main = [r for r in results if r.order == "given" and (r.method != "grasp" or r.tau == MAIN_TAU)]
    ref = {(r.domain, r.seed): r.test_accuracy for r in main if r.method == "finetune-only" and not r.recalibrate_bn}
    by_label: dict[str, list[RunResult]] = {}
    for r in main:
        by_label.setdefault(_label(r), []).append(r)
    lines = ["| method | fine-tune epochs | test accuracy % (mean ± std) | paired Δ vs finetune-only (points) | n |",
             "|---|---|---|---|---|"]
    figures: dict[str, list[float]] = {}
    for label, runs in sorted(by_label.items(), key=lambda kv: -statistics.mean(r.test_accuracy for r in kv[1])):
        acc = [r.test_accuracy for r in runs]
        diffs = [r.test_accuracy - ref[(r.domain, r.seed)] for r in runs if (r.domain, r.seed) in ref]
        figures[label] = acc
        delta = _pm(diffs, signed=True) if diffs else "–"
        lines.append(f"| {label} | {runs[0].epochs} | {_pm(acc)} | {delta} | {len(runs)} |")
    taus = sorted({r.tau for r in results if _is_sweep_grasp(r)})
    figures["_tau"] = {t: [r.test_accuracy for r in results if _is_sweep_grasp(r) and r.tau == t] for t in taus}
    lines += ["", "| τ | GRASP test accuracy % |", "|---|---|"]
    lines += [f"| {t} | {_pm(figures['_tau'][t])} |" for t in taus]
    spreads = []
    for key in {(r.domain, r.seed) for r in results}:
        accs = [r.test_accuracy for r in results if (r.domain, r.seed) == key and r.method == "grasp"
                and r.tau == MAIN_TAU and not r.recalibrate_bn]
        if len(accs) > 1:
            spreads.append(max(accs) - min(accs))
    if memory:
        lines += ["", "| K | method | peak RSS (MiB) |", "|---|---|---|"]
        lines += [f"| {m['k']} | {m['method']} | {m['peak_rss_bytes'] / 2**20:.0f} |" for m in memory]
    figures["_order_spread"] = spreads
    domains = sorted({r.domain for r in main})
    lines += ["", "Test accuracy % by target domain (mean over seeds):", "",
              "| method | " + " | ".join(f"d{d}" for d in domains) + " |", "|---|" + "---|" * len(domains)]
    for label in [k for k in figures if not k.startswith("_")]:
        per = [[r.test_accuracy for r in by_label[label] if r.domain == d] for d in domains]
        lines.append(f"| {label} | " + " | ".join(f"{100 * statistics.mean(x):.1f}" if x else "–" for x in per)
                     + " |")
    figures["_by_domain"] = {label: {d: [r.test_accuracy for r in runs if r.domain == d] for d in domains}
                             for label, runs in by_label.items()}
    grasp = {(r.domain, r.seed): r.test_accuracy for r in by_label.get("grasp", [])}
    figures["_paired_vs_grasp"] = {label: [grasp[(r.domain, r.seed)] - r.test_accuracy for r in runs
                                           if (r.domain, r.seed) in grasp] for label, runs in by_label.items()}
    return "\n".join(lines), figures


def _memory_text(memory: list[dict]) -> str:
    """Peak RSS of GRASP vs naive multi-source at each K both were measured at."""
    by = {(m["k"], m["method"]): m["peak_rss_bytes"] for m in memory}
    return "; ".join(
        f"K={k}: {by[(k, 'grasp')] / 2**20:.0f} vs {by[(k, 'multi-source-naive')] / 2**20:.0f} MiB "
        f"({by[(k, 'multi-source-naive')] / by[(k, 'grasp')]:.2f}x)"
        for k in sorted({m["k"] for m in memory}) if (k, "grasp") in by and (k, "multi-source-naive") in by
    ) or "not run"


def claims(figures: dict, memory: list[dict]) -> str:
    """The paper's headline claims beside what this run measured ("not run" where a run is missing)."""
    def mean(label):
        xs = figures.get(label)
        return statistics.mean(xs) * 100 if xs else None

    def vs(other):
        g, o = mean("grasp"), mean(other)
        if g is None or o is None:
            return "not run"
        paired = figures["_paired_vs_grasp"].get(other) or []
        wins = sum(d > 0 for d in paired)
        return (f"GRASP {g:.1f}% vs {o:.1f}% (paired {_pm(paired, signed=True)} points; GRASP ahead in {wins} of "
                f"{len(paired)} (domain, seed) pairs)")

    taus = {t: statistics.mean(v) * 100 for t, v in figures["_tau"].items() if v and 0.3 <= t <= 0.9}
    tau_text = (f"τ 0.3–0.9: {min(taus.values()):.1f}%–{max(taus.values()):.1f}% "
                f"(range {max(taus.values()) - min(taus.values()):.1f} points)") if taus else "not run"
    spread = figures["_order_spread"]
    order_text = f"max − min over orders: {_pm(spread)} points" if spread else "not run"
    g = mean("grasp")
    abl = {k: (f"{g - mean(k):+.1f} points for GRASP (paired {_pm(figures['_paired_vs_grasp'][k], signed=True)})"
               if g is not None and mean(k) is not None else "not run") for k in ("no-align", "no-finetune")}
    measured = {
        "GRASP vs Ensemble": vs("ensemble"),
        "GRASP vs Multi-Source": vs("multi-source"),
        "GRASP vs PEARL": vs("pearl"),
        "τ robustness": tau_text,
        "order spread": order_text,
        "ablation: no alignment": abl["no-align"],
        "ablation: no fine-tuning": abl["no-finetune"],
        "memory": _memory_text(memory),
    }
    rows = ["| claim | paper | measured here |", "|---|---|---|"]
    rows += [f"| {k} | {PAPER_CLAIMS[k]} | {measured[k]} |" for k in PAPER_CLAIMS]
    return "\n".join(rows)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_by_method(plt, figures: dict, path: Path) -> None:
    labels = sorted((k for k in figures if not k.startswith("_")), key=lambda k: -statistics.mean(figures[k]))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels)), 4))
    means = [100 * statistics.mean(figures[k]) for k in labels]
    errs = [100 * _mean_std(figures[k])[1] for k in labels]
    ax.bar(range(len(labels)), means, yerr=errs, capsize=3,
           color=["#dd8452" if k == "grasp" else "#4c72b0" for k in labels])
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(max(0, min(means) - 10), 100)
    ax.set_title("accuracy by method (mean ± std over domains × seeds)")
    _save(fig, path)


def _plot_tau(plt, by_tau: dict, path: Path) -> None:
    taus = sorted(t for t, v in by_tau.items() if v)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(taus, [100 * statistics.mean(by_tau[t]) for t in taus],
                yerr=[100 * _mean_std(by_tau[t])[1] for t in taus], marker="o", capsize=3)
    ax.set_xlabel("τ")
    ax.set_ylabel("GRASP test accuracy (%)")
    ax.set_title("accuracy vs τ")
    _save(fig, path)


def _plot_by_domain(plt, by_domain: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, per in sorted(by_domain.items()):
        ds = [d for d, xs in sorted(per.items()) if xs]
        ax.plot(ds, [100 * statistics.mean(per[d]) for d in ds], marker="o", label=label,
                linewidth=2.5 if label == "grasp" else 1.2)
    ax.set_xlabel("target domain (rotation 15·d degrees)")
    ax.set_ylabel("test accuracy (%, mean over seeds)")
    ax.set_title("accuracy by target domain")
    ax.legend(fontsize=7)
    _save(fig, path)


def _plot_memory(plt, memory: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method in sorted({m["method"] for m in memory}):
        pts = sorted((m["k"], m["peak_rss_bytes"] / 2**20) for m in memory if m["method"] == method)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
    ax.set_xlabel("K (sources)")
    ax.set_ylabel("peak RSS (MiB)")
    ax.set_title("memory vs K")
    ax.legend()
    _save(fig, path)


def plot(results: list[RunResult], memory: list[dict], figures: dict, output: Path) -> None:
    """Draw the bench's PNGs into ``output`` from :func:`summarise`'s figures (a plot without data is skipped)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never a display, also on a desktop
    import matplotlib.pyplot as plt

    output = Path(output)
    _plot_by_method(plt, figures, output / "accuracy_by_method.png")
    if any(figures["_tau"].values()):
        _plot_tau(plt, figures["_tau"], output / "accuracy_vs_tau.png")
    by_domain = {k: v for k, v in figures["_by_domain"].items() if k in BY_DOMAIN_PLOT}
    if by_domain:
        _plot_by_domain(plt, by_domain, output / "accuracy_by_domain.png")
    if memory:
        _plot_memory(plt, memory, output / "memory_vs_k.png")
