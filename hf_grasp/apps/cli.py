"""``hf-grasp``: a thin command line over the Python API.

Parses arguments, calls :mod:`hf_grasp`, prints. A :class:`GraspError` becomes
one ``error: ...`` line on stderr and exit status 2.

Nothing heavy is imported to parse: the options and the method registry are
torch-free, and a delegated command's module is imported only when that
command is the one given, so ``hf-grasp --help`` and every ``--help`` answer
at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import signal
import sys
from pathlib import Path

from hf_grasp import __version__
from ..runtime.errors import GraspError, called_from_cli
from ..runtime.interrupts import signals_as_interrupts
from ..methods import METHODS
from ..plan.options import add_option_arguments, options_from_args, parse_text
from ..runtime.progress import configure


def _merge_parser(sub) -> None:
    p = sub.add_parser("merge", help="Merge source checkpoints onto a target dataset with GRASP.",
                       description="Merge K same-architecture classifiers into one model on a target dataset.",
                       parents=[_output_flags()])
    p.add_argument("--target",
                   help="Recipe name (digits-eras, yearbook, clear10, clear100), dataset id, or local path "
                        "datasets can read.")
    p.add_argument("--recipe", help="Recipe name or YAML file whose values fill the options you do not set.")
    p.add_argument("--sources", nargs="+", metavar="REF",
                   help="Source checkpoints: org/name, org/name@revision, hf-hub:org/name, or a local directory.")
    p.add_argument("--from", dest="from_merge", metavar="MERGE",
                   help="Make a saved merge again (a Hub repo id or folder written by hf-grasp, holding "
                        "grasp_config.json): its sources at the commits it used, its target, method and every "
                        "option; flags given here override them. Instead of --sources.")
    p.add_argument("--output", required=True, type=Path, help="Directory to write the merged model to.")
    p.add_argument("--method", choices=sorted(METHODS), metavar="METHOD",
                   help="Merge method (default: grasp, or the --from merge's): " + ", ".join(sorted(METHODS)) +
                        ". Each method's own parameters are listed below under its name.")
    p.add_argument("--overwrite", action="store_true", help="Replace --output if it already exists.")
    p.add_argument("--resume", action="store_true",
                   help="Go on with the merge a crash or a kill interrupted on this --output, from its last finished "
                        "step (GRASP and its ablations keep their state after every step in .NAME.resume beside "
                        "--output until the output is written); refused if any setting differs.")
    _push_flags(p)
    add_option_arguments(p, METHODS)
    p.set_defaults(func=_cmd_merge)


def _push_flags(p) -> None:
    """``--push-to-hub`` and what it takes: where, how the commit looks, which token."""
    hub = p.add_argument_group("publish")
    hub.add_argument("--push-to-hub", metavar="REPO_ID",
                     help="Also upload the merged model (weights, configs, card, report, heatmap) to this Hub model "
                          "repo, in one commit; the repo is created if missing.")
    hub.add_argument("--private", action="store_true", help="Create the --push-to-hub repo as private.")
    hub.add_argument("--revision", metavar="BRANCH", help="Commit to this branch (created if missing; default main).")
    hub.add_argument("--create-pr", action="store_true", help="Open a pull request instead of committing directly.")
    hub.add_argument("--commit-message", metavar="TEXT", help="The commit's message.")
    hub.add_argument("--token", metavar="TOKEN",
                     help="Hub token with write access (default: HF_TOKEN, else the stored login). Never printed.")


def _merge_inputs(args, options: dict) -> list[tuple[str, object]]:
    """Every reference the merge reads, as ``(what, reference)``: the output must be none of them."""
    return [*(("source", s) for s in args.sources or ()), ("--from", args.from_merge), ("--base", options.get("base")),
            ("--init", options.get("init")), ("--target", args.target)]


def _saved_merge(args):
    """``(plan, folder)`` of the merge ``--from`` names (None without one): a local folder's read at once, without
    torch; a Hub repo's ``grasp_config.json`` through the HF cache."""
    if bool(args.sources) == bool(args.from_merge):
        raise GraspError("pass the sources to merge (--sources A B ...), or a saved merge to make again (--from "
                         "MERGE), not both" if args.sources else "no sources: pass --sources A B ..., or --from a "
                         "merge saved by hf-grasp")
    if not args.from_merge:
        return None
    from ..inputs.saved_merge import find_merge_config

    return find_merge_config(args.from_merge, token=args.token, required=True)


