"""What ``hf-grasp bench`` writes, from its result rows alone: CSV, tables, claims, plots.

Pure functions of :class:`RunResult` rows (and the memory rows); no model, no
torch. ``results.csv`` holds one row per run; :func:`summarise` turns the rows
into ``table.md`` (mean ± std per method, each method's paired difference
against ``finetune-only`` over the same (domain, seed) pairs, the τ sweep, the
memory runs, accuracy by target domain) and the figures :func:`claims` sets
beside the paper's. The main table also has an :data:`ORACLE` row: on each
target domain the existing method (not one of :data:`NEW_METHODS`) with the
best mean test accuracy there, a ceiling for any choice among existing methods
since it is chosen on test (left out when one method is best on every domain:
its row would repeat that method's). :func:`claims` adds, once a new method has
run, each new method against the ensemble and that oracle pair by pair, and the
peak-RSS ratio K=8/K=2 of every method measured at both. :func:`plot` draws
``accuracy_by_method.png``, ``accuracy_vs_tau.png``, ``accuracy_by_domain.png``
and ``memory_vs_k.png``.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from ...runtime.errors import GraspError

#: the τ every main-table GRASP row uses; the other τ values are the sweep
MAIN_TAU = 0.3
# the methods drawn in accuracy_by_domain.png besides the new methods and the oracle (all are in the table)
BY_DOMAIN_PLOT = ("grasp", "finetune-only", "best-source", "ensemble", "multi-source", "pearl", "fisher",
                  "task-arithmetic +bn")
#: merge methods under evaluation: never candidates of the oracle, which stands for what existed before them
NEW_METHODS = ("greedy-soup", "sequential-ta", "learned-interpolation", "distill", "soup-wise")
#: the baseline every row is paired against in the claims: fine-tune the source best on target validation
BEST_SOURCE = "best-source"
#: the main-table label of the best existing method on each target domain, picked on test accuracy
ORACLE = "oracle per domain (ceiling, chosen on test)"
#: |Δ| below this is a tie (accuracies are ratios of counts: equal ones subtract to 0 exactly)
TIE = 1e-9

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
    variant: str = ""  # a named option set run besides the method's defaults (runner.VARIANTS)


def read_csv(path: Path) -> list[RunResult]:
    """The runs a previous bench wrote to ``results.csv``."""
    def parse(row: dict) -> RunResult:
        return RunResult(int(row["domain"]), int(row["seed"]), row["method"],
                         float(row["tau"]) if row["tau"] else None, row["order"], row["recalibrate_bn"] == "True",
                         float(row["test_accuracy"]), float(row["val_accuracy"]), int(row["epochs"]),
                         float(row["seconds"]), row.get("variant") or "")  # absent from older CSVs

    with open(path, newline="") as f:
        try:
            return [parse(row) for row in csv.DictReader(f)]
        except (KeyError, ValueError) as e:
            raise GraspError(f"{path}: not a results.csv written by hf-grasp bench ({e})") from None


def write_csv(results: list[RunResult], path: Path) -> None:
    """Write ``results`` to ``path`` (as :func:`read_csv` reads it), replacing the file in one step."""
    from ...runtime.workspace import staged

    path.parent.mkdir(parents=True, exist_ok=True)
    with staged(path, file=True) as tmp, open(tmp, "w", newline="") as f:  # never a half-written one to resume from
        w = csv.DictWriter(f, fieldnames=[f.name for f in fields(RunResult)])
        w.writeheader()
        w.writerows(asdict(r) for r in results)


def _label(r: RunResult) -> str:
    return r.method + (f" {r.variant}" if r.variant else "") + (" +bn" if r.recalibrate_bn else "")


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _pm(xs: list[float], scale: float = 100.0, *, signed: bool = False) -> str:
    m, s = _mean_std(xs)
    return f"{scale * m:{'+' if signed else ''}.1f} ± {scale * s:.1f}"


def _is_sweep_grasp(r: RunResult) -> bool:
    """A GRASP run at its defaults in the given source order, without BN recalibration: the τ sweep's rows."""
    return r.method == "grasp" and r.order == "given" and not r.recalibrate_bn and not r.variant


