"""digits-eras accuracy table: each source alone, fine-tune-only, and GRASP, mean ± std over seeds.

Each seed makes its own sources (a fresh base and fine-tunes) and runs the
merges with that seed, on the benchmark's recipe (target domain 2, sources
d0, d4, d1, d3, d5, lr 1e-3, 3 + 3 epochs). "fine-tune only" is the same loop
with τ = +inf: nothing is transferred, the first source gets the same number
of fine-tuning epochs as GRASP gives the merged model.

    python benchmarks/digits_eras_table.py --arch resnet --seeds 0 1 2 --output runs/digits-eras
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hf_grasp import GraspMerger  # noqa: E402
from hf_grasp.apps.bench.demo import source_dirs  # noqa: E402
from hf_grasp.apps.bench.make_sources import make_sources  # noqa: E402

METHODS = {"fine-tune only (τ=∞)": {"tau": float("inf")}, "GRASP τ=0.3": {"tau": 0.3}}


def run_seed(root: Path, arch: str, seed: int) -> dict[str, float]:
    sources = root / f"sources-{arch.replace(':', '-')}-seed{seed}"
    if not (sources / "base").is_dir():
        make_sources(sources, arch=arch, seed=seed)
    refs = [str(p) for p in source_dirs(sources)]
    row: dict[str, float] = {}
    for name, opts in METHODS.items():
        report = GraspMerger.from_pretrained(refs, target="digits-eras", seed=seed,
                                             eval_sources=(name == "GRASP τ=0.3"), **opts).merge().report
        row[name] = report.final["test"]["accuracy"]
        for src in report.sources:
            if src.metrics_alone:
                row[f"source {Path(src.ref).name} alone"] = src.metrics_alone["accuracy"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--output", type=Path, default=Path("runs/digits-eras"))
    args = p.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)

    rows = [run_seed(args.output, args.arch, s) for s in args.seeds]
    (args.output / f"results-{args.arch.replace(':', '-')}.json").write_text(json.dumps(rows, indent=2))
    names = sorted(rows[0], key=lambda n: (not n.startswith("source"), n))
    stats = {n: (statistics.mean(r[n] for r in rows), statistics.stdev(r[n] for r in rows) if len(rows) > 1 else 0.0)
             for n in names}
    print(f"digits-eras, target domain 2, arch {args.arch}, test accuracy over seeds {args.seeds}")
    print("| model | test accuracy (mean ± std) |\n|---|---|")
    for n in names:
        m, s = stats[n]
        print(f"| {n} | {100 * m:.1f} ± {100 * s:.1f} |")
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(range(len(names)), [100 * stats[n][0] for n in names], yerr=[100 * stats[n][1] for n in names],
           color=["#999"] * (len(names) - 2) + ["#4c72b0", "#dd8452"], capsize=4)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(max(0, min(100 * stats[n][0] for n in names) - 15), 100)
    ax.set_title(f"digits-eras (target domain 2, {args.arch}), {len(rows)} seeds")
    fig.tight_layout()
    fig.savefig(args.output / f"accuracy-{args.arch.replace(':', '-')}.png", dpi=120)
    print(f"plot: {args.output / ('accuracy-' + args.arch.replace(':', '-') + '.png')}")


if __name__ == "__main__":
    main()
