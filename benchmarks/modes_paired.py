"""Each GRASP variant of a bench (``hf-grasp bench --modes ...``) against default GRASP on the same
(target domain, seed) pairs: mean ± std, and the paired difference in points with wins / ties / losses.

    python benchmarks/modes_paired.py benchmarks/results/bench-digits-eras-modes/results.csv

Reads the bench's ``results.csv`` only (through :mod:`hf_grasp.apps.bench.results`); prints Markdown.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from hf_grasp.apps.bench.results import read_csv


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", type=Path, help="A bench's results.csv.")
    rows = read_csv(p.parse_args().csv)
    plain = [r for r in rows if r.method == "grasp" and r.order == "given" and not r.recalibrate_bn]
    base = {(r.domain, r.seed): 100 * r.test_accuracy for r in plain if not r.variant}
    lines = ["| GRASP | test accuracy % (mean ± std) | paired Δ vs default (points) | wins / ties / losses | n |",
             "|---|---|---|---|---|",
             f"| default | {statistics.mean(base.values()):.1f} ± {statistics.stdev(base.values()):.1f} | – | – | "
             f"{len(base)} |"]
    for variant in sorted({r.variant for r in plain if r.variant}):
        acc = {(r.domain, r.seed): 100 * r.test_accuracy for r in plain if r.variant == variant}
        d = [a - base[k] for k, a in acc.items() if k in base]
        lines.append(f"| {variant} | {statistics.mean(acc.values()):.1f} ± {statistics.stdev(acc.values()):.1f} | "
                     f"{statistics.mean(d):+.1f} ± {statistics.stdev(d):.1f} | {sum(x > 0 for x in d)} / "
                     f"{sum(x == 0 for x in d)} / {sum(x < 0 for x in d)} | {len(d)} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
