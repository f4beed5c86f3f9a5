"""``hf-grasp bench``: every merge method, τ sweep, source orders, ablations and memory, on one recipe.

For each target domain and seed it makes the sources (a shared base, one
source per other domain), runs every registered method through the same code
path, and writes:

- ``results.csv``: one row per run (domain, seed, method, τ, order, recalibrate-bn, accuracy);
- ``table.md``: mean ± std per method, and each method's paired difference
  against ``finetune-only`` over the same (domain, seed) pairs;
- ``accuracy_by_method.png``, ``accuracy_vs_tau.png``, ``memory_vs_k.png``;
- the paper's claims beside the measured figures, printed and in ``claims.md``.

Every method that trains gets the same total fine-tuning budget in epochs
(GRASP's initial epochs plus one round per further source).
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from tqdm.auto import tqdm

from .benchmarks import digits_eras
from .benchmarks.make_sources import make_sources
from .errors import GraspError
from .methods import METHODS

TAUS = (0.1, 0.3, 0.5, 0.7, 0.9)
N_ORDERS = 5
MEMORY_K = (2, 4, 8)
# the methods drawn in accuracy_by_domain.png (all of them are in the table)
BY_DOMAIN_PLOT = ("grasp", "finetune-only", "ensemble", "multi-source", "pearl", "fisher", "task-arithmetic +bn")
# multi-source-naive only exists for the memory comparison; it equals multi-source in accuracy
SKIP_IN_ACCURACY = {"multi-source-naive"}

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
class BenchConfig:
    """What one ``hf-grasp bench`` run covers."""

    recipe: str = "digits-eras"
    arch: str = "resnet"
    domains: list[int] = field(default_factory=lambda: [d for d in range(digits_eras.NUM_DOMAINS)])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    methods: list[str] | None = None          # None: every registered method
    taus: tuple[float, ...] = TAUS
    n_orders: int = N_ORDERS
    max_sources: int | None = None            # K; None: every non-target domain
    memory_k: tuple[int, ...] = MEMORY_K
    memory_arch: str = "resnet18"
    pretrain_epochs: int = digits_eras.RECIPE["pretrain_epochs"]
    source_epochs: int = digits_eras.RECIPE["source_epochs"]
    options: dict = field(default_factory=dict)  # merge option overrides (e.g. epochs in --quick)

    @classmethod
    def quick(cls, **overrides) -> "BenchConfig":
        """One domain, one seed, K = 3, one epoch per round, a small model for memory: minutes on 2 CPU cores."""
        base = dict(domains=[digits_eras.RECIPE["target_domain"]], seeds=[0], taus=(0.1, 0.5, 0.9), n_orders=2,
                    max_sources=3, memory_k=(2, 4), memory_arch="resnet", pretrain_epochs=3, source_epochs=3,
                    options={"initial_epochs": 1, "finetune_epochs": 1})
        return cls(**{**base, **overrides})


@dataclass
class RunResult:
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


def _source_order(domain: int) -> list[int]:
    """Sources on both sides of the target, not nearest-first (the recipe's order for its target)."""
    if domain == digits_eras.RECIPE["target_domain"]:
        return list(digits_eras.RECIPE["source_domains"])
    others = [d for d in range(digits_eras.NUM_DOMAINS) if d != domain]
    return sorted(others, key=lambda d: (-abs(d - domain), d))  # farthest first, alternating sides by tie order


def _run(refs, domain, seed, method, cfg: BenchConfig, *, base, tau=None, order="given", recal=False) -> RunResult:
    from .merger import GraspMerger

    opts = {**cfg.options, "seed": seed, "target_domain": str(domain), "order": order, "recalibrate_bn": recal,
            "eval_sources": False}
    if tau is not None:
        opts["tau"] = tau
    if METHODS[method].needs_base:
        opts["base"] = str(base)
    start = time.time()
    merger = GraspMerger.from_pretrained(refs, target="digits-eras", recipe=cfg.recipe, method=method, **opts)
    report = merger.merge().report
    return RunResult(domain, seed, method, tau if method == "grasp" else None, order, recal,
                     report["final"]["test"]["accuracy"], report["final"]["validation"]["accuracy"],
                     report["epochs_trained"], time.time() - start)


def _sources(cfg: BenchConfig, output: Path, seed: int) -> Path:
    """A base and one source per domain for ``seed``, shared by every target domain (made once)."""
    root = output / "sources" / f"{cfg.arch.replace(':', '-')}-seed{seed}"
    if not (root / "base").is_dir():
        make_sources(root, arch=cfg.arch, target_domain=None, seed=seed,
                     pretrain_epochs=cfg.pretrain_epochs, source_epochs=cfg.source_epochs)
    return root


def _methods(cfg: BenchConfig) -> list[str]:
    methods = [m for m in (cfg.methods or list(METHODS)) if m not in SKIP_IN_ACCURACY]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise GraspError(f"unknown method(s) {', '.join(unknown)}; registered: {', '.join(METHODS)}")
    return methods


def run_pair(cfg: BenchConfig, output: Path, domain: int, seed: int) -> list[RunResult]:
    """Every run for one (target domain, seed): methods (± BN recalibration), τ sweep, source orders."""
    methods = _methods(cfg)
    root = _sources(cfg, output, seed)
    refs = [str(root / f"d{d}") for d in _source_order(domain)[: cfg.max_sources]]
    base = root / "base"
    results: list[RunResult] = []
    for method in methods:
        tau = 0.3 if method == "grasp" else None
        results.append(_run(refs, domain, seed, method, cfg, base=base, tau=tau))
        if METHODS[method].parameter_space:
            results.append(_run(refs, domain, seed, method, cfg, base=base, tau=tau, recal=True))
    for tau in cfg.taus:
        if tau != 0.3 or "grasp" not in methods:
            results.append(_run(refs, domain, seed, "grasp", cfg, base=base, tau=tau))
    rng = random.Random(seed)
    for _ in range(cfg.n_orders - 1):
        perm = list(range(len(refs)))
        rng.shuffle(perm)
        results.append(_run(refs, domain, seed, "grasp", cfg, base=base, tau=0.3, order=",".join(map(str, perm))))
    return results


def _worker_init(threads: int, log_dir: str) -> None:
    """A bench worker: its share of the cores, progress bars to its own log."""
    import torch

    torch.set_num_threads(threads)
    log = open(Path(log_dir) / f"worker-{os.getpid()}.log", "a", buffering=1)
    os.dup2(log.fileno(), 2)


def _each(fn, jobs: list[tuple], workers: int, output: Path):
    """Yield ``(job, fn(*job))`` as jobs finish: in this process, or over ``workers`` spawned processes."""
    if workers <= 1:
        for job in jobs:
            yield job, fn(*job)
        return
    (output / "logs").mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                             initargs=(threads, str(output / "logs"))) as pool:
        futures = {pool.submit(fn, *job): job for job in jobs}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()