def _check_push_flags(args) -> None:
    """A publish flag without ``--push-to-hub`` is a mistake to report now, not to ignore after the merge."""
    given = [flag for flag, value in (("--private", args.private), ("--revision", args.revision),
                                      ("--create-pr", args.create_pr), ("--commit-message", args.commit_message),
                                      ("--token", args.token)) if value]
    if given and not args.push_to_hub:
        raise GraspError(f"{', '.join(given)} only apply with --push-to-hub REPO_ID")


def _cmd_merge(args) -> int:
    _check_push_flags(args)
    saved = _saved_merge(args)
    method = args.method or (saved[0].method if saved else "grasp")
    options = parse_text(method, options_from_args(args, METHODS), methods=METHODS)  # "0.5" -> 0.5, before any work
    _check_plan(args, method, options, saved)
    from ..output.checkpoint import kept_for_resume, work_area
    from ..runtime.workspace import claim_output

    if os.environ.get("RANK", "0") != "0":  # a rank of accelerate launch / torchrun, told before torch is imported
        return _merge_beside_main(args, options)
    # checked and locked before the minutes of work (and the seconds of imports), held until the output is in place
    with claim_output(args.output, inputs=_merge_inputs(args, options), overwrite=args.overwrite):
        from ..merger import check_free_space
        from ..output.summary import print_summary
        from ..runtime.timing import RunClock

        area = work_area(args.output)
        if args.overwrite and not args.resume:
            shutil.rmtree(area, ignore_errors=True)  # --overwrite starts over
        with kept_for_resume(area):
            merger = _merger(args, options)
            merger.clock = RunClock.process()  # the report's wall time: the whole command, as `time` measures it
            # before the minutes of the merge, not after
            check_free_space(args.output, merger.inputs, checkpointed=merger.plan.keeps_checkpoint)
            result = merger.merge(checkpoint_dir=area, resume=args.resume)
            # pushing: the card's loading snippet names the repo, locally as on the Hub
            result.save_pretrained(args.output, overwrite=args.overwrite,
                                   model_card_kwargs={"repo_id": args.push_to_hub})
        shutil.rmtree(area, ignore_errors=True)
    print_summary(result.report)
    print(f"merged model written to {args.output}")
    if args.push_to_hub:
        from ..output.publish import push_folder

        # the folder just written is what goes up, so the Hub holds exactly the local files
        url = push_folder(args.output, args.push_to_hub, private=args.private or None, revision=args.revision,
                          create_pr=args.create_pr, commit_message=args.commit_message, token=args.token)
        print(f"pushed to {url}")
    from ..engine.training import process_state

    # the other processes end with this one, so the launch ends when everything is written
    process_state(options.get("cpu")).wait_for_everyone()
    return 0


def _check_plan(args, method: str, options: dict, saved) -> None:
    """Refuse now, before the seconds of imports, what the merge's plan would refuse: every value (a saved
    merge's too) and every rule across the options (``--license-name`` needs ``--license other``, ``--order`` a
    permutation of the sources' indices: :class:`MergePlan`'s rules).

    Only when every option layer is known without reading a model: the flags, the recipe's YAML and the saved
    merge's ``grasp_config.json``. An earlier merge ``--init`` may continue adds a layer found with the sources
    (torch), so that waits for the merger, which checks every rule again with every layer.
    """
    from ..inputs.recipes import BUILTIN_RECIPES, load_recipe
    from ..plan.options import Layer, method_info
    from ..plan.plan import MergePlan, withheld

    layers, sources, target, recipe = [], args.sources, args.target, args.recipe
    if saved:  # as GraspMerger.from_pretrained reads it: its values below the caller's, never a permission
        plan, folder = saved
        values, _ = withheld(plan.options | plan.params, folder, options)
        layers, sources = [Layer(values, origin=f"merge {args.from_merge}", lenient=True)], plan.sources
        if target is None and recipe is None:
            target, recipe = plan.target, plan.recipe
    if not sources or options.get("init") not in (None, "first", "random") or not (target or recipe):
        return
    chosen = recipe or (target if target in BUILTIN_RECIPES else None)
    if chosen:  # the lowest layer
        layers.insert(0, Layer(load_recipe(chosen, methods=METHODS).options, origin=f"recipe {chosen}", lenient=True))
    MergePlan.build(method_info(method, METHODS), [*layers, Layer(options)], methods=METHODS, sources=sources,
                    target=target, recipe=recipe)


def _merger(args, options: dict):
    """The merger the command line asks for: its sources, or the saved merge ``--from`` names, with its options."""
    from hf_grasp import GraspMerger

    return GraspMerger.from_pretrained(args.from_merge or args.sources, target=args.target, recipe=args.recipe,
                                       method=args.method, token=args.token, **options)