def summarise(results: list[RunResult], memory: list[dict]) -> tuple[str, dict]:
    """The Markdown table and the figures the claims compare against."""
    main = [r for r in results if r.order == "given" and (r.method != "grasp" or r.tau == MAIN_TAU)]
    ref = {(r.domain, r.seed): r.test_accuracy for r in main if r.method == "finetune-only" and not r.recalibrate_bn}
    by_label: dict[str, list[RunResult]] = {}
    for r in main:
        by_label.setdefault(_label(r), []).append(r)
    picks = _oracle_picks(by_label)
    if len(set(picks.values())) > 1:  # one label best everywhere: the oracle's row would only repeat that label's
        by_label[ORACLE] = [replace(r, method=ORACLE, recalibrate_bn=False)
                            for d, label in picks.items() for r in by_label[label] if r.domain == d]
    lines = ["| method | fine-tune epochs | test accuracy % (mean ± std) | paired Δ vs finetune-only (points) | n |",
             "|---|---|---|---|---|"]
    figures: dict[str, list[float]] = {}
    for label, runs in sorted(by_label.items(), key=lambda kv: -statistics.mean(r.test_accuracy for r in kv[1])):
        acc = [r.test_accuracy for r in runs]
        diffs = [r.test_accuracy - ref[(r.domain, r.seed)] for r in runs if (r.domain, r.seed) in ref]
        figures[label] = acc
        delta = _pm(diffs, signed=True) if diffs else "–"
        epochs = "–" if label == ORACLE else runs[0].epochs  # its runs come from methods with other budgets
        lines.append(f"| {label} | {epochs} | {_pm(acc)} | {delta} | {len(runs)} |")
    taus = sorted({r.tau for r in results if _is_sweep_grasp(r)})
    figures["_tau"] = {t: [r.test_accuracy for r in results if _is_sweep_grasp(r) and r.tau == t] for t in taus}
    lines += ["", "| τ | GRASP test accuracy % |", "|---|---|"]
    lines += [f"| {t} | {_pm(figures['_tau'][t])} |" for t in taus]
    spreads = []
    for key in {(r.domain, r.seed) for r in results}:
        accs = [r.test_accuracy for r in results if (r.domain, r.seed) == key and r.method == "grasp"
                and r.tau == MAIN_TAU and not r.recalibrate_bn and not r.variant]
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
    if picks:
        lines += ["", "oracle picks: " + ", ".join(f"d{d} {label}" for d, label in picks.items())]
    figures["_oracle_picks"] = picks
    figures["_pairs"] = {label: {(r.domain, r.seed): r.test_accuracy for r in runs} for label, runs in by_label.items()}
    figures["_by_domain"] = {label: {d: [r.test_accuracy for r in runs if r.domain == d] for d in domains}
                             for label, runs in by_label.items()}
    grasp = {(r.domain, r.seed): r.test_accuracy for r in by_label.get("grasp", [])}
    figures["_paired_vs_grasp"] = {label: [grasp[(r.domain, r.seed)] - r.test_accuracy for r in runs
                                           if (r.domain, r.seed) in grasp] for label, runs in by_label.items()}
    return "\n".join(lines), figures


def _is_new(label: str) -> bool:
    """A label of a method under evaluation or of a variant (an option set the bench adds to a method)."""
    if label == ORACLE:
        return False
    method, *variant = label.removesuffix(" +bn").split(" ")
    return method in NEW_METHODS or bool(variant)


def _oracle_picks(by_label: dict[str, list[RunResult]]) -> dict[int, str]:
    """For each domain, the existing label with the best mean test accuracy there ({} with fewer than 2 labels).

    Equal means go to the label with the better overall mean, then to the first by name, so a pick never
    depends on the order of the rows.
    """
    existing = sorted(label for label in by_label if not _is_new(label) and label != ORACLE)
    if len(existing) < 2:
        return {}
    overall = {label: statistics.mean(r.test_accuracy for r in by_label[label]) for label in existing}
    picks = {}
    for d in sorted({r.domain for label in existing for r in by_label[label]}):
        means = {label: statistics.mean(xs) for label in existing
                 if (xs := [r.test_accuracy for r in by_label[label] if r.domain == d])}
        picks[d] = max(means, key=lambda label: (means[label], overall[label]))
    return picks


def _rss(memory: list[dict]) -> dict[tuple[int, str], int]:
    return {(m["k"], m["method"]): m["peak_rss_bytes"] for m in memory}