def run_accuracy(cfg: BenchConfig, output: Path, *, done: list[RunResult] = (), workers: int = 1) -> list[RunResult]:
    """All accuracy runs of every (domain, seed) not already in ``done``; ``results.csv`` after each."""
    _methods(cfg)  # unknown names fail before hours of work
    results = list(done)
    finished = {(r.domain, r.seed) for r in results}
    pairs = [(d, s) for d in cfg.domains for s in cfg.seeds if (d, s) not in finished]
    # sources first (one set per seed), so parallel pairs never build the same set twice
    seeds = sorted({s for _, s in pairs})
    for _ in _each(_sources, [(cfg, output, s) for s in seeds], workers, output):
        pass
    bar = tqdm(total=len(pairs), desc="bench: (domain, seed) pairs", unit="pair", disable=not pairs)
    for (_, _, domain, seed), runs in _each(run_pair, [(cfg, output, d, s) for d, s in pairs], workers, output):
        results += runs
        results.sort(key=lambda r: (r.domain, r.seed))  # stable: runs keep their order within a pair
        _write_csv(results, output / "results.csv")  # after every pair: an interrupted bench resumes from here
        bar.update()
        bar.write(f"bench: target domain {domain}, seed {seed} done ({len(runs)} runs, "
                  f"{sum(r.seconds for r in runs) / 60:.1f} min)")
    bar.close()
    return results


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


MEMORY_CHILD = """
import json, sys
from hf_grasp import GraspMerger
from hf_grasp.report import peak_rss_bytes
args = json.loads(sys.argv[1])
GraspMerger.from_pretrained(args["sources"], target="digits-eras", method=args["method"], eval_sources=False,
                            initial_epochs=1, finetune_epochs=1, lr=1e-3).merge()
print(json.dumps(peak_rss_bytes()))
"""


