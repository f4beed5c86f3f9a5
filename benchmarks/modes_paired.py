"""Each GRASP variant of a bench (``hf-grasp bench --modes ...``) against default GRASP on the same
(target domain, seed) pairs: mean ± std, and the paired difference in points with wins / ties / losses.

    python benchmarks/modes_paired.py benchmarks/results/bench-digits-eras-modes/results.csv

Reads the bench's ``results.csv`` only, through the bench's own summary (:mod:`hf_grasp.apps.bench.results`:
the same rows, labels and pairing as its ``table.md``); prints Markdown.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_grasp.apps.bench.results import _pm as mean_std  # the table's own "mean ± std" in points
from hf_grasp.apps.bench.results import paired, read_csv, summarise


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", type=Path, help="A bench's results.csv.")
    _, figures = summarise(read_csv(p.parse_args().csv), [])
    default = figures["_pairs"]["grasp"]
    variants = sorted(label for label in figures["_pairs"] if label.startswith("grasp ") and "+bn" not in label)
    lines = ["| GRASP | test accuracy % (mean ± std) | paired Δ vs default (points) | wins / ties / losses | n |",
             "|---|---|---|---|---|", f"| default | {mean_std(figures['grasp'])} | – | – | {len(default)} |"]
    for label in variants:
        delta, record = paired(figures, label, default)
        lines.append(f"| {label.removeprefix('grasp ')} | {mean_std(figures[label])} | {delta} | "
                     f"{record.replace('/', ' / ')} | {len(figures[label])} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