def _merge_beside_main(args, options: dict) -> int:
    """A process other than the main one of a multi-process launch: the same merge (its share of the
    alignment rows, its shard of every fine-tuning batch), and nothing written: the main process claims the
    output, checkpoints, saves and pushes while this one waits for it."""
    from ..output.checkpoint import work_area
    from ..engine.training import process_state

    _merger(args, options).merge(checkpoint_dir=work_area(args.output), resume=args.resume)
    process_state(options.get("cpu")).wait_for_everyone()
    return 0


#: commands whose module provides ``add_arguments(parser)`` and ``run_from_args(args)``:
#: name -> (module, help, description)
DELEGATED = {
    "make-sources": (".bench.make_sources",
                     "Train a shared base and one source per domain of a built-in benchmark.",
                     "Train a small base model on the benchmark's pretraining pool, then fine-tune one source per "
                     "non-target domain from it, each saved as a Hub repo holds it."),
    "demo": (".bench.demo",
             "Offline demo: make digits-eras sources, merge them, compare GRASP, the recommended method, the best "
             "source and the ensemble.",
             "End to end on the built-in digits-eras benchmark, no network needed: the recommended method's merge "
             "saved, and one table and one plot comparing it with GRASP, the best single source and the ensemble "
             "on the same sources, seed and splits."),
    "prepare": ("..inputs.converters",
                "Convert a raw Yearbook or CLEAR release into a datasets DatasetDict.",
                "Turn a raw dataset release into a DatasetDict with a period column and 80/10/10 splits per "
                "period and class, saved with save_to_disk."),
    "bench": (".bench.runner",
              "Run every method, a τ sweep, source orders and memory on a recipe.",
              "Reproduce the paper's comparisons on a recipe: a table (mean ± std and paired differences against "
              "finetune-only), a CSV, plots and the paper's claims beside the measured figures."),
    "space": (".space",
              "Serve the Gradio demo page (the Space) on this machine.",
              "Run the hf-grasp Space locally: pick sources, a target and a method, merge, and see it beside GRASP, "
              "the recommended method, the best single source and the ensemble (validation and test), the alignment "
              "heatmap, what moved, and the model on an image. Needs the space extra: pip install "
              "'hf-grasp[space]'."),
}


def _delegated_parser(sub, name: str, *, load: bool) -> None:
    """The subcommand's parser; its module (and its arguments) only when ``load``, i.e. it is the one given."""
    module_name, help_text, description = DELEGATED[name]
    p = sub.add_parser(name, help=help_text, description=description, parents=[_output_flags()])
    if not load:
        return
    module = importlib.import_module(module_name, __package__)
    module.add_arguments(p)

    def run(args) -> int:
        module.run_from_args(args)
        return 0

    p.set_defaults(func=run)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``hf-grasp`` parser; of the delegated commands only the one named in ``argv`` gets its arguments
    (all of them when ``argv`` is None)."""
    parser = argparse.ArgumentParser(
        prog="hf-grasp",
        description="Merge fine-tuned Hugging Face models into one with GRASP "
                    "(Gradient-Aligned Sequential Parameter Transfer).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _merge_parser(sub)
    named = set(argv or ()) & set(DELEGATED)
    for name in DELEGATED:
        _delegated_parser(sub, name, load=argv is None or name in named)
    return parser


def _output_flags() -> argparse.ArgumentParser:
    """``--progress/--no-progress`` and ``--quiet``, which every command takes."""
    common = argparse.ArgumentParser(add_help=False)
    view = common.add_argument_group("output")
    view.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                      help="Draw progress bars (default: only when stderr is a terminal; TQDM_DISABLE=1 turns them "
                           "off). Without bars, one plain line per epoch and per source step.")
    view.add_argument("--quiet", "-q", action="store_true", help="Print only warnings, errors and the result.")
    return common


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hf-grasp`` console script.

    Exit status: 0, 2 for a user error (one ``error:`` line), 128 + N when
    signal N (Ctrl-C's SIGINT, SIGTERM, SIGHUP) interrupted the run, after its
    cleanup ran (one ``error: interrupted ...`` line, no traceback).
    """
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    configure(progress=args.progress, quiet=args.quiet)
    try:
        with signals_as_interrupts(), called_from_cli():  # errors' advice names flags, not Python arguments
            return args.func(args)
    except GraspError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        how = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"error: interrupted by {how}; the run's temporary files were removed", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