def run_memory(cfg: BenchConfig) -> list[dict]:
    """Peak RSS of grasp vs naive multi-source for each K, each run in a fresh interpreter."""
    from . import archs

    rows = []
    with tempfile.TemporaryDirectory(prefix="hf-grasp-mem-") as tmp:
        dirs = []
        for i in range(max(cfg.memory_k)):
            d = Path(tmp) / f"s{i}"
            archs.new_checkpoint(cfg.memory_arch, d, num_labels=10, image_size=32, seed=i)
            dirs.append(str(d))
        for k in cfg.memory_k:
            for method in ("grasp", "multi-source-naive"):
                if method not in METHODS:
                    continue
                arg = json.dumps({"sources": dirs[:k], "method": method})
                proc = subprocess.run([sys.executable, "-c", MEMORY_CHILD, arg], capture_output=True, text=True)
                if proc.returncode != 0:
                    raise GraspError(f"memory run {method} K={k} failed: {proc.stderr.strip().splitlines()[-1]}")
                rows.append({"k": k, "method": method, "peak_rss_bytes": json.loads(proc.stdout.splitlines()[-1])})
    return rows


def _write_csv(results: list[RunResult], path: Path) -> None:
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


def summarise(results: list[RunResult], memory: list[dict]) -> tuple[str, dict]:
    """The Markdown table and the figures the claims compare against."""
    main = [r for r in results if r.order == "given" and (r.method != "grasp" or r.tau == 0.3)]
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
        lines.append(f"| {label} | {runs[0].epochs} | {_pm(acc)} | {_pm(diffs, signed=True) if diffs else '–'} | {len(runs)} |")
    taus = sorted({r.tau for r in results if r.method == "grasp" and r.order == "given" and not r.recalibrate_bn})
    lines += ["", "| τ | GRASP test accuracy % |", "|---|---|"]
    for t in taus:
        lines.append(f"| {t} | {_pm([r.test_accuracy for r in results if r.method == 'grasp' and r.tau == t and r.order == 'given' and not r.recalibrate_bn])} |")
    spreads = []
    for key in {(r.domain, r.seed) for r in results}:
        accs = [r.test_accuracy for r in results if (r.domain, r.seed) == key and r.method == "grasp"
                and r.tau == 0.3 and not r.recalibrate_bn]
        if len(accs) > 1:
            spreads.append(max(accs) - min(accs))
    if memory:
        lines += ["", "| K | method | peak RSS (MiB) |", "|---|---|---|"]
        lines += [f"| {m['k']} | {m['method']} | {m['peak_rss_bytes'] / 2**20:.0f} |" for m in memory]
    figures["_tau"] = {t: [r.test_accuracy for r in results if r.method == "grasp" and r.tau == t
                           and r.order == "given" and not r.recalibrate_bn] for t in taus}
    figures["_order_spread"] = spreads
    domains = sorted({r.domain for r in main})
    lines += ["", "Test accuracy % by target domain (mean over seeds):", "",
              "| method | " + " | ".join(f"d{d}" for d in domains) + " |", "|---|" + "---|" * len(domains)]
    for label in [k for k in figures if not k.startswith("_")]:
        per = [[r.test_accuracy for r in by_label[label] if r.domain == d] for d in domains]
        lines.append(f"| {label} | " + " | ".join(f"{100 * statistics.mean(x):.1f}" if x else "–" for x in per) + " |")
    figures["_by_domain"] = {label: {d: [r.test_accuracy for r in runs if r.domain == d] for d in domains}
                             for label, runs in by_label.items()}
    grasp = {(r.domain, r.seed): r.test_accuracy for r in by_label.get("grasp", [])}
    figures["_paired_vs_grasp"] = {label: [grasp[(r.domain, r.seed)] - r.test_accuracy for r in runs
                                           if (r.domain, r.seed) in grasp] for label, runs in by_label.items()}
    return "\n".join(lines), figures


def claims(figures: dict, memory: list[dict]) -> str:
    """The paper's headline claims beside what this run measured."""
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
    mem_text = "not run"
    by = {(m["k"], m["method"]): m["peak_rss_bytes"] for m in memory}
    ks = sorted({m["k"] for m in memory})
    if ks:
        mem_text = "; ".join(
            f"K={k}: {by[(k, 'grasp')] / 2**20:.0f} vs {by[(k, 'multi-source-naive')] / 2**20:.0f} MiB "
            f"({by[(k, 'multi-source-naive')] / by[(k, 'grasp')]:.2f}x)"
            for k in ks if (k, "grasp") in by and (k, "multi-source-naive") in by) or "not run"
    measured = {
        "GRASP vs Ensemble": vs("ensemble"),
        "GRASP vs Multi-Source": vs("multi-source"),
        "GRASP vs PEARL": vs("pearl"),
        "τ robustness": tau_text,
        "order spread": order_text,
        "ablation: no alignment": abl["no-align"],
        "ablation: no fine-tuning": abl["no-finetune"],
        "memory": mem_text,
    }
    rows = ["| claim | paper | measured here |", "|---|---|---|"]
    rows += [f"| {k} | {PAPER_CLAIMS[k]} | {measured[k]} |" for k in PAPER_CLAIMS]
    return "\n".join(rows)


