"""``hf-grasp demo``: a built-in offline benchmark end to end.

Makes the benchmark's sources (unless they are already there), merges them
onto the held-out target domain with GRASP using the benchmark's recipe values,
saves the merged model and prints how it compares with each source alone:
digits-eras (images) by default, tweet-eras (text) with ``--text``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import digits_eras, tweet_eras
from .make_sources import BENCHMARKS, DEFAULT_ARCH, make_sources

#: the benchmark ``--text`` picks
TEXT_BENCHMARK = tweet_eras.TWEET_ERAS


def source_dirs(sources_root: Path, benchmark: str = digits_eras.DIGITS_ERAS) -> list[Path]:
    """The recipe's source order (both sides of the target, not nearest-first)."""
    return [sources_root / f"d{d}" for d in BENCHMARKS[benchmark].RECIPE["source_domains"]]


def run_demo(output: str | Path = "demo", *, benchmark: str = digits_eras.DIGITS_ERAS, arch: str | None = None,
             seed: int = 0, **options):
    """Make sources under ``output/sources-ARCH`` and merge them into ``output/merged-ARCH``.

    ``benchmark``: ``digits-eras`` (``arch`` defaults to resnet) or ``tweet-eras`` (its tiny BERT, ``bert``).
    """
    from ...merger import GraspMerger
    from ...output.summary import print_summary
    output, arch = Path(output), arch or DEFAULT_ARCH[benchmark]
    sources_root = output / f"sources-{arch.replace(':', '-')}"
    if not (sources_root / "base").is_dir():
        make_sources(sources_root, benchmark=benchmark, arch=arch, seed=seed)
    merger = GraspMerger.from_pretrained([str(p) for p in source_dirs(sources_root, benchmark)],
                                         target=benchmark, seed=seed, **options)
    result = merger.merge()
    merged = output / f"merged-{arch.replace(':', '-')}"
    result.save_pretrained(merged, overwrite=True)
    print_summary(result.report)
    print(f"merged model written to {merged}")
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", type=Path, default=Path("demo"), help="Directory for sources and the merged model.")
    p.add_argument("--text", action="store_true",
                   help=f"The text benchmark {TEXT_BENCHMARK} (tweets, a tiny BERT) instead of digits-eras' images.")
    p.add_argument("--arch", default=None,
                   help="Architecture of the sources (see make-sources --arch; default resnet, with --text bert).")
    p.add_argument("--seed", type=int, default=0, help="Seed for making the sources and for the merge.")
    p.add_argument("--tau", type=float, default=None, help="Alignment threshold (default: 0.3).")


def run_from_args(args: argparse.Namespace):
    opts = {"tau": args.tau} if args.tau is not None else {}
    benchmark = TEXT_BENCHMARK if args.text else digits_eras.DIGITS_ERAS
    return run_demo(args.output, benchmark=benchmark, arch=args.arch, seed=args.seed, **opts)
