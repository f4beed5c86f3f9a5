"""``hf-grasp demo``: a built-in offline benchmark end to end.

Makes the benchmark's sources (unless they are already there), merges them
onto the held-out target domain with the recommended method
(:data:`~hf_grasp.methods.catalog.RECOMMENDED_METHOD` with its options, or the
one ``--method`` names) using the benchmark's recipe values, saves the merged
model and prints its summary; then compares it, on the same sources, seed and
splits, with GRASP, the best single source and the ensemble
(:mod:`.compare`): one table and one plot, written beside the merged model, and
one sentence naming the single model best on validation.
digits-eras (images) by default, tweet-eras (text) with ``--text``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...methods import METHODS
from ...methods.catalog import RECOMMENDED_METHOD, RECOMMENDED_OPTIONS
from ...plan.options import MergeOptions
from ...runtime.errors import GraspError
from . import digits_eras, tweet_eras
from .make_sources import BENCHMARKS, DEFAULT_ARCH, make_sources

if TYPE_CHECKING:
    from ...merger import MergeResult
    from .compare import Comparison

#: the benchmark ``--text`` picks
TEXT_BENCHMARK = tweet_eras.TWEET_ERAS


def source_dirs(sources_root: Path, benchmark: str = digits_eras.DIGITS_ERAS) -> list[Path]:
    """The recipe's source order (both sides of the target, not nearest-first)."""
    return [sources_root / f"d{d}" for d in BENCHMARKS[benchmark].RECIPE["source_domains"]]


@dataclass
class DemoRun:
    """What the demo made: the main merge (saved in ``folder``), the comparison, and its two files."""

    result: MergeResult
    folder: Path
    comparison: Comparison | None = None
    table: Path | None = None  # the comparison as Markdown
    plot: Path | None = None   # the comparison as a PNG

    @property
    def report(self):
        return self.result.report


def split_options(method: str, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``options`` as ``(the main run's, the other rows' own parameters by method)``: the shared ones and the
    main method's parameters go to the main run; a parameter of another method of the comparison (``tau``
    beside greedy-soup) goes to that method's row only. A parameter none of them takes is refused."""
    from .compare import row_definitions

    main, others = {}, {}
    methods = {m for m, _ in row_definitions().values()}
    for name, value in options.items():
        takers = [m for m in sorted(methods - {method}) if name in METHODS[m].params.model_fields]
        if name in MergeOptions.model_fields or name in METHODS[method].params.model_fields:
            main[name] = value
        elif not takers:
            raise GraspError(f"option {name!r} is a parameter of none of the demo's methods ({method}, "
                             f"{', '.join(sorted(methods - {method}))})")
        for m in takers:
            others.setdefault(m, {})[name] = value
    return main, others


def run_demo(output: str | Path = "demo", *, benchmark: str = digits_eras.DIGITS_ERAS, arch: str | None = None,
             seed: int = 0, method: str | None = None, compare: bool = True, **options) -> DemoRun:
    """Make sources under ``output/sources-ARCH``, merge them into ``output/merged-ARCH`` and compare.

    ``benchmark``: ``digits-eras`` (``arch`` defaults to resnet) or ``tweet-eras`` (its tiny BERT, ``bert``).
    ``method``: the main run's (None: the recommended method with its recommended options). ``compare``: also
    run GRASP, the recommended method, the best source and the ensemble (those the main run is not) and write
    ``output/comparison-ARCH.md`` and ``.png``. ``options``: shared options for every run, and method parameters
    for the rows whose method takes them (``tau``: GRASP's).
    """
    from ...merger import GraspMerger
    from ...output.summary import print_summary

    output, arch = Path(output), arch or DEFAULT_ARCH[benchmark]
    tag = arch.replace(":", "-")
    sources_root = output / f"sources-{tag}"
    if not (sources_root / "base").is_dir():
        make_sources(sources_root, benchmark=benchmark, arch=arch, seed=seed)
    chosen = method or RECOMMENDED_METHOD
    main_options, params = split_options(chosen, options)
    if method is None:  # the recommended method comes with its options (yours win)
        main_options = {**RECOMMENDED_OPTIONS, **main_options}
    sources = [str(p) for p in source_dirs(sources_root, benchmark)]
    merger = GraspMerger.from_pretrained(sources, target=benchmark, method=chosen, seed=seed, **main_options)
    result = merger.merge()
    merged = output / f"merged-{tag}"
    result.save_pretrained(merged, overwrite=True)
    print_summary(result.report)
    print(f"merged model written to {merged}")
    run = DemoRun(result, merged)
    if compare:
        from . import compare as cmp

        run.comparison = cmp.compare(sources, target=benchmark, main=result.report,
                                     options={**main_options, "seed": seed}, params=params,
                                     label=lambda ref: Path(ref).name, main_note=f"saved in {merged.name}/")
        run.table = output / f"comparison-{tag}.md"
        run.table.write_text(cmp.markdown(run.comparison), encoding="utf-8")
        run.plot = cmp.plot(run.comparison, output / f"comparison-{tag}.png")
        cmp.print_table(run.comparison)
        print(f"comparison written to {run.table} and {run.plot}")
    return run


def add_arguments(p: argparse.ArgumentParser) -> None:
    recommended = RECOMMENDED_METHOD + "".join(
        f" --{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in RECOMMENDED_OPTIONS.items())
    p.add_argument("--output", type=Path, default=Path("demo"),
                   help="Directory for the sources, the merged model and the comparison (table and plot).")
    p.add_argument("--text", action="store_true",
                   help=f"The text benchmark {TEXT_BENCHMARK} (tweets, a tiny BERT) instead of digits-eras' images.")
    p.add_argument("--arch", default=None,
                   help="Architecture of the sources (see make-sources --arch; default resnet, with --text bert).")
    p.add_argument("--method", choices=sorted(METHODS), metavar="METHOD", default=None,
                   help=f"The merge method saved (default: the recommended one, {recommended}). GRASP, the "
                        "recommended method, the best single source and the ensemble are compared beside it, "
                        "whichever it is.")
    p.add_argument("--seed", type=int, default=0, help="Seed for making the sources and for every merge.")
    p.add_argument("--tau", type=float, default=None,
                   help="GRASP's alignment threshold (default: 0.3), for the GRASP run (and the saved one when its "
                        "method takes it).")


def run_from_args(args: argparse.Namespace):
    opts = {"tau": args.tau} if args.tau is not None else {}
    benchmark = TEXT_BENCHMARK if args.text else digits_eras.DIGITS_ERAS
    return run_demo(args.output, benchmark=benchmark, arch=args.arch, seed=args.seed, method=args.method, **opts)