def plot(results: list[RunResult], memory: list[dict], figures: dict, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [k for k in figures if not k.startswith("_")]
    labels.sort(key=lambda k: -statistics.mean(figures[k]))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels)), 4))
    means = [100 * statistics.mean(figures[k]) for k in labels]
    errs = [100 * _mean_std(figures[k])[1] for k in labels]
    ax.bar(range(len(labels)), means, yerr=errs, capsize=3,
           color=["#dd8452" if k == "grasp" else "#4c72b0" for k in labels])
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(max(0, min(means) - 10), 100)
    ax.set_title("accuracy by method (mean ± std over domains × seeds)")
    fig.tight_layout()
    fig.savefig(output / "accuracy_by_method.png", dpi=120)
    plt.close(fig)

    taus = sorted(t for t, v in figures["_tau"].items() if v)
    if taus:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        m = [100 * statistics.mean(figures["_tau"][t]) for t in taus]
        s = [100 * _mean_std(figures["_tau"][t])[1] for t in taus]
        ax.errorbar(taus, m, yerr=s, marker="o", capsize=3)
        ax.set_xlabel("τ")
        ax.set_ylabel("GRASP test accuracy (%)")
        ax.set_title("accuracy vs τ")
        fig.tight_layout()
        fig.savefig(output / "accuracy_vs_tau.png", dpi=120)
        plt.close(fig)

    by_domain = {k: v for k, v in figures["_by_domain"].items() if k in BY_DOMAIN_PLOT}
    if by_domain:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, per in sorted(by_domain.items()):
            ds = [d for d, xs in sorted(per.items()) if xs]
            ax.plot(ds, [100 * statistics.mean(per[d]) for d in ds], marker="o", label=label,
                    linewidth=2.5 if label == "grasp" else 1.2)
        ax.set_xlabel("target domain (rotation 15·d degrees)")
        ax.set_ylabel("test accuracy (%, mean over seeds)")
        ax.set_title("accuracy by target domain")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(output / "accuracy_by_domain.png", dpi=120)
        plt.close(fig)

    if memory:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for method in sorted({m["method"] for m in memory}):
            pts = sorted((m["k"], m["peak_rss_bytes"] / 2**20) for m in memory if m["method"] == method)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.set_xlabel("K (sources)")
        ax.set_ylabel("peak RSS (MiB)")
        ax.set_title("memory vs K")
        ax.legend()
        fig.tight_layout()
        fig.savefig(output / "memory_vs_k.png", dpi=120)
        plt.close(fig)


def _check_resumable(cfg: BenchConfig, output: Path, resume: bool) -> list[RunResult]:
    """The runs to keep from an earlier bench in ``output``: none, or all of them if it had the same settings."""
    csv_path, cfg_path = output / "results.csv", output / "config.json"
    if not csv_path.exists():
        return []
    if not resume:
        raise GraspError(f"{csv_path} exists: pass --resume to continue that bench, or choose another --output")
    # domains and seeds may grow between runs; everything else must match what made the earlier rows
    # (the memory runs are redone by every invocation, so their settings may differ too)
    same = {k: v for k, v in json.loads(json.dumps(asdict(cfg))).items()
            if k not in ("domains", "seeds", "memory_k", "memory_arch")}
    before = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    changed = sorted(k for k in same if before.get(k) != same[k])
    if changed:
        raise GraspError(f"--resume: {cfg_path} was written with other settings ({', '.join(changed)}); "
                         "rerun with the same settings or choose another --output")
    return read_csv(csv_path)


