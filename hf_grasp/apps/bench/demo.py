"""``hf-grasp demo``: the built-in offline benchmark end to end.

Makes digits-eras sources (unless they are already there), merges them onto the
held-out target domain with GRASP using the benchmark's recipe values, saves
the merged model and prints how it compares with each source alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import digits_eras
from .make_sources import make_sources


def source_dirs(sources_root: Path) -> list[Path]:
    """The recipe's source order (both sides of the target, not nearest-first)."""
    return [sources_root / f"d{d}" for d in digits_eras.RECIPE["source_domains"]]


def run_demo(output: str | Path = "demo", *, arch: str = "resnet", seed: int = 0, **options):
    """Make sources under ``output/sources-ARCH`` and merge them into ``output/merged-ARCH``."""
    from ...merger import GraspMerger
    from ...output.summary import print_summary

    output = Path(output)
    sources_root = output / f"sources-{arch.replace(':', '-')}"
    if not (sources_root / "base").is_dir():
        make_sources(sources_root, arch=arch, seed=seed)
    merger = GraspMerger.from_pretrained([str(p) for p in source_dirs(sources_root)],
                                         target=digits_eras.DIGITS_ERAS, seed=seed, **options)
    result = merger.merge()
    merged = output / f"merged-{arch.replace(':', '-')}"
    result.save_pretrained(merged, overwrite=True)
    print_summary(result.report)
    print(f"merged model written to {merged}")
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", type=Path, default=Path("demo"), help="Directory for sources and the merged model.")
    p.add_argument("--arch", default="resnet", help="Architecture of the sources (see make-sources --arch).")
    p.add_argument("--seed", type=int, default=0, help="Seed for making the sources and for the merge.")
    p.add_argument("--tau", type=float, default=None, help="Alignment threshold (default: 0.3).")


def run_from_args(args: argparse.Namespace):
    opts = {"tau": args.tau} if args.tau is not None else {}
    return run_demo(args.output, arch=args.arch, seed=args.seed, **opts)
