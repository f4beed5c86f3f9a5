"""``hf-grasp prepare yearbook|clear``: the paper's raw datasets -> a ``datasets`` DatasetDict.

Each converter reads a raw release as its authors distribute it, and writes a
``DatasetDict`` (``train``/``validation``/``test``) with ``save_to_disk``, ready for
``hf-grasp merge --target DIR --recipe yearbook|clear10|clear100``. The images are
embedded in the Arrow files (``save_to_disk`` embeds local image files), so the
output does not depend on the raw directory afterwards. ``--push-to-hub`` uploads
it with ``DatasetDict.push_to_hub``.

Splits follow the authors' released preprocessing: within each group (a domain
and a class) the rows are permuted by one seeded ``numpy`` generator, and the
first ``floor(0.8 n)`` go to train, the next ``floor(0.1 n)`` to validation, the
rest (``n - floor(0.8 n) - floor(0.1 n)``, so test gets the rounding) to test.
Same raw files and seed, same splits. (The released code used Python's
``random`` with seed 42: same ratios and rounding, not the same permutation.)
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Hashable, Sequence

import numpy as np

from ...runtime.errors import DataError, GraspError, flag
from ...runtime.workspace import staged

if TYPE_CHECKING:  # datasets is imported where it is used: `hf-grasp prepare --help` stays quick
    import datasets

SPLITS = ("train", "validation", "test")
KINDS = ("yearbook", "clear")
DEFAULT_SEED = 42  # the seed of the authors' released preprocessing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``hf-grasp prepare`` to its subparser."""
    parser.add_argument("kind", choices=KINDS, help="Which raw dataset to convert.")
    parser.add_argument("--from", dest="from_dir", required=True, type=Path, metavar="DIR",
                        help="The raw release: for yearbook the folder holding F/ and M/; for clear the folder "
                             "holding labeled_images/ (or train_image_only/labeled_images/, or the buckets).")
    parser.add_argument("--output", required=True, type=Path, metavar="DIR",
                        help="Directory to write the DatasetDict to (save_to_disk).")
    parser.add_argument("--overwrite", action="store_true", help="Replace --output if it already exists.")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"Seed of the 80/10/10 split (default: {DEFAULT_SEED}, the released preprocessing's).")
    clear = parser.add_argument_group("clear options")
    clear.add_argument("--variant", choices=("clear10", "clear100"), default=None,
                       help="CLEAR-10 (all its classes) or CLEAR-100 (the paper's 30-class subset). Default: clear10.")
    clear.add_argument("--classes", default=None, metavar="NAME,NAME,...",
                       help="Comma-separated class folders to keep instead of the variant's default.")
    clear.add_argument("--num-classes", type=int, default=None, metavar="N",
                       help="Keep the first N class folders in alphabetical order instead of the variant's default.")
    hub = parser.add_argument_group("hub options")
    hub.add_argument("--push-to-hub", metavar="REPO_ID", help="Also upload the DatasetDict to this Hub dataset repo.")
    hub.add_argument("--private", action="store_true", help="Create the --push-to-hub repo as private.")


def run_prepare(args: argparse.Namespace) -> datasets.DatasetDict:
    """Convert ``args.from_dir``, write it to ``args.output`` atomically, push if asked.

    Returns the written DatasetDict (memory-mapped from ``args.output``).
    """
    variant = getattr(args, "variant", None)
    classes = getattr(args, "classes", None)
    num_classes = getattr(args, "num_classes", None)
    if args.kind == "yearbook":
        for flag, value in (("--variant", variant), ("--classes", classes), ("--num-classes", num_classes)):
            if value is not None:
                raise GraspError(f"{flag} applies to 'hf-grasp prepare clear' only")
    _check_output(Path(args.output), getattr(args, "overwrite", False))

    if args.kind == "yearbook":
        from .yearbook import build_yearbook

        dd = build_yearbook(args.from_dir, seed=args.seed)
    else:
        from .clear import build_clear

        names = [c.strip() for c in classes.split(",") if c.strip()] if classes is not None else None
        dd = build_clear(args.from_dir, variant=variant or "clear10", classes=names, num_classes=num_classes,
                         seed=args.seed)

    save_atomically(dd, Path(args.output), overwrite=getattr(args, "overwrite", False))
    import datasets

    written = datasets.load_from_disk(str(args.output))
    if getattr(args, "push_to_hub", None):
        written.push_to_hub(args.push_to_hub, private=getattr(args, "private", False))
    return written