def bench(cfg: BenchConfig, output: str | Path, *, resume: bool = False, workers: int = 1) -> dict:
    """Run the whole bench into ``output``; returns the paths and the printed texts.

    ``resume=True`` keeps the (domain, seed) pairs an earlier, interrupted or
    smaller bench with the same settings finished in ``output`` and runs the
    rest; ``workers`` runs that many pairs at once, each in its own process.
    """
    if cfg.recipe != digits_eras.DIGITS_ERAS:
        raise GraspError(f"bench --recipe {cfg.recipe}: only digits-eras makes its own sources offline so far")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    done = _check_resumable(cfg, output, resume)
    (output / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    start = time.time()
    results = run_accuracy(cfg, output, done=done, workers=workers)
    if cfg.memory_k:
        memory = run_memory(cfg)
    else:  # a resumed bench without memory runs keeps the figures of the one before
        earlier = output / "memory.json"
        memory = json.loads(earlier.read_text()) if done and earlier.exists() else []
    table, figures = summarise(results, memory)
    claim_text = claims(figures, memory)
    plot(results, memory, figures, output)
    seconds = time.time() - start
    # every invocation on this output, so a resumed bench still says how long the whole took
    history_path = output / "history.json"
    history = json.loads(history_path.read_text()) if done and history_path.exists() else []
    history.append({"finished": time.strftime("%Y-%m-%d %H:%M:%S"), "minutes": round(seconds / 60, 1),
                    "pairs_run": len({(r.domain, r.seed) for r in results}) - len({(r.domain, r.seed) for r in done}),
                    "workers": workers, "cpu_cores": os.cpu_count(), "memory_runs": bool(cfg.memory_k)})
    history_path.write_text(json.dumps(history, indent=2))
    domains, seeds = sorted({r.domain for r in results}), sorted({r.seed for r in results})
    runs_text = "; ".join(f"{h['pairs_run']} pairs{' + memory' if h['memory_runs'] else ''} in {h['minutes']} min "
                          f"({h['workers']} worker(s), {h['cpu_cores']} CPU cores)" for h in history)
    header = (f"hf-grasp bench --recipe {cfg.recipe}: arch {cfg.arch}, target domains {domains}, seeds {seeds}, "
              f"K = {cfg.max_sources or 'all'}; every method that trains gets the same fine-tuning epochs "
              f"(column 2). {len(results)} runs ({sum(r.seconds for r in results) / 3600:.1f} h summed over runs); "
              f"wall clock by invocation: {runs_text}")
    (output / "table.md").write_text(header + "\n\n" + table + "\n")
    (output / "claims.md").write_text(claim_text + "\n")
    (output / "memory.json").write_text(json.dumps(memory, indent=2))
    print(header, table, "", claim_text, sep="\n")
    return {"results": results, "memory": memory, "table": table, "claims": claim_text, "seconds": seconds}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default="digits-eras", help="Recipe to benchmark (digits-eras makes its own sources).")
    p.add_argument("--arch", default="resnet", help="Architecture of the sources (see make-sources --arch).")
    p.add_argument("--seeds", type=int, default=None,
                   help="Number of seeds (default 5; gains below about 2 points need 10).")
    p.add_argument("--domains", type=int, nargs="+", help="Target domains (default: all).")
    p.add_argument("--methods", nargs="+", help="Methods to run (default: every registered method).")
    p.add_argument("--quick", action="store_true",
                   help="One domain, one seed, K=3, one epoch per round, 3 τ values, 2 orders, K=2,4 for memory.")
    p.add_argument("--no-memory", action="store_true", help="Skip the peak-memory runs.")
    p.add_argument("--taus", type=float, nargs="+", help="τ values for the sweep (default 0.1 0.3 0.5 0.7 0.9).")
    p.add_argument("--orders", type=int, help="Number of source orders (default 5).")
    p.add_argument("--max-sources", type=int, help="K: use only the first K sources of the order.")
    p.add_argument("--memory-k", type=int, nargs="+", help="K values for the memory runs (default 2 4 8).")
    p.add_argument("--source-epochs", type=int, help="Epochs for the base and for each source in make-sources.")
    p.add_argument("--output", type=Path, default=Path("bench"), help="Directory for sources, CSV, tables, plots.")
    p.add_argument("--resume", action="store_true",
                   help="Keep the (domain, seed) pairs already in OUTPUT/results.csv and run only the rest.")
    p.add_argument("--workers", type=int, default=1,
                   help="Run this many (domain, seed) pairs at once, each process with its share of the cores.")


def run_from_args(args: argparse.Namespace) -> dict:
    cfg = BenchConfig.quick(recipe=args.recipe, arch=args.arch) if args.quick else BenchConfig(recipe=args.recipe,
                                                                                               arch=args.arch)
    if args.seeds is not None:
        cfg.seeds = list(range(args.seeds))
    if args.domains:
        cfg.domains = args.domains
    if args.methods:
        cfg.methods = args.methods
    if args.no_memory:
        cfg.memory_k = ()
    for name in ("taus", "memory_k"):
        if getattr(args, name):
            setattr(cfg, name, tuple(getattr(args, name)))
    if args.orders:
        cfg.n_orders = args.orders
    if args.max_sources:
        cfg.max_sources = args.max_sources
    if args.source_epochs:
        cfg.pretrain_epochs = cfg.source_epochs = args.source_epochs
    return bench(cfg, args.output, resume=args.resume, workers=args.workers)