def _memory_text(memory: list[dict]) -> str:
    """Peak RSS of GRASP vs naive multi-source at each K both were measured at."""
    by = _rss(memory)
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
                f"(range {max(taus.values()) - min(taus.values()):.1f} points)") if len(taus) > 1 else \
        "not run" if not taus else "not run (one τ)"
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
    labels = [k for k in figures if not k.startswith("_")]
    new = sorted((k for k in labels if _is_new(k) and k != ORACLE), key=lambda k: -statistics.mean(figures[k]))
    if new:  # the section judges the new methods; without them the table above already says it for GRASP
        best = max((k for k in labels if k != ORACLE), key=lambda k: statistics.mean(figures[k]))
        rows += ["", "## Against the ensemble and the per-domain oracle", "",
                 f"Pairs are (domain, seed). The oracle takes, on each domain, the existing method with the best "
                 f"mean test accuracy there (a ceiling: chosen on test). Best by mean without the oracle: {best}.",
                 "", _against_table(figures, list(dict.fromkeys([*new, "grasp", best, *best_source_label(figures)])))]
    reference = best_source_label(figures)
    if reference:
        rows += ["", f"## Against the best single source ({reference[0]})", "",
                 "Pairs are (domain, seed); the reference is the best-source row with the best mean: pick the source "
                 "that scores best on target validation and fine-tune it.", "",
                 _against_best_source(figures, reference[0])]
    ratios = _rss_ratio_table(memory)
    if ratios:
        rows += ["", "## Peak RSS K8/K2 per method", "", ratios]
    return "\n".join(rows)


def paired(figures: dict, label: str, other: dict | None) -> tuple[str, str]:
    """``label`` minus ``other`` ({(domain, seed): accuracy}) over their common pairs: Δ text, wins/ties/losses."""
    mine = figures["_pairs"].get(label, {})
    diffs = [mine[key] - other[key] for key in mine if other and key in other]
    if not diffs:
        return "not run", "not run"
    wins, ties = sum(d >= TIE for d in diffs), sum(abs(d) < TIE for d in diffs)
    return _pm(diffs, signed=True), f"{wins}/{ties}/{len(diffs) - wins - ties}"


def best_source_label(figures: dict) -> list[str]:
    """The best-source row with the best mean (as a one-element list), or [] when best-source did not run."""
    labels = [k for k in figures if not k.startswith("_") and k.split(" ")[0] == BEST_SOURCE]
    return [max(labels, key=lambda k: statistics.mean(figures[k]))] if labels else []


def _against_best_source(figures: dict, reference: str) -> str:
    """Every row against ``reference``, pair by pair, and the domains where its mean is at least the reference's."""
    pairs, per = figures["_pairs"], figures["_by_domain"]
    rows = [f"| label | mean test % | paired Δ vs {reference} (points) | wins/ties/losses "
            f"| domains where mean ≥ {reference}'s |", "|---|---|---|---|---|"]
    ref_domain = {d: statistics.mean(xs) for d, xs in per[reference].items() if xs}
    labels = sorted((k for k in figures if not k.startswith("_") and k != reference),
                    key=lambda k: -statistics.mean(figures[k]))
    for label in labels:
        mine = per.get(label, {})
        hits = [d for d in ref_domain if mine.get(d) and statistics.mean(mine[d]) > ref_domain[d] - TIE]
        rows.append(f"| {label} | {100 * statistics.mean(figures[label]):.1f} | "
                    + " | ".join(paired(figures, label, pairs[reference]))
                    + f" | {len(hits)}/{len(ref_domain)} |")
    return "\n".join(rows)