# --------------------------------------------------------------------------- shared by the converters


def split_indices(groups: Sequence[Hashable], seed: int) -> dict[str, list[int]]:
    """Row indices of train/validation/test, split 80/10/10 within each group.

    ``groups[i]`` is row ``i``'s group (sortable keys, e.g. ``(domain, label)``).
    Groups are visited in sorted order and each is permuted by one
    ``numpy.random.default_rng(seed)``; a group of ``n`` rows gives ``8n // 10``
    to train, ``n // 10`` to validation and the remainder to test. Each split's
    rows are then shuffled with the same generator, so no split is ordered by
    class. Rows must come in a stable order (the converters sort by file path).
    """
    rng = np.random.default_rng(seed)
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for g in sorted(members):
        rows = [int(r) for r in rng.permutation(members[g])]
        n_train, n_val = 8 * len(rows) // 10, len(rows) // 10
        out["train"] += rows[:n_train]
        out["validation"] += rows[n_train:n_train + n_val]
        out["test"] += rows[n_train + n_val:]
    return {s: [rows[i] for i in rng.permutation(len(rows))] for s, rows in out.items()}


def build_splits(columns: dict[str, list], features: datasets.Features, groups: Sequence[Hashable], *,
                 seed: int, description: str, citation: str, homepage: str) -> datasets.DatasetDict:
    """A DatasetDict of ``columns`` (image column as file paths) split by :func:`split_indices`."""
    import datasets

    parts = {}
    for split, rows in split_indices(groups, seed).items():
        if not rows:
            # datasets cannot load an empty saved split back; and no merge can use one.
            raise DataError(f"too few images for an 80/10/10 split: split '{split}' would be empty "
                            "(a group needs at least 10 images to give validation and test one each)")
        info = datasets.DatasetInfo(description=description, citation=citation, homepage=homepage,
                                    features=features)
        parts[split] = datasets.Dataset.from_dict({k: [v[i] for i in rows] for k, v in columns.items()},
                                                  features=features, info=info, split=split)
    return datasets.DatasetDict(parts)


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not overwrite and (not output.is_dir() or any(output.iterdir())):
        raise GraspError(f"output {output} exists and is not empty; pass {flag('overwrite')} to replace it")


def save_atomically(dd: datasets.DatasetDict, output: Path, *, overwrite: bool = False) -> None:
    """``dd.save_to_disk`` into a temporary directory beside ``output``, then rename it into place
    (:func:`~hf_grasp.runtime.workspace.staged`).

    A failure leaves no temporary directory behind and, with ``overwrite``, the
    existing ``output`` in place: it is replaced only once the new one is complete.
    """
    _check_output(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    with staged(output) as tmp:
        dd.save_to_disk(str(tmp))


def image_files(directory: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The files directly in ``directory`` whose suffix (any case) is in ``suffixes``, sorted."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def require_dir(path: Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError(f"{what} directory {path} does not exist")
    return path


def run_from_args(args: argparse.Namespace) -> datasets.DatasetDict:
    """``hf-grasp prepare``: convert, then say what was written."""
    dd = run_prepare(args)
    print(", ".join(f"{s}: {len(d)}" for s, d in dd.items()), f"written to {args.output}")
    return dd


__all__ = ["add_arguments", "run_from_args", "run_prepare", "split_indices", "save_atomically"]