def _against_table(figures: dict, labels: list[str]) -> str:
    """Each of ``labels`` (those in ``figures``) against the ensemble and the per-domain oracle, pair by pair."""
    picks, pairs = figures["_oracle_picks"], figures["_pairs"]
    # from the picks, not figures[ORACLE]: that row is left out when one label is best on every domain
    oracle = {key: acc for d, label in picks.items() for key, acc in pairs[label].items() if key[0] == d}
    best = {d: statistics.mean(figures["_by_domain"][label][d]) for d, label in picks.items()}
    rows = ["| label | mean test % | paired Δ vs ensemble (points) | wins/ties/losses vs ensemble "
            "| paired Δ vs oracle (points) | wins/ties/losses vs oracle "
            "| domains where mean ≥ best existing method's |", "|---|---|---|---|---|---|---|"]
    for label in (k for k in labels if k in figures):
        where = "not run"
        if best:
            per = figures["_by_domain"][label]
            hits = [d for d in best if per.get(d) and statistics.mean(per[d]) > best[d] - TIE]
            where = f"{len(hits)}/{len(best)}" + (": " + ", ".join(f"d{d}" for d in hits) if hits else "")
        cells = [*paired(figures, label, pairs.get("ensemble")), *paired(figures, label, oracle)]
        rows.append(f"| {label} | {100 * statistics.mean(figures[label]):.1f} | " + " | ".join(cells)
                    + f" | {where} |")
    return "\n".join(rows)


def _rss_ratio_table(memory: list[dict]) -> str:
    """Peak RSS at K=8 over K=2 for each method measured at both ("" when none was)."""
    by = _rss(memory)
    methods = [m for m in dict.fromkeys(m["method"] for m in memory) if (2, m) in by and (8, m) in by]
    if not methods:
        return ""
    rows = ["| method | K=2 (MiB) | K=8 (MiB) | K8/K2 |", "|---|---|---|---|"]
    rows += [f"| {m} | {by[(2, m)] / 2**20:.0f} | {by[(8, m)] / 2**20:.0f} | {by[(8, m)] / by[(2, m)]:.3f} |"
             for m in methods]
    return "\n".join(rows)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _plot_by_method(plt, figures: dict, path: Path) -> None:
    labels = sorted((k for k in figures if not k.startswith("_")), key=lambda k: -statistics.mean(figures[k]))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels)), 4))
    means = [100 * statistics.mean(figures[k]) for k in labels]
    errs = [100 * _mean_std(figures[k])[1] for k in labels]
    colours = {"grasp": "#dd8452", ORACLE: "#8c8c8c"}  # the oracle is a ceiling, not a method: drawn apart
    ax.bar(range(len(labels)), means, yerr=errs, capsize=3, color=[colours.get(k, "#4c72b0") for k in labels])
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
    fig, ax = plt.subplots(figsize=(9, 4.5))
    tab20 = plt.get_cmap("tab20").colors  # up to 7 + 6 new + oracle lines: more than the default 10 colours
    colours = tab20[0::2] + tab20[1::2]  # the 10 strong ones first: tab20 pairs each with a paler twin
    for i, (label, per) in enumerate(sorted(by_domain.items())):
        ds = [d for d, xs in sorted(per.items()) if xs]
        style = ":" if label == ORACLE else "--" if _is_new(label) else "-"
        ax.plot(ds, [100 * statistics.mean(per[d]) for d in ds], marker="o", label=label, linestyle=style,
                color="black" if label == ORACLE else colours[i % len(colours)],
                linewidth=2.5 if label in ("grasp", ORACLE) else 1.2)
    ax.set_xlabel("target domain (rotation 15·d degrees)")
    ax.set_ylabel("test accuracy (%, mean over seeds)")
    ax.set_title("accuracy by target domain")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside: 14 lines would hide the plot
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
    from types import SimpleNamespace

    import matplotlib
    from matplotlib.figure import Figure

    def subplots(figsize):
        fig = Figure(figsize=figsize)
        return fig, fig.add_subplot()

    # Bare Figures, not pyplot: no backend is chosen and nothing process-wide changes (a caller's GUI session
    # keeps its backend). The plots need just these two of pyplot's names.
    plt = SimpleNamespace(subplots=subplots, get_cmap=matplotlib.colormaps.__getitem__)
    output = Path(output)
    _plot_by_method(plt, figures, output / "accuracy_by_method.png")
    if any(figures["_tau"].values()):
        _plot_tau(plt, figures["_tau"], output / "accuracy_vs_tau.png")
    by_domain = {k: v for k, v in figures["_by_domain"].items() if k in BY_DOMAIN_PLOT or _is_new(k) or k == ORACLE}
    if by_domain:
        _plot_by_domain(plt, by_domain, output / "accuracy_by_domain.png")
    if memory:
        _plot_memory(plt, memory, output / "memory_vs_k.png")
